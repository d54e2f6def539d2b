"""Desired configuration per device, as numbered versions with delivery and acknowledgement.

Setting a config adds version n+1 as `pending` (an older pending one becomes `superseded`); the next
`/changes` poll takes it (`delivered`, once); an acknowledgement records the outcome and reasons.
The versions are the history.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cloud.storage.backend import Row, StorePart, Transaction, from_json, to_json
from cloud.storage.devices import ensure_device
from cloud.storage.records import ConfigStatus, ConfigVersion

_CONFIG = "device_id, version, config, status, created_at, delivered_at, ack_outcome, ack_details, acked_at"


def _config(row: Row) -> ConfigVersion:
    return ConfigVersion(row["device_id"], row["version"], from_json(row["config"]), ConfigStatus(row["status"]),
                         row["created_at"], row["delivered_at"], row["ack_outcome"], from_json(row["ack_details"]),
                         row["acked_at"])


class ConfigStore(StorePart):
    async def set_config(self, device_id: str, config: dict[str, Any]) -> ConfigVersion:
        """Add the next desired version (validation is the caller's)."""
        return await self.revise_config(device_id, lambda _latest: config)

    async def revise_config(self, device_id: str,
                            revise: Callable[[ConfigVersion | None], dict[str, Any]]) -> ConfigVersion:
        """Like `set_config`, but the new version is computed from the newest one in the same transaction.

        `revise` gets the device's newest version (None at first) and returns the new config; it must be
        pure (no I/O, no awaits: it may run again if a PostgreSQL transaction is retried). Two operators
        revising at once thus never lose each other's change.
        """

        async def work(tx: Transaction) -> ConfigVersion:
            now = self._clock()
            await ensure_device(tx, device_id, now, lock=True)
            latest = await tx.fetchrow(
                f"SELECT {_CONFIG} FROM config_versions WHERE device_id = ? ORDER BY version DESC LIMIT 1", device_id,
            )
            config = revise(None if latest is None else _config(latest))
            await tx.execute(
                "UPDATE config_versions SET status = 'superseded' WHERE device_id = ? AND status = 'pending'",
                device_id,
            )
            row = await tx.fetchrow(
                "INSERT INTO config_versions (device_id, version, config, status, created_at) "
                f"VALUES (?, ?, ?, 'pending', ?) RETURNING {_CONFIG}",
                device_id, 1 if latest is None else latest["version"] + 1, to_json(config), now,
            )
            assert row is not None
            return _config(row)

        return await self._backend.write(work)

    async def take_config_change(self, device_id: str) -> ConfigVersion | None:
        """The pending version, now marked delivered; None when nothing changed since the last delivery."""
        return await self._one(
            _config,
            "UPDATE config_versions SET status = 'delivered', delivered_at = ? "
            f"WHERE device_id = ? AND status = 'pending' RETURNING {_CONFIG}",
            self._clock(), device_id, write=True,
        )

    async def ack_config(self, device_id: str, outcome: str, details: dict[str, Any] | None = None, *,
                         version: int | None = None) -> ConfigVersion | None:
        """Record the device's answer for `version` (default: the newest delivered one); None if none."""

        async def work(tx: Transaction) -> ConfigVersion | None:
            target = version if version is not None else await tx.fetchval(
                "SELECT MAX(version) FROM config_versions WHERE device_id = ? AND status IN ('delivered', 'acknowledged')",
                device_id,
            )
            if target is None:
                return None
            row = await tx.fetchrow(
                "UPDATE config_versions SET status = 'acknowledged', ack_outcome = ?, ack_details = ?, acked_at = ? "
                f"WHERE device_id = ? AND version = ? AND status IN ('delivered', 'acknowledged') RETURNING {_CONFIG}",
                outcome, None if details is None else to_json(details), self._clock(), device_id, target,
            )
            return None if row is None else _config(row)

        return await self._backend.write(work)

    async def current_config(self, device_id: str) -> ConfigVersion | None:
        """The newest desired version, whatever its delivery state."""
        return await self._one(
            _config,
            f"SELECT {_CONFIG} FROM config_versions WHERE device_id = ? ORDER BY version DESC LIMIT 1", device_id,
        )

    async def config_history(self, device_id: str, *, limit: int = 100) -> list[ConfigVersion]:
        """Every version with its outcome, newest first."""
        return await self._all(
            _config,
            f"SELECT {_CONFIG} FROM config_versions WHERE device_id = ? ORDER BY version DESC LIMIT ?",
            device_id, limit,
        )
