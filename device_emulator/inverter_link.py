"""The protocol adapter: how the firmware talks to the inverter (firmware-protocol.md §1.1, §1.5, §1.6).

One *attempt* is one request with a 5 s timeout. One *send* is up to 3 attempts, waiting 0.5, 1 and
2 s after each failed one (the last wait happens too, before giving up). A read or write is one send;
if the send fails the operation fails at once, and if its reply does not validate the operation is
retried with up to 3 more full sends. The same policy runs over every transport:

* `HttpFrameLink`: the SIM's frame API, the firmware's own transport: `{"frame": "<HEX>"}` bodies,
  the firmware's response classification with its quirks.
* `ModbusLink`: Modbus TCP or RTU through pymodbus's async client (framing and CRC are pymodbus's; a
  frame with a bad CRC is dropped there and shows up as a timeout).

Quirk switches honoured here (profiles.Quirks): `exception_before_crc`, `response_slave_unchecked`,
`write_echo_case_sensitive`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar
from urllib.parse import urlsplit

import aiohttp
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusException

from device_emulator.event_log import JSON_ERROR, TIMEOUT
from device_emulator.profiles import Profile, Quirks
from protocol import modbus
from protocol.errors import FrameError
from protocol.modbus import Verdict
from protocol.registers import SLAVE_ADDRESS

T = TypeVar("T")
Log = Callable[[str, str], None]  # (level, message)

OK = Verdict.PARSE_OK.value
WRONG_SLAVE = "WRONG_SLAVE"  # spec profile only: a valid frame from another slave id
DECODE_ERROR = "DECODE_ERROR"  # validated, but not a read response of the expected size: no retry


@dataclass(frozen=True)
class Reply:
    """What one send brought back: its classification and, for a valid read, the values."""

    verdict: str
    values: tuple[int, ...] | None = None  # a read reply's registers (None: not decodable)
    echoed: bool = False  # a write reply that confirms the write


@dataclass(frozen=True)
class ReadResult:
    values: tuple[int, ...] | None  # None: the read failed and the sample is dropped
    failure: str | None = None  # TIMEOUT, a Verdict name, JSON_ERROR, WRONG_SLAVE or DECODE_ERROR


class InverterLink(ABC):
    """The firmware's view of the inverter; subclasses carry one send over their transport."""

    def __init__(
        self,
        profile: Profile,
        *,
        sleep: Callable[[float], Awaitable[None]],
        time_scale: float = 1.0,
        slave: int = SLAVE_ADDRESS,
        log: Log | None = None,
    ) -> None:
        self.profile = profile
        self.timings = profile.timings
        self.quirks = profile.quirks
        self.slave = slave
        self._sleep = sleep  # device seconds
        self._time_scale = time_scale
        self._log = log or (lambda level, message: None)
        self.requests = 0  # attempts made, for tests and diagnostics

    @property
    def timeout(self) -> float:
        """One attempt's timeout in loop seconds."""
        return self.timings.inverter_timeout_s / self._time_scale

    async def read_registers(self, start: int, count: int) -> ReadResult:
        """Read `count` holding registers from `start` with the firmware's retries."""
        reply = await self._operation(lambda: self._send_read(start, count))
        if reply.verdict != OK:
            return ReadResult(None, reply.verdict)
        if reply.values is None:
            self._log("W", "response is not a read of the expected size: sample dropped")
            return ReadResult(None, DECODE_ERROR)
        return ReadResult(reply.values)

    async def write_register(self, address: int, value: int) -> bool:
        """Write one register; True only when the inverter echoed the request."""
        reply = await self._operation(lambda: self._send_write(address, value))
        if reply.verdict == OK and not reply.echoed:
            self._log("W", "write echo does not match the request")
        return reply.verdict == OK and reply.echoed

    async def close(self) -> None:  # noqa: B027 - most transports hold nothing to close
        """Release the transport."""

    async def _operation(self, send: Callable[[], Awaitable[Reply | None]]) -> Reply:
        """One read or write: a failed send ends it, an invalid reply is retried (§1.6)."""
        reply = Reply(TIMEOUT)
        for _ in range(1 + self.timings.inverter_parse_retries):
            sent = await send()
            if sent is None:
                self._log("E", "no response from the inverter")
                return Reply(TIMEOUT)
            reply = sent
            if reply.verdict in (OK, DECODE_ERROR):
                return reply
            self._log("W", f"invalid response ({reply.verdict}), retrying")
        return reply

    async def _attempts(self, attempt: Callable[[], Awaitable[T | None]]) -> T | None:
        """One send: up to N attempts, waiting after each failure (also after the last)."""
        backoff = self.timings.inverter_backoff_s
        for number in range(self.timings.inverter_attempts):
            self.requests += 1
            result = await attempt()
            if result is not None:
                return result
            wait = backoff[min(number, len(backoff) - 1)]
            self._log("W", f"attempt {number + 1} failed, waiting {int(wait * 1000)} ms")
            await self._sleep(wait)
        return None

    @abstractmethod
    async def _send_read(self, start: int, count: int) -> Reply | None: ...

    @abstractmethod
    async def _send_write(self, address: int, value: int) -> Reply | None: ...


