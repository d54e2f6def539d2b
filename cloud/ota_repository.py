"""The firmware repository: encrypted images and manifests on disk, what describes them in the database.

Preparing a release (firmware-protocol.md §7.1, plus our extensions) encrypts the image with the
fleet's AES-256 key, signs its SHA-256 with the server's RSA key (PKCS#1 v1.5, what firmware 1.0.4
verifies, or PSS), and writes `firmware_<version>_encrypted.bin` and `firmware_<version>_manifest.json`.
The manifest also carries the device type, a security counter and the hash of the encrypted blob,
and is itself signed (RSA-PSS) with the same key the devices already hold.

Publishing adds the metadata to the database. Both the version and the security counter only go up
per device type, so a release can never be published "below" another one (anti-rollback starts at
the repository). The keys live in the keys directory under the names the reference tool uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from cloud.storage import Firmware, Storage
from protocol.errors import DocumentError, FirmwareError
from protocol.firmware_crypto import (
    AES_KEY_SIZE,
    SignatureScheme,
    generate_aes_key,
    generate_rsa_key,
    load_private_key_pem,
    private_key_to_pem,
    public_key_to_pem,
)
from protocol.firmware_release import ESP_IMAGE_MAGIC, Release, prepare_release
from protocol.ota_messages import REFERENCE_CHUNK_SIZE, Manifest, parse_manifest, parse_version

# The stock board's device type; a release names the device type it is built for.
DEFAULT_DEVICE_TYPE = "ecowatt-esp32"
PRIVATE_KEY_FILE = "server_private_key.pem"
PUBLIC_KEY_FILE = "server_public_key.pem"  # what the firmware compiles in as SERVER_PUBLIC_KEY
AES_KEY_FILE = "aes_firmware_key.bin"  # what the firmware compiles in as AES_FIRMWARE_KEY
SIGNATURE_SCHEMES = {"pkcs1v15": SignatureScheme.PKCS1V15, "pss": SignatureScheme.PSS}
# Releases kept in memory (a chunk request must not read the disk each time).
CACHED_RELEASES = 4
# Images arrive in parts (no request body may exceed the service's limit); the largest ESP32 flash.
MAX_IMAGE_BYTES = 16 * 1024 * 1024
MAX_STAGED_UPLOADS = 8  # unfinished uploads kept; starting another drops the oldest
UPLOADS_DIR = "uploads"
_UPLOAD_ID = re.compile(r"[0-9a-f]{32}")


def version_key(version: str) -> tuple[int, ...]:
    """A dotted version as a comparable tuple ("1.0" == "1.0.0"); DocumentError when not a version."""
    parts = list(parse_version(version))
    while len(parts) > 1 and parts[-1] == 0:
        parts.pop()
    return tuple(parts)


def release_paths(firmware_dir: Path, version: str) -> tuple[Path, Path]:
    """(encrypted blob, manifest) of a version, named as the reference tool names them."""
    parse_version(version)  # dotted integers only: never a path of someone's choosing
    return (firmware_dir / f"firmware_{version}_encrypted.bin", firmware_dir / f"firmware_{version}_manifest.json")


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(descriptor, "wb") as file:
        file.write(data)


def _write_atomically(path: Path, data: bytes) -> None:
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as file:
        file.write(data)
        file.flush()
        os.fsync(file.fileno())
    os.replace(partial, path)


@dataclass(frozen=True)
class ReleaseKeys:
    """The server's release keys: the RSA key that signs images and manifests, the fleet AES key."""

    signing_key: rsa.RSAPrivateKey
    aes_key: bytes

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> ReleaseKeys:
        """Read the keys; FirmwareError saying which file is missing or wrong."""
        folder = Path(directory)
        try:
            pem = (folder / PRIVATE_KEY_FILE).read_bytes()
            aes_key = (folder / AES_KEY_FILE).read_bytes()
        except OSError as error:
            raise FirmwareError("release key missing (run `ecowatt firmware prepare` once to create them)",
                                error.filename) from None
        if len(aes_key) != AES_KEY_SIZE:
            raise FirmwareError(f"{AES_KEY_FILE} must hold 32 bytes", len(aes_key))
        return cls(load_private_key_pem(pem), aes_key)

    @classmethod
    def load_or_create(cls, directory: str | os.PathLike[str]) -> ReleaseKeys:
        """Read the keys, first making any that do not exist (private files, mode 0600)."""
        folder = Path(directory)
        private, aes = folder / PRIVATE_KEY_FILE, folder / AES_KEY_FILE
        if not private.exists():
            key = generate_rsa_key()
            with contextlib.suppress(FileExistsError):  # another process made it first: use theirs
                _write_private(private, private_key_to_pem(key))
        if not aes.exists():
            with contextlib.suppress(FileExistsError):
                _write_private(aes, generate_aes_key())
        keys = cls.load(folder)
        public = folder / PUBLIC_KEY_FILE
        if not public.exists():
            public.write_bytes(public_key_to_pem(keys.signing_key))
        return keys


