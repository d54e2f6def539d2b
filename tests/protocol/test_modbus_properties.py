"""Properties of protocol.modbus: round trips, CRC error detection, and no untyped error on any input."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol import modbus
from protocol.errors import FrameError

slaves = st.integers(0, 255)
words = st.integers(0, 0xFFFF)
counts = st.integers(1, modbus.MAX_READ_COUNT)


@given(slaves, words, counts)
def test_read_request_round_trip(slave: int, start: int, count: int) -> None:
    frame = modbus.build_read_request(slave, start, count)
    assert len(frame) == 8
    assert modbus.parse_request(frame) == modbus.ReadRequest(slave, start, count)
    assert modbus.parse_request(modbus.from_hex(modbus.to_hex(frame).lower())) == modbus.ReadRequest(
        slave, start, count
    )


@given(slaves, words, words)
def test_write_request_round_trip_and_echo(slave: int, address: int, value: int) -> None:
    frame = modbus.build_write_request(slave, address, value)
    assert modbus.parse_request(frame) == modbus.WriteRequest(slave, address, value)
    assert modbus.parse_response(frame) == modbus.WriteRequest(slave, address, value)


@given(slaves, st.lists(words, min_size=1, max_size=modbus.MAX_READ_COUNT))
def test_read_response_round_trip(slave: int, values: list[int]) -> None:
    frame = modbus.build_read_response(slave, values)
    assert modbus.parse_read_response(frame) == modbus.ReadResponse(slave, tuple(values))
    assert modbus.decode_read_response(frame, len(values)) == tuple(values)
    assert modbus.classify_response(modbus.to_hex(frame)) is modbus.Verdict.PARSE_OK


@given(slaves, st.integers(0, 0x7F), st.integers(0, 255))
def test_exception_round_trip(slave: int, function: int, code: int) -> None:
    frame = modbus.build_exception(slave, function, code)
    assert modbus.parse_response(frame) == modbus.ExceptionResponse(slave, function, code)
    with pytest.raises(FrameError):
        modbus.parse_request(frame)  # an exception frame is never a request
    assert modbus.classify_response(modbus.to_hex(frame)) is modbus.Verdict.PARSE_EXCEPTION


@given(st.binary(min_size=1, max_size=64), st.data())
def test_crc_detects_every_single_bit_error(body: bytes, data: st.DataObject) -> None:
    frame = bytearray(modbus.append_crc(body))
    bit = data.draw(st.integers(0, len(frame) * 8 - 1))
    frame[bit // 8] ^= 1 << (bit % 8)
    assert not modbus.crc_ok(bytes(frame))


@given(st.binary(max_size=300))
def test_hex_round_trip(frame: bytes) -> None:
    text = modbus.to_hex(frame)
    assert text == text.upper()
    assert modbus.from_hex(text) == frame


@given(st.binary(max_size=300))
def test_arbitrary_bytes_into_every_parser(frame: bytes) -> None:
    for parse in (modbus.parse_request, modbus.parse_response, modbus.parse_read_response):
        with contextlib.suppress(FrameError):
            parse(frame)
    for count in (0, 1, 2, 10, 200):
        with contextlib.suppress(FrameError):
            assert len(modbus.decode_read_response(frame, count)) == count
    assert isinstance(modbus.classify_response(frame.hex()), modbus.Verdict)


@given(st.text(max_size=80))
def test_arbitrary_text_into_text_parsers(text: str) -> None:
    assert isinstance(modbus.classify_response(text), modbus.Verdict)
    with contextlib.suppress(FrameError):
        modbus.from_hex(text)
    with contextlib.suppress(FrameError):
        assert isinstance(modbus.frame_from_http_body(text), str)


@given(st.binary(max_size=120) | st.text(max_size=120).map(str.encode))
def test_arbitrary_http_bodies(body: bytes) -> None:
    with contextlib.suppress(FrameError):
        assert isinstance(modbus.frame_from_http_body(body), str)


@given(st.lists(st.integers(0, 9), min_size=1, max_size=10, unique=True))
def test_read_block_covers_any_selection(selection: list[int]) -> None:
    start, count = modbus.read_block(selection)
    block = [1000 + start + i for i in range(count)]
    assert modbus.pick_selection(block, start, selection) == [1000 + a for a in selection]


@pytest.mark.parametrize(
    ("text", "verdict"),
    [
        ("", modbus.Verdict.PARSE_TRUNCATED),
        ("1103040", modbus.Verdict.PARSE_TRUNCATED),
        ("éééé", modbus.Verdict.PARSE_MALFORMED),  # 8 UTF-8 bytes: long enough, not hex
        ("11 03 04 09", modbus.Verdict.PARSE_MALFORMED),
        ("1103040904002a2870", modbus.Verdict.PARSE_OK),  # lowercase hex is accepted
    ],
)
def test_classification_edges(text: str, verdict: modbus.Verdict) -> None:
    assert modbus.classify_response(text) is verdict


@pytest.mark.parametrize(
    "build",
    [
        lambda: modbus.build_read_request(0x11, 0, 0),
        lambda: modbus.build_read_request(0x11, 0, 126),
        lambda: modbus.build_read_request(0x11, 0x10000, 1),
        lambda: modbus.build_write_request(256, 8, 1),
        lambda: modbus.build_write_request(0x11, 8, -1),
        lambda: modbus.build_read_response(0x11, []),
        lambda: modbus.build_exception(0x11, 0x83, 2),
        lambda: modbus.read_block([]),
        lambda: modbus.pick_selection([1, 2], 5, [4]),
    ],
)
def test_out_of_range_fields_are_frame_errors(build) -> None:
    with pytest.raises(FrameError):
        build()


def test_json_body_shapes() -> None:
    assert modbus.frame_from_http_body('{"frame": "11"}') == "11"
    assert modbus.frame_from_http_body("{}") == ""  # missing frame: the firmware sees TRUNCATED
    assert modbus.frame_from_http_body('{"frame": 5}') == ""
    for bad in ("[1]", "nope", b"\xff\xfe"):
        with pytest.raises(FrameError):
            modbus.frame_from_http_body(bad)
