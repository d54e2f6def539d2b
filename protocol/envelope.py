"""The secured-upload envelope (firmware-protocol.md §4.3-§4.7).

Body of `POST /process`, exactly as the firmware builds it:

    {"nonce":10001,"payload":"<base64 of the inner document>","mac":"<64 lowercase hex>","encrypted":false}

    mac = lowercase_hex(HMAC-SHA256(PSK, nonce as u32 big-endian || inner document bytes))

The MAC covers the decoded document bytes, never the base64 text, and a verifier uses the received
bytes as they are. Verification here checks the MAC *before* anything that depends on server state, so
an unauthenticated caller learns nothing about stored nonces; anti-replay is the caller's state, decided
by the shared pure rule `check_nonce`.

Error texts never contain a key, a computed MAC or a stored nonce (§11.3): every authentication
failure, including a failed decryption in encrypted mode, reads the same.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import struct
from dataclasses import dataclass

from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from protocol.errors import AuthenticationError, EnvelopeError, ReplayError
from protocol.json_wire import UINT32_MAX, dumps, is_integer, load_object

# The firmware's compiled-in fleet key (§4.4); effectively public, see §11.3.
REFERENCE_PSK = bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c762e7160f38b4da56a784d9045190cfe")
# The firmware's envelope buffer (§4.3).
FIRMWARE_ENVELOPE_LIMIT = 8192
PSK_SIZE = 32
MAC_HEX_LENGTH = 64
# Server-side "encrypted" mode (§4.7): AES-128-CBC, key = PSK[:16], fixed IV 00..0f.
_ENCRYPTION_IV = bytes(range(16))
_AUTH_FAILED = "envelope failed authentication"


@dataclass(frozen=True)
class Envelope:
    """A parsed envelope: `payload` is the base64-decoded field (ciphertext when `encrypted`)."""

    nonce: int
    payload: bytes
    mac: str
    encrypted: bool = False


@dataclass(frozen=True)
class OpenedEnvelope:
    """An authenticated envelope: `document` holds the exact inner bytes the MAC covered."""

    nonce: int
    document: bytes
    encrypted: bool


def _check_psk(psk: bytes) -> None:
    if len(psk) != PSK_SIZE:
        raise ValueError(f"a PSK is {PSK_SIZE} raw bytes")


def compute_mac(psk: bytes, nonce: int, document: bytes) -> str:
    """HMAC-SHA256(psk, nonce u32 BE || document) as lowercase hex.

    A PSK that is not 32 bytes is a configuration mistake (ValueError), not bad input.
    """
    _check_psk(psk)
    if not 0 <= nonce <= UINT32_MAX:
        raise EnvelopeError("nonce must fit in 32 unsigned bits", nonce)
    return hmac.new(psk, struct.pack(">I", nonce) + document, hashlib.sha256).hexdigest()


def _cipher(psk: bytes) -> Cipher[modes.CBC]:
    return Cipher(algorithms.AES(psk[:16]), modes.CBC(_ENCRYPTION_IV))


def _encrypt(psk: bytes, document: bytes) -> bytes:
    padder = padding.PKCS7(128).padder()
    encryptor = _cipher(psk).encryptor()
    return encryptor.update(padder.update(document) + padder.finalize()) + encryptor.finalize()


def _decrypt(psk: bytes, ciphertext: bytes) -> bytes | None:
    """Decrypt §4.7 mode, or None: the caller reports it exactly like a wrong MAC (no padding oracle)."""
    if not ciphertext or len(ciphertext) % 16:
        return None
    decryptor = _cipher(psk).decryptor()
    padded = decryptor.update(ciphertext) + decryptor.finalize()
    unpadder = padding.PKCS7(128).unpadder()
    try:
        return unpadder.update(padded) + unpadder.finalize()
    except ValueError:
        return None


def build_envelope(psk: bytes, nonce: int, document: bytes, *, encrypted: bool = False) -> bytes:
    """The envelope body byte for byte as the firmware emits it (`encrypted` is server-side only)."""
    mac = compute_mac(psk, nonce, document)
    payload = _encrypt(psk, document) if encrypted else document
    return dumps(
        {
            "nonce": nonce,
            "payload": base64.b64encode(payload).decode("ascii"),
            "mac": mac,
            "encrypted": encrypted,
        }
    )


def parse_envelope(body: bytes | str) -> Envelope:
    """Parse an envelope body; EnvelopeError for anything malformed.

    Extra fields (e.g. a `device_id`) are ignored, `encrypted` defaults to false. The nonce must be
    a JSON integer in 0..2^32-1 since it is packed into 4 bytes for the MAC.
    """
    fields = load_object(body, EnvelopeError, "envelope")
    for key in ("nonce", "payload", "mac"):
        if key not in fields:
            raise EnvelopeError("envelope lacks a required field", key)
    nonce = fields.data["nonce"]
    if not is_integer(nonce) or not 0 <= nonce <= UINT32_MAX:
        raise EnvelopeError("envelope nonce must be an integer in 0..4294967295", nonce)
    encoded = fields.text("payload")
    mac = fields.text("mac")
    encrypted = fields.boolean("encrypted") if "encrypted" in fields else False
    try:
        payload = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise EnvelopeError("envelope payload is not standard base64", encoded) from None
    return Envelope(nonce=nonce, payload=payload, mac=mac, encrypted=encrypted)


def verify_envelope(envelope: Envelope, psk: bytes) -> OpenedEnvelope:
    """Authenticate an envelope with `psk`; AuthenticationError unless the MAC matches.

    The received MAC is compared, in constant time, with the lowercase hex the firmware produces, so
    an uppercase MAC fails as it does on the reference server.
    """
    _check_psk(psk)
    document = _decrypt(psk, envelope.payload) if envelope.encrypted else envelope.payload
    if document is None:
        raise AuthenticationError(_AUTH_FAILED, envelope.nonce)
    expected = compute_mac(psk, envelope.nonce, document).encode("ascii")
    if not hmac.compare_digest(expected, envelope.mac.encode("utf-8")):
        raise AuthenticationError(_AUTH_FAILED, envelope.nonce)
    return OpenedEnvelope(nonce=envelope.nonce, document=document, encrypted=envelope.encrypted)


def open_envelope(body: bytes | str, psk: bytes) -> OpenedEnvelope:
    """Parse and authenticate in one step (EnvelopeError, then AuthenticationError)."""
    return verify_envelope(parse_envelope(body), psk)


def check_nonce(nonce: int, last_accepted: int | None) -> None:
    """The anti-replay rule: a nonce must be greater than the last one accepted for its sender.

    Raises ReplayError otherwise; the message names neither the stored value nor the gap.
    """
    if last_accepted is not None and nonce <= last_accepted:
        raise ReplayError("nonce is not greater than the last accepted one", nonce)
