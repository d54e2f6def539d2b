"""Operator commands with lease-based delivery.

A device gets its commands one at a time, oldest first. Delivering one starts a lease; if no result
arrives before the lease runs out the same command is delivered again on the next poll, at most
`max_deliveries` times in all, after which it is `timed_out`. While a command is leased, later ones
wait, so a device sees its commands in the order they were queued.
"""

from __future__ import annotations

import uuid
from typing import Any

from cloud.storage.backend import Row, StorePart, Transaction, from_json, to_json
from cloud.storage.devices import ensure_device
from cloud.storage.records import Command, CommandStatus

_COMMAND = ("command_id, device_id, type, params, status, delivery_count, lease_expires_at, result, created_at, "
            "delivered_at, completed_at")
FINAL = (CommandStatus.COMPLETED, CommandStatus.FAILED)


def _command(row: Row) -> Command:
    return Command(row["command_id"], row["device_id"], row["type"], from_json(row["params"]),
                   CommandStatus(row["status"]), row["delivery_count"], row["lease_expires_at"], row["result"],
                   row["created_at"], row["delivered_at"], row["completed_at"])


async def _time_out_exhausted(tx: Transaction, now: float, max_deliveries: int, device_id: str | None) -> int:
    where = "" if device_id is None else " AND device_id = ?"
    return await tx.execute(
        "UPDATE commands SET status = 'timed_out', completed_at = ?, lease_expires_at = NULL "
        f"WHERE status = 'delivered' AND lease_expires_at <= ? AND delivery_count >= ?{where}",
        now, now, max_deliveries, *([] if device_id is None else [device_id]),
    )


class CommandStore(StorePart):
    async def enqueue_command(self, device_id: str, type: str, params: dict[str, Any] | None = None, *,
                              command_id: str | None = None) -> Command:
        """Queue a command (validation is the caller's); `command_id` defaults to a random one."""

        async def work(tx: Transaction) -> Command:
            now = self._clock()
            await ensure_device(tx, device_id, now)
            row = await tx.fetchrow(
                "INSERT INTO commands (command_id, device_id, type, params, status, created_at) "
                f"VALUES (?, ?, ?, ?, 'queued', ?) RETURNING {_COMMAND}",
                command_id or uuid.uuid4().hex, device_id, type, to_json(params or {}), now,
            )
            assert row is not None
            return _command(row)

        return await self._backend.write(work)

    async def lease_command(self, device_id: str, *, lease_seconds: float = 30.0,
                            max_deliveries: int = 3) -> Command | None:
        """The command to deliver to the device now (marked delivered, under lease), or None.
        A device with no open command (nearly every poll) is answered from a read, without a lock."""
        open_command = await self._backend.query(
            "SELECT 1 FROM commands WHERE device_id = ? AND status IN ('queued', 'delivered') LIMIT 1", device_id)
        if not open_command:
            return None

        async def work(tx: Transaction) -> Command | None:
            now = self._clock()
            await ensure_device(tx, device_id, now, lock=True)  # one poll of a device at a time
            await _time_out_exhausted(tx, now, max_deliveries, device_id)
            in_flight = await tx.fetchval(
                "SELECT 1 FROM commands WHERE device_id = ? AND status = 'delivered' AND lease_expires_at > ? "
                "LIMIT 1", device_id, now,
            )
            if in_flight:
                return None
            # Oldest first; a delivered one here has an expired lease and deliveries left.
            next_id = await tx.fetchval(
                "SELECT id FROM commands WHERE device_id = ? AND status IN ('queued', 'delivered') ORDER BY id LIMIT 1",
                device_id,
            )
            if next_id is None:
                return None
            row = await tx.fetchrow(
                "UPDATE commands SET status = 'delivered', delivery_count = delivery_count + 1, delivered_at = ?, "
                f"lease_expires_at = ? WHERE id = ? RETURNING {_COMMAND}",
                now, now + lease_seconds, next_id,
            )
            return None if row is None else _command(row)

        return await self._backend.write(work)

    async def complete_command(self, command_id: str, status: CommandStatus, result: str | None = None
                               ) -> Command | None:
        """Record a device's result. None when no delivered (or timed-out) command has that id: unknown,
        never delivered, or already finished (`get_command` tells which)."""
        if status not in FINAL:
            raise ValueError(f"a command result is completed or failed, not {status}")
        return await self._one(
            _command,
            "UPDATE commands SET status = ?, result = ?, completed_at = ?, lease_expires_at = NULL "
            f"WHERE command_id = ? AND status IN ('delivered', 'timed_out') RETURNING {_COMMAND}",
            str(status), result, self._clock(), command_id, write=True,
        )

    async def expire_commands(self, max_deliveries: int = 3) -> int:
        """Time out, across all devices, commands whose last allowed lease has run out."""

        async def work(tx: Transaction) -> int:
            return await _time_out_exhausted(tx, self._clock(), max_deliveries, None)

        return await self._backend.write(work)

    async def get_command(self, command_id: str) -> Command | None:
        return await self._one(_command, f"SELECT {_COMMAND} FROM commands WHERE command_id = ?", command_id)

    async def list_commands(self, device_id: str | None = None, *, limit: int = 100) -> list[Command]:
        """Command history, newest first."""
        if device_id is None:
            return await self._all(_command, f"SELECT {_COMMAND} FROM commands ORDER BY id DESC LIMIT ?", limit)
        return await self._all(
            _command, f"SELECT {_COMMAND} FROM commands WHERE device_id = ? ORDER BY id DESC LIMIT ?",
            device_id, limit,
        )

    async def command_counts(self) -> dict[CommandStatus, int]:
        rows = await self._all(lambda r: (CommandStatus(r["status"]), int(r["n"])),
                               "SELECT status, COUNT(*) AS n FROM commands GROUP BY status")
        return {status: dict(rows).get(status, 0) for status in CommandStatus}
