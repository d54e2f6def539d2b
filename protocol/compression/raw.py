"""`0x00` raw uint16 LE values, and the headerless form of short batches (§3.5).

count > 8:  00 | count:u8 | (lo hi) x count
count <= 8: (lo hi) x count          (no marker: 14 bytes for a single register)
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from protocol.compression.decoded import Decoded, DecodeStatus, Encoded, PacketFormat
from protocol.errors import CodecError

MARKER = 0x00
HEADERLESS_MAX_COUNT = 8


def encode_raw(values: Sequence[int]) -> Encoded:
    body = struct.pack(f"<{len(values)}H", *values)
    if len(values) > HEADERLESS_MAX_COUNT:
        return Encoded(PacketFormat.RAW, bytes((MARKER, len(values) & 0xFF)) + body)
    return Encoded(PacketFormat.HEADERLESS_RAW, body)


def decode_raw(packet: bytes, count: int) -> Decoded:
    if len(packet) < 2 or packet[0] != MARKER:
        raise CodecError("not a 0x00 raw packet", packet)
    if packet[1] != count:
        raise CodecError(f"raw packet holds {packet[1]} values, expected {count}", packet)
    return _values(PacketFormat.RAW, packet[2:], count)


def decode_headerless_raw(packet: bytes, count: int) -> Decoded:
    return _values(PacketFormat.HEADERLESS_RAW, packet, count)


def _values(fmt: PacketFormat, body: bytes, count: int) -> Decoded:
    if len(body) != 2 * count:
        raise CodecError(f"raw body of {count} values needs {2 * count} bytes", body)
    return Decoded(fmt, DecodeStatus.EXACT, struct.unpack(f"<{count}H", body))
