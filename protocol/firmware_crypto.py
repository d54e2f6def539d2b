"""Firmware image cryptography (firmware-protocol.md §7.1, §7.3): AES-256-CBC, SHA-256, RSA signatures.

* `encrypt_image`: PKCS#7 padding (a whole block when already aligned), one AES-256-CBC stream with a
  random 16-byte IV (injectable for reproducible tests).
* `StreamingDecryptor`: the device side. Ciphertext arrives in chunks of any size; CBC chaining carries
  across chunks (the IV of chunk n+1 is the last ciphertext block of chunk n); the final block is held
  back until `finish()` so the padding can be removed; SHA-256 runs over the plaintext as it streams.
* Signatures over the SHA-256 of the plaintext, passed pre-hashed: RSA PKCS#1 v1.5 (what firmware 1.0.4
  verifies) or RSA-PSS (salt = digest length, what mbedTLS verifies by default).
* Key helpers: RSA key generation and PEM in (PKCS#8 / SubjectPublicKeyInfo) and out, AES keys.

Every failure is a FirmwareError with a reason; keys never appear in messages.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import os

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import padding as rsa_padding
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from protocol.errors import FirmwareError

AES_KEY_SIZE = 32
BLOCK_SIZE = 16
IV_SIZE = 16
RSA_KEY_BITS = 2048
RSA_PUBLIC_EXPONENT = 65537
DIGEST_SIZE = 32


class SignatureScheme(enum.Enum):
    PKCS1V15 = "rsa-pkcs1v15-sha256"
    PSS = "rsa-pss-sha256"


# --- keys ------------------------------------------------------------------------------------------


def generate_aes_key() -> bytes:
    return os.urandom(AES_KEY_SIZE)


def generate_rsa_key(bits: int = RSA_KEY_BITS) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=RSA_PUBLIC_EXPONENT, key_size=bits)


def private_key_to_pem(key: rsa.RSAPrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted (the reference tool's `server_private_key.pem`)."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_key_to_pem(key: rsa.RSAPublicKey | rsa.RSAPrivateKey) -> bytes:
    """SubjectPublicKeyInfo PEM (what the firmware compiles in as `SERVER_PUBLIC_KEY`)."""
    public = key.public_key() if isinstance(key, rsa.RSAPrivateKey) else key
    return public.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def load_private_key_pem(data: bytes | str) -> rsa.RSAPrivateKey:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        key = serialization.load_pem_private_key(raw, password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise FirmwareError("not an unencrypted PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise FirmwareError("private key is not RSA", type(key).__name__)
    return key


def load_public_key_pem(data: bytes | str) -> rsa.RSAPublicKey:
    raw = data.encode("utf-8") if isinstance(data, str) else data
    try:
        key = serialization.load_pem_public_key(raw)
    except (ValueError, UnsupportedAlgorithm):
        raise FirmwareError("not a PEM public key") from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise FirmwareError("public key is not RSA", type(key).__name__)
    return key


def _check_aes(key: bytes, iv: bytes) -> None:
    if len(key) != AES_KEY_SIZE:
        raise FirmwareError("AES-256 key must be 32 bytes", len(key))
    if len(iv) != IV_SIZE:
        raise FirmwareError("IV must be 16 bytes", len(iv))


# --- encryption ------------------------------------------------------------------------------------


def encrypt_image(plaintext: bytes, key: bytes, iv: bytes | None = None) -> tuple[bytes, bytes]:
    """PKCS#7-pad and encrypt as one AES-256-CBC stream; returns (iv, ciphertext)."""
    iv = os.urandom(IV_SIZE) if iv is None else iv
    _check_aes(key, iv)
    padder = padding.PKCS7(BLOCK_SIZE * 8).padder()
    encryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    padded = padder.update(plaintext) + padder.finalize()
    return iv, encryptor.update(padded) + encryptor.finalize()


def strip_pkcs7(data: bytes) -> bytes | None:
    """`data` without its PKCS#7 padding (1..16 identical bytes), or None if the padding is invalid."""
    if not data or len(data) % BLOCK_SIZE:
        return None
    count = data[-1]
    if not 1 <= count <= BLOCK_SIZE or data[-count:] != bytes([count]) * count:
        return None
    return data[:-count]


