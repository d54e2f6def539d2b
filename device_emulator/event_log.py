"""The device's event log and diagnostics counters (firmware-protocol.md §8.1).

What the firmware's diagnostics module keeps: a bounded RAM log of recent events (50 in the firmware)
and error counters, reported as a JSON document. Here every event also carries loop time, a kind, the
module that raised it and details, and the harness can subscribe to the stream. Counters are RAM
state; the firmware model persists them in NVS (`diagnostics/counters`) with `encode_counters` and
restores them with `decode_counters` so they survive reboots.
"""

from __future__ import annotations

import asyncio
import json
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from protocol.errors import DocumentError
from protocol.modbus import Verdict


class Level(Enum):
    INFO = "INFO"
    WARNING = "WARNING"
    ERROR = "ERROR"
    FAULT = "FAULT"


class EventKind(Enum):
    """Each kind: (name, module, level, counter it increments, detail that splits the counter)."""

    BOOT = ("boot", "system", Level.INFO, "boots", "reason")
    POLL_FAILED = ("poll_failed", "acquisition", Level.WARNING, "poll_failures", "classification")
    WRITE_FAILED = ("write_failed", "acquisition", Level.WARNING, "write_failures", None)
    QUEUE_OVERFLOW = ("queue_overflow", "acquisition", Level.WARNING, "queue_overflows", None)
    COMPRESSION_FAILED = ("compression_failed", "compression", Level.ERROR, "compression_failures", None)
    UPLOAD_OK = ("upload_ok", "uploader", Level.INFO, "uploads_ok", None)
    UPLOAD_FAILED = ("upload_failed", "uploader", Level.ERROR, "uploads_failed", None)
    CONFIG_ACCEPTED = ("config_accepted", "config", Level.INFO, "configs_accepted", None)
    CONFIG_REJECTED = ("config_rejected", "config", Level.WARNING, "configs_rejected", None)
    CONFIG_APPLIED = ("config_applied", "config", Level.INFO, "configs_applied", None)
    COMMAND_EXECUTED = ("command_executed", "command", Level.INFO, "commands_ok", None)
    COMMAND_FAILED = ("command_failed", "command", Level.WARNING, "commands_failed", None)
    OTA_STARTED = ("ota_started", "ota", Level.INFO, "ota_started", None)
    OTA_PROGRESS = ("ota_progress", "ota", Level.INFO, None, None)
    OTA_VERIFIED = ("ota_verified", "ota", Level.INFO, "ota_verified", None)
    OTA_FAILED = ("ota_failed", "ota", Level.ERROR, "ota_failures", "reason")
    OTA_CONFIRMED = ("ota_confirmed", "ota", Level.INFO, "ota_confirmed", None)
    OTA_ROLLED_BACK = ("ota_rolled_back", "ota", Level.FAULT, "ota_rollbacks", None)
    SECURITY_VIOLATION = ("security_violation", "security", Level.ERROR, "security_violations", None)
    NVS_RECOVERED = ("nvs_recovered", "nvs", Level.WARNING, "nvs_recoveries", None)

    def __init__(self, label: str, module: str, level: Level, counter: str | None, by: str | None) -> None:
        self.label = label
        self.module = module
        self.level = level
        self.counter = counter
        self.by = by


# Counters for frequent successes, counted with `count()` rather than logged as events.
POLLS_OK = "polls_ok"
WRITES_OK = "writes_ok"
# Poll-failure classifications besides the frame verdicts of protocol.modbus (§1.6).
TIMEOUT = "TIMEOUT"  # no answer, connection error or empty body after every attempt
JSON_ERROR = "JSON_ERROR"  # the HTTP body was not the expected JSON

# The firmware's error counters (§8.1) as sums of ours.
_FIRMWARE_ERROR_COUNTERS: dict[str, tuple[str, ...]] = {
    "read_errors": ("poll_failures",),
    "write_errors": ("write_failures",),
    "timeouts": (f"poll_failures.{TIMEOUT}",),
    "crc_errors": (f"poll_failures.{Verdict.PARSE_CRC_ERROR.value}",),
    "malformed_frames": tuple(
        f"poll_failures.{name}"
        for name in (Verdict.PARSE_MALFORMED.value, Verdict.PARSE_TRUNCATED.value, JSON_ERROR)
    ),
    "compression_failures": ("compression_failures",),
    "upload_failures": ("uploads_failed",),
    "security_violations": ("security_violations",),
}


