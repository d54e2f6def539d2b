"""The adaptive compression state: the learned dictionary and the temporal history (§3.2, §3.7, §3.10).

The device carries one `CodecState` from boot (encoder side, `selection.compress_batch`); the cloud
keeps a mirror per device and moves it with `advance` after each decoded packet. Both sides run the
same transitions (the learning rule, `TemporalHistory.record`), so the mirror stays exact while every
packet arrives and decodes exactly. Where a packet was ambiguous, lossy or undecodable, the mirror
keeps error bounds and doubts instead of guessing: the decoders report values derived from them as
ambiguous, and a learning decision the mirror cannot reproduce makes later entries unknown.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from protocol.compression.batch import Batch, check_layout
from protocol.compression.decoded import Decoded, PacketFormat
from protocol.errors import DocumentError
from protocol.registers import REGISTER_COUNT

# The firmware's built-in dictionary, values by RegID 0..9 (§3.2).
BUILTIN_PATTERNS: tuple[tuple[int, ...], ...] = (
    (2400, 170, 50, 400, 380, 70, 65, 550, 4000, 4200),
    (2380, 100, 50, 200, 180, 30, 25, 520, 2000, 2500),
    (2450, 200, 50, 450, 420, 90, 85, 580, 5000, 5200),
    (2430, 165, 50, 350, 350, 70, 65, 545, 4100, 4150),
)
MAX_PATTERNS = 15
MATCH_LIMIT = 200  # a pattern matches when floor(sum |v - P| / count) is below this
HISTORY_ROWS = 8
TEMPORAL_SLOTS = 10  # the history's register-list field; longer lists overflow it (§3.7)
STATE_VERSION = 1


def closest_pattern(batch: Batch, patterns: Sequence[Sequence[int]]) -> int | None:
    """The index of the matching dictionary entry (smallest distance, first on ties), or None."""
    best: tuple[int, int] | None = None
    regs = batch.registers
    for index, pattern in enumerate(patterns):
        distance = sum(abs(v - pattern[r]) for v, r in zip(batch.values, regs, strict=True))
        if best is None or distance < best[0]:
            best = (distance, index)
    if best is None or best[0] // batch.count >= MATCH_LIMIT:
        return None
    return best[1]


def _zero_rows() -> list[list[int | None]]:
    return [[0] * REGISTER_COUNT for _ in range(HISTORY_ROWS)]


def add_bounds(bounds: Iterable[int | None]) -> int | None:
    """The sum of error bounds; None (unbounded) if any is unbounded or the sum leaves uint16."""
    total = 0
    for bound in bounds:
        if bound is None:
            return None
        total += bound
    return total if total <= 0xFFFF else None


@dataclass
class TemporalHistory:
    """Last value per RegID of the recent batches (a ring of 8 rows), as the temporal encoder keeps it.

    A mirror may know values only approximately: `errors` holds, per cell, how far the value may be
    from the device's (0 exact, None unbounded), and a value is None where a packet was undecodable.
    The device's own history is always exact.
    """

    rows: list[list[int | None]] = field(default_factory=_zero_rows)
    errors: list[list[int | None]] = field(default_factory=_zero_rows)
    next_row: int = 0
    batches: int = 0  # temporal-encoder calls since boot
    previous_count: int = 0
    previous_layout: tuple[int, ...] = ()

    @property
    def full(self) -> bool:
        return self.batches >= HISTORY_ROWS

    def delta_allowed(self, count: int, layout: Sequence[int]) -> bool:
        """Whether the firmware emits 0x71 for this batch shape (else 0x70)."""
        # Lists longer than the 10-slot field corrupt the stored list, so the comparison always fails.
        return (
            self.full
            and count <= TEMPORAL_SLOTS
            and count == self.previous_count
            and tuple(layout) == self.previous_layout
        )

    def _recent(self) -> tuple[int, int]:
        return (self.next_row - 1) % HISTORY_ROWS, (self.next_row - 2) % HISTORY_ROWS

    def previous(self, reg: int) -> tuple[int | None, int | None]:
        """(last value in the previous batch, in the batch before it) for one register."""
        row1, row2 = self._recent()
        return self.rows[row1][reg], self.rows[row2][reg]

    def previous_errors(self, reg: int) -> tuple[int | None, int | None]:
        row1, row2 = self._recent()
        return self.errors[row1][reg], self.errors[row2][reg]

    def certain_for(self, count: int, layout: Sequence[int]) -> bool:
        """Whether the temporal encoder's output for this batch shape is what the device computed."""
        if not self.delta_allowed(count, layout):
            return True
        return all(None not in self.previous(reg) and self.previous_errors(reg) == (0, 0) for reg in layout)

    def record(
        self,
        layout: Sequence[int],
        values: Sequence[int | None],
        errors: Sequence[int | None] | None = None,
    ) -> None:
        """Store the last value of every register of the batch and advance (errors: a mirror's)."""
        row, row_errors = self.rows[self.next_row], self.errors[self.next_row]
        n = len(layout)
        # Later samples overwrite earlier ones, so only the last value of each layout slot survives;
        # the last n positions hold exactly those, in order (duplicate RegIDs: the later slot wins).
        for i in range(max(0, len(values) - n), len(values)):
            row[layout[i % n]] = values[i]
            row_errors[layout[i % n]] = 0 if errors is None else errors[i]
        self.next_row = (self.next_row + 1) % HISTORY_ROWS
        self.batches += 1
        self.previous_count = len(values)
        self.previous_layout = tuple(layout)