class StreamingDecryptor:
    """Decrypts one AES-256-CBC stream fed in pieces, hashing the plaintext as it goes.

    `update` returns the plaintext that is certainly not padding (it holds back the last complete
    block); `finish` removes the padding and returns the rest. With `strict_padding=False` invalid
    padding is kept as data instead of failing, which is what firmware 1.0.4 does on its last chunk.
    """

    def __init__(self, key: bytes, iv: bytes, *, strict_padding: bool = True) -> None:
        _check_aes(key, iv)
        self._decryptor = Cipher(algorithms.AES(key), modes.CBC(iv)).decryptor()
        self._pending = b""  # ciphertext not yet a whole block
        self._held = b""  # last decrypted block, possibly padding
        self._hash = hashlib.sha256()
        self._strict = strict_padding
        self._finished = False
        self.first_block: bytes | None = None  # first plaintext block, for the image-magic check
        self.plaintext_size = 0

    def _emit(self, plaintext: bytes) -> bytes:
        self._hash.update(plaintext)
        self.plaintext_size += len(plaintext)
        return plaintext

    def update(self, ciphertext: bytes) -> bytes:
        if self._finished:
            raise FirmwareError("decryptor already finished")
        data = self._pending + ciphertext
        whole = len(data) - len(data) % BLOCK_SIZE
        self._pending = data[whole:]
        if not whole:
            return b""
        plaintext = self._held + self._decryptor.update(data[:whole])
        if self.first_block is None:
            self.first_block = plaintext[:BLOCK_SIZE]
        self._held = plaintext[-BLOCK_SIZE:]
        return self._emit(plaintext[:-BLOCK_SIZE])

    def finish(self) -> bytes:
        if self._finished:
            raise FirmwareError("decryptor already finished")
        self._finished = True
        if self._pending:
            raise FirmwareError("ciphertext is not a multiple of 16 bytes", len(self._pending))
        self._decryptor.finalize()
        if not self._held:
            raise FirmwareError("no ciphertext")
        tail = strip_pkcs7(self._held)
        if tail is None:
            if self._strict:
                raise FirmwareError("invalid PKCS#7 padding")
            tail = self._held
        return self._emit(tail)

    def digest(self) -> bytes:
        """SHA-256 of the plaintext emitted so far (the whole image once `finish` returned)."""
        return self._hash.digest()


def decrypt_image(ciphertext: bytes, key: bytes, iv: bytes) -> bytes:
    """One-shot decryption with strict padding (FirmwareError on any failure)."""
    decryptor = StreamingDecryptor(key, iv)
    return decryptor.update(ciphertext) + decryptor.finish()


# --- signatures ------------------------------------------------------------------------------------


def _pss() -> rsa_padding.PSS:
    return rsa_padding.PSS(mgf=rsa_padding.MGF1(hashes.SHA256()), salt_length=rsa_padding.PSS.DIGEST_LENGTH)


def _padding(scheme: SignatureScheme) -> rsa_padding.AsymmetricPadding:
    return rsa_padding.PKCS1v15() if scheme is SignatureScheme.PKCS1V15 else _pss()


def _check_digest(digest: bytes) -> None:
    if len(digest) != DIGEST_SIZE:
        raise FirmwareError("a SHA-256 digest is 32 bytes", len(digest))


def sign_digest(
    key: rsa.RSAPrivateKey, digest: bytes, scheme: SignatureScheme = SignatureScheme.PKCS1V15
) -> bytes:
    """Sign a SHA-256 digest passed pre-hashed (the DigestInfo/PSS encoding of SHA-256 applies)."""
    _check_digest(digest)
    return key.sign(digest, _padding(scheme), Prehashed(hashes.SHA256()))


def verify_digest(
    key: rsa.RSAPublicKey,
    digest: bytes,
    signature: bytes,
    scheme: SignatureScheme = SignatureScheme.PKCS1V15,
) -> None:
    """FirmwareError unless `signature` signs `digest` under `key` with `scheme`."""
    _check_digest(digest)
    try:
        key.verify(signature, digest, _padding(scheme), Prehashed(hashes.SHA256()))
    except InvalidSignature:
        raise FirmwareError(f"{scheme.value} signature does not verify") from None


def sign_data(key: rsa.RSAPrivateKey, data: bytes, scheme: SignatureScheme = SignatureScheme.PSS) -> bytes:
    return sign_digest(key, hashlib.sha256(data).digest(), scheme)


def verify_data(
    key: rsa.RSAPublicKey, data: bytes, signature: bytes, scheme: SignatureScheme = SignatureScheme.PSS
) -> None:
    verify_digest(key, hashlib.sha256(data).digest(), signature, scheme)


def chunk_tag(key_text: str, chunk: bytes, index: int) -> str:
    """The reference tool's per-chunk tag: HMAC-SHA256(ASCII key text, chunk || decimal index).

    Computed but never served nor checked by firmware 1.0.4; kept for compatibility checks.
    """
    return hmac.new(key_text.encode("ascii"), chunk + str(index).encode("ascii"), hashlib.sha256).hexdigest()
