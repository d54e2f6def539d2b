"""Modbus RTU frames as the EcoWatt firmware and the inverter SIM exchange them (firmware-protocol.md §1).

Frames are `[slave][function][data...][crc lo][crc hi]`; multi-byte fields are big-endian, the
CRC-16/MODBUS is appended low byte first. Over the SIM's HTTP API a frame travels as hex text, which the
firmware emits in uppercase.

Two views of a response live here: the strict parsers a server or a test uses (`parse_response`), and
the firmware's own lenient checks (`classify_response`, `decode_read_response`), which reproduce its
quirks: exceptions are detected before the CRC, and the slave address of a response is never checked.
"""

from __future__ import annotations

import enum
import json
import string
from collections.abc import Sequence
from dataclasses import dataclass

from protocol.errors import FrameError

READ_HOLDING_REGISTERS = 0x03
WRITE_SINGLE_REGISTER = 0x06
EXCEPTION_FLAG = 0x80
MAX_READ_COUNT = 125  # Modbus limit for function 0x03 (a response must fit 256 bytes)
REQUEST_LENGTH = 8  # both 0x03 and 0x06 requests
EXCEPTION_LENGTH = 5
_HEX_DIGITS = frozenset(string.hexdigits)


class ExceptionCode(enum.IntEnum):
    """Modbus exception codes the course documentation lists (DOC §5)."""

    ILLEGAL_FUNCTION = 0x01
    ILLEGAL_DATA_ADDRESS = 0x02
    ILLEGAL_DATA_VALUE = 0x03
    SLAVE_DEVICE_FAILURE = 0x04
    ACKNOWLEDGE = 0x05
    SLAVE_DEVICE_BUSY = 0x06
    MEMORY_PARITY_ERROR = 0x08
    GATEWAY_PATH_UNAVAILABLE = 0x0A
    GATEWAY_TARGET_FAILED = 0x0B


class Verdict(enum.Enum):
    """The firmware's classification of a response frame (`validateModbusFrame`), named as in the vectors."""

    PARSE_OK = "PARSE_OK"
    PARSE_TRUNCATED = "PARSE_TRUNCATED"
    PARSE_MALFORMED = "PARSE_MALFORMED"
    PARSE_EXCEPTION = "PARSE_EXCEPTION"
    PARSE_CRC_ERROR = "PARSE_CRC_ERROR"


@dataclass(frozen=True)
class ReadRequest:
    slave: int
    start: int
    count: int

    def encode(self) -> bytes:
        return build_read_request(self.slave, self.start, self.count)


@dataclass(frozen=True)
class WriteRequest:
    """A write-single-register request; a successful response is the same frame echoed."""

    slave: int
    address: int
    value: int

    def encode(self) -> bytes:
        return build_write_request(self.slave, self.address, self.value)


@dataclass(frozen=True)
class UnsupportedRequest:
    """A well-formed frame (valid CRC) with a function code the inverter does not implement."""

    slave: int
    function: int


@dataclass(frozen=True)
class ReadResponse:
    slave: int
    values: tuple[int, ...]

    def encode(self) -> bytes:
        return build_read_response(self.slave, self.values)


@dataclass(frozen=True)
class ExceptionResponse:
    slave: int
    function: int  # the request's function code, without the 0x80 flag
    code: int

    def encode(self) -> bytes:
        return build_exception(self.slave, self.function, self.code)


Request = ReadRequest | WriteRequest | UnsupportedRequest
Response = ReadResponse | WriteRequest | ExceptionResponse


# --- CRC and hex text -------------------------------------------------------------------------------


def _crc_table() -> tuple[int, ...]:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0xA001 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


# One lookup per byte instead of eight shifts: every simulated poll computes four CRCs.
_CRC_TABLE = _crc_table()


def crc16(data: bytes) -> int:
    """CRC-16/MODBUS: init 0xFFFF, reflected polynomial 0xA001."""
    crc = 0xFFFF
    table = _CRC_TABLE
    for byte in data:
        crc = (crc >> 8) ^ table[(crc ^ byte) & 0xFF]
    return crc


def append_crc(body: bytes) -> bytes:
    return body + crc16(body).to_bytes(2, "little")