class HttpFrameLink(InverterLink):
    """The SIM's HTTP frame API (§1.1), exactly as the firmware uses it."""

    def __init__(
        self,
        base_url: str,
        session: aiohttp.ClientSession,
        profile: Profile,
        *,
        api_key: str = "",
        **kw: object,
    ) -> None:
        super().__init__(profile, **kw)  # type: ignore[arg-type]
        self.base_url = base_url.rstrip("/")
        self.session = session
        self.api_key = api_key

    async def _send_read(self, start: int, count: int) -> Reply | None:
        body = await self._send("/api/inverter/read", modbus.build_read_request(self.slave, start, count))
        return None if body is None else read_reply(body, count, self.slave, self.quirks)

    async def _send_write(self, address: int, value: int) -> Reply | None:
        request = modbus.build_write_request(self.slave, address, value)
        body = await self._send("/api/inverter/write", request)
        return None if body is None else write_reply(body, request, self.quirks)

    async def _send(self, path: str, request: bytes) -> bytes | None:
        """One send: the response body, or None when every attempt failed."""
        frame_hex = modbus.to_hex(request)
        return await self._attempts(lambda: self._post(path, frame_hex))

    async def _post(self, path: str, frame_hex: str) -> bytes | None:
        # Exact bytes of the firmware's printf: one space after the colon.
        data = modbus.http_body(frame_hex).encode("ascii")
        headers = {"Content-Type": "application/json", "accept": "*/*", "Authorization": self.api_key}
        try:
            async with self.session.post(
                self.base_url + path,
                data=data,
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as response:
                body = await response.read()
        except (TimeoutError, aiohttp.ClientError):
            return None
        # Any status counts; only a missing or empty body is a failed attempt (§1.6).
        return body or None


def _frame_text(body: bytes, quirks: Quirks) -> str | Reply:
    """The response frame text if the firmware accepts it, else the Reply saying why not."""
    try:
        text = modbus.frame_from_http_body(body)
    except FrameError:
        return Reply(JSON_ERROR)
    verdict = modbus.classify_response(text)
    if (
        verdict is Verdict.PARSE_EXCEPTION
        and not quirks.exception_before_crc
        and not modbus.crc_ok(bytes.fromhex(text))
    ):
        verdict = Verdict.PARSE_CRC_ERROR
    return text if verdict is Verdict.PARSE_OK else Reply(verdict.value)


def read_reply(body: bytes, count: int, slave: int, quirks: Quirks) -> Reply:
    """How the firmware reads the HTTP body answering a read of `count` registers (any bytes)."""
    text = _frame_text(body, quirks)
    if isinstance(text, Reply):
        return text
    frame = bytes.fromhex(text)
    if not quirks.response_slave_unchecked and frame[0] != slave:
        return Reply(WRONG_SLAVE)
    try:
        return Reply(OK, modbus.decode_read_response(frame, count))
    except FrameError:
        return Reply(OK)  # valid but not our read: the sample is dropped without retry


def write_reply(body: bytes, request: bytes, quirks: Quirks) -> Reply:
    """How the firmware reads the HTTP body answering a write request (any bytes)."""
    text = _frame_text(body, quirks)
    if isinstance(text, Reply):
        return text
    sent = modbus.to_hex(request)
    # 1.0.4 compares the echo with the request as C strings; the fix compares the frames.
    echoed = text == sent if quirks.write_echo_case_sensitive else text.upper() == sent
    return Reply(OK, echoed=echoed)


class ModbusLink(InverterLink):
    """Modbus TCP (`modbus-tcp://HOST:PORT`) or RTU (a serial path) through pymodbus."""

    def __init__(
        self,
        profile: Profile,
        *,
        tcp_url: str | None = None,
        serial_path: str | None = None,
        baudrate: int = 9600,
        **kw: object,
    ) -> None:
        super().__init__(profile, **kw)  # type: ignore[arg-type]
        # pymodbus retries nothing and never reconnects by itself: the firmware's policy does both.
        if tcp_url is not None:
            parts = urlsplit(tcp_url)
            self.client: AsyncModbusTcpClient | AsyncModbusSerialClient = AsyncModbusTcpClient(
                parts.hostname or "127.0.0.1",
                port=parts.port or 502,
                timeout=self.timeout,
                retries=0,
                reconnect_delay=0,
            )
        elif serial_path is not None:
            self.client = AsyncModbusSerialClient(
                serial_path, baudrate=baudrate, timeout=self.timeout, retries=0, reconnect_delay=0
            )
        else:
            raise ValueError("ModbusLink needs a tcp_url or a serial_path")

    async def _call(self, request: Callable[[], Awaitable[T]]) -> T | None:
        """One attempt: connect if needed, then the request; None on no answer or a lost link."""
        try:
            if not self.client.connected and not await self.client.connect():
                return None
            return await request()
        except (TimeoutError, ModbusException, OSError):
            self.client.close()
            return None

    async def _send_read(self, start: int, count: int) -> Reply | None:
        response = await self._attempts(
            lambda: self._call(
                lambda: self.client.read_holding_registers(start, count=count, device_id=self.slave)
            )
        )
        if response is None:
            return None
        if response.isError():
            return Reply(Verdict.PARSE_EXCEPTION.value)
        if not self.quirks.response_slave_unchecked and response.dev_id != self.slave:
            return Reply(WRONG_SLAVE)
        values = tuple(response.registers)
        return Reply(OK, values if len(values) == count else None)

    async def _send_write(self, address: int, value: int) -> Reply | None:
        response = await self._attempts(
            lambda: self._call(lambda: self.client.write_register(address, value, device_id=self.slave))
        )
        if response is None:
            return None
        if response.isError():
            return Reply(Verdict.PARSE_EXCEPTION.value)
        echoed = response.address == address and list(response.registers) == [value]
        return Reply(OK, echoed=echoed)

    async def close(self) -> None:
        self.client.close()
