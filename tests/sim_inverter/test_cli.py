"""`ecowatt sim serve` as a subprocess: start, read the listening lines, serve, stop cleanly on a signal."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import sys
from urllib.parse import urlsplit

import aiohttp
import pytest
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient

from harness.cli import main
from protocol import modbus

STARTUP = 60.0  # importing pvlib and building the first day takes a few seconds on a slow machine
LINE = re.compile(r"listening on (\S+)\n")


async def start(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "harness.cli", "sim", "serve", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )


async def listening(process: asyncio.subprocess.Process, n: int) -> list[str]:
    urls = []
    for _ in range(n):
        line = (await asyncio.wait_for(process.stdout.readline(), STARTUP)).decode()
        match = LINE.fullmatch(line)
        assert match, (line, (await process.stderr.read()).decode() if not line else "")
        urls.append(match.group(1))
    return urls


async def stop(process: asyncio.subprocess.Process, signum: int) -> int:
    process.send_signal(signum)
    return await asyncio.wait_for(process.wait(), 20)


@pytest.fixture
async def processes():
    started: list[asyncio.subprocess.Process] = []
    yield started
    for process in started:  # a failed test must not leave a server behind
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_serve_all_transports_then_sigterm(processes) -> None:
    process = await start(
        "--http-port", "0", "--modbus-port", "0", "--rtu-pty", "--api-key", "k3y", "--seed", "3",
        "--time-scale", "60", "--time-offset", "21600",
    )
    processes.append(process)
    http_url, tcp_url, rtu_url = await listening(process, 3)
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+", http_url)
    assert re.fullmatch(r"modbus-tcp://127\.0\.0\.1:\d+", tcp_url)
    assert rtu_url.startswith("serial:///dev/")

    async with aiohttp.ClientSession() as http:
        body = modbus.http_body("11030000000AC75D")
        async with http.post(f"{http_url}/api/inverter/read", data=body, headers={"Authorization": "k3y"}) as r:
            frame_hex = (await r.json())["frame"]
        assert modbus.classify_response(frame_hex) is modbus.Verdict.PARSE_OK
        async with http.post(f"{http_url}/api/inverter/read", data=body) as r:
            assert r.status == 401

    tcp = urlsplit(tcp_url)
    client = AsyncModbusTcpClient(tcp.hostname, port=tcp.port, timeout=2, retries=0)
    assert await client.connect()
    reply = await client.write_register(8, 30, device_id=0x11)
    assert not reply.isError()
    client.close()

    client = AsyncModbusSerialClient(rtu_url.removeprefix("serial://"), timeout=2, retries=0)
    assert await client.connect()
    reply = await client.read_holding_registers(0, count=10, device_id=0x11)
    client.close()
    assert reply.registers[8] == 30  # the write over TCP is seen over RTU: one inverter

    assert await stop(process, signal.SIGTERM) == 0


async def test_sigint_stops_cleanly(processes) -> None:
    process = await start("--http-port", "0", "--modbus-port", "0")
    processes.append(process)
    assert len(await listening(process, 2)) == 2
    assert await stop(process, signal.SIGINT) == 0


def test_busy_port_is_a_clear_error(capsys) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        status = main(["sim", "serve", "--http-port", str(busy.getsockname()[1]), "--modbus-port", "0"])
    assert status == 1
    assert "ecowatt sim serve:" in capsys.readouterr().err


@pytest.mark.parametrize(
    "bad", [["--slave", "0"], ["--slave", "x"], ["--http-port", "70000"], ["--time-scale", "0"], ["--latitude", "91"]]
)
def test_bad_arguments_exit_2(bad: list[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(["sim", "serve", *bad])
    assert stopped.value.code == 2
