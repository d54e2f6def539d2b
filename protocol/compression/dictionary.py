"""`0xD0` dictionary + 16-bit mask + delta tokens (§3.2).

    D0 | index:u8 | count:u8 | mask:u16 LE | token per non-zero delta, in position order
    token: -127..127 -> 0x80 | (d & 0x7F) | (0x40 if d < 0);   else 00 | int16 LE

The mask follows the ESP32 (Xtensa) build: a non-zero delta at position i sets bit (i mod 32) when
that is below 16, so positions 16..31 and 48..63 set nothing and 32..47, 64..69 alias onto bits
0..15. A receiver can therefore only place the tokens when every position that may hold one does.
One-byte tokens are ambiguous for negative readings (the encoder folds 64..127 and -127..-65 onto
them); the decoder applies the firmware's reading and reports the alternatives.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from functools import lru_cache

from protocol.compression.batch import Batch, check_layout
from protocol.compression.decoded import Decoded, DecodeStatus, Encoded, PacketFormat
from protocol.compression.state import MAX_PATTERNS, CodecState, add_bounds, closest_pattern
from protocol.errors import CodecError

MARKER = 0xD0
HEADER_LEN = 5
MASK_BITS = 16
SHIFT_WRAP = 32  # Xtensa shift amounts are taken mod 32


def _int16(value: int) -> int:
    return (value + 0x8000) % 0x10000 - 0x8000


def mask_bit(position: int) -> int:
    """The mask bit a non-zero delta at `position` sets (0 when it sets none)."""
    return (1 << position % SHIFT_WRAP) & 0xFFFF


def _token(delta: int) -> bytes:
    if -127 <= delta <= 127:
        return bytes((0x80 | delta & 0x7F | (0x40 if delta < 0 else 0),))
    return b"\x00" + struct.pack("<h", delta)


def encode_dictionary(batch: Batch, patterns: Sequence[Sequence[int]]) -> Encoded | None:
    """The 0xD0 packet, or None when no dictionary entry matches (the firmware then sends binary)."""
    index = closest_pattern(batch, patterns)
    if index is None:
        return None
    pattern = patterns[index]
    mask = 0
    tokens = bytearray()
    for position, (value, reg) in enumerate(zip(batch.values, batch.registers, strict=True)):
        delta = _int16(value - pattern[reg])
        if delta:
            mask |= mask_bit(position)
            tokens += _token(delta)
    header = bytes((MARKER, index, batch.count & 0xFF)) + struct.pack("<H", mask)
    return Encoded(PacketFormat.DICTIONARY, header + bytes(tokens))


def _one_byte_readings(b: int) -> tuple[int, ...]:
    """The possible deltas of one-byte token `b` (0x81..0xFF), the firmware's reading first."""
    t = b & 0x7F
    if not b & 0x40:
        return (t,)
    return (t - 128, t) + ((t - 192,) if t >= 65 else ())


# Every one-byte token's readings, computed once: a cloud parses tokens for every 0xD0 packet.
_ONE_BYTE = {b: _one_byte_readings(b) for b in range(0x81, 0x100)}


def _parse_tokens(body: bytes) -> list[tuple[int, ...]]:
    """Every token's possible deltas, the firmware's reading first."""
    if body and min(body) > 0x80:  # only one-byte tokens (the usual packet): one look-up per byte
        return [_ONE_BYTE[b] for b in body]
    tokens: list[tuple[int, ...]] = []
    i = 0
    while i < len(body):
        b = body[i]
        if b in _ONE_BYTE:
            tokens.append(_ONE_BYTE[b])
            i += 1
        elif b == 0x00:
            if i + 3 > len(body):
                raise CodecError("truncated 16-bit delta token", body)
            (delta,) = struct.unpack_from("<h", body, i + 1)
            if -127 <= delta <= 127:
                raise CodecError("16-bit token for a one-byte delta", body)
            tokens.append((delta,))
            i += 3
        elif b == 0x80:
            raise CodecError("zero delta token", body)
        else:
            raise CodecError("invalid delta token byte", b)
    return tokens


@lru_cache(maxsize=256)
def _mask_bits(count: int) -> tuple[int, tuple[int, ...]]:
    """Every mask bit a batch of `count` values can set, and the bit of each position (computed once:
    this runs for every dictionary packet a cloud decodes)."""
    bits = tuple(mask_bit(position) for position in range(count))
    reachable = 0
    for bit in bits:
        reachable |= bit
    return reachable, bits


