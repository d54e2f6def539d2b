"""HTTP frame API reads per second: our /api/inverter/read vs a bare aiohttp route answering a fixed frame.

The baseline parses nothing and computes nothing, so the ratio shows what frame parsing, the model, the
fault check and the ledger cost on top of aiohttp itself.
"""

from __future__ import annotations

import asyncio
import time

import aiohttp
from aiohttp import web

from bench import Result
from protocol import modbus
from protocol.registers import REGISTER_COUNT, SLAVE_ADDRESS
from sim_inverter.service import SimConfig, SimService

READS = 300  # per round and server
ROUNDS = 6
REQUEST = modbus.http_body(modbus.to_hex(modbus.build_read_request(SLAVE_ADDRESS, 0, REGISTER_COUNT)))
FIXED = modbus.http_body(modbus.to_hex(modbus.build_read_response(SLAVE_ADDRESS, [2300] * REGISTER_COUNT)))


async def _reads_per_second(http: aiohttp.ClientSession, url: str, reads: int) -> float:
    async with http.post(url, data=REQUEST) as reply:  # warm up the connection
        await reply.read()
    start = time.perf_counter()
    for _ in range(reads):
        async with http.post(url, data=REQUEST) as reply:
            if modbus.classify_response(modbus.frame_from_http_body(await reply.read())) is not modbus.Verdict.PARSE_OK:
                raise RuntimeError("benchmark read failed")
    return reads / (time.perf_counter() - start)


async def _bare_app() -> tuple[web.AppRunner, str]:
    async def fixed(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(text=FIXED, content_type="application/json")

    app = web.Application()
    app.router.add_post("/api/inverter/read", fixed)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}/api/inverter/read"


async def _run(reads: int, rounds: int) -> tuple[float, float]:
    runner, bare_url = await _bare_app()
    ours, theirs = [], []
    try:
        config = SimConfig(http_port=0, modbus_port=None, time_offset=6 * 3600)
        async with SimService(config) as sim, aiohttp.ClientSession() as http:
            for _ in range(rounds):
                theirs.append(await _reads_per_second(http, bare_url, reads))
                ours.append(await _reads_per_second(http, f"{sim.http_url}/api/inverter/read", reads))
    finally:
        await runner.cleanup()
    return max(ours), max(theirs)  # best of the rounds: the least disturbed by the rest of the machine


def main(reads: int = READS, rounds: int = ROUNDS) -> list[Result]:
    ours, bare = asyncio.run(_run(reads, rounds))
    return [Result("http_frames", "frame reads/s, 10 registers", ours, "reads/s", baseline=bare)]


if __name__ == "__main__":
    for result in main():
        print(result, f"ratio={result.ratio:.2f}")
