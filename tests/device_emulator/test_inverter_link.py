"""The protocol adapter: exact request bytes, the firmware's classification and retry policy, and the
Modbus TCP / RTU transports against the real simulator."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web
from hypothesis import given, settings
from hypothesis import strategies as st

from device_emulator.event_log import JSON_ERROR, TIMEOUT
from device_emulator.inverter_link import (
    DECODE_ERROR,
    OK,
    WRONG_SLAVE,
    HttpFrameLink,
    ModbusLink,
    Reply,
    read_reply,
    write_reply,
)
from device_emulator.profiles import PROFILES, REFERENCE, SPEC, Profile
from protocol import modbus
from sim_inverter.service import SimConfig, SimService
from tests.device_emulator.core_support import vectors

PAIRS = vectors("modbus_frames.json")["pairs"]
REF, SPC = PROFILES[REFERENCE], PROFILES[SPEC]


class StandInInverter:
    """An HTTP frame API that answers every request with the next scripted body (the last repeats)."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = [b""]
        self.status = 200
        self.requests: list[tuple[str, bytes, dict[str, str]]] = []
        self.url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.requests.append((request.path, await request.read(), dict(request.headers)))
        body = self.bodies.pop(0) if len(self.bodies) > 1 else self.bodies[0]
        return web.Response(body=body, status=self.status, content_type="application/json")


