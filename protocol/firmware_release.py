"""Firmware releases end to end: preparing one (server side) and downloading one (device side).

`prepare_release` does what the reference tool does (§7.1): SHA-256 of the plaintext, RSA signature of
that digest (PKCS#1 v1.5 by default, what firmware 1.0.4 verifies), PKCS#7 + AES-256-CBC with a random
IV, 1024-byte chunks, and the manifest; optionally with our manifest extensions and signature.

`FirmwareDownload` is the device's procedure (§7.3 steps 2-7) as a pure state machine: chunks strictly
in order, each a multiple of 16 bytes and at most 1040, decrypted as one CBC stream; chunk 0 must start
with the ESP32 image magic 0xE9; padding is removed on the chunk the manifest calls last (kept if
invalid, as 1.0.4 does); at most `original_size` bytes may be written and exactly that many must be;
then SHA-256 of the written image and the RSA check. `stage` names the step in progress, so a failure
says where it happened. Switches turn on what 1.0.4 lacks (strict padding, the manifest hash check).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import rsa

from protocol.errors import FirmwareError
from protocol.firmware_crypto import (
    BLOCK_SIZE,
    SignatureScheme,
    StreamingDecryptor,
    encrypt_image,
    sign_digest,
    verify_digest,
)
from protocol.ota_messages import (
    FIRMWARE_CHUNK_LIMIT,
    REFERENCE_CHUNK_SIZE,
    Manifest,
    UpdateOffer,
    chunk_of,
    sign_manifest,
    total_chunks,
)

ESP_IMAGE_MAGIC = 0xE9


@dataclass(frozen=True)
class Release:
    manifest: Manifest
    encrypted: bytes

    def chunk(self, index: int) -> bytes:
        return chunk_of(self.encrypted, index, self.manifest.chunk_size)


def prepare_release(
    image: bytes,
    version: str,
    aes_key: bytes,
    signing_key: rsa.RSAPrivateKey,
    *,
    timestamp: str,
    iv: bytes | None = None,
    chunk_size: int = REFERENCE_CHUNK_SIZE,
    scheme: SignatureScheme = SignatureScheme.PKCS1V15,
    device_type: str | None = None,
    security_counter: int | None = None,
    manifest_key: rsa.RSAPrivateKey | None = None,
) -> Release:
    """Encrypt and sign `image`. `timestamp` is the caller's wall-clock text (ISO 8601).

    Setting `device_type` or `security_counter` adds our extensions (and `encrypted_sha256`);
    `manifest_key` signs the manifest.
    """
    if not 0 < chunk_size <= FIRMWARE_CHUNK_LIMIT or chunk_size % BLOCK_SIZE:
        raise FirmwareError("chunk_size must be a multiple of 16 up to 1040", chunk_size)
    digest = hashlib.sha256(image).digest()
    signature = sign_digest(signing_key, digest, scheme)
    iv, encrypted = encrypt_image(image, aes_key, iv)
    extended = device_type is not None or security_counter is not None
    manifest = Manifest(
        version=version,
        original_size=len(image),
        encrypted_size=len(encrypted),
        sha256_hash=digest.hex(),
        signature=base64.b64encode(signature).decode("ascii"),
        iv=base64.b64encode(iv).decode("ascii"),
        chunk_size=chunk_size,
        total_chunks=total_chunks(len(encrypted), chunk_size),
        timestamp=timestamp,
        device_type=device_type,
        security_counter=security_counter,
        encrypted_sha256=hashlib.sha256(encrypted).hexdigest() if extended else None,
    )
    if manifest_key is not None:
        manifest = sign_manifest(manifest, manifest_key)
    return Release(manifest=manifest, encrypted=encrypted)


class FirmwareDownload:
    """One download attempt on the device; raise FirmwareError at the first failure (see `stage`)."""

    def __init__(
        self,
        offer: UpdateOffer,
        aes_key: bytes,
        public_key: rsa.RSAPublicKey,
        *,
        scheme: SignatureScheme = SignatureScheme.PKCS1V15,
        partition_size: int | None = None,
        strict_padding: bool = False,
        check_manifest_hash: bool = False,
    ) -> None:
        self.offer = offer
        self.stage = "prepare"
        self._public_key = public_key
        self._scheme = scheme
        self._check_manifest_hash = check_manifest_hash
        if partition_size is not None and offer.encrypted_size > partition_size:
            raise FirmwareError("image does not fit the OTA partition", offer.encrypted_size)
        self._decryptor = StreamingDecryptor(aes_key, offer.iv, strict_padding=strict_padding)
        self.next_chunk = 0
        self.written = 0
        self.sha256: str | None = None

    def _write(self, plaintext: bytes) -> None:
        self.stage = "write"
        if self.written + len(plaintext) > self.offer.original_size:
            raise FirmwareError("more data than original_size", self.written + len(plaintext))
        self.written += len(plaintext)

    def accept_chunk(self, index: int, data: bytes) -> None:
        """Decrypt and 'flash' chunk `index`; the last one (per the offer) also strips the padding."""
        self.stage = "chunk"
        if index != self.next_chunk or index >= self.offer.total_chunks:
            raise FirmwareError("chunk out of sequence", index)
        if not data or len(data) % BLOCK_SIZE or len(data) > FIRMWARE_CHUNK_LIMIT:
            raise FirmwareError("chunk must be 16..1040 bytes in whole AES blocks", len(data))
        self.stage = "decrypt"
        plaintext = self._decryptor.update(data)
        if index == 0:
            self.stage = "magic_byte"
            first = self._decryptor.first_block
            if first is None or first[0] != ESP_IMAGE_MAGIC:
                raise FirmwareError(
                    "chunk 0 does not start with the ESP32 image magic", first[:1] if first else b""
                )
        self._write(plaintext)
        if index == self.offer.total_chunks - 1:
            self.stage = "padding"
            self._write(self._decryptor.finish())
        self.next_chunk = index + 1

    def finish(self) -> str:
        """Close the flash update and verify; returns the written image's SHA-256 (hex)."""
        self.stage = "size"
        if self.next_chunk != self.offer.total_chunks:
            raise FirmwareError("download incomplete", self.next_chunk)
        if self.written != self.offer.original_size:
            raise FirmwareError("written size differs from original_size", self.written)
        digest = self._decryptor.digest()
        self.sha256 = digest.hex()
        if self._check_manifest_hash:
            self.stage = "manifest_hash"
            if self.sha256 != self.offer.sha256_hash:
                raise FirmwareError("image hash differs from the manifest", self.offer.sha256_hash)
        self.stage = "rsa_signature"
        verify_digest(self._public_key, digest, self.offer.signature, self._scheme)
        self.stage = "verified"
        return self.sha256


@dataclass(frozen=True)
class DownloadVerdict:
    ok: bool
    stage: str  # "verified", or the stage that failed
    reason: str = ""
    sha256: str | None = None  # of the written image, once it was complete
    chunk: int | None = None  # the chunk being processed when it failed


def run_download(download: FirmwareDownload, chunks: Iterable[bytes]) -> DownloadVerdict:
    """Feed `chunks` (in order) to `download` and verify; the verdict instead of an exception."""
    index: int | None = None
    try:
        for index, data in enumerate(chunks):
            if index >= download.offer.total_chunks:
                break  # the device never asks beyond total_chunks
            download.accept_chunk(index, data)
        index = None
        sha256 = download.finish()
    except FirmwareError as exc:
        return DownloadVerdict(False, download.stage, str(exc), download.sha256, index)
    return DownloadVerdict(True, download.stage, sha256=sha256)