def utc_timestamp(wall_clock: Callable[[], float]) -> str:
    return datetime.fromtimestamp(wall_clock(), UTC).isoformat()


def prepare_files(
    image: bytes,
    version: str,
    keys: ReleaseKeys,
    firmware_dir: str | os.PathLike[str],
    *,
    timestamp: str,
    device_type: str = DEFAULT_DEVICE_TYPE,
    security_counter: int = 1,
    scheme: SignatureScheme = SignatureScheme.PKCS1V15,
    chunk_size: int = REFERENCE_CHUNK_SIZE,
    suffix: str = "",
) -> tuple[Release, Path, Path]:
    """Encrypt and sign `image`, then write the blob and the manifest; (release, blob path, manifest path).

    `suffix` is added to both file names (publishing writes under a temporary name first).
    """
    if not image or image[0] != ESP_IMAGE_MAGIC:
        raise FirmwareError("not an ESP32 app image (first byte must be 0xE9)", image[:1])
    if not device_type or not device_type.isprintable():
        raise DocumentError("device_type must be printable text", device_type)
    release = prepare_release(
        image, version, keys.aes_key, keys.signing_key, timestamp=timestamp, chunk_size=chunk_size,
        scheme=scheme, device_type=device_type, security_counter=security_counter, manifest_key=keys.signing_key,
    )
    folder = Path(firmware_dir)
    folder.mkdir(parents=True, exist_ok=True)
    blob, manifest = (path.with_name(path.name + suffix) for path in release_paths(folder, version))
    _write_atomically(blob, release.encrypted)
    _write_atomically(manifest, release.manifest.to_json())
    return release, blob, manifest


@dataclass(frozen=True)
class StoredRelease:
    """A published release, read back and checked against the database."""

    firmware: Firmware
    manifest: Manifest
    encrypted: bytes