@dataclass
class CodecState:
    """Dictionary and temporal history of one device since its last boot.

    On a cloud-side mirror, `pattern_errors` holds per-register error bounds of entries learned from
    approximate values, and entries from `doubtful_from` on are unknown: the device may or may not
    have learned them (a learning decision the mirror could not reproduce).
    """

    patterns: list[tuple[int, ...]] = field(default_factory=lambda: list(BUILTIN_PATTERNS))
    temporal: TemporalHistory = field(default_factory=TemporalHistory)
    pattern_errors: dict[int, tuple[int | None, ...]] = field(default_factory=dict)
    doubtful_from: int | None = None

    def copy(self) -> CodecState:
        return copy.deepcopy(self)

    @property
    def exact(self) -> bool:
        """Whether the dictionary is known exactly (always so on the device)."""
        return self.doubtful_from is None and not self.pattern_errors

    def learn(self, batch: Batch) -> bool:
        """The firmware's learning step after every batch; True if an entry was appended."""
        if len(self.patterns) >= MAX_PATTERNS or closest_pattern(batch, self.patterns) is not None:
            return False
        self._append(batch, [0] * batch.count)
        return True

    def _append(self, batch: Batch, errors: Sequence[int | None]) -> None:
        entry = [0] * REGISTER_COUNT
        entry_errors: list[int | None] = [0] * REGISTER_COUNT
        for value, error, reg in zip(batch.values, errors, batch.registers, strict=True):
            entry[reg] = value  # the last occurrence wins
            entry_errors[reg] = error
        if any(e != 0 for e in entry_errors):
            self.pattern_errors[len(self.patterns)] = tuple(entry_errors)
        self.patterns.append(tuple(entry))

    def _learn_mirrored(self, batch: Batch, errors: Sequence[int | None]) -> None:
        """The learning step on values known within `errors`: learn only what the device surely did."""
        if len(self.patterns) >= MAX_PATTERNS:
            return
        limit = MATCH_LIMIT * batch.count
        surely_none = self.doubtful_from is None  # unknown entries might have matched
        for index, pattern in enumerate(self.patterns[: self.doubtful_from]):
            low, high = self._distance_range(batch, errors, pattern, self.pattern_errors.get(index))
            if high is not None and high < limit:
                return  # the device surely matched an entry: nothing learned
            if low < limit:
                surely_none = False
        if surely_none:
            self._append(batch, errors)
        else:
            size = len(self.patterns)
            self.doubtful_from = size if self.doubtful_from is None else min(self.doubtful_from, size)

    @staticmethod
    def _distance_range(
        batch: Batch,
        errors: Sequence[int | None],
        pattern: Sequence[int],
        pattern_errors: Sequence[int | None] | None,
    ) -> tuple[int, int | None]:
        """Bounds of the device's sum |v - P| given values and entry known within their errors."""
        low, high = 0, 0
        unbounded = False
        for value, error, reg in zip(batch.values, errors, batch.registers, strict=True):
            entry_error = pattern_errors[reg] if pattern_errors else 0
            if error is None or entry_error is None:
                unbounded = True
                continue
            v_low, v_high = max(0, value - error), min(0xFFFF, value + error)
            p_low, p_high = max(0, pattern[reg] - entry_error), min(0xFFFF, pattern[reg] + entry_error)
            low += max(0, v_low - p_high, p_low - v_high)
            high += max(v_high - p_low, p_high - v_low)
        return low, None if unbounded else high

    def advance(self, decoded: Decoded, layout: Sequence[int], samples: int) -> None:
        """Move a cloud-side mirror past one received packet, as the device moved past the batch."""
        regs = check_layout(layout)
        count = samples * len(regs)
        if not decoded.decodable:
            self.temporal.record(regs, [None] * count, [None] * count)
            if decoded.format is not PacketFormat.DICTIONARY and len(self.patterns) < MAX_PATTERNS:
                size = len(self.patterns)  # the device may have learned from it: we cannot tell
                self.doubtful_from = size if self.doubtful_from is None else min(self.doubtful_from, size)
            return
        errors: list[int | None] = [0] * len(decoded.values)
        for position in decoded.uncertain:
            errors[position] = decoded.bounds.get(position)
        self.temporal.record(regs, decoded.values, errors)
        if decoded.format is not PacketFormat.DICTIONARY:  # a 0xD0 batch matched: nothing learned
            self._learn_mirrored(Batch(decoded.values, regs), errors)

    def to_json(self) -> str:
        return json.dumps(
            {
                "version": STATE_VERSION,
                "patterns": [list(p) for p in self.patterns],
                "pattern_errors": {str(k): list(v) for k, v in self.pattern_errors.items()},
                "doubtful_from": self.doubtful_from,
                "temporal": {
                    "rows": self.temporal.rows,
                    "errors": self.temporal.errors,
                    "next_row": self.temporal.next_row,
                    "batches": self.temporal.batches,
                    "previous_count": self.temporal.previous_count,
                    "previous_layout": list(self.temporal.previous_layout),
                },
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> CodecState:
        try:
            doc = json.loads(text)
        except (ValueError, UnicodeDecodeError) as error:
            raise DocumentError("codec state is not JSON", str(error)) from None
        if not isinstance(doc, dict) or doc.get("version") != STATE_VERSION:
            raise DocumentError("not a codec state of version 1", doc)
        patterns = [_uint16_list(p, REGISTER_COUNT, "pattern") for p in _field(doc, "patterns", list)]
        if not len(BUILTIN_PATTERNS) <= len(patterns) <= MAX_PATTERNS:
            raise DocumentError("codec state has a wrong number of patterns", len(patterns))
        pattern_errors: dict[int, tuple[int | None, ...]] = {}
        for key, errors in _field(doc, "pattern_errors", dict).items():
            if not key.isdigit() or int(key) >= len(patterns):
                raise DocumentError("pattern_errors names no pattern", key)
            pattern_errors[int(key)] = tuple(_uint16_list(errors, REGISTER_COUNT, "pattern errors", True))
        doubtful = doc.get("doubtful_from")
        if doubtful is not None and not _is_int(doubtful, 0, MAX_PATTERNS):
            raise DocumentError("bad doubtful_from", doubtful)
        temporal = _field(doc, "temporal", dict)
        rows, errors = _field(temporal, "rows", list), _field(temporal, "errors", list)
        if len(rows) != HISTORY_ROWS or len(errors) != HISTORY_ROWS:
            raise DocumentError("temporal history needs 8 rows", len(rows))
        previous_layout = _field(temporal, "previous_layout", list)
        if any(not _is_int(r, 0, REGISTER_COUNT - 1) for r in previous_layout):
            raise DocumentError("bad previous_layout", previous_layout)
        history = TemporalHistory(
            rows=[_uint16_list(row, REGISTER_COUNT, "history row", True) for row in rows],
            errors=[_uint16_list(row, REGISTER_COUNT, "history errors", True) for row in errors],
            next_row=_bounded(temporal, "next_row", HISTORY_ROWS - 1),
            batches=_bounded(temporal, "batches", 2**63),
            previous_count=_bounded(temporal, "previous_count", 255),
            previous_layout=tuple(previous_layout),
        )
        return cls([tuple(p) for p in patterns], history, pattern_errors, doubtful)


def _is_int(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def _field(doc: dict[str, Any], key: str, kind: type) -> Any:
    value = doc.get(key)
    if not isinstance(value, kind):
        raise DocumentError(f"codec state field {key!r} is missing or of the wrong type", value)
    return value


def _bounded(doc: dict[str, Any], key: str, high: int) -> int:
    value = doc.get(key)
    if not isinstance(value, int) or not _is_int(value, 0, high):
        raise DocumentError(f"codec state field {key!r} must be an integer 0..{high}", value)
    return value


def _uint16_list(value: Any, length: int, what: str, nullable: bool = False) -> list[Any]:
    if not isinstance(value, list) or len(value) != length:
        raise DocumentError(f"{what} needs {length} values", value)
    for v in value:
        if not (_is_int(v, 0, 0xFFFF) or (nullable and v is None)):
            raise DocumentError(f"{what} holds a value that is not uint16", v)
    return value