@lru_cache(maxsize=1024)
def _candidates(mask: int, count: int) -> tuple[int, ...]:
    """The positions that may carry a token under `mask` (cached: a device's masks repeat)."""
    _, bits = _mask_bits(count)
    return tuple([p for p, bit in enumerate(bits) if not bit or mask & bit])


def token_positions(mask: int, count: int, tokens: int) -> list[int] | None:
    """The positions carrying the tokens, None when the mask cannot tell; CodecError if inconsistent."""
    reachable, _ = _mask_bits(count)
    if mask & ~reachable:
        raise CodecError("mask bit for a position outside the batch", mask)
    candidates = list(_candidates(mask, count))
    if not mask.bit_count() <= tokens <= len(candidates):
        raise CodecError(f"{tokens} tokens do not fit mask {mask:#06x} of {count} values", tokens)
    return candidates if tokens == len(candidates) else None


@lru_cache(maxsize=4096)
def _readings(base: int, deltas: tuple[int, ...]) -> tuple[tuple[int, ...], int]:
    """The values an ambiguous token can give over `base`, the firmware's first, and their largest
    distance from it (cached: a device's entries and deltas recur from packet to packet)."""
    options = tuple([(base + d) & 0xFFFF for d in deltas])
    first = options[0]
    # Two or three options and the first is at distance 0: the other one or two decide.
    return options, max(abs(options[1] - first), abs(options[-1] - first))


def decode_dictionary(packet: bytes, layout: Sequence[int], state: CodecState, count: int) -> Decoded:
    regs = check_layout(layout)
    if len(packet) < HEADER_LEN or packet[0] != MARKER:
        raise CodecError("not a 0xD0 dictionary packet", packet)
    index, packet_count = packet[1], packet[2]
    if packet_count != count:
        raise CodecError(f"dictionary packet holds {packet_count} values, expected {count}", packet)
    if index >= MAX_PATTERNS:
        raise CodecError("dictionary index beyond the 15 entries", index)
    (mask,) = struct.unpack_from("<H", packet, 3)
    tokens = _parse_tokens(packet[HEADER_LEN:])
    positions = token_positions(mask, count, len(tokens))
    fmt = PacketFormat.DICTIONARY
    if state.doubtful_from is not None and index >= state.doubtful_from:
        return Decoded.undecodable(fmt, "dictionary entry learned across a packet the mirror could not read")
    if index >= len(state.patterns):
        return Decoded.undecodable(fmt, "dictionary entry not in the mirrored state: packets were lost")
    if positions is None:
        # Too few tokens for the candidate positions: which ones had a zero delta is not recorded.
        return Decoded.undecodable(fmt, "16-bit mask cannot place the deltas of positions >= 16")
    pattern = state.patterns[index]
    pattern_errors = state.pattern_errors.get(index)
    registers = regs * (count // len(regs))
    values = [pattern[reg] for reg in registers]
    readings: dict[int, tuple[int, ...]] = {}
    bounds: dict[int, int | None] = {}
    for position, deltas in zip(positions, tokens, strict=True):
        if len(deltas) == 1:
            values[position] = (values[position] + deltas[0]) & 0xFFFF
            continue
        options, bounds[position] = _readings(values[position], deltas)
        values[position] = options[0]
        readings[position] = options
    if pattern_errors:  # an entry the mirror learned from approximate values
        for position, reg in enumerate(registers):
            if pattern_errors[reg] != 0:
                bounds[position] = add_bounds([bounds.get(position, 0), pattern_errors[reg]])
                # Readings listed from an approximate base are not all the value could have been.
                readings.pop(position, None)
    if not bounds:
        return Decoded(fmt, DecodeStatus.EXACT, tuple(values))
    reason = "one-byte deltas with more than one reading" if readings else ""
    if any(pattern_errors or ()):
        reason = ", ".join(filter(None, (reason, "entry learned from approximate values")))
    return Decoded(
        fmt,
        DecodeStatus.AMBIGUOUS,
        tuple(values),
        reason,
        tuple(sorted(bounds)),
        readings,
        {p: b for p, b in bounds.items() if b is not None},
    )
