"""`0x50` "semantic" run-length encoding, lossy (§3.6).

    50 | count:u8 | G:u8 | group x G
    group = type:u8 | m:u8 | pos[m]:u8 | run ...      (runs until the group's m values are filled)
    run   = value (1 byte for narrow types, else 2 bytes LE) | length:u8

Registers of one physical type share a group; a run keeps its first value and swallows following
values within the type's tolerance; narrow types keep only the low 8 bits. So a decoded value is
exact only where a run of a wide type starts.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from protocol.compression.batch import Batch, check_layout
from protocol.compression.decoded import Decoded, DecodeStatus, Encoded, PacketFormat
from protocol.errors import CodecError

MARKER = 0x50
MAX_RUN = 255


@dataclass(frozen=True)
class SemanticType:
    code: int
    tolerance: int
    narrow: bool  # the value is stored as its low 8 bits


UNKNOWN = SemanticType(0, 0, False)
TYPES = {
    t.code: t
    for t in (
        UNKNOWN,
        SemanticType(1, 10, False),  # AC voltage
        SemanticType(2, 5, True),  # AC current
        SemanticType(3, 1, True),  # frequency
        SemanticType(4, 15, False),  # PV voltage
        SemanticType(5, 3, True),  # PV current
        SemanticType(6, 5, False),  # temperature
        SemanticType(7, 50, False),  # power
    )
}
# RegID -> type code: Vac1, Iac1, Fac1, Vpv1, Vpv2, Ipv1, Ipv2, Temp, Pow, Pac
REGISTER_TYPE = (1, 2, 3, 4, 4, 5, 5, 6, 7, 7)


def _groups(registers: Sequence[int]) -> dict[int, list[int]]:
    """Positions per type code, types in order of first appearance."""
    groups: dict[int, list[int]] = {}
    for position, reg in enumerate(registers):
        groups.setdefault(REGISTER_TYPE[reg], []).append(position)
    return groups


def encode_semantic(batch: Batch) -> Encoded:
    groups = _groups(batch.registers)
    out = bytearray((MARKER, batch.count & 0xFF, len(groups)))
    for code, positions in groups.items():
        kind = TYPES[code]
        out += bytes((code, len(positions))) + bytes(positions)
        values = [batch.values[p] for p in positions]
        i = 0
        while i < len(values):
            start = values[i]
            length = 1
            while (
                i + length < len(values)
                and abs(values[i + length] - start) <= kind.tolerance
                and length < MAX_RUN
            ):
                length += 1
            out += bytes((start & 0xFF,)) if kind.narrow else struct.pack("<H", start)
            out.append(length)
            i += length
    return Encoded(PacketFormat.SEMANTIC, bytes(out))


def decode_semantic(packet: bytes, layout: Sequence[int], count: int) -> Decoded:
    regs = check_layout(layout)
    if len(packet) < 3 or packet[0] != MARKER:
        raise CodecError("not a 0x50 semantic packet", packet)
    if packet[1] != count:
        raise CodecError(f"semantic packet holds {packet[1]} values, expected {count}", packet)
    values: list[int | None] = [None] * count
    bounds: dict[int, int] = {}  # wide types: within the tolerance of the run's first value
    i = 3
    for _ in range(packet[2]):
        if i + 2 > len(packet):
            raise CodecError("truncated group header", packet)
        code, m = packet[i], packet[i + 1]
        positions = packet[i + 2 : i + 2 + m]
        i += 2 + m
        if code not in TYPES or len(positions) != m:
            raise CodecError("bad group header", packet)
        kind = TYPES[code]
        for p in positions:
            if p >= count or values[p] is not None or REGISTER_TYPE[regs[p % len(regs)]] != code:
                raise CodecError("group position out of range, repeated or of another type", p)
            values[p] = -1  # claimed; filled below
        filled = 0
        while filled < m:
            width = 1 if kind.narrow else 2
            if i + width + 1 > len(packet):
                raise CodecError("truncated run", packet)
            value = packet[i] if kind.narrow else packet[i] | packet[i + 1] << 8
            length = packet[i + width]
            i += width + 1
            if not 0 < length <= m - filled:
                raise CodecError("run length does not fit the group", length)
            for k, p in enumerate(positions[filled : filled + length]):
                values[p] = value
                if not kind.narrow:
                    bounds[p] = kind.tolerance if k else 0
            filled += length
    if i != len(packet):
        raise CodecError("trailing bytes after the last group", packet)
    if any(v is None for v in values):
        raise CodecError("semantic packet leaves positions without a value", packet)
    uncertain = tuple(p for p in range(count) if bounds.get(p) != 0)
    if not uncertain:
        return Decoded(PacketFormat.SEMANTIC, DecodeStatus.EXACT, tuple(v for v in values if v is not None))
    return Decoded(
        PacketFormat.SEMANTIC,
        DecodeStatus.LOSSY,
        tuple(v for v in values if v is not None),
        "run-length values within the type tolerance, narrow types truncated to 8 bits",
        uncertain,
        bounds={p: b for p, b in bounds.items() if b},
    )
