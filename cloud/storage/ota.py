"""Firmware repository metadata, rollouts, OTA sessions and the devices' OTA reports.

The images themselves are files on disk (`Firmware.path`); the database holds what describes them.
A device may initiate again at any time: its active session is then `replaced` by the new one.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import Any

from cloud.storage.backend import Row, StorePart, Transaction, from_json, to_json
from cloud.storage.devices import ensure_device
from cloud.storage.records import (
    Firmware,
    OtaReport,
    OtaSession,
    Rollout,
    RolloutState,
    RolloutTarget,
    SessionStatus,
)

_FIRMWARE = ("version, device_type, path, original_size, encrypted_size, sha256, encrypted_sha256, "
             "security_counter, manifest, created_at")
_ROLLOUT = "id, name, version, state, created_at, updated_at"
_TARGET = "rollout_id, device_id, state, detail, updated_at"
_SESSION = ("session_id, device_id, version, status, total_chunks, chunks_served, bytes_served, started_at, "
            "last_activity, finished_at")
_REPORT = "id, device_id, session_id, kind, status, detail, reported_at"


def _firmware(row: Row) -> Firmware:
    return Firmware(row["version"], row["device_type"], row["path"], row["original_size"], row["encrypted_size"],
                    row["sha256"], row["encrypted_sha256"], row["security_counter"], from_json(row["manifest"]),
                    row["created_at"])


def _target(row: Row) -> RolloutTarget:
    return RolloutTarget(row["rollout_id"], row["device_id"], row["state"], row["detail"], row["updated_at"])


def _rollout(row: Row, targets: Sequence[RolloutTarget] = ()) -> Rollout:
    return Rollout(row["id"], row["name"], row["version"], RolloutState(row["state"]), row["created_at"],
                   row["updated_at"], tuple(targets))


def _session(row: Row) -> OtaSession:
    return OtaSession(row["session_id"], row["device_id"], row["version"], SessionStatus(row["status"]),
                      row["total_chunks"], row["chunks_served"], row["bytes_served"], row["started_at"],
                      row["last_activity"], row["finished_at"])


def _report(row: Row) -> OtaReport:
    return OtaReport(row["id"], row["device_id"], row["session_id"], row["kind"], row["status"],
                     from_json(row["detail"]), row["reported_at"])


async def _rollout_with_targets(tx: Transaction, rollout_id: int) -> Rollout | None:
    row = await tx.fetchrow(f"SELECT {_ROLLOUT} FROM rollouts WHERE id = ?", rollout_id)
    if row is None:
        return None
    targets = await tx.fetch(f"SELECT {_TARGET} FROM rollout_targets WHERE rollout_id = ? ORDER BY device_id",
                             rollout_id)
    return _rollout(row, [_target(t) for t in targets])


class OtaStore(StorePart):
    # --- firmware repository ---

    async def add_firmware(self, firmware: Firmware) -> Firmware | None:
        """Publish a version's metadata; None if that version is already published (versions are immutable)."""
        f = firmware
        return await self._one(
            _firmware,
            f"INSERT INTO firmware ({_FIRMWARE}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            f"ON CONFLICT (version) DO NOTHING RETURNING {_FIRMWARE}",
            f.version, f.device_type, f.path, f.original_size, f.encrypted_size, f.sha256, f.encrypted_sha256,
            f.security_counter, to_json(f.manifest), self._clock(), write=True,
        )

    async def get_firmware(self, version: str) -> Firmware | None:
        return await self._one(_firmware, f"SELECT {_FIRMWARE} FROM firmware WHERE version = ?", version)

    async def list_firmware(self) -> list[Firmware]:
        """Every published version, by security counter then publication time."""
        return await self._all(_firmware, f"SELECT {_FIRMWARE} FROM firmware ORDER BY security_counter, created_at")

    # --- rollouts ---

    async def create_rollout(self, name: str, version: str, device_ids: Sequence[str]) -> Rollout:
        async def work(tx: Transaction) -> Rollout:
            now = self._clock()
            rollout_id = await tx.fetchval(
                "INSERT INTO rollouts (name, version, state, created_at, updated_at) VALUES (?, ?, 'active', ?, ?) "
                "RETURNING id", name, version, now, now,
            )
            await tx.executemany(
                "INSERT INTO rollout_targets (rollout_id, device_id, state, updated_at) VALUES (?, ?, 'pending', ?)",
                [(rollout_id, device_id, now) for device_id in dict.fromkeys(device_ids)],
            )
            rollout = await _rollout_with_targets(tx, rollout_id)
            assert rollout is not None
            return rollout

        return await self._backend.write(work)

    async def get_rollout(self, rollout_id: int) -> Rollout | None:
        async def work(tx: Transaction) -> Rollout | None:
            return await _rollout_with_targets(tx, rollout_id)

        return await self._backend.read(work)

    async def list_rollouts(self) -> list[Rollout]:
        """Every rollout, newest first (without targets: `get_rollout` has them)."""
        return await self._all(_rollout, f"SELECT {_ROLLOUT} FROM rollouts ORDER BY id DESC")

    async def set_rollout_state(self, rollout_id: int, state: RolloutState) -> Rollout | None:
        return await self._one(
            _rollout, f"UPDATE rollouts SET state = ?, updated_at = ? WHERE id = ? RETURNING {_ROLLOUT}",
            str(state), self._clock(), rollout_id, write=True,
        )

    async def rollout_for_device(self, device_id: str) -> tuple[Rollout, RolloutTarget] | None:
        """The newest active rollout that targets the device, with the device's place in it."""
        found = await self._device_rollouts(device_id, active_only=True, limit=1)
        return found[0] if found else None

    async def device_rollouts(self, device_id: str, *, limit: int = 20) -> list[tuple[Rollout, RolloutTarget]]:
        """Every rollout that targeted the device (in any state), newest first, with its place in each."""
        return await self._device_rollouts(device_id, active_only=False, limit=limit)

    async def _device_rollouts(self, device_id: str, *, active_only: bool,
                               limit: int) -> list[tuple[Rollout, RolloutTarget]]:
        only_active = " AND r.state = 'active'" if active_only else ""

        async def work(tx: Transaction) -> list[tuple[Rollout, RolloutTarget]]:
            rows = await tx.fetch(
                "SELECT r.id, r.name, r.version, r.state, r.created_at, r.updated_at, t.rollout_id, t.device_id, "
                "t.state AS target_state, t.detail, t.updated_at AS target_updated_at "
                "FROM rollout_targets t JOIN rollouts r ON r.id = t.rollout_id "
                f"WHERE t.device_id = ?{only_active} ORDER BY r.id DESC LIMIT ?",
                device_id, limit,
            )
            return [(_rollout(row), RolloutTarget(row["rollout_id"], row["device_id"], row["target_state"],
                                                  row["detail"], row["target_updated_at"])) for row in rows]

        return await self._backend.read(work)

    async def update_rollout_target(self, rollout_id: int, device_id: str, state: str,
                                    detail: str | None = None) -> RolloutTarget | None:
        return await self._one(
            _target,
            "UPDATE rollout_targets SET state = ?, detail = ?, updated_at = ? WHERE rollout_id = ? AND device_id = ? "
            f"RETURNING {_TARGET}",
            state, detail, self._clock(), rollout_id, device_id, write=True,
        )

    # --- sessions ---

    async def start_ota_session(self, device_id: str, version: str, total_chunks: int, *,
                                session_id: str | None = None) -> OtaSession:
        """Open a session; the device's active session, if any, becomes `replaced`."""

        async def work(tx: Transaction) -> OtaSession:
            now = self._clock()
            await ensure_device(tx, device_id, now, lock=True)  # at most one active session per device
            await tx.execute(
                "UPDATE ota_sessions SET status = 'replaced', finished_at = ? WHERE device_id = ? AND status = 'active'",
                now, device_id,
            )
            row = await tx.fetchrow(
                "INSERT INTO ota_sessions (session_id, device_id, version, status, total_chunks, started_at, "
                f"last_activity) VALUES (?, ?, ?, 'active', ?, ?, ?) RETURNING {_SESSION}",
                session_id or uuid.uuid4().hex, device_id, version, total_chunks, now, now,
            )
            assert row is not None
            return _session(row)

        return await self._backend.write(work)

    async def record_ota_chunk(self, session_id: str, size: int, *, chunks: int = 1,
                               at: float | None = None) -> OtaSession | None:
        """Count chunks served (`size` bytes in all) and note the activity (now, or `at` when they were
        served); None unless the session is active."""
        return await self._one(
            _session,
            "UPDATE ota_sessions SET chunks_served = chunks_served + ?, bytes_served = bytes_served + ?, "
            f"last_activity = ? WHERE session_id = ? AND status = 'active' RETURNING {_SESSION}",
            chunks, size, self._clock() if at is None else at, session_id, write=True,
        )

    async def note_firmware_version(self, device_id: str, version: str) -> bool:
        """Record the firmware version a known device reports (unauthenticated: never creates a device).
        Every update check reports one: an unchanged version is only read, so checks cost no write."""
        known = await self._backend.query("SELECT firmware_version FROM devices WHERE device_id = ?", device_id)
        if not known:
            return False
        if known[0]["firmware_version"] == version:
            return True
        return await self._change("UPDATE devices SET firmware_version = ? WHERE device_id = ?", version, device_id) > 0

    async def finish_ota_session(self, session_id: str, status: SessionStatus) -> OtaSession | None:
        """End an active session (completed, failed, cancelled); None unless it was active."""
        return await self._one(
            _session,
            "UPDATE ota_sessions SET status = ?, finished_at = ?, last_activity = ? "
            f"WHERE session_id = ? AND status = 'active' RETURNING {_SESSION}",
            str(status), self._clock(), self._clock(), session_id, write=True,
        )

    async def expire_ota_sessions(self, idle_seconds: float) -> int:
        """Mark `expired` every active session idle for `idle_seconds` or more."""
        now = self._clock()
        return await self._change(
            "UPDATE ota_sessions SET status = 'expired', finished_at = ? WHERE status = 'active' AND last_activity <= ?",
            now, now - idle_seconds,
        )

    async def get_ota_session(self, session_id: str) -> OtaSession | None:
        return await self._one(_session, f"SELECT {_SESSION} FROM ota_sessions WHERE session_id = ?", session_id)

    async def active_ota_session(self, device_id: str) -> OtaSession | None:
        return await self._one(
            _session, f"SELECT {_SESSION} FROM ota_sessions WHERE device_id = ? AND status = 'active'", device_id
        )

    async def list_ota_sessions(self, device_id: str | None = None, *, limit: int = 100) -> list[OtaSession]:
        """Sessions, newest first."""
        if device_id is None:
            return await self._all(
                _session, f"SELECT {_SESSION} FROM ota_sessions ORDER BY started_at DESC LIMIT ?", limit
            )
        return await self._all(
            _session, f"SELECT {_SESSION} FROM ota_sessions WHERE device_id = ? ORDER BY started_at DESC LIMIT ?",
            device_id, limit,
        )

    async def ota_stats(self) -> dict[str, int]:
        """Sessions per status (every SessionStatus present) and `bytes_served` in all."""

        async def work(tx: Transaction) -> dict[str, int]:
            rows = await tx.fetch(
                "SELECT status, COUNT(*) AS n, COALESCE(SUM(bytes_served), 0) AS bytes FROM ota_sessions GROUP BY status"
            )
            stats = {str(status): 0 for status in SessionStatus}
            stats.update({r["status"]: int(r["n"]) for r in rows})
            stats["bytes_served"] = sum(int(r["bytes"]) for r in rows)
            return stats

        return await self._backend.read(work)

    # --- reports ---

    async def add_ota_report(self, device_id: str, kind: str, *, session_id: str | None = None,
                             status: str | None = None, detail: dict[str, Any] | None = None) -> OtaReport:
        report = await self._one(
            _report,
            "INSERT INTO ota_reports (device_id, session_id, kind, status, detail, reported_at) "
            f"VALUES (?, ?, ?, ?, ?, ?) RETURNING {_REPORT}",
            device_id, session_id, kind, status, to_json(detail or {}), self._clock(), write=True,
        )
        assert report is not None
        return report

    async def list_ota_reports(self, device_id: str, *, after_id: int = 0, limit: int = 100) -> list[OtaReport]:
        """A device's reports in the order they arrived (page with `after_id`)."""
        return await self._all(
            _report, f"SELECT {_REPORT} FROM ota_reports WHERE device_id = ? AND id > ? ORDER BY id LIMIT ?",
            device_id, after_id, limit,
        )
