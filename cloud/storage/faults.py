"""Fault rules the cloud applies to its own answers, and the log of every fault it injected."""

from __future__ import annotations

from typing import Any

from cloud.storage.backend import Row, StorePart, from_json, to_json
from cloud.storage.records import FaultEvent, FaultRule

_RULE = "id, kind, device_id, probability, params, created_at, expires_at, cleared_at"
_EVENT = "id, rule_id, kind, device_id, target, detail, injected_at"
_IN_FORCE = "cleared_at IS NULL AND (expires_at IS NULL OR expires_at > ?)"  # takes the time now


def _rule(row: Row) -> FaultRule:
    return FaultRule(row["id"], row["kind"], row["device_id"], row["probability"], from_json(row["params"]),
                     row["created_at"], row["expires_at"], row["cleared_at"])


def _event(row: Row) -> FaultEvent:
    return FaultEvent(row["id"], row["rule_id"], row["kind"], row["device_id"], row["target"],
                      from_json(row["detail"]), row["injected_at"])


class FaultStore(StorePart):
    async def add_fault_rule(self, kind: str, *, probability: float = 1.0, device_id: str | None = None,
                             duration: float | None = None, params: dict[str, Any] | None = None) -> FaultRule:
        """A rule for every device (`device_id=None`) or one, active for `duration` seconds (None: until cleared)."""
        now = self._clock()
        rule = await self._one(
            _rule,
            "INSERT INTO fault_rules (kind, device_id, probability, params, created_at, expires_at) "
            f"VALUES (?, ?, ?, ?, ?, ?) RETURNING {_RULE}",
            kind, device_id, float(probability), to_json(params or {}), now,
            None if duration is None else now + duration, write=True,
        )
        assert rule is not None
        return rule

    async def active_fault_rules(self, device_id: str | None = None) -> list[FaultRule]:
        """Rules in force now: all of them, or those that apply to one device (its own and global ones)."""
        now = self._clock()
        if device_id is None:
            return await self._all(_rule, f"SELECT {_RULE} FROM fault_rules WHERE {_IN_FORCE} ORDER BY id", now)
        return await self._all(
            _rule,
            f"SELECT {_RULE} FROM fault_rules WHERE {_IN_FORCE} AND (device_id IS NULL OR device_id = ?) ORDER BY id",
            now, device_id,
        )

    async def clear_fault_rules(self, device_id: str | None = None) -> int:
        """End the rules in force (all, or one device's own); they stay in the table as history."""
        now = self._clock()
        if device_id is None:
            return await self._change(f"UPDATE fault_rules SET cleared_at = ? WHERE {_IN_FORCE}", now, now)
        return await self._change(
            f"UPDATE fault_rules SET cleared_at = ? WHERE {_IN_FORCE} AND device_id = ?", now, now, device_id
        )

    async def log_fault(self, kind: str, target: str, *, device_id: str | None = None, rule_id: int | None = None,
                        detail: dict[str, Any] | None = None) -> FaultEvent:
        """Record a fault just injected and what it hit."""
        event = await self._one(
            _event,
            "INSERT INTO fault_events (rule_id, kind, device_id, target, detail, injected_at) "
            f"VALUES (?, ?, ?, ?, ?, ?) RETURNING {_EVENT}",
            rule_id, kind, device_id, target, to_json(detail or {}), self._clock(), write=True,
        )
        assert event is not None
        return event

    async def fault_events(self, *, device_id: str | None = None, limit: int = 100) -> list[FaultEvent]:
        """Injected faults, newest first."""
        if device_id is None:
            return await self._all(_event, f"SELECT {_EVENT} FROM fault_events ORDER BY id DESC LIMIT ?", limit)
        return await self._all(
            _event, f"SELECT {_EVENT} FROM fault_events WHERE device_id = ? ORDER BY id DESC LIMIT ?", device_id, limit
        )

    async def fault_counts(self) -> dict[str, int]:
        """Injected faults per kind."""
        rows = await self._all(lambda r: (str(r["kind"]), int(r["n"])),
                               "SELECT kind, COUNT(*) AS n FROM fault_events GROUP BY kind ORDER BY kind")
        return dict(rows)
