"""The network fault proxy: each toxic, seen by a real aiohttp client and server (or raw sockets, where
the exact bytes or a TCP reset must be seen) over loopback, per direction, scheduled, seeded.

Tests that measure time run on the harness's virtual-time loop (`run_virtual`), where device time is
exact; the others run on an ordinary loop with short times and assert only outcomes."""

from __future__ import annotations

import asyncio
import contextlib
import errno
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import aiohttp
import pytest
from aiohttp import web
from pymodbus.client import AsyncModbusTcpClient

from harness.fault_proxy import FaultProxy, FaultRecord
from harness.toxics import (
    AckLoss,
    Bandwidth,
    CorruptByte,
    DuplicateRequest,
    Latency,
    LimitData,
    Partition,
    ResetPeer,
    Slicer,
    Timeout,
    Toxic,
    toxic_from_spec,
)
from harness.virtual_time import run_virtual
from protocol.errors import DocumentError
from protocol.registers import SLAVE_ADDRESS
from sim_inverter.service import SimConfig, SimService

PAYLOAD = bytes(range(256)) * 8  # 2048 bytes


@dataclass
class Upstream:
    """An aiohttp server that remembers what its handlers saw, and when (loop time)."""

    port: int = 0
    bodies: list[bytes] = field(default_factory=list)
    handled_at: list[float] = field(default_factory=list)


@contextlib.asynccontextmanager
async def _upstream() -> AsyncIterator[Upstream]:
    seen = Upstream()

    async def echo(request: web.Request) -> web.Response:
        seen.bodies.append(await request.read())
        seen.handled_at.append(asyncio.get_running_loop().time())
        return web.Response(body=seen.bodies[-1])

    async def payload(request: web.Request) -> web.Response:
        return web.Response(body=PAYLOAD * int(request.match_info["times"]))

    async def chunked(request: web.Request) -> web.StreamResponse:
        reply = web.StreamResponse()
        reply.enable_chunked_encoding()
        await reply.prepare(request)
        for part in (b"one ", b"two ", b"three"):
            await reply.write(part)
        await reply.write_eof()
        return reply

    app = web.Application(client_max_size=4 * 1024 * 1024)
    app.router.add_post("/echo", echo)
    app.router.add_get("/payload/{times}", payload)
    app.router.add_get("/chunked", chunked)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    seen.port = runner.addresses[0][1]
    try:
        yield seen
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def _stack(seed: int = 7, timeout: float = 5.0, keep_alive: bool = True
                 ) -> AsyncIterator[tuple[Upstream, FaultProxy, aiohttp.ClientSession]]:
    connector = aiohttp.TCPConnector(force_close=not keep_alive)
    client_timeout = aiohttp.ClientTimeout(total=timeout)
    async with (
        _upstream() as server,
        FaultProxy("127.0.0.1", server.port, seed=seed) as proxy,
        aiohttp.ClientSession(connector=connector, timeout=client_timeout) as http,
    ):
        yield server, proxy, http


async def _post(http: aiohttp.ClientSession, proxy: FaultProxy, body: bytes = b"reading") -> tuple[int, bytes]:
    async with http.post(f"{proxy.url}/echo", data=body) as reply:
        return reply.status, await reply.read()


