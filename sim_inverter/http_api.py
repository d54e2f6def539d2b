"""The SIM's HTTP API (firmware-protocol.md §1.1-§1.4), plus the simulator's own read-outs.

Course API (what the firmware calls, byte for byte):
  POST /api/inverter/read, /api/inverter/write   {"frame": HEX} -> {"frame": HEX}
  POST /api/user/error-flag/add                   arm a one-shot fault for the caller's key
  POST /api/inverter/error                        a faulty frame right away (no key needed)
Simulator extras (for people and the harness):
  GET  /api/user/error-flag                       the caller's armed flags
  GET/POST/DELETE /api/inverter/fault-profile     seeded random faults on every request
  GET  /api/inverter/registers                    live values, raw and scaled
  GET  /api/inverter/ledger?since=N&limit=M       what was served

`Authorization` carries the raw API key. With a key configured, a wrong or missing one gets 401 with an
empty body (every route but /api/inverter/error); without one, any key is accepted and still names the
client whose flags are consumed. A frame that cannot be parsed gets an empty body ("blank response").
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from protocol import modbus
from protocol.errors import DocumentError, EcoWattError, FrameError, http_status
from protocol.modbus import ExceptionCode, ReadRequest, UnsupportedRequest, WriteRequest
from protocol.registers import EXPORT_LIMIT_ADDRESS, REGISTERS
from sim_inverter.faults import EmulatedError, Fault, FaultKind, FaultProfile
from sim_inverter.slave import InverterSlave

MAX_BODY = 64 * 1024
TRANSPORT = "http"
DEFAULT_LEDGER_PAGE = 1000

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def build_app(slave: InverterSlave, api_key: str | None = None) -> web.Application:
    api = _Api(slave, api_key)
    app = web.Application(client_max_size=MAX_BODY, middlewares=[api.errors, api.authorize])
    app.router.add_post("/api/inverter/read", api.read)
    app.router.add_post("/api/inverter/write", api.write)
    app.router.add_post("/api/user/error-flag/add", api.add_error_flag)
    app.router.add_get("/api/user/error-flag", api.list_error_flags)
    app.router.add_post("/api/inverter/error", api.emulate_error)
    app.router.add_get("/api/inverter/fault-profile", api.get_profile)
    app.router.add_post("/api/inverter/fault-profile", api.set_profile)
    app.router.add_delete("/api/inverter/fault-profile", api.clear_profile)
    app.router.add_get("/api/inverter/registers", api.registers)
    app.router.add_get("/api/inverter/ledger", api.ledger)
    return app


def _frame_response(frame: bytes) -> web.Response:
    return web.Response(text=modbus.http_body(modbus.to_hex(frame)), content_type="application/json")


def _blank(status: int = 400) -> web.Response:
    return web.Response(status=status, body=b"")


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message, "frame": ""}, status=status)


async def _drop(request: web.Request, fault: Fault) -> web.Response:
    """PACKET_DROP: hold the connection for delayMs, then close it without an answer."""
    if fault.delay_ms:
        await asyncio.sleep(fault.delay_ms / 1000)
    if request.transport is not None:
        request.transport.close()
    return _blank(200)  # never reaches the client: the connection is gone


class _Api:
    def __init__(self, slave: InverterSlave, api_key: str | None) -> None:
        self.slave = slave
        self.api_key = api_key or None

    # --- middlewares ---------------------------------------------------------------------------------

    @web.middleware
    async def errors(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except EcoWattError as error:
            return _error(http_status(error), str(error))

    @web.middleware
    async def authorize(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/api/inverter/error" or self.api_key is None:
            return await handler(request)
        if request.headers.get("Authorization") != self.api_key:
            return _blank(401)
        return await handler(request)

    @staticmethod
    def client(request: web.Request) -> str:
        return request.headers.get("Authorization", "")

    @staticmethod
    async def json_body(request: web.Request) -> Any:
        try:
            return json.loads(await request.read())
        except (ValueError, RecursionError):
            raise DocumentError("the body is not JSON") from None

    # --- the course API --------------------------------------------------------------------------------

    async def read(self, request: web.Request) -> web.StreamResponse:
        return await self._frame_call(request, ReadRequest)

    async def write(self, request: web.Request) -> web.StreamResponse:
        return await self._frame_call(request, WriteRequest)

    async def _frame_call(
        self, request: web.Request, expected: type[ReadRequest] | type[WriteRequest]
    ) -> web.StreamResponse:
        try:
            parsed = modbus.parse_request(modbus.from_hex(modbus.frame_from_http_body(await request.read())))
        except FrameError:
            return _blank()
        if parsed.slave != self.slave.slave_id:
            # An HTTP gateway whose target does not answer: the Modbus gateway exception says so.
            code = ExceptionCode.GATEWAY_TARGET_FAILED
            return _frame_response(modbus.build_exception(parsed.slave, _function(parsed), code))
        if isinstance(parsed, UnsupportedRequest) or not isinstance(parsed, expected):
            code = ExceptionCode.ILLEGAL_FUNCTION
            return _frame_response(modbus.build_exception(parsed.slave, _function(parsed), code))
        served = await self.slave.serve(parsed, client=self.client(request), transport=TRANSPORT)
        return await self._answer(request, served.fault, served.frame())

    async def _answer(self, request: web.Request, fault: Fault | None, frame: bytes) -> web.StreamResponse:
        if fault and fault.kind is FaultKind.PACKET_DROP:
            return await _drop(request, fault)
        if fault and fault.kind in (FaultKind.CRC_ERROR, FaultKind.CORRUPT):
            frame = self.slave.faults.damage_rtu(frame, fault.kind)
        return _frame_response(frame)

    async def add_error_flag(self, request: web.Request) -> web.StreamResponse:
        fault = Fault.from_json(await self.json_body(request))
        pending = self.slave.faults.arm(fault, self.client(request))
        return web.json_response({"armed": fault.to_json(), "pending": pending})

    async def list_error_flags(self, request: web.Request) -> web.StreamResponse:
        flags = self.slave.faults.armed(self.client(request))
        return web.json_response({"pending": [f.to_json() for f in flags]})

    async def emulate_error(self, request: web.Request) -> web.StreamResponse:
        emulated = EmulatedError.from_json(await self.json_body(request))
        fault = emulated.fault
        if fault.kind is FaultKind.EXCEPTION:
            return _frame_response(modbus.build_exception(emulated.slave, emulated.function, fault.exception_code))
        if fault.kind is FaultKind.DELAY:
            await asyncio.sleep(fault.delay_ms / 1000)
        return await self._answer(request, fault, self._sample_frame(emulated.slave, emulated.function))

    def _sample_frame(self, slave: int, function: int) -> bytes:
        """A genuine answer to spoil: the full register block for 0x03, the export-limit echo for 0x06."""
        _, values = self.slave.snapshot()
        if function == modbus.READ_HOLDING_REGISTERS:
            return modbus.build_read_response(slave, values)
        if function == modbus.WRITE_SINGLE_REGISTER:
            return modbus.build_write_request(slave, EXPORT_LIMIT_ADDRESS, values[EXPORT_LIMIT_ADDRESS])
        return modbus.build_exception(slave, function, ExceptionCode.ILLEGAL_FUNCTION)

    # --- simulator extras ------------------------------------------------------------------------------

    async def get_profile(self, request: web.Request) -> web.StreamResponse:
        profile = self.slave.faults.profile
        return web.json_response({"profile": profile.to_json() if profile else None})

    async def set_profile(self, request: web.Request) -> web.StreamResponse:
        profile = FaultProfile.from_json(await self.json_body(request))
        self.slave.faults.set_profile(profile)
        return web.json_response({"profile": profile.to_json()})

    async def clear_profile(self, request: web.Request) -> web.StreamResponse:
        self.slave.faults.set_profile(None)
        return web.json_response({"profile": None})

    async def registers(self, request: web.Request) -> web.StreamResponse:
        t, values = self.slave.snapshot()
        rows = [
            {
                "address": reg.address,
                "name": reg.name,
                "meaning": reg.meaning,
                "raw": raw,
                "value": reg.scaled(raw),
                "unit": reg.unit,
                "writable": reg.writable,
            }
            for reg, raw in zip(REGISTERS, values, strict=True)
        ]
        return web.json_response({"t": t, "slave": self.slave.slave_id, "registers": rows})

    async def ledger(self, request: web.Request) -> web.StreamResponse:
        since = _query_int(request, "since", 0)
        limit = _query_int(request, "limit", DEFAULT_LEDGER_PAGE)
        ledger = self.slave.ledger
        entries = ledger.since(since, limit)
        return web.json_response(
            {
                "first_seq": ledger.first_seq,
                "last_seq": ledger.last_seq,
                "entries": [e.to_json() for e in entries],
            }
        )


def _function(request: modbus.Request) -> int:
    if isinstance(request, UnsupportedRequest):
        return request.function
    return modbus.READ_HOLDING_REGISTERS if isinstance(request, ReadRequest) else modbus.WRITE_SINGLE_REGISTER


def _query_int(request: web.Request, name: str, default: int) -> int:
    text = request.query.get(name)
    if text is None:
        return default
    if not text.isascii() or not text.isdigit():
        raise DocumentError(f"{name} must be a non-negative integer", text)
    return int(text)