def crc_ok(frame: bytes) -> bool:
    """True if the last two bytes are the CRC (low byte first) of the bytes before them."""
    return len(frame) >= 3 and crc16(frame[:-2]) == int.from_bytes(frame[-2:], "little")


def to_hex(frame: bytes) -> str:
    """Frame bytes as the firmware writes them: uppercase hex, no separators."""
    return frame.hex().upper()


def from_hex(text: str) -> bytes:
    """Hex text (either case, no separators) to bytes; FrameError for anything else."""
    if not isinstance(text, str):
        raise FrameError("frame is not text", text)
    if not _is_hex(text):
        raise FrameError("frame is not hex text", text)
    if len(text) % 2:
        raise FrameError("frame has an odd number of hex digits", text)
    return bytes.fromhex(text)


def _is_hex(text: str) -> bool:
    return all(ch in _HEX_DIGITS for ch in text)


# --- building ---------------------------------------------------------------------------------------


def _u8(name: str, value: int) -> int:
    if not 0 <= value <= 0xFF:
        raise FrameError(f"{name} must fit one byte", value)
    return value


def _u16(name: str, value: int) -> bytes:
    if not 0 <= value <= 0xFFFF:
        raise FrameError(f"{name} must fit 16 bits", value)
    return value.to_bytes(2, "big")


def build_read_request(slave: int, start: int, count: int) -> bytes:
    if not 1 <= count <= MAX_READ_COUNT:
        raise FrameError(f"read count must be 1..{MAX_READ_COUNT}", count)
    body = bytes((_u8("slave", slave), READ_HOLDING_REGISTERS)) + _u16("start", start) + _u16("count", count)
    return append_crc(body)


def build_write_request(slave: int, address: int, value: int) -> bytes:
    """Also the successful write response, which echoes the request."""
    body = bytes((_u8("slave", slave), WRITE_SINGLE_REGISTER)) + _u16("address", address)
    return append_crc(body + _u16("value", value))


def build_read_response(slave: int, values: Sequence[int]) -> bytes:
    if not 1 <= len(values) <= MAX_READ_COUNT:
        raise FrameError(f"a read response carries 1..{MAX_READ_COUNT} values", len(values))
    data = b"".join(_u16("register value", v) for v in values)
    return append_crc(bytes((_u8("slave", slave), READ_HOLDING_REGISTERS, len(data))) + data)


def build_exception(slave: int, function: int, code: int) -> bytes:
    if not 0 <= function < EXCEPTION_FLAG:
        raise FrameError("function code must be 0..0x7F", function)
    return append_crc(bytes((_u8("slave", slave), function | EXCEPTION_FLAG, _u8("exception code", code))))


# --- strict parsing ---------------------------------------------------------------------------------


def _checked(frame: bytes) -> bytes:
    if not isinstance(frame, bytes | bytearray):
        raise FrameError("frame is not bytes", frame)
    if len(frame) < 4:
        raise FrameError("frame too short", bytes(frame))
    if not crc_ok(frame):
        raise FrameError("CRC mismatch", bytes(frame))
    return bytes(frame)


def parse_request(frame: bytes) -> Request:
    """A request as a slave sees it. FrameError if the frame is not a well-formed Modbus RTU frame."""
    frame = _checked(frame)
    slave, function = frame[0], frame[1]
    if function & EXCEPTION_FLAG:
        raise FrameError("function codes 0x80 and up are exception responses, not requests", function)
    if function not in (READ_HOLDING_REGISTERS, WRITE_SINGLE_REGISTER):
        return UnsupportedRequest(slave, function)
    if len(frame) != REQUEST_LENGTH:
        raise FrameError(f"function {function:#04x} request must be {REQUEST_LENGTH} bytes", frame)
    first, second = int.from_bytes(frame[2:4], "big"), int.from_bytes(frame[4:6], "big")
    if function == READ_HOLDING_REGISTERS:
        return ReadRequest(slave, first, second)
    return WriteRequest(slave, first, second)


