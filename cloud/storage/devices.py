"""Devices (key registry, last contact, reported firmware, state) and operator tokens."""

from __future__ import annotations

import string

from cloud.storage.backend import Row, StorePart, Transaction
from cloud.storage.records import Device, OperatorToken
from protocol.errors import DocumentError

_DEVICE = "device_id, key_hex, state, firmware_version, created_at, first_seen, last_seen"
_TOKEN = "name, token_sha256, created_at"


async def ensure_device(tx: Transaction, device_id: str, now: float, *, lock: bool = False) -> None:
    """Create the device row if missing; with `lock`, hold it to serialise per-device operations."""
    await tx.execute(
        "INSERT INTO devices (device_id, created_at) VALUES (?, ?) ON CONFLICT (device_id) DO NOTHING",
        device_id, now,
    )
    if lock:
        await tx.fetchval("SELECT device_id FROM devices WHERE device_id = ?" + tx.dialect.row_lock, device_id)


def _device(row: Row) -> Device:
    return Device(row["device_id"], row["key_hex"], row["state"], row["firmware_version"], row["created_at"],
                  row["first_seen"], row["last_seen"])


def _token(row: Row) -> OperatorToken:
    return OperatorToken(row["name"], row["token_sha256"], row["created_at"])


def _checked_key(key_hex: str) -> str:
    key = key_hex.strip().lower()
    if len(key) != 64 or not set(key) <= set(string.hexdigits.lower()):
        # The value reported is the length only: an error must never echo a key.
        raise DocumentError("a device key is 32 bytes written as 64 hex digits", len(key))
    return key


class DeviceStore(StorePart):
    async def register_device(self, device_id: str, key_hex: str | None = None) -> Device:
        """Add a device or replace its key (`key_hex=None` keeps the current key)."""
        key = None if key_hex is None else _checked_key(key_hex)
        device = await self._one(
            _device,
            "INSERT INTO devices (device_id, key_hex, created_at) VALUES (?, ?, ?) "
            "ON CONFLICT (device_id) DO UPDATE SET key_hex = COALESCE(excluded.key_hex, devices.key_hex) "
            f"RETURNING {_DEVICE}",
            device_id, key, self._clock(), write=True,
        )
        assert device is not None
        return device

    async def touch_device(self, device_id: str, *, firmware_version: str | None = None) -> Device:
        """Record an authentic contact now, and the firmware version the device reported (if any)."""
        now = self._clock()
        device = await self._one(
            _device,
            "INSERT INTO devices (device_id, firmware_version, created_at, first_seen, last_seen) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT (device_id) DO UPDATE SET "
            "firmware_version = COALESCE(excluded.firmware_version, devices.firmware_version), "
            "first_seen = COALESCE(devices.first_seen, excluded.first_seen), last_seen = excluded.last_seen "
            f"RETURNING {_DEVICE}",
            device_id, firmware_version, now, now, now, write=True,
        )
        assert device is not None
        return device

    async def set_device_state(self, device_id: str, state: str) -> Device | None:
        return await self._one(
            _device, f"UPDATE devices SET state = ? WHERE device_id = ? RETURNING {_DEVICE}", state, device_id,
            write=True,
        )

    async def get_device(self, device_id: str) -> Device | None:
        return await self._one(_device, f"SELECT {_DEVICE} FROM devices WHERE device_id = ?", device_id)

    async def list_devices(self) -> list[Device]:
        return await self._all(_device, f"SELECT {_DEVICE} FROM devices ORDER BY device_id")

    # --- operator tokens (only their SHA-256 is stored) ---

    async def add_operator_token(self, name: str, token_sha256: str) -> OperatorToken:
        """Store a token's hash under a name (replacing that name's previous token)."""
        token = await self._one(
            _token,
            "INSERT INTO operator_tokens (name, token_sha256, created_at) VALUES (?, ?, ?) "
            "ON CONFLICT (name) DO UPDATE SET token_sha256 = excluded.token_sha256, "
            f"created_at = excluded.created_at RETURNING {_TOKEN}",
            name, token_sha256.lower(), self._clock(), write=True,
        )
        assert token is not None
        return token

    async def find_operator_token(self, token_sha256: str) -> OperatorToken | None:
        return await self._one(
            _token, f"SELECT {_TOKEN} FROM operator_tokens WHERE token_sha256 = ?", token_sha256.lower()
        )

    async def list_operator_tokens(self) -> list[OperatorToken]:
        return await self._all(_token, f"SELECT {_TOKEN} FROM operator_tokens ORDER BY name")

    async def revoke_operator_token(self, name: str) -> bool:
        return await self._change("DELETE FROM operator_tokens WHERE name = ?", name) > 0