@pytest.fixture
async def inverter() -> AsyncIterator[StandInInverter]:
    stand_in = StandInInverter()
    app = web.Application()
    app.router.add_post("/api/inverter/read", stand_in.handle)
    app.router.add_post("/api/inverter/write", stand_in.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    stand_in.url = f"http://{host}:{port}"
    yield stand_in
    await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


class Waits:
    """The link's sleep: records the waits (device seconds) instead of sleeping."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


def http_link(
    inverter: StandInInverter, session: aiohttp.ClientSession, profile: Profile = REF, slave: int = 0x11
) -> tuple[HttpFrameLink, Waits]:
    waits = Waits()
    return HttpFrameLink(inverter.url, session, profile, api_key="team-key", sleep=waits, slave=slave), waits


def _request(pair: dict) -> modbus.Request:
    return modbus.parse_request(bytes.fromhex(pair["request_hex"]))


@pytest.mark.parametrize(
    "pair",
    [p for p in PAIRS if p["request_http_body"] and p["response_http_body"]],
    ids=lambda p: p["name"],
)
async def test_request_body_is_the_firmware_bytes(pair, inverter, session) -> None:
    request = _request(pair)
    link, _ = http_link(inverter, session, slave=request.slave)
    inverter.bodies = [pair["response_http_body"].encode()]
    if isinstance(request, modbus.ReadRequest):
        await link.read_registers(request.start, request.count)
    else:
        await link.write_register(request.address, request.value)
    path, body, headers = inverter.requests[0]
    assert body == pair["request_http_body"].encode()
    assert path == (
        "/api/inverter/read" if isinstance(request, modbus.ReadRequest) else "/api/inverter/write"
    )
    assert headers["Authorization"] == "team-key"
    assert headers["Content-Type"] == "application/json"


@pytest.mark.parametrize(
    "pair", [p for p in PAIRS if p["kind"] == "read" and p["device_decoded_values"]], ids=lambda p: p["name"]
)
async def test_valid_read_gives_the_selected_values(pair, inverter, session) -> None:
    link, _ = http_link(inverter, session, slave=_request(pair).slave)
    inverter.bodies = [pair["response_http_body"].encode()]
    result = await link.read_registers(pair["block_start"], pair["block_count"])
    assert result.failure is None
    picked = modbus.pick_selection(result.values, pair["block_start"], pair["read_selection"])
    assert picked == pair["device_decoded_values"]
    assert len(inverter.requests) == 1


@pytest.mark.parametrize(
    "pair",
    [p for p in PAIRS if p["kind"] == "read" and not p["device_decoded_values"]],
    ids=lambda p: p["name"],
)
async def test_valid_frame_that_is_not_our_read_drops_the_sample_without_retry(
    pair, inverter, session
) -> None:
    link, _ = http_link(inverter, session)
    inverter.bodies = [pair["response_http_body"].encode()]
    result = await link.read_registers(pair["block_start"], pair["block_count"])
    assert (result.values, result.failure) == (None, DECODE_ERROR)
    assert len(inverter.requests) == 1


@pytest.mark.parametrize(
    "pair",
    [p for p in PAIRS if p["response_http_body"] and p["device_frame_verdict"] != "PARSE_OK"],
    ids=lambda p: p["name"],
)
async def test_invalid_reply_is_classified_and_resent_three_more_times(pair, inverter, session) -> None:
    link, waits = http_link(inverter, session)
    inverter.bodies = [pair["response_http_body"].encode()]
    result = await link.read_registers(0, 2)
    assert (result.values, result.failure) == (None, pair["device_frame_verdict"])
    assert len(inverter.requests) == 4  # one send and three parse-level retries, no backoff
    assert waits.waits == []


async def test_the_retry_that_gets_a_valid_reply_succeeds(inverter, session) -> None:
    link, _ = http_link(inverter, session)
    inverter.bodies = [b'{"frame": "110304022B006485DB"}', b'{"frame": "1103040904002A2870"}']
    result = await link.read_registers(0, 2)
    assert result.values == (2308, 42)
    assert len(inverter.requests) == 2


async def test_empty_body_is_a_failed_attempt_with_backoff_and_the_read_fails_at_once(
    inverter, session
) -> None:
    link, waits = http_link(inverter, session)
    inverter.bodies = [b""]
    result = await link.read_registers(0, 10)
    assert (result.values, result.failure) == (None, TIMEOUT)
    assert len(inverter.requests) == 3  # one send of three attempts; no parse-level retry
    assert waits.waits == [0.5, 1.0, 2.0]  # the last wait happens too


async def test_unreachable_inverter_times_out_like_an_empty_body(session) -> None:
    waits = Waits()
    link = HttpFrameLink("http://127.0.0.1:9", session, REF, sleep=waits)
    result = await link.read_registers(0, 10)
    assert result.failure == TIMEOUT
    assert waits.waits == [0.5, 1.0, 2.0]


async def test_http_status_is_ignored_when_the_body_holds_a_frame(inverter, session) -> None:
    link, _ = http_link(inverter, session)
    inverter.status = 500
    inverter.bodies = [b'{"frame": "1103040904002A2870"}']
    assert (await link.read_registers(0, 2)).values == (2308, 42)


async def test_body_that_is_not_json_is_retried_as_a_parse_error(inverter, session) -> None:
    link, _ = http_link(inverter, session)
    inverter.bodies = [b"<html>busy</html>"]
    assert (await link.read_registers(0, 2)).failure == JSON_ERROR
    assert len(inverter.requests) == 4


@pytest.mark.parametrize("pair", [p for p in PAIRS if p["kind"] == "write"], ids=lambda p: p["name"])
async def test_write_succeeds_only_on_the_exact_echo(pair, inverter, session) -> None:
    request = _request(pair)
    link, _ = http_link(inverter, session, slave=request.slave)
    inverter.bodies = [pair["response_http_body"].encode()]
    ok = await link.write_register(request.address, request.value)
    assert ok is (pair["device_action"] == "accept")


# --- quirks -------------------------------------------------------------------------------------------


def _pair(name: str) -> dict:
    return next(p for p in PAIRS if p["name"] == name)


async def test_write_echo_case_sensitive(inverter, session) -> None:
    lowercase = _pair("fw_write_echo_lowercase_is_rejected")
    request = _request(lowercase)
    for profile, expected in ((REF, False), (SPC, True)):
        link, _ = http_link(inverter, session, profile, slave=request.slave)
        inverter.bodies = [lowercase["response_http_body"].encode()]
        assert await link.write_register(request.address, request.value) is expected


async def test_response_slave_unchecked(inverter, session) -> None:
    other_slave = _pair("accepted_wrong_slave_valid_crc")
    inverter.bodies = [other_slave["response_http_body"].encode()]
    reference, _ = http_link(inverter, session, REF)
    assert (await reference.read_registers(0, 2)).values == tuple(other_slave["device_decoded_values"])
    fixed, _ = http_link(inverter, session, SPC)
    assert (await fixed.read_registers(0, 2)).failure == WRONG_SLAVE


async def test_exception_before_crc(inverter, session) -> None:
    garbage = _pair("fault_garbage_looks_like_exception")
    assert not modbus.crc_ok(bytes.fromhex(json.loads(garbage["response_http_body"])["frame"]))
    inverter.bodies = [garbage["response_http_body"].encode()]
    reference, _ = http_link(inverter, session, REF)
    assert (await reference.read_registers(0, 2)).failure == "PARSE_EXCEPTION"
    fixed, _ = http_link(inverter, session, SPC)
    assert (await fixed.read_registers(0, 2)).failure == "PARSE_CRC_ERROR"


# --- any bytes in, a Reply out ------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=64) | st.text(max_size=40).map(lambda t: json.dumps({"frame": t}).encode()))
def test_any_read_reply_body_is_classified_never_raised(body: bytes) -> None:
    for profile in (REF, SPC):
        reply = read_reply(body, 2, 0x11, profile.quirks)
        assert isinstance(reply, Reply)
        assert reply.values is None or (reply.verdict == OK and len(reply.values) == 2)
        write = write_reply(body, modbus.build_write_request(0x11, 8, 50), profile.quirks)
        assert isinstance(write, Reply)


# --- Modbus TCP and RTU through pymodbus, against the real simulator ----------------------------------


@pytest.fixture
async def sim() -> AsyncIterator[SimService]:
    service = SimService(SimConfig(http_port=0, modbus_port=0, rtu_pty=True))
    await service.start()
    yield service
    await service.stop()


async def test_modbus_tcp_reads_and_writes_the_simulator(sim) -> None:
    link = ModbusLink(REF, tcp_url=sim.modbus_url, sleep=Waits())
    try:
        assert await link.write_register(8, 42) is True
        result = await link.read_registers(0, 10)
        assert result.failure is None and len(result.values) == 10
        assert result.values[8] == 42
    finally:
        await link.close()


async def test_modbus_rtu_reads_the_simulator_over_a_pty(sim) -> None:
    link = ModbusLink(REF, serial_path=sim.rtu_path, sleep=Waits())
    try:
        assert await link.write_register(8, 7) is True
        result = await link.read_registers(8, 1)
        assert result.values == (7,)
    finally:
        await link.close()


async def test_modbus_exception_is_retried_like_an_invalid_frame(sim) -> None:
    link = ModbusLink(REF, tcp_url=sim.modbus_url, sleep=Waits())
    try:
        result = await link.read_registers(0, 12)  # registers 10 and 11 do not exist: exception 02
        assert result.failure == "PARSE_EXCEPTION"
        assert link.requests == 4
    finally:
        await link.close()


async def test_modbus_tcp_without_a_server_fails_after_three_attempts() -> None:
    waits = Waits()
    fast = dataclasses.replace(REF, timings=dataclasses.replace(REF.timings, inverter_timeout_s=0.5))
    link = ModbusLink(fast, tcp_url="modbus-tcp://127.0.0.1:9", sleep=waits)
    try:
        assert (await link.read_registers(0, 10)).failure == TIMEOUT
        assert waits.waits == [0.5, 1.0, 2.0]
    finally:
        await link.close()