def parse_response(frame: bytes) -> Response:
    """A response as a master sees it: CRC, function code and length all checked."""
    frame = _checked(frame)
    slave, function = frame[0], frame[1]
    if function & EXCEPTION_FLAG:
        if len(frame) != EXCEPTION_LENGTH:
            raise FrameError(f"an exception frame is {EXCEPTION_LENGTH} bytes", frame)
        return ExceptionResponse(slave, function & ~EXCEPTION_FLAG, frame[2])
    if function == READ_HOLDING_REGISTERS:
        byte_count = frame[2]
        if byte_count == 0 or byte_count % 2 or len(frame) != 5 + byte_count:
            raise FrameError("read response byte count does not match its length", frame)
        data = frame[3:-2]
        return ReadResponse(slave, tuple(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2)))
    if function == WRITE_SINGLE_REGISTER:
        request = parse_request(frame)
        assert isinstance(request, WriteRequest)  # function 0x06 and valid CRC: parse_request checked it
        return request
    raise FrameError("unsupported function code in response", function)


def parse_read_response(frame: bytes) -> ReadResponse:
    """A read response, or FrameError (an exception frame is an error here, carrying its code)."""
    response = parse_response(frame)
    if isinstance(response, ExceptionResponse):
        raise FrameError(f"exception {response.code:#04x} in response", response.code)
    if not isinstance(response, ReadResponse):
        raise FrameError("not a read response", bytes(frame))
    return response


# --- the firmware's view (ProtocolAdapter) -----------------------------------------------------------


def classify_response(text: str) -> Verdict:
    """Classify response hex text exactly as the firmware's `validateModbusFrame` does, in its order."""
    if not isinstance(text, str):
        return Verdict.PARSE_MALFORMED
    # The firmware measures a UTF-8 C string, so the length is in bytes, not characters.
    if len(text.encode("utf-8", "surrogatepass")) < 8:
        return Verdict.PARSE_TRUNCATED
    if not _is_hex(text) or len(text) % 2:
        return Verdict.PARSE_MALFORMED
    frame = bytes.fromhex(text)
    if frame[1] & EXCEPTION_FLAG:  # checked before the CRC, as the firmware does
        return Verdict.PARSE_EXCEPTION
    if not crc_ok(frame):
        return Verdict.PARSE_CRC_ERROR
    return Verdict.PARSE_OK


def decode_read_response(frame: bytes, count: int) -> tuple[int, ...]:
    """Values of a validated read response as the firmware decodes them.

    Only the function byte (0x03) and the byte count (2 x count) are checked, not the slave address;
    FrameError means the firmware drops the poll sample.
    """
    if not isinstance(frame, bytes | bytearray) or len(frame) < 3:
        raise FrameError("read response too short", frame)
    if frame[1] != READ_HOLDING_REGISTERS:
        raise FrameError("read response has the wrong function code", frame[1])
    if frame[2] != 2 * count or len(frame) < 3 + 2 * count:
        raise FrameError(f"read response byte count is not {2 * count}", frame[2])
    return tuple(int.from_bytes(frame[3 + 2 * i : 5 + 2 * i], "big") for i in range(count))


def read_block(selection: Sequence[int]) -> tuple[int, int]:
    """(start, count) of the one contiguous block the firmware reads for a register selection (§1.5)."""
    if not selection:
        raise FrameError("empty register selection", list(selection))
    low, high = min(selection), max(selection)
    return low, high - low + 1


def pick_selection(block: Sequence[int], start: int, selection: Sequence[int]) -> list[int]:
    """The selected registers' values out of a block read, in the selection's order."""
    outside = [a for a in selection if not start <= a < start + len(block)]
    if outside:
        raise FrameError("selection outside the block read", outside)
    return [block[address - start] for address in selection]


# --- HTTP JSON bodies of the SIM API -----------------------------------------------------------------


def http_body(frame_hex: str) -> str:
    """The JSON body the firmware sends: `{"frame": "<HEX>"}`, one space after the colon."""
    return json.dumps({"frame": frame_hex})


def frame_from_http_body(body: str | bytes) -> str:
    """The `frame` text of a SIM JSON body; "" if the field is missing or not text (the firmware's view).

    FrameError if the body is not a JSON object.
    """
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise FrameError("body is not JSON", body[:80]) from error
    if not isinstance(document, dict):
        raise FrameError("body is not a JSON object", body[:80])
    frame = document.get("frame")
    return frame if isinstance(frame, str) else ""
