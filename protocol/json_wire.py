"""JSON on the wire: compact writing in the firmware's format, strict reading into typed errors.

Writing follows what the firmware's ArduinoJson emits: no spaces, keys in insertion order, integers
as integers, floats with 7 significant digits (what the recorded vectors show), whole floats without a
fraction ("1", not "1.0"), scientific notation only beyond ArduinoJson's thresholds, and `null` for
NaN/Infinity.

Reading is strict so that every parser can promise "a value or a typed error": bytes must be UTF-8,
the top level an object, keys unique (a duplicate key is a smuggling vector), numbers finite. Field
access goes through `JsonObject`, whose getters raise the caller's error class with the offending value.

`firmware_int` / `firmware_true` model how the firmware *reads* numbers and booleans (`doc["x"] | 0`):
anything that is not a JSON integer in range becomes 0, anything that is not JSON `true` is false.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from protocol.errors import EcoWattError

# ArduinoJson switches to scientific notation outside this band.
_POSITIVE_EXPONENT_THRESHOLD = 1e7
_NEGATIVE_EXPONENT_THRESHOLD = 1e-5
_SIGNIFICANT_DIGITS = 7

INT32_MIN = -(2**31)
INT32_MAX = 2**31 - 1
UINT32_MAX = 2**32 - 1


# --- writing ---------------------------------------------------------------------------------------


def format_float(value: float) -> str:
    """A float as the firmware prints it (7 significant digits, trailing zeros dropped)."""
    if not math.isfinite(value):
        return "null"
    if value == 0:
        return "0"
    text = f"{value:.{_SIGNIFICANT_DIGITS}g}"
    magnitude = abs(value)
    if _NEGATIVE_EXPONENT_THRESHOLD < magnitude < _POSITIVE_EXPONENT_THRESHOLD:
        if "e" in text:  # %g chose an exponent that ArduinoJson would not use
            text = format(Decimal(text), "f")
        return _strip_zeros(text)
    mantissa, _, exponent = f"{value:.{_SIGNIFICANT_DIGITS - 1}e}".partition("e")
    return f"{_strip_zeros(mantissa)}e{int(exponent)}"


def _strip_zeros(text: str) -> str:
    return text.rstrip("0").rstrip(".") if "." in text else text


def _write(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif isinstance(value, bool):
        out.append("true" if value else "false")
    elif isinstance(value, int):
        out.append(str(value))
    elif isinstance(value, float):
        out.append(format_float(value))
    elif isinstance(value, str):
        out.append(json.dumps(value, ensure_ascii=False))
    elif isinstance(value, Mapping):
        out.append("{")
        for i, (key, item) in enumerate(value.items()):
            if not isinstance(key, str):
                raise TypeError(f"JSON object keys must be str, not {type(key).__name__}")
            if i:
                out.append(",")
            out.append(json.dumps(key, ensure_ascii=False))
            out.append(":")
            _write(item, out)
        out.append("}")
    elif isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _write(item, out)
        out.append("]")
    else:
        raise TypeError(f"cannot write {type(value).__name__} as JSON")


def dumps(value: Any) -> bytes:
    """Compact UTF-8 JSON in the firmware's format; dict keys keep their insertion order."""
    out: list[str] = []
    _write(value, out)
    return "".join(out).encode("utf-8")


# --- reading ---------------------------------------------------------------------------------------


class _Rejected(ValueError):
    """Raised inside the json hooks; turned into the caller's typed error."""


def _unique_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)  # built in C: a repeated key shows as a shorter dict
    if len(result) < len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Rejected(f"duplicate key {key!r}")
            seen.add(key)
    return result


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _Rejected(f"number out of range: {text[:20]}")
    return value


def _no_constants(text: str) -> Any:
    raise _Rejected(f"{text} is not JSON")


_HOOKS: dict[str, Any] = {
    "object_pairs_hook": _unique_pairs,
    "parse_float": _finite_float,
    "parse_constant": _no_constants,
}
# json.loads builds a new decoder on every call with hooks; one shared decoder saves that (it keeps
# no state between calls). Only json.loads refuses a BOM or a non-text argument, so those still go there.
_DECODER = json.JSONDecoder(**_HOOKS)


