"""Who may talk to the cloud: per-device HMAC keys and operator bearer tokens.

Keys live in the keys directory (git-ignored), written by `ecowatt keys ...`:

    device_keys.json      {"<device_id>": "<64 hex>", ...}      per-device 32-byte HMAC keys
    operator_tokens.json  {"<name>": "<sha256 hex of token>"}    only hashes of bearer tokens
    operator.token        the newest token in clear (0600), for the operator CLI on this machine

The firmware's compiled-in fleet key is registered for its device id (`FIRMWARE_DEVICE_ID`) unless the
keys directory or the database gives that device another key, so a stock 1.0.4 board works. The
service also honours keys and tokens stored in the database (`Storage.register_device`,
`add_operator_token`), so several cloud processes can share one registry.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud.storage import Storage
from protocol.envelope import PSK_SIZE, REFERENCE_PSK
from protocol.errors import DocumentError

FIRMWARE_DEVICE_ID = "ESP32_EcoWatt_Smart"
# The fleet key compiled into firmware 1.0.4 (firmware-protocol.md §4.4). Public: anyone holding the
# firmware can sign as this device; give real boards keys of their own.
FIRMWARE_FLEET_KEY = REFERENCE_PSK
DEVICE_KEYS_FILE = "device_keys.json"
OPERATOR_TOKENS_FILE = "operator_tokens.json"
OPERATOR_TOKEN_FILE = "operator.token"
# How long a read of the keys directory is trusted before its files are checked for changes.
RELOAD_SECONDS = 1.0
MAX_DEVICE_ID = 64


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def check_device_id(device_id: str) -> str:
    if not device_id or len(device_id) > MAX_DEVICE_ID or not device_id.isprintable() or "/" in device_id:
        raise DocumentError(f"a device id is 1..{MAX_DEVICE_ID} printable characters without '/'", device_id)
    return device_id


def parse_key_hex(text: str) -> bytes:
    key = text.strip().lower()
    try:
        raw = bytes.fromhex(key)
    except ValueError:
        raw = b""
    if len(raw) != PSK_SIZE:
        # Only the length is reported: an error never echoes key material.
        raise DocumentError(f"a device key is {PSK_SIZE} bytes written as {2 * PSK_SIZE} hex digits", len(key))
    return raw


def key_fingerprint(key: bytes) -> str:
    """A short, non-secret name for a key (first 8 hex digits of its SHA-256)."""
    return hashlib.sha256(key).hexdigest()[:8]


# --- the keys directory --------------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text("utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as error:
        raise DocumentError(f"{path} is not a readable JSON object", str(error)) from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise DocumentError(f"{path} must map names to strings", type(data).__name__)
    return data


def _write_private(path: Path, text: str) -> None:
    """Replace `path` atomically with owner-only permissions."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass(frozen=True)
class KeyFiles:
    """The keys directory, read and written whole (small files, rare changes)."""

    directory: Path

    @property
    def device_keys_path(self) -> Path:
        return self.directory / DEVICE_KEYS_FILE

    @property
    def tokens_path(self) -> Path:
        return self.directory / OPERATOR_TOKENS_FILE

    @property
    def token_path(self) -> Path:
        return self.directory / OPERATOR_TOKEN_FILE

    def device_keys(self) -> dict[str, bytes]:
        return {device: parse_key_hex(key) for device, key in _read_json(self.device_keys_path).items()}

    def operator_token_hashes(self) -> dict[str, str]:
        return {name: digest.lower() for name, digest in _read_json(self.tokens_path).items()}

    def add_device(self, device_id: str, key: bytes | None = None) -> bytes:
        check_device_id(device_id)
        key = secrets.token_bytes(PSK_SIZE) if key is None else key
        if len(key) != PSK_SIZE:
            raise DocumentError(f"a device key is {PSK_SIZE} bytes", len(key))
        keys = _read_json(self.device_keys_path)
        keys[device_id] = key.hex()
        _write_private(self.device_keys_path, json.dumps(keys, indent=2, sort_keys=True) + "\n")
        return key

    def generate_operator_token(self, name: str = "operator") -> str:
        # Prefixed: a bare urlsafe token starts with "-" one time in 32, and `--token -x...` then reads
        # as an option on any command line.
        token = "ewt_" + secrets.token_urlsafe(32)
        hashes = _read_json(self.tokens_path)
        hashes[name] = token_sha256(token)
        _write_private(self.tokens_path, json.dumps(hashes, indent=2, sort_keys=True) + "\n")
        _write_private(self.token_path, token + "\n")
        return token

    def read_operator_token(self) -> str | None:
        """The clear token `keys generate` left for this machine's operator CLI, if any."""
        try:
            token = self.token_path.read_text("utf-8").strip()
        except OSError:
            return None
        return token or None

    def stamp(self) -> tuple[float | None, ...]:
        def mtime(path: Path) -> float | None:
            try:
                return path.stat().st_mtime_ns
            except OSError:
                return None

        return mtime(self.device_keys_path), mtime(self.tokens_path)


