"""SLIP framing as esptool and the ESP32 ROM use it: escaping, stream reassembly, bad bytes."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_emulator.slip import MAX_FRAME, SlipDecoder, decode, encode
from protocol.errors import FrameError, LoaderFrameError

# esptool's SYNC request as it goes on the wire (header 00 08 2400 00000000, then 07 07 12 20 + 32x 55).
SYNC_WIRE = bytes.fromhex("c0000824000000000007071220" + "55" * 32 + "c0")


def test_a_frame_is_delimited_by_c0_and_escapes_c0_and_db() -> None:
    assert encode(b"\x01\xc0\x02\xdb\x03") == bytes.fromhex("c0 01 dbdc 02 dbdd 03 c0")
    assert decode(bytes.fromhex("01 dbdc 02 dbdd 03")) == b"\x01\xc0\x02\xdb\x03"


def test_esptools_sync_request_decodes_to_its_packet() -> None:
    frames = SlipDecoder().feed(SYNC_WIRE)
    assert frames == [SYNC_WIRE[1:-1]]
    assert frames[0][:2] == b"\x00\x08"


@given(st.binary(max_size=600))
def test_decode_undoes_encode(payload: bytes) -> None:
    frame = encode(payload)
    assert frame.count(b"\xc0") == 2  # the body never carries a bare END byte
    assert decode(frame[1:-1]) == payload


@given(st.lists(st.binary(min_size=1, max_size=300), max_size=6), st.data())
def test_frames_survive_any_split_of_the_stream(payloads: list[bytes], data: st.DataObject) -> None:
    wire = b"".join(encode(p) for p in payloads)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    decoder = SlipDecoder()
    received: list[bytes] = []
    for start, end in zip([0, *cuts], [*cuts, len(wire)], strict=True):
        received += decoder.feed(wire[start:end])
    assert received == payloads
    assert not decoder.in_frame


def test_text_between_frames_is_noise_and_does_not_break_the_next_frame() -> None:
    decoder = SlipDecoder()
    frames = decoder.feed(
        b"ets Jun  8 2016 00:22:57\r\n" + encode(b"ok") + b"\r\nmore text" + encode(b"next")
    )
    assert frames == [b"ok", b"next"]
    assert decoder.noise == len(b"ets Jun  8 2016 00:22:57\r\n") + len(b"\r\nmore text")


def test_an_empty_frame_between_two_ends_is_the_start_of_the_next_one() -> None:
    assert SlipDecoder().feed(b"\xc0\xc0\xc0abc\xc0") == [b"abc"]


def test_a_bad_escape_is_a_typed_error_carrying_the_frame() -> None:
    with pytest.raises(LoaderFrameError) as caught:
        decode(b"\x01\xdb\x41\x02")
    assert caught.value.value == b"\x01\xdb\x41\x02"
    assert isinstance(caught.value, FrameError)
    with pytest.raises(LoaderFrameError):
        decode(b"\x01\xdb")  # an escape cut short


def test_the_stream_decoder_drops_a_bad_frame_and_resynchronises() -> None:
    errors: list[LoaderFrameError] = []
    decoder = SlipDecoder(on_error=errors.append)
    frames = decoder.feed(b"\xc0\x01\xdb\x41\xc0" + encode(b"good"))
    assert frames == [b"good"]
    assert decoder.rejected == 1 and len(errors) == 1


def test_an_oversized_frame_is_rejected_without_holding_it_and_the_next_one_decodes() -> None:
    decoder = SlipDecoder(max_frame=64)
    frames = decoder.feed(b"\xc0" + b"\x11" * 1000)
    assert frames == [] and decoder.rejected == 1
    frames = decoder.feed(b"\x11" * 1000 + b"\xc0" + encode(b"after"))
    assert frames == [b"after"]


def test_a_frame_just_over_the_limit_is_rejected_after_unescaping() -> None:
    decoder = SlipDecoder(max_frame=64)
    assert decoder.feed(encode(b"\x01" * 65) + encode(b"\xc0" * 32)) == [
        b"\xc0" * 32
    ]  # 64 bytes on the wire doubled
    assert decoder.rejected == 1


def test_decode_refuses_a_body_longer_than_any_loader_packet() -> None:
    with pytest.raises(LoaderFrameError):
        decode(b"\x00" * (MAX_FRAME + 1))


@given(st.binary(max_size=2000))
def test_decode_returns_bytes_or_a_typed_error_for_any_input(raw: bytes) -> None:
    with contextlib.suppress(LoaderFrameError):
        assert isinstance(decode(raw), bytes)


@given(st.lists(st.binary(max_size=400), max_size=8))
def test_the_stream_decoder_never_fails_on_arbitrary_bytes(chunks: list[bytes]) -> None:
    decoder = SlipDecoder(max_frame=256)
    for chunk in chunks:
        for frame in decoder.feed(chunk):
            assert 0 < len(frame) <= 256
