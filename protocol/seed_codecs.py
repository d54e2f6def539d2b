"""The seed server's codec family (firmware-protocol.md §3.9): 0xD0 float dictionary, 0xDE, 0xAD, 0xBF.

A second, separate family: its 0xD0 shares nothing with the firmware's but the marker, so the caller
decides which family a packet belongs to (the firmware's packets go to `protocol.compression`).
The layouts are those the seed server's decoder reads; values are float32 where the format stores
floats. Unlike the seed decoder, this one rejects what an encoder cannot have produced: truncated
bit streams (the seed reads missing bits as zeros), indexes outside the dictionary, runs that
overflow the stated total, trailing bytes.

    D0 | n:u8 | k:u8 | float32 LE x k | index per value, bit_length(k) bits each, LSB first
    DE | n:u8 | float32 base | int16 LE x (n-1)      value[i] = value[i-1] + delta / 100
    AD | total:u8 | (float32 value | count:u8) ...
    BF | n:u8 | bits:u8 | values of `bits` bits, LSB first, in an LSB-first bit stream
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from protocol.errors import CodecError

MAX_VALUES = 255
MAX_BITPACK_BITS = 32


class SeedMethod(IntEnum):
    DICTIONARY = 0xD0
    DELTA = 0xDE
    RLE = 0xAD
    BITPACK = 0xBF


@dataclass(frozen=True)
class SeedPacket:
    method: SeedMethod
    values: tuple[float, ...]


def _f32(value: float) -> bytes:
    try:
        return struct.pack("<f", value)
    except (OverflowError, struct.error):
        raise CodecError("value does not fit a float32", value) from None


def _as_f32(value: float) -> float:
    result: float = struct.unpack("<f", _f32(value))[0]
    return result


def _pack_lsb(values: Sequence[int], bits: int) -> bytes:
    acc = 0
    for i, v in enumerate(values):
        acc |= v << (i * bits)
    return acc.to_bytes((len(values) * bits + 7) // 8, "little")


def _unpack_lsb(data: bytes, count: int, bits: int) -> list[int]:
    if len(data) != (count * bits + 7) // 8:
        raise CodecError(f"{count} values of {bits} bits need {(count * bits + 7) // 8} bytes", data)
    acc = int.from_bytes(data, "little")
    if acc >> (count * bits):
        raise CodecError("non-zero padding bits", data)
    mask = (1 << bits) - 1
    return [acc >> (i * bits) & mask for i in range(count)]


def encode_seed(method: SeedMethod, values: Sequence[float]) -> bytes:
    """Encode `values` in one of the seed formats (CodecError if the format cannot hold them)."""
    if len(values) > MAX_VALUES:
        raise CodecError(f"seed packets hold at most {MAX_VALUES} values", len(values))
    n = len(values)
    match method:
        case SeedMethod.DICTIONARY:
            table: dict[bytes, int] = {}
            for v in values:
                table.setdefault(_f32(v), len(table))
            if len(table) > MAX_VALUES:
                raise CodecError("too many distinct values for the dictionary", len(table))
            indexes = [table[_f32(v)] for v in values]
            head = bytes((method, n, len(table))) + b"".join(table)
            return head + _pack_lsb(indexes, len(table).bit_length())
        case SeedMethod.DELTA:
            if not values:
                raise CodecError("a delta packet needs a base value", n)
            base = _as_f32(values[0])
            out = bytearray((method, n)) + _f32(base)
            current = base
            for v in values[1:]:
                step = round((v - current) * 100) if math.isfinite(v - current) else None
                if step is None or not -0x8000 <= step <= 0x7FFF:
                    raise CodecError("delta does not fit an int16 of hundredths", v)
                out += struct.pack("<h", step)
                current = current + step / 100.0
            return bytes(out)
        case SeedMethod.RLE:
            out = bytearray((method, n))
            i = 0
            while i < n:
                run = 1
                while i + run < n and run < MAX_VALUES and _f32(values[i + run]) == _f32(values[i]):
                    run += 1
                out += _f32(values[i]) + bytes((run,))
                i += run
            return bytes(out)
        case SeedMethod.BITPACK:
            ints = []
            for v in values:
                if not (math.isfinite(v) and v >= 0 and float(v).is_integer()):
                    raise CodecError("bit-packing takes non-negative integers", v)
                ints.append(int(v))
            bits = max([1, *(i.bit_length() for i in ints)])
            if bits > MAX_BITPACK_BITS:
                raise CodecError(f"values need more than {MAX_BITPACK_BITS} bits", bits)
            return bytes((method, n, bits)) + _pack_lsb(ints, bits)
    raise CodecError("unknown seed method", method)


def decode_seed(packet: bytes) -> SeedPacket:
    """Decode one seed-family packet; CodecError for anything its encoder cannot have produced."""
    if len(packet) < 2:
        raise CodecError("seed packet too short", packet)
    try:
        method = SeedMethod(packet[0])
    except ValueError:
        raise CodecError("unknown seed marker", packet[0]) from None
    n = packet[1]
    match method:
        case SeedMethod.DICTIONARY:
            if len(packet) < 3:
                raise CodecError("dictionary packet too short", packet)
            k = packet[2]
            end = 3 + 4 * k
            if len(packet) < end:
                raise CodecError("truncated dictionary", packet)
            table = struct.unpack_from(f"<{k}f", packet, 3)
            indexes = _unpack_lsb(packet[end:], n, k.bit_length())
            if any(i >= k for i in indexes):
                raise CodecError("index outside the dictionary", indexes)
            return SeedPacket(method, tuple(table[i] for i in indexes))
        case SeedMethod.DELTA:
            if n == 0 or len(packet) != 6 + 2 * (n - 1):
                raise CodecError(f"delta packet of {n} values needs {6 + 2 * max(n - 1, 0)} bytes", packet)
            current: float = struct.unpack_from("<f", packet, 2)[0]
            values = [current]
            for (step,) in struct.iter_unpack("<h", packet[6:]):
                current = current + step / 100.0
                values.append(current)
            return SeedPacket(method, tuple(values))
        case SeedMethod.RLE:
            body = packet[2:]
            if len(body) % 5:
                raise CodecError("run-length body is not whole (float32, count) runs", packet)
            runs: list[float] = []
            for value, count in struct.iter_unpack("<fB", body):
                if count == 0 or len(runs) + count > n:
                    raise CodecError("run does not fit the stated total", count)
                runs.extend([value] * count)
            if len(runs) != n:
                raise CodecError(f"runs cover {len(runs)} of {n} values", packet)
            return SeedPacket(method, tuple(runs))
        case SeedMethod.BITPACK:
            if len(packet) < 3 or not 1 <= packet[2] <= MAX_BITPACK_BITS:
                raise CodecError(f"bit width must be 1..{MAX_BITPACK_BITS}", packet[2:3])
            ints = _unpack_lsb(packet[3:], n, packet[2])
            return SeedPacket(method, tuple(float(i) for i in ints))
    raise CodecError("unknown seed method", method)