def _plain(value: Any) -> Any:
    """A JSON-ready form of a detail value."""
    if isinstance(value, Enum):
        return _plain(value.value)
    if isinstance(value, bytes | bytearray):
        return value.hex()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _iso(epoch_seconds: float) -> str:
    return (
        datetime.fromtimestamp(epoch_seconds, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


@dataclass(frozen=True)
class Event:
    seq: int
    time: float  # loop time
    wall: float  # wall_clock() at the time, epoch seconds
    kind: EventKind
    message: str = ""
    details: Mapping[str, Any] = field(default_factory=dict)
    recovered: bool | None = None

    @property
    def level(self) -> Level:
        return self.kind.level

    def as_dict(self) -> dict[str, Any]:
        """The entry of `recent_events`: the firmware's fields (timestamp, type, message) and the
        course's (event, module, recovered), plus our own."""
        entry: dict[str, Any] = {
            "seq": self.seq,
            "timestamp": _iso(self.wall),
            "uptime_s": self.time,
            "type": self.kind.level.value,
            "event": self.kind.label,
            "module": self.kind.module,
            "message": self.message,
            "details": _plain(self.details),
        }
        if self.recovered is not None:
            entry["recovered"] = self.recovered
        return entry


class Subscription:
    """A bounded stream of events for one subscriber; when it is full the oldest event is dropped."""

    def __init__(self, log: EventLog, maxsize: int) -> None:
        if maxsize < 1:
            raise ValueError("a subscription holds at least one event")
        self._log = log
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        self.dropped = 0

    def _deliver(self, event: Event) -> None:
        if self.queue.full():
            self.queue.get_nowait()
            self.dropped += 1
        self.queue.put_nowait(event)

    async def get(self) -> Event:
        return await self.queue.get()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        return await self.queue.get()

    def close(self) -> None:
        self._log._subscribers.discard(self)

    def __enter__(self) -> Subscription:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class EventLog:
    """The event ring buffer and counters of one running device (lost at power cut, like RAM)."""

    def __init__(
        self,
        *,
        clock: Callable[[], float],
        wall_clock: Callable[[], float],
        capacity: int = 50,
        counters: Mapping[str, int] | None = None,
        health_window: float = 300.0,
    ) -> None:
        self._clock = clock
        self._wall_clock = wall_clock
        self.started = clock()
        self.health_window = health_window  # an ERROR/FAULT this recent makes the device DEGRADED
        self._events: deque[Event] = deque(maxlen=capacity)
        self._counters: dict[str, int] = dict(counters or {})
        self._subscribers: set[Subscription] = set()
        self.recorded = 0

    def record(
        self, kind: EventKind, message: str = "", *, recovered: bool | None = None, **details: Any
    ) -> Event:
        """Log an event, count it, and deliver it to every subscriber."""
        self.recorded += 1
        event = Event(self.recorded, self._clock(), self._wall_clock(), kind, message, details, recovered)
        self._events.append(event)
        if kind.counter is not None:
            self.count(kind.counter)
            if kind.by is not None and kind.by in details:
                self.count(f"{kind.counter}.{_plain(details[kind.by])}")
        for subscription in self._subscribers:
            subscription._deliver(event)
        return event

    def count(self, counter: str, n: int = 1) -> None:
        self._counters[counter] = self._counters.get(counter, 0) + n

    @property
    def counters(self) -> dict[str, int]:
        return dict(self._counters)

    @property
    def events(self) -> list[Event]:
        """The retained events, oldest first."""
        return list(self._events)

    def subscribe(self, maxsize: int = 1000) -> Subscription:
        subscription = Subscription(self, maxsize)
        self._subscribers.add(subscription)
        return subscription

    def snapshot(self, device_id: str) -> dict[str, Any]:
        """The diagnostics document: the firmware's shape (§8.1) plus every counter."""
        now = self._clock()
        c = self._counters
        polls_failed = c.get("poll_failures", 0)
        writes_failed = c.get("write_failures", 0)
        uploads_failed = c.get("uploads_failed", 0)
        recent_trouble = any(
            e.level in (Level.ERROR, Level.FAULT) and now - e.time <= self.health_window for e in self._events
        )
        return {
            "device_id": device_id,
            "timestamp": _iso(self._wall_clock()),
            "uptime_seconds": int(now - self.started),
            "error_counters": {
                name: sum(c.get(source, 0) for source in sources)
                for name, sources in _FIRMWARE_ERROR_COUNTERS.items()
            },
            "success_rates": {
                "read_success_pct": _percent(c.get(POLLS_OK, 0), polls_failed),
                "write_success_pct": _percent(c.get(WRITES_OK, 0), writes_failed),
                "upload_success_pct": _percent(c.get("uploads_ok", 0), uploads_failed),
            },
            "recent_events": [e.as_dict() for e in self._events],
            "system_health": {"status": "DEGRADED" if recent_trouble else "HEALTHY"},
            "counters": dict(sorted(c.items())),
            "events_recorded": self.recorded,
            "events_dropped": self.recorded - len(self._events),
        }


def _percent(ok: int, failed: int) -> float | None:
    total = ok + failed
    return round(100.0 * ok / total, 2) if total else None


def encode_counters(counters: Mapping[str, int]) -> bytes:
    return json.dumps(dict(sorted(counters.items())), separators=(",", ":")).encode()


def decode_counters(data: bytes) -> dict[str, int]:
    """Counters saved by `encode_counters`; DocumentError for anything else."""
    try:
        value = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise DocumentError("diagnostics counters are not JSON", data) from None
    if not isinstance(value, dict) or not all(
        isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in value.values()
    ):
        raise DocumentError("diagnostics counters must map names to counts", data)
    return value