async def _raw_exchange(proxy: FaultProxy, request: bytes) -> bytes:
    """Everything the client side of one connection receives until the proxy closes it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
    try:
        writer.write(request)
        received = b""
        while data := await asyncio.wait_for(reader.read(65536), 5):
            received += data
        return received
    finally:
        writer.close()


def _actions(proxy: FaultProxy, action: str) -> list[FaultRecord]:
    return [r for r in proxy.log if r.action == action]


# --- transparency -------------------------------------------------------------------------------


async def test_without_toxics_requests_and_replies_pass_unchanged_on_kept_alive_connections() -> None:
    async def chunks() -> AsyncIterator[bytes]:  # aiohttp sends this body chunked
        for part in (b"chunked ", b"request ", b"body"):
            yield part

    async with _stack() as (server, proxy, http):
        for body in (b"", b"reading", PAYLOAD * 500):
            assert await _post(http, proxy, body) == (200, body)
        async with http.post(f"{proxy.url}/echo", data=chunks()) as reply:
            assert await reply.read() == b"chunked request body"
        async with http.get(f"{proxy.url}/chunked") as reply:
            assert await reply.read() == b"one two three"
        assert server.bodies[-1] == b"chunked request body"
        assert proxy.connections == 1 and proxy.log == []


async def test_modbus_tcp_passes_through_with_or_without_http_framing() -> None:
    async with SimService(SimConfig(http_port=None, modbus_port=0)) as sim:
        assert sim.modbus_url is not None
        port = int(sim.modbus_url.rsplit(":", 1)[1])
        direct = AsyncModbusTcpClient("127.0.0.1", port=port, timeout=2, retries=0)
        await direct.connect()
        expected = (await direct.read_holding_registers(8, count=1, device_id=SLAVE_ADDRESS)).registers
        direct.close()
        for http in (False, True):  # with framing on, the first bytes are recognised as not HTTP
            async with FaultProxy("127.0.0.1", port, http=http) as proxy:
                proxy.add(Latency(latency=20))
                client = AsyncModbusTcpClient("127.0.0.1", port=proxy.port, timeout=2, retries=0)
                await client.connect()
                try:
                    reply = await client.read_holding_registers(8, count=1, device_id=SLAVE_ADDRESS)
                finally:
                    client.close()
                assert reply.registers == expected and _actions(proxy, "delay")
                assert proxy.url.startswith("http://" if http else "tcp://")


# --- Toxiproxy's toxics, timed on virtual time ------------------------------------------------------


@pytest.mark.parametrize("stream", ["upstream", "downstream"])
def test_latency_delays_its_direction_only(stream: str) -> None:
    async def scenario() -> tuple[float, float, set[str]]:
        loop = asyncio.get_running_loop()
        async with _stack() as (server, proxy, http):
            proxy.add(Latency(latency=2000, stream=stream))  # type: ignore[arg-type]
            start = loop.time()
            assert await _post(http, proxy) == (200, b"reading")
            return server.handled_at[0] - start, loop.time() - start, {r.direction for r in _actions(proxy, "delay")}

    reached_server, answered, directions = run_virtual(scenario())
    assert reached_server == pytest.approx(2.0 if stream == "upstream" else 0.0, abs=0.01)
    assert answered == pytest.approx(2.0, abs=0.01)
    assert directions == {stream}


def test_latency_jitter_stays_within_bounds() -> None:
    async def scenario() -> list[float]:
        loop = asyncio.get_running_loop()
        async with _stack() as (_, proxy, http):
            proxy.add(Latency(latency=1000, jitter=400, stream="upstream"))
            times = []
            for _ in range(10):
                start = loop.time()
                await _post(http, proxy)
                times.append(loop.time() - start)
            return times

    times = run_virtual(scenario())
    assert all(0.6 - 0.01 <= t <= 1.4 + 0.01 for t in times) and len({round(t, 3) for t in times}) > 1


@pytest.mark.parametrize("stream", ["upstream", "downstream"])
def test_bandwidth_limits_throughput_in_its_direction(stream: str) -> None:
    size = len(PAYLOAD) * 50  # 102,400 bytes at 50 KB/s: about 2 s

    async def scenario() -> tuple[float, int]:
        loop = asyncio.get_running_loop()
        async with _stack() as (_, proxy, http):
            proxy.add(Bandwidth(rate=50, stream=stream))  # type: ignore[arg-type]
            start = loop.time()
            if stream == "upstream":
                status, body = await _post(http, proxy, PAYLOAD * 50)
            else:
                async with http.get(f"{proxy.url}/payload/50") as reply:
                    status, body = reply.status, await reply.read()
            assert status == 200 and len(body) == size
            return loop.time() - start, sum(r.nbytes for r in _actions(proxy, "throttle"))

    elapsed, throttled = run_virtual(scenario())
    assert throttled >= size
    assert throttled / 50_000 - 0.01 <= elapsed <= throttled / 50_000 + 0.11


def test_slicer_delivers_the_reply_in_small_delayed_slices() -> None:
    request = b"GET /payload/1 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"

    async def scenario() -> tuple[list[int], float, bytes]:
        loop = asyncio.get_running_loop()
        async with _stack() as (_, proxy, _http):
            proxy.add(Slicer(average_size=100, size_variation=20, delay=1000))
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy.port)
            writer.write(request)
            start, reads, received = loop.time(), [], b""
            while data := await reader.read(65536):
                reads.append(len(data))
                received += data
            writer.close()
            return reads, loop.time() - start, received

    reads, elapsed, received = run_virtual(scenario())
    assert received.endswith(PAYLOAD) and max(reads) <= 120 and len(reads) >= len(PAYLOAD) // 120
    assert elapsed == pytest.approx(len(reads) * 0.001, abs=0.0005)  # a 1 ms pause after each slice


def test_timeout_stalls_then_closes_and_timeout_zero_stalls_until_the_client_gives_up() -> None:
    async def scenario() -> list[tuple[str, float, int]]:
        loop = asyncio.get_running_loop()
        outcomes = []
        async with _stack(timeout=30) as (server, proxy, http):
            for timeout in (5000, 0):
                proxy.add(Timeout(timeout=timeout))
                start = loop.time()
                with pytest.raises((aiohttp.ServerDisconnectedError, TimeoutError)) as caught:
                    await _post(http, proxy)
                outcomes.append((type(caught.value).__name__, round(loop.time() - start, 2), len(server.bodies)))
                proxy.clear()
            assert await _post(http, proxy) == (200, b"reading")  # removed: traffic flows again
            assert {r.action for r in proxy.log} >= {"drop", "close"}
        return outcomes

    assert run_virtual(scenario()) == [("ServerDisconnectedError", 5.0, 1), ("TimeoutError", 30.0, 2)]


# --- Toxiproxy's toxics, on an ordinary loop ----------------------------------------------------------


async def test_reset_peer_resets_the_connection_before_the_server_sees_the_request() -> None:
    async with _stack() as (server, proxy, http):
        proxy.add(ResetPeer(stream="upstream"))
        with pytest.raises(ConnectionResetError):
            await _raw_exchange(proxy, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx")
        with pytest.raises(aiohttp.ClientOSError) as caught:
            await _post(http, proxy)
        assert caught.value.errno == errno.ECONNRESET
        assert server.bodies == [] and len(_actions(proxy, "reset")) == 2


async def test_reset_peer_downstream_waits_for_the_reply_so_the_server_handles_the_request() -> None:
    async with _stack() as (server, proxy, _):
        proxy.add(ResetPeer(timeout=50))
        with pytest.raises(ConnectionResetError):
            await _raw_exchange(proxy, b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nx")
        assert server.bodies == [b"x"]


@pytest.mark.parametrize("limit", [0, 100, 2000])
async def test_limit_data_closes_as_soon_as_the_limit_is_reached(limit: int) -> None:
    async with _stack() as (_, proxy, http):
        proxy.add(LimitData(bytes=limit))
        received = await _raw_exchange(proxy, b"GET /payload/1 HTTP/1.1\r\nHost: x\r\n\r\n")
        assert len(received) == limit and received == (b"HTTP/1.1 200 OK\r\n" + received[17:])[:limit]
        with pytest.raises(aiohttp.ClientError):
            async with http.get(f"{proxy.url}/payload/1") as reply:
                await reply.read()


async def test_limit_data_upstream_cuts_the_request_so_the_handler_never_runs() -> None:
    async with _stack() as (server, proxy, http):
        proxy.add(LimitData(bytes=120, stream="upstream"))
        with pytest.raises(aiohttp.ClientError):
            await _post(http, proxy, PAYLOAD)
        assert server.bodies == []


# --- HTTP toxics -----------------------------------------------------------------------------------


async def test_ack_loss_the_server_handled_the_request_but_the_client_got_an_error() -> None:
    async with _stack() as (server, proxy, http):
        proxy.add(AckLoss())
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await _post(http, proxy, b"sample 1")
        assert server.bodies == [b"sample 1"]
        (record,) = _actions(proxy, "ack_loss")
        assert record.direction == "downstream" and record.nbytes > len(b"sample 1")


async def test_ack_loss_toxicity_is_drawn_per_request_and_every_request_reaches_the_server() -> None:
    async with _stack() as (server, proxy, http):
        proxy.add(AckLoss(toxicity=0.5))
        failures = 0
        for i in range(30):
            try:
                assert await _post(http, proxy, b"%d" % i) == (200, b"%d" % i)
            except aiohttp.ServerDisconnectedError:
                failures += 1
        assert len(server.bodies) == 30 and 0 < failures < 30
        assert failures == len(_actions(proxy, "ack_loss"))


async def test_duplicate_request_runs_the_handler_twice_and_the_client_gets_one_reply() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"chunked "
        yield b"upload"

    async with _stack() as (server, proxy, http):
        proxy.add(DuplicateRequest())
        assert await _post(http, proxy, b"nonce=42") == (200, b"nonce=42")
        assert server.bodies == [b"nonce=42", b"nonce=42"]  # both handled before the client's reply
        async with http.post(f"{proxy.url}/echo", data=chunks()) as reply:
            assert await reply.read() == b"chunked upload"
        assert server.bodies[2:] == [b"chunked upload"] * 2
        assert [r.detail for r in _actions(proxy, "duplicate")] == ["POST /echo again: HTTP/1.1 200 OK"] * 2
        assert proxy.connections == 1  # the replays go on connections of their own, straight to the server


@pytest.mark.parametrize("stream", ["upstream", "downstream"])
async def test_corrupt_byte_flips_one_body_byte_in_its_direction(stream: str) -> None:
    async with _stack() as (server, proxy, http):
        proxy.add(CorruptByte(stream=stream, offset=100, xor=0x40))  # type: ignore[arg-type]
        status, body = await _post(http, proxy, PAYLOAD)
        assert status == 200  # heads are never touched
        corrupted = server.bodies[0] if stream == "upstream" else body
        untouched = body if stream == "upstream" else server.bodies[0]
        assert [i for i in range(len(PAYLOAD)) if corrupted[i] != PAYLOAD[i]] == [100]
        assert corrupted[100] == PAYLOAD[100] ^ 0x40
        assert untouched == PAYLOAD if stream == "downstream" else untouched == corrupted


async def test_corrupt_byte_at_a_random_offset_differs_from_the_sent_body_each_time() -> None:
    async with _stack() as (_, proxy, http):
        proxy.add(CorruptByte())
        bodies = [(await _post(http, proxy, PAYLOAD))[1] for _ in range(5)]
        assert all(b != PAYLOAD and len(b) == len(PAYLOAD) for b in bodies)
        offsets = {r.detail.split()[2] for r in _actions(proxy, "corrupt")}
        assert len(offsets) > 1


async def test_corrupt_byte_on_the_stream_can_break_the_request_line() -> None:
    async with _stack() as (server, proxy, http):
        proxy.add(CorruptByte(target="stream", stream="upstream", offset=0, xor=0x20))  # "POST" -> "pOST"
        status, _ = await _post(http, proxy)
        assert status == 400 and server.bodies == []


# --- partition -----------------------------------------------------------------------------------


async def test_refusing_partition_fails_every_connection_until_heal() -> None:
    async with _stack() as (server, proxy, http):
        assert await _post(http, proxy) == (200, b"reading")  # a kept-alive connection exists
        proxy.partition("refuse")
        for _ in range(3):
            with pytest.raises(aiohttp.ClientError):
                await _post(http, proxy)
        assert len(server.bodies) == 1
        proxy.heal()
        assert await _post(http, proxy) == (200, b"reading")
        actions = [r.action for r in proxy.log if r.toxic == "partition"]
        assert actions[0] == "start" and actions[-1] == "stop" and actions.count("refuse") >= 2
        assert "reset" in actions  # the kept-alive connection was reset when the partition began


def test_blackhole_partition_holds_traffic_until_heal_and_then_lets_it_through() -> None:
    async def scenario() -> tuple[float, int, int]:
        loop = asyncio.get_running_loop()
        async with _stack(timeout=600) as (server, proxy, http):
            proxy.partition("blackhole")
            loop.call_later(120, proxy.heal)
            start = loop.time()
            assert await _post(http, proxy) == (200, b"reading")
            return loop.time() - start, len(server.bodies), len(_actions(proxy, "stall"))

    waited, handled, stalls = run_virtual(scenario())
    assert waited == pytest.approx(120, abs=0.01) and handled == 1 and stalls >= 1


# --- scheduling and determinism ---------------------------------------------------------------------


async def test_a_scheduled_toxic_acts_only_between_its_start_and_its_end() -> None:
    async with _stack() as (server, proxy, http):
        loop = asyncio.get_running_loop()
        start = loop.time()
        proxy.add(AckLoss(), after=0.2, duration=0.3)
        assert [t.name for t in proxy.scheduled] == ["ack_loss_downstream"] and proxy.toxics == []
        assert await _post(http, proxy) == (200, b"reading")
        await asyncio.sleep(0.25 - (loop.time() - start))
        with pytest.raises(aiohttp.ServerDisconnectedError):
            await _post(http, proxy)
        await asyncio.sleep(max(0.0, 0.55 - (loop.time() - start)))
        assert await _post(http, proxy) == (200, b"reading")
        assert len(server.bodies) == 3 and proxy.toxics == [] and proxy.scheduled == []
        begin, end = (r.time for r in proxy.log if r.action in ("start", "stop"))
        assert begin - start >= 0.2 and end - begin >= 0.3


def test_a_partition_scheduled_in_device_time_fails_exactly_the_requests_inside_it() -> None:
    async def scenario() -> list[tuple[float, str]]:
        loop = asyncio.get_running_loop()
        outcomes = []
        async with _stack(timeout=10) as (_, proxy, http):
            start = loop.time()
            proxy.partition("blackhole", after=60, duration=120)
            for _ in range(12):
                at = round(loop.time() - start)
                try:
                    await _post(http, proxy)
                    outcomes.append((at, "ok"))
                except TimeoutError:
                    outcomes.append((at, "timeout"))
                await asyncio.sleep(20 - (loop.time() - start) % 20)
        return outcomes

    outcomes = run_virtual(scenario())
    assert [at for at, outcome in outcomes if outcome == "timeout"] == [60, 80, 100, 120, 140, 160]
    assert len(outcomes) == 12


def _seeded_scenario(seed: int) -> list[tuple[object, ...]]:
    """Requests on new connections through per-connection, per-message and jittered toxics."""

    async def scenario() -> list[tuple[object, ...]]:
        async with _stack(seed=seed, keep_alive=False) as (_, proxy, http):
            proxy.add(Latency(latency=50, jitter=40, toxicity=0.5, stream="upstream"))
            proxy.add(AckLoss(toxicity=0.3))
            proxy.add(CorruptByte(toxicity=0.5, stream="upstream"))
            for i in range(12):
                with contextlib.suppress(aiohttp.ServerDisconnectedError):
                    await _post(http, proxy, b"sample %02d" % i)
            # Latency records one entry per chunk, and how the kernel cuts a request into chunks is not
            # ours to fix: the jitter drawn for each connection's first chunk is.
            firsts = {}
            for r in _actions(proxy, "delay"):
                firsts.setdefault(r.connection, r.detail)
            return [r.without_time() for r in proxy.log if r.action != "delay"] + sorted(firsts.items())

    return run_virtual(scenario())


def test_the_same_seed_gives_the_same_fault_log_and_another_seed_another() -> None:
    first, again, other = _seeded_scenario(7), _seeded_scenario(7), _seeded_scenario(8)
    assert first == again
    assert other != first
    assert any(entry[2] == "ack_loss" for entry in first if len(entry) > 2)


# --- toxic definitions ------------------------------------------------------------------------------


@pytest.mark.parametrize("toxic", [
    Latency(latency=100, jitter=10, stream="upstream"), Bandwidth(rate=5), Slicer(average_size=10, delay=5),
    Timeout(timeout=0), ResetPeer(timeout=10), LimitData(bytes=1), Partition(mode="refuse"), AckLoss(),
    DuplicateRequest(toxicity=0.5), CorruptByte(offset=3, xor=0xFF, target="stream"),
])
def test_toxics_round_trip_through_toxiproxys_json_shape(toxic: Toxic) -> None:
    spec = toxic.to_toxiproxy()
    assert spec["type"] == toxic.type and spec["name"] == toxic.name
    assert toxic_from_spec(spec) == toxic


@pytest.mark.parametrize("spec", [
    None, {"type": "netem"}, {"type": "latency", "attributes": {"latency": "slow"}},
    {"type": "latency", "attributes": {"wobble": 1}}, {"type": "latency", "toxicity": 2},
    {"type": "ack_loss", "stream": "upstream"}, {"type": "slicer", "attributes": []},
])
def test_a_bad_toxic_spec_is_a_document_error(spec: object) -> None:
    with pytest.raises(DocumentError):
        toxic_from_spec(spec)


async def test_names_are_unique_and_removing_an_unknown_toxic_is_a_key_error() -> None:
    async with _stack() as (_, proxy, _http):
        proxy.add(Latency(latency=1))
        with pytest.raises(ValueError):
            proxy.add(Latency(latency=2))
        assert proxy.add(Latency(latency=2, name="second")) == "second"
        proxy.remove("second")
        with pytest.raises(KeyError):
            proxy.remove("second")
        proxy.clear()
        assert proxy.toxics == []
    async with FaultProxy("127.0.0.1", 1, http=False) as raw:
        with pytest.raises(ValueError):
            raw.add(AckLoss())
        raw.add(CorruptByte(target="stream"))  # bytes, not messages: fine on any protocol
