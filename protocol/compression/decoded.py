"""What a decoder says about one packet: its format, its values and how far they can be trusted.

The firmware's formats cannot always tell what was sampled (firmware-protocol.md §3.2, §3.6, §3.8), so a
decoder never returns bare values: it says whether they are exact, ambiguous, lossy or not recoverable,
and why. Garbage (bytes no firmware build would emit) raises CodecError instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum


class PacketFormat(StrEnum):
    """The byte layouts the firmware emits (§3.2-§3.7)."""

    DICTIONARY = "0xD0"
    BITPACK = "0x01"
    RAW = "0x00"
    SEMANTIC = "0x50"
    TEMPORAL_BASE = "0x70"
    TEMPORAL_DELTA = "0x71"
    HEADERLESS_BITPACK = "headerless-bitpack"
    HEADERLESS_RAW = "headerless-raw"


class DecodeStatus(StrEnum):
    EXACT = "exact"  # the values are what the device sampled
    AMBIGUOUS = "ambiguous"  # decoded by the firmware's rule, but some values may have been others
    LOSSY = "lossy"  # the format kept an approximation (0x50 runs and 8-bit truncation)
    UNDECODABLE = "undecodable"  # the format cannot tell: no values


@dataclass(frozen=True)
class Decoded:
    """One decoded packet.

    `values` are raw uint16 register values, sample-major (empty when undecodable). `uncertain` lists
    the positions whose value may differ from what was sampled; for the one-byte deltas of a 0xD0
    packet `readings` gives every value such a position may have had, the firmware's reading (the one
    in `values`) first, and `bounds` the largest possible difference where one is known. Values derived
    from a mirror's approximate state (history, learned entries) are ambiguous too.
    """

    format: PacketFormat | None
    status: DecodeStatus
    values: tuple[int, ...] = ()
    reason: str = ""
    uncertain: tuple[int, ...] = ()
    readings: Mapping[int, tuple[int, ...]] = field(default_factory=dict)
    bounds: Mapping[int, int] = field(default_factory=dict)

    def error(self, position: int) -> int | None:
        """How far the value at `position` may be from the sampled one (None: no bound known)."""
        return self.bounds.get(position) if position in self.uncertain else 0

    @property
    def decodable(self) -> bool:
        return self.status is not DecodeStatus.UNDECODABLE

    def samples(self, register_count: int) -> list[list[int]]:
        """The values as one list per sample."""
        n = register_count
        return [list(self.values[i : i + n]) for i in range(0, len(self.values), n)]

    @classmethod
    def undecodable(cls, fmt: PacketFormat | None, reason: str) -> Decoded:
        return cls(fmt, DecodeStatus.UNDECODABLE, reason=reason)


@dataclass(frozen=True)
class Encoded:
    """One encoder's output for a batch."""

    format: PacketFormat
    packet: bytes
