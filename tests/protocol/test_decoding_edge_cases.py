"""Edge cases of the cloud's hot decoding paths (strict JSON reading, 0xD0 tokens, the history ring)
that their shortcuts must keep: the same values and the same typed errors as the plain rules."""

from __future__ import annotations

import struct

import pytest

from protocol.compression import CodecState, DecodeStatus, PacketFormat, TemporalHistory, decode_as
from protocol.errors import CodecError, DocumentError
from protocol.json_wire import load_object
from protocol.upload_document import parse_upload_document


def _message(body: bytes | str) -> str:
    with pytest.raises(DocumentError) as caught:
        load_object(body, DocumentError, "thing")
    return str(caught.value)


def test_a_duplicate_key_is_named_by_its_first_repetition_at_any_depth() -> None:
    assert "duplicate key 'b'" in _message(b'{"a":1,"b":2,"b":3,"a":4}')
    assert "duplicate key 'k'" in _message('{"x":{"k":1,"k":2},"y":1,"y":2}')


def test_a_byte_order_mark_is_refused_as_json_refuses_it() -> None:
    assert "Unexpected UTF-8 BOM" in _message("\ufeff{}")
    assert "Unexpected UTF-8 BOM" in _message(b"\xef\xbb\xbf{}")


def test_a_missing_field_and_a_wrong_one_get_different_errors() -> None:
    fields = load_object(b'{"n":"1","f":true,"s":5,"o":[],"b":0}', DocumentError, "thing")
    for getter, key, expected in [
        (fields.integer, "n", "an integer"),
        (fields.number, "f", "a number"),
        (fields.text, "s", "a string"),
        (fields.obj, "o", "an object"),
        (fields.boolean, "b", "true or false"),
        (fields.array, "b", "an array"),
    ]:
        with pytest.raises(DocumentError, match=f"thing.{key} must be {expected}"):
            getter(key)
        with pytest.raises(DocumentError, match="thing lacks 'missing'"):
            getter("missing")


def test_an_upload_document_names_the_nested_field_at_fault() -> None:
    with pytest.raises(DocumentError, match=r"compressed_data\[0\]\.decompression_metadata lacks 'method'"):
        parse_upload_document(
            b'{"device_id":"d","timestamp":1,"data_type":"x","total_samples":1,"register_mapping":{},'
            b'"compressed_data":[{"compressed_binary":"","decompression_metadata":{}}]}'
        )


def _d0(tokens: bytes, count: int = 7, mask: int = 0x7F) -> bytes:
    return bytes((0xD0, 0, count)) + struct.pack("<H", mask) + tokens


def test_one_byte_and_16_bit_tokens_decode_alike_in_one_packet() -> None:
    layout = (9,)  # Pac: 4200 in entry 0
    tokens = bytes((0x81, 0xFF, 0xC0, 0xBF)) + b"\x00" + struct.pack("<h", 300) + bytes((0x82, 0x83))
    decoded = decode_as(PacketFormat.DICTIONARY, _d0(tokens), layout, CodecState())
    assert decoded.status is DecodeStatus.AMBIGUOUS
    assert decoded.values == (4201, 4199, 4136, 4263, 4500, 4202, 4203)
    assert decoded.readings == {1: (4199, 4327, 4135), 2: (4136, 4264)}
    assert decoded.bounds == {1: 128, 2: 128} and decoded.uncertain == (1, 2)


def test_readings_of_ambiguous_tokens_wrap_around_uint16() -> None:
    state = CodecState()
    state.patterns[0] = (0,) * 10
    decoded = decode_as(PacketFormat.DICTIONARY, _d0(bytes((0xFF,)) + bytes((0x81,)) * 6), (9,), state)
    assert decoded.values[0] == 0xFFFF and decoded.readings[0] == (0xFFFF, 127, 0xFFBF)
    assert decoded.bounds[0] == 0xFFFF - 127


@pytest.mark.parametrize(
    ("tokens", "message"),
    [
        (bytes((0x81, 0x80)) + bytes((0x81,)) * 5, "zero delta token"),
        (bytes((0x81, 0x7F)) + bytes((0x81,)) * 5, "invalid delta token byte"),
        (bytes((0x81,)) * 6 + b"\x00\x01", "truncated 16-bit delta token"),
        (bytes((0x81,)) * 6 + b"\x00\x05\x00", "16-bit token for a one-byte delta"),
    ],
)
def test_bad_tokens_are_codec_errors(tokens: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        decode_as(PacketFormat.DICTIONARY, _d0(tokens), (9,), CodecState())


def test_history_keeps_the_last_value_of_each_register_even_when_a_layout_repeats_one() -> None:
    history = TemporalHistory()
    history.record((3, 5, 3), [1, 2, 3, 4, 5, 6], [0, 1, 2, 3, 4, None])
    assert history.rows[0][3] == 6 and history.rows[0][5] == 5
    assert history.errors[0][3] is None and history.errors[0][5] == 4
    history.record((1, 2, 4), [7, 8])  # fewer values than the layout: both kept
    assert history.rows[1][1:5] == [7, 8, 0, 0] and history.previous_count == 2