def load_object(data: bytes | str, error: type[EcoWattError], what: str) -> JsonObject:
    """Parse `data` as one JSON object, or raise `error` saying why."""
    if isinstance(data, bytes | bytearray):
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise error(f"{what} is not UTF-8 text", exc.start) from None
    else:
        text = data
    try:
        if isinstance(text, str) and not text.startswith("\ufeff"):
            value = _DECODER.decode(text)
        else:
            value = json.loads(text, **_HOOKS)
    except _Rejected as exc:
        raise error(f"{what} is not acceptable JSON: {exc}") from None
    except ValueError as exc:  # JSONDecodeError, and the int-digits limit
        raise error(f"{what} is not valid JSON: {str(exc)[:80]}") from None
    except RecursionError:
        raise error(f"{what} is nested too deeply") from None
    if not isinstance(value, dict):
        raise error(f"{what} must be a JSON object", type(value).__name__)
    return JsonObject(value, error, what)


_MISSING = object()  # what a getter sees for an absent key: it passes no type check


class JsonObject:
    """Typed access to a parsed JSON object; every getter raises the owner's error class."""

    def __init__(self, data: dict[str, Any], error: type[EcoWattError], where: str) -> None:
        self.data = data
        self.error = error
        self.where = where

    def __contains__(self, key: str) -> bool:
        return key in self.data

    # The getters read with `data.get(key, _MISSING)` and tell a missing key from a wrong value only
    # on failure: these run for every field of every upload, and a call less per field counts.
    def _wrong(self, key: str, expected: str, value: Any) -> EcoWattError:
        if value is _MISSING:
            return self.error(f"{self.where} lacks {key!r}")
        return self.fail(key, expected, value)

    def fail(self, key: str, expected: str, value: Any) -> EcoWattError:
        return self.error(f"{self.where}.{key} must be {expected}", value)

    def integer(self, key: str, minimum: int | None = None, maximum: int | None = None) -> int:
        value = self.data.get(key, _MISSING)
        if type(value) is not int and not is_integer(value):  # the usual case without a call
            raise self._wrong(key, "an integer", value)
        if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
            bounds = f"{'' if minimum is None else minimum}..{'' if maximum is None else maximum}"
            raise self.fail(key, f"in {bounds}", value)
        result: int = value
        return result

    def number(self, key: str) -> float:
        value = self.data.get(key, _MISSING)
        if type(value) is not float and (isinstance(value, bool) or not isinstance(value, int | float)):
            raise self._wrong(key, "a number", value)
        return float(value)

    def text(self, key: str, *, allow_empty: bool = True) -> str:
        value = self.data.get(key, _MISSING)
        if not isinstance(value, str) or (not allow_empty and not value):
            raise self._wrong(key, "a string" if allow_empty else "a non-empty string", value)
        return value

    def boolean(self, key: str) -> bool:
        value = self.data.get(key, _MISSING)
        if not isinstance(value, bool):
            raise self._wrong(key, "true or false", value)
        return value

    def obj(self, key: str) -> JsonObject:
        value = self.data.get(key, _MISSING)
        if not isinstance(value, dict):
            raise self._wrong(key, "an object", value)
        return JsonObject(value, self.error, f"{self.where}.{key}")

    def array(self, key: str) -> list[Any]:
        value = self.data.get(key, _MISSING)
        if not isinstance(value, list):
            raise self._wrong(key, "an array", value)
        return value

    def integers(self, key: str, minimum: int | None = None, maximum: int | None = None) -> list[int]:
        items = self.array(key)
        for item in items:
            if type(item) is not int and not is_integer(item):
                raise self.fail(key, "an array of integers", item)
            if (minimum is not None and item < minimum) or (maximum is not None and item > maximum):
                raise self.fail(key, f"an array of integers in {minimum}..{maximum}", item)
        return list(items)

    def objects(self, key: str) -> list[JsonObject]:
        items = self.array(key)
        result = []
        for i, item in enumerate(items):
            if not isinstance(item, dict):
                raise self.fail(f"{key}[{i}]", "an object", item)
            result.append(JsonObject(item, self.error, f"{self.where}.{key}[{i}]"))
        return result


def is_integer(value: Any) -> bool:
    """A JSON integer (Python's bool is an int, JSON's true is not)."""
    return isinstance(value, int) and not isinstance(value, bool)


# --- how the firmware reads values ---------------------------------------------------------------


def firmware_int(value: Any, minimum: int = INT32_MIN, maximum: int = INT32_MAX) -> int:
    """`doc[key] | 0`: the value if it is a JSON integer that fits the C type, else 0.

    So `50.5`, `"50"`, `true`, `null` and out-of-range integers all read as 0.
    """
    return value if is_integer(value) and minimum <= value <= maximum else 0


def firmware_true(value: Any) -> bool:
    """`doc[key] | false`: only JSON `true` counts (a number 1 does not)."""
    return value is True