class FirmwareRepository:
    """Publishes releases and serves them; the database says what exists, the files hold the bytes."""

    def __init__(self, storage: Storage, firmware_dir: str | os.PathLike[str], keys_dir: str | os.PathLike[str],
                 *, wall_clock: Callable[[], float]) -> None:
        self.storage = storage
        self.firmware_dir = Path(firmware_dir)
        self.keys_dir = Path(keys_dir)
        self._wall_clock = wall_clock
        self._publishing = asyncio.Lock()
        self._cache: dict[str, StoredRelease] = {}

    async def publish(self, image: bytes, version: str, *, device_type: str = DEFAULT_DEVICE_TYPE,
                      security_counter: int | None = None, scheme: SignatureScheme = SignatureScheme.PKCS1V15,
                      chunk_size: int = REFERENCE_CHUNK_SIZE) -> Firmware:
        """Prepare and publish a release; DocumentError/FirmwareError when it would not be above the others.

        Without `security_counter` the next one for the device type is used.
        """
        wanted = version_key(version)
        async with self._publishing:
            everything = await self.storage.list_firmware()
            if any(f.version == version for f in everything):
                raise DocumentError("firmware version is already published", version)
            published = [f for f in everything if f.device_type == device_type]
            newest = max(published, key=lambda f: version_key(f.version), default=None)
            if newest is not None and wanted <= version_key(newest.version):
                raise DocumentError(f"version must be above the newest release {newest.version}", version)
            current = max((f.security_counter for f in published), default=0)
            counter = current + 1 if security_counter is None else security_counter
            if counter <= current:
                raise FirmwareError(f"security_counter must be above {current}", counter)
            keys = await asyncio.to_thread(ReleaseKeys.load_or_create, self.keys_dir)
            suffix = f".{os.getpid()}.new"
            release, blob, manifest_file = await asyncio.to_thread(
                prepare_files, image, version, keys, self.firmware_dir, timestamp=utc_timestamp(self._wall_clock),
                device_type=device_type, security_counter=counter, scheme=scheme, chunk_size=chunk_size,
                suffix=suffix,
            )
            final_blob, final_manifest = release_paths(self.firmware_dir, version)
            m = release.manifest
            record = Firmware(version, device_type, str(final_blob), m.original_size, m.encrypted_size,
                              m.sha256_hash, hashlib.sha256(release.encrypted).hexdigest(), counter, m.to_dict())
            stored = await self.storage.add_firmware(record)
            if stored is None:  # another cloud process published it meanwhile
                for path in (blob, manifest_file):
                    path.unlink(missing_ok=True)
                raise DocumentError("firmware version is already published", version)
            os.replace(blob, final_blob)
            os.replace(manifest_file, final_manifest)
            return stored

    # --- images uploaded in parts ---

    def _staged(self, upload_id: str) -> Path:
        if not isinstance(upload_id, str) or not _UPLOAD_ID.fullmatch(upload_id):
            raise DocumentError("upload_id must be 32 lowercase hex digits", upload_id)
        path = self.firmware_dir / UPLOADS_DIR / upload_id
        if not path.exists():
            raise DocumentError("no such upload (finished, dropped or never started)", upload_id)
        return path

    def start_upload(self) -> str:
        """A new, empty upload; its id names it in `append_upload` and `publish_upload`."""
        folder = self.firmware_dir / UPLOADS_DIR
        folder.mkdir(parents=True, exist_ok=True)
        staged = sorted(folder.iterdir(), key=lambda p: p.stat().st_mtime)
        for old in staged[: max(0, len(staged) - MAX_STAGED_UPLOADS + 1)]:
            old.unlink(missing_ok=True)
        upload_id = uuid.uuid4().hex
        (folder / upload_id).touch()
        return upload_id

    def append_upload(self, upload_id: str, offset: int, data: bytes) -> int:
        """Write `data` at `offset` (at most the current size: a part sent again replaces itself and
        what followed it); the upload's new size."""
        path = self._staged(upload_id)
        size = path.stat().st_size
        if not 0 <= offset <= size:
            raise DocumentError(f"offset must be within 0..{size} (the bytes received so far)", offset)
        if offset + len(data) > MAX_IMAGE_BYTES:
            raise DocumentError(f"an image is at most {MAX_IMAGE_BYTES} bytes", offset + len(data))
        with open(path, "r+b") as file:
            file.seek(offset)
            file.write(data)
            file.truncate(offset + len(data))
        return offset + len(data)

    async def publish_upload(self, upload_id: str, sha256: str, version: str, **options: Any) -> Firmware:
        """Publish an uploaded image (`options` as for `publish`) once its SHA-256 matches; the upload is
        then gone."""
        path = self._staged(upload_id)
        image = await asyncio.to_thread(path.read_bytes)
        if hashlib.sha256(image).hexdigest() != sha256.lower():
            raise DocumentError("the uploaded bytes do not have the SHA-256 given", len(image))
        firmware = await self.publish(image, version, **options)
        path.unlink(missing_ok=True)
        return firmware

    async def release(self, version: str) -> StoredRelease:
        """A published release with its bytes; DocumentError if unknown, FirmwareError if the file is bad."""
        cached = self._cache.get(version)
        if cached is not None:
            return cached
        firmware = await self.storage.get_firmware(version)
        if firmware is None:
            raise DocumentError(f"Firmware version {version} not found", version)
        stored = await asyncio.to_thread(self._read, firmware)
        if len(self._cache) >= CACHED_RELEASES:
            self._cache.pop(next(iter(self._cache)))
        self._cache[version] = stored
        return stored

    @staticmethod
    def _read(firmware: Firmware) -> StoredRelease:
        try:
            encrypted = Path(firmware.path).read_bytes()
        except OSError:
            raise FirmwareError("the release's image file is missing", firmware.version) from None
        # The file must be the one that was published: a swapped or damaged blob is never served.
        if hashlib.sha256(encrypted).hexdigest() != firmware.encrypted_sha256:
            raise FirmwareError("the release's image file does not match its published hash", firmware.version)
        manifest = parse_manifest(json.dumps(firmware.manifest))
        return StoredRelease(firmware, manifest, encrypted)
