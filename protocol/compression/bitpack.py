"""`0x01` bit-packed values, MSB first, and the headerless form of short batches (§3.4).

[01 | bits:u8 | count:u8] | count fields of `bits` bits, MSB first, last byte zero-padded
"""

from __future__ import annotations

from collections.abc import Sequence

from protocol.compression.decoded import Decoded, DecodeStatus, Encoded, PacketFormat
from protocol.errors import CodecError

MARKER = 0x01
HEADER_LEN = 3
HEADERLESS_MAX_COUNT = 8
MAX_BITS = 16


def packed_len(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


def has_header(count: int, bits: int) -> bool:
    """The firmware drops the header only for short batches where it would not pay for itself."""
    return count > HEADERLESS_MAX_COUNT or packed_len(count, bits) + HEADER_LEN < 2 * count


def pack(values: Sequence[int], bits: int) -> bytes:
    acc = 0
    for v in values:
        acc = acc << bits | v
    total = len(values) * bits
    pad = -total % 8
    return (acc << pad).to_bytes((total + pad) // 8, "big")


def unpack(data: bytes, count: int, bits: int) -> tuple[int, ...]:
    if not 1 <= bits <= MAX_BITS:
        raise CodecError("bit width must be 1..16", bits)
    if len(data) != packed_len(count, bits):
        raise CodecError(f"{count} values of {bits} bits need {packed_len(count, bits)} bytes", data)
    acc = int.from_bytes(data, "big")
    pad = len(data) * 8 - count * bits
    if acc & ((1 << pad) - 1):
        raise CodecError("non-zero padding bits", data)
    acc >>= pad
    mask = (1 << bits) - 1
    return tuple(acc >> (bits * (count - 1 - i)) & mask for i in range(count))


def encode_bitpack(values: Sequence[int], bits: int) -> Encoded:
    """Bit-pack `values` (each < 2**bits), with the header unless the firmware would drop it."""
    body = pack(values, bits)
    count = len(values)
    if has_header(count, bits):
        return Encoded(PacketFormat.BITPACK, bytes((MARKER, bits, count & 0xFF)) + body)
    return Encoded(PacketFormat.HEADERLESS_BITPACK, body)


def decode_bitpack(packet: bytes, count: int) -> Decoded:
    if len(packet) < HEADER_LEN or packet[0] != MARKER:
        raise CodecError("not a 0x01 bit-packed packet", packet)
    if packet[2] != count:
        raise CodecError(f"bit-packed packet holds {packet[2]} values, expected {count}", packet)
    return Decoded(PacketFormat.BITPACK, DecodeStatus.EXACT, unpack(packet[3:], count, packet[1]))


def headerless_widths(length: int, count: int) -> list[int]:
    """Bit widths a headerless bit-packed packet of this length can have (the firmware uses 8..15)."""
    return [
        bits
        for bits in range(8, 16)
        if not has_header(count, bits) and packed_len(count, bits) == length and length < 2 * count
    ]


def decode_headerless_bitpack(packet: bytes, count: int, bits: int) -> Decoded:
    return Decoded(PacketFormat.HEADERLESS_BITPACK, DecodeStatus.EXACT, unpack(packet, count, bits))
