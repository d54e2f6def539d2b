"""protocol.seed_codecs: the seed server's 0xD0/0xDE/0xAD/0xBF family (firmware-protocol.md §3.9)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import CodecError
from protocol.seed_codecs import SeedMethod, decode_seed, encode_seed


def _f32(x: float) -> float:
    return struct.unpack("<f", struct.pack("<f", x))[0]


def test_dictionary_layout_float_table_then_lsb_first_indexes() -> None:
    packet = encode_seed(SeedMethod.DICTIONARY, [230.5, 50.0, 230.5, 4.25, 50.0])
    assert packet[:3] == bytes((0xD0, 5, 3))
    assert struct.unpack_from("<3f", packet, 3) == (230.5, 50.0, 4.25)
    # 3 patterns -> bit_length(3) = 2 bits per index: 0,1,0,2,1 LSB first -> 0b01_10_00_01_00
    assert packet[15:] == bytes((0b10000100, 0b01))
    assert decode_seed(packet).values == (230.5, 50.0, 230.5, 4.25, 50.0)


def test_delta_layout_base_then_hundredths() -> None:
    packet = encode_seed(SeedMethod.DELTA, [230.0, 230.5, 229.75])
    assert packet == bytes((0xDE, 3)) + struct.pack("<f", 230.0) + struct.pack("<hh", 50, -75)
    assert decode_seed(packet).values == (230.0, 230.5, 229.75)


def test_rle_layout_float_and_count_runs() -> None:
    packet = encode_seed(SeedMethod.RLE, [1.5, 1.5, 1.5, 2.0])
    assert packet == bytes((0xAD, 4)) + struct.pack("<fBfB", 1.5, 3, 2.0, 1)
    assert decode_seed(packet).values == (1.5, 1.5, 1.5, 2.0)


def test_bitpack_layout_lsb_first() -> None:
    packet = encode_seed(SeedMethod.BITPACK, [5, 1, 6])  # 3 bits: 101, 001, 110 LSB first
    assert packet == bytes((0xBF, 3, 3, 0b10001101, 0b1))
    assert decode_seed(packet).values == (5.0, 1.0, 6.0)


@pytest.mark.parametrize(
    "packet",
    [
        bytes((0xBF, 4, 12)),  # the seed decoder "succeeds" here with four fabricated zeros
        bytes((0xD0, 2, 1)) + struct.pack("<f", 1.0) + b"\x02",  # index 1 of a 1-entry table
        bytes((0xAD, 3)) + struct.pack("<fB", 1.0, 4),  # run overflows the total
        bytes((0xAD, 3)) + struct.pack("<fB", 1.0, 2),  # runs fall short
        bytes((0xDE, 0)) + struct.pack("<f", 1.0),
        bytes((0xDE, 2)) + struct.pack("<f", 1.0) + b"\x01",
        bytes((0x01, 7, 3)),  # the firmware's bit-pack marker is not in this family
        b"\xd0",
    ],
)
def test_rejects_what_the_seed_decoder_would_make_up(packet: bytes) -> None:
    with pytest.raises(CodecError):
        decode_seed(packet)


def test_encoders_refuse_what_their_format_cannot_hold() -> None:
    for method, values in [
        (SeedMethod.BITPACK, [1.5]),
        (SeedMethod.BITPACK, [-1]),
        (SeedMethod.DELTA, [0.0, 400.0]),
        (SeedMethod.DELTA, []),
        (SeedMethod.RLE, [1e39]),
        (SeedMethod.DICTIONARY, [0.0] * 256),
    ]:
        with pytest.raises(CodecError):
            encode_seed(method, values)


finite = st.floats(allow_nan=False, allow_infinity=False, width=32)


@given(st.sampled_from([SeedMethod.DICTIONARY, SeedMethod.RLE]), st.lists(finite, max_size=60))
def test_float_formats_round_trip_float32_values(method: SeedMethod, values: list[float]) -> None:
    assert decode_seed(encode_seed(method, values)).values == tuple(values)


@given(st.lists(st.integers(0, 2**32 - 1), max_size=60))
def test_bitpack_round_trips_integers(values: list[int]) -> None:
    assert decode_seed(encode_seed(SeedMethod.BITPACK, values)).values == tuple(float(v) for v in values)


@given(st.lists(st.integers(-100_000, 100_000), min_size=1, max_size=60))
def test_delta_round_trips_hundredths_within_half_a_hundredth(centi: list[int]) -> None:
    values = [c / 100 for c in centi]
    try:
        packet = encode_seed(SeedMethod.DELTA, values)
    except CodecError:  # a step beyond +-327.67
        assert any(abs(b - a) > 327 for a, b in zip(values, values[1:], strict=False))
        return
    decoded = decode_seed(packet).values
    assert decoded[0] == _f32(values[0])
    assert all(abs(d - v) <= 0.006 + abs(v) * 1e-6 for d, v in zip(decoded, values, strict=True))


@given(st.binary(max_size=120))
def test_arbitrary_bytes_decode_to_values_or_codec_error(packet: bytes) -> None:
    try:
        result = decode_seed(packet)
    except CodecError:
        return
    assert result.method == packet[0] and len(result.values) == packet[1]
