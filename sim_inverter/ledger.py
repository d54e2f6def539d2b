"""The ledger: every read and write the simulator served, on any transport, in order.

The harness reconciles it with what the device uploaded and the cloud stored, so each entry says what
was asked, what values went out and how it ended. Memory is bounded (a ring); sequence numbers keep
increasing, so a reader polling with `since` notices when entries fell off the ring before it saw them.
"""

from __future__ import annotations

from collections import deque
from dataclasses import asdict, dataclass
from itertools import islice
from typing import Any

DEFAULT_CAPACITY = 100_000

# Outcomes: "ok", "refused" (a Modbus exception the request earned, e.g. an illegal address), or the
# injected fault in lower case: "exception", "crc_error", "corrupt", "packet_drop", "delay".
OK = "ok"
REFUSED = "refused"


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    seq: int
    t: float  # sim time, seconds
    transport: str  # "http", "modbus-tcp" or "modbus-rtu"
    operation: str  # "read" or "write"
    slave: int
    start: int  # first register address
    count: int
    values: tuple[int, ...]  # read: the values served (empty if none); write: the value asked for
    outcome: str
    exception_code: int | None = None

    @property
    def delivered(self) -> bool:
        """True if the client received these values intact (on time or late)."""
        return self.outcome in (OK, "delay")

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["values"] = list(self.values)
        return doc


class Ledger:
    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError("ledger capacity must be positive")
        self._entries: deque[LedgerEntry] = deque(maxlen=capacity)
        self._last_seq = 0

    def record(
        self,
        *,
        t: float,
        transport: str,
        operation: str,
        slave: int,
        start: int,
        count: int,
        values: tuple[int, ...],
        outcome: str,
        exception_code: int | None = None,
    ) -> LedgerEntry:
        self._last_seq += 1
        entry = LedgerEntry(
            self._last_seq,
            t,
            transport,
            operation,
            slave,
            start,
            count,
            tuple(values),
            outcome,
            None if exception_code is None else int(exception_code),
        )
        self._entries.append(entry)
        return entry

    @property
    def last_seq(self) -> int:
        """Sequence number of the newest entry (0 before the first)."""
        return self._last_seq

    @property
    def first_seq(self) -> int:
        """Sequence number of the oldest entry still held (last_seq + 1 when empty)."""
        return self._entries[0].seq if self._entries else self._last_seq + 1

    def __len__(self) -> int:
        return len(self._entries)

    def since(self, seq: int, limit: int | None = None) -> list[LedgerEntry]:
        """Entries with a sequence number above `seq`, oldest first, at most `limit` of them."""
        skip = max(0, seq - self.first_seq + 1)  # seq numbers are consecutive within the ring
        stop = None if limit is None else skip + max(0, limit)
        return list(islice(self._entries, skip, stop))
