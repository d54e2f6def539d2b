"""JSON on the wire: the firmware's number format, strict reading, the firmware's lenient reading."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.errors import DocumentError
from protocol.json_wire import dumps, firmware_int, firmware_true, format_float, load_object

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=12,
)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (47 / 84, "0.5595238"),  # from the recorded firmware documents
        (-291.666666, "-291.6667"),
        (1.0, "1"),  # ArduinoJson prints whole floats without a fraction
        (0.0, "0"),
        (100.0, "100"),
        (2.5e-5, "0.000025"),
        (1.5e-6, "1.5e-6"),  # below ArduinoJson's threshold: scientific, no '+' or leading zeros
        (123456789.0, "1.234568e8"),
        (float("nan"), "null"),
        (float("inf"), "null"),
    ],
)
def test_floats_are_printed_like_the_firmware(value: float, text: str) -> None:
    assert format_float(value) == text


def test_dumps_is_compact_and_keeps_key_order() -> None:
    assert (
        dumps({"b": 1, "a": [True, None, "x"], "c": {"z": 0.5}})
        == b'{"b":1,"a":[true,null,"x"],"c":{"z":0.5}}'
    )


@given(json_values)
def test_dumps_output_is_json_that_reads_back(value: object) -> None:
    text = dumps({"v": value})
    reparsed = json.loads(text)["v"]
    # The same text again: reading and writing is a fixed point (floats are rounded only once).
    assert dumps({"v": reparsed}) == text


@pytest.mark.parametrize(
    "body",
    [
        b"\xff\xfe",  # not UTF-8
        b"[1, 2]",  # not an object
        b'{"a": 1, "a": 2}',  # duplicate key
        b'{"a": NaN}',
        b'{"a": 1e999}',
        b"[" * 100_000,  # nesting bomb
        b'{"a": ' + b"9" * 5000 + b"}",  # beyond Python's int-digits limit
        b"",
    ],
)
def test_unacceptable_json_is_a_typed_error(body: bytes) -> None:
    with pytest.raises(DocumentError):
        load_object(body, DocumentError, "thing")


@given(st.binary(max_size=200))
def test_arbitrary_bytes_load_or_raise_the_callers_error(data: bytes) -> None:
    try:
        fields = load_object(data, DocumentError, "thing")
    except DocumentError:
        return
    assert isinstance(fields.data, dict)


def test_getters_name_the_field_and_carry_the_value() -> None:
    fields = load_object(b'{"n": true, "s": 5}', DocumentError, "doc")
    with pytest.raises(DocumentError, match=r"doc\.n must be an integer") as info:
        fields.integer("n")
    assert info.value.value is True
    with pytest.raises(DocumentError, match="lacks 'missing'"):
        fields.text("missing")


@pytest.mark.parametrize(
    ("value", "read"),
    [(50, 50), (50.5, 0), ("50", 0), (True, 0), (None, 0), (2**31, 0), (-(2**31), -(2**31))],
)
def test_the_firmware_reads_non_integers_as_zero(value: object, read: int) -> None:
    assert firmware_int(value) == read


@pytest.mark.parametrize(("value", "read"), [(True, True), (1, False), ("true", False), (None, False)])
def test_the_firmware_only_takes_json_true_as_true(value: object, read: bool) -> None:
    assert firmware_true(value) is read