# --- the registry the service consults -----------------------------------------------------------


class KeyRegistry:
    """Device keys and operator tokens, from the keys directory, then the database, then the fleet key.

    `clock` is a monotonic clock (the loop's); it paces re-reading the directory.
    """

    def __init__(self, keys_dir: Path | str | None, storage: Storage | None = None,
                 clock: Callable[[], float] | None = None) -> None:
        self.files = KeyFiles(Path(keys_dir)) if keys_dir is not None else None
        self._storage = storage
        self._clock = clock
        self._checked_at: float | None = None
        self._stamp: tuple[float | None, ...] | None = None
        self._device_keys: dict[str, bytes] = {}
        self._token_hashes: dict[str, str] = {}

    def _refresh(self, *, force: bool = False) -> None:
        """Re-read the directory if its files changed (checked at most once a second unless `force`)."""
        if self.files is None:
            return
        now = self._clock() if self._clock is not None else None
        recent = now is not None and self._checked_at is not None and now - self._checked_at < RELOAD_SECONDS
        if recent and not force:
            return
        self._checked_at = now
        stamp = self.files.stamp()
        if stamp != self._stamp:
            self._device_keys = self.files.device_keys()
            self._token_hashes = self.files.operator_token_hashes()
            self._stamp = stamp

    async def key_for(self, device_id: str) -> bytes | None:
        """The HMAC key of a device, or None for a device nobody registered."""
        self._refresh()
        key = self._device_keys.get(device_id)
        if key is None:  # maybe just added with `ecowatt keys add-device`: look again (a stat, cheap)
            self._refresh(force=True)
            key = self._device_keys.get(device_id)
        if key is not None:
            return key
        if self._storage is not None:
            device = await self._storage.get_device(device_id)
            if device is not None and device.key_hex:
                return bytes.fromhex(device.key_hex)
        return FIRMWARE_FLEET_KEY if device_id == FIRMWARE_DEVICE_ID else None

    async def is_operator_token(self, token: str) -> bool:
        if not token:
            return False
        digest = token_sha256(token)
        for force in (False, True):  # a token just made by `ecowatt keys generate` works at once
            self._refresh(force=force)
            # Compare with every stored hash (no early exit) so timing does not tell which was close.
            matched = False
            for stored in self._token_hashes.values():
                matched |= hmac.compare_digest(stored, digest)
            if matched:
                return True
        if self._storage is not None:
            return await self._storage.find_operator_token(digest) is not None
        return False

    def file_device_keys(self) -> dict[str, bytes]:
        self._refresh(force=True)
        return dict(self._device_keys)

    async def sync_to_storage(self) -> int:
        """List the directory's devices in the database before their first contact (keys stay in files)."""
        if self._storage is None:
            return 0
        keys = self.file_device_keys()
        for device_id in keys:
            await self._storage.register_device(device_id)
        return len(keys)
