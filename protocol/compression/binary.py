"""The firmware's binary encoder (`compressBinary`, §3.3): bit-pack when it pays, raw otherwise."""

from __future__ import annotations

from collections.abc import Sequence

from protocol.compression.bitpack import HEADER_LEN, encode_bitpack, has_header, packed_len
from protocol.compression.decoded import Encoded
from protocol.compression.raw import encode_raw

MIN_PACK_BITS = 8
MAX_PACK_BITS = 15


def value_width(values: Sequence[int]) -> int:
    """The smallest b with 2**b > max(values)."""
    return max(values).bit_length()


def encode_binary(values: Sequence[int]) -> Encoded:
    count = len(values)
    bits = value_width(values)
    if MIN_PACK_BITS <= bits <= MAX_PACK_BITS:
        total = packed_len(count, bits) + (HEADER_LEN if has_header(count, bits) else 0)
        if total < 2 * count:
            return encode_bitpack(values, bits)
    return encode_raw(values)
