"""The fault proxy's cost with no toxics: requests/s and bulk MB/s through it vs straight to the server.

Both paths hit the same bare aiohttp server from the same client, in alternating rounds of the same run;
the best round of each is kept (the one least disturbed by the rest of the machine). The ratio is what
the extra hop (two sockets, the HTTP framer, the per-direction tasks) leaves of the direct rate.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp
from aiohttp import web

from bench import Result
from harness.fault_proxy import FaultProxy

REQUESTS = 300  # per round and path
BULK = 4 * 1024 * 1024  # bytes echoed per bulk round
ROUNDS = 5
BODY = b'{"device":"EcoWatt-1","nonce":42,"payload":"' + b"A" * 200 + b'"}'


async def _requests_per_second(http: aiohttp.ClientSession, url: str, count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        async with http.post(url, data=BODY) as reply:
            if await reply.read() != BODY:
                raise RuntimeError("the echo differs")
    return count / (time.perf_counter() - start)


async def _megabytes_per_second(http: aiohttp.ClientSession, url: str, size: int) -> float:
    body = bytes(size)
    start = time.perf_counter()
    async with http.post(url, data=body) as reply:
        if len(await reply.read()) != size:
            raise RuntimeError("the echo is short")
    return 2 * size / 1e6 / (time.perf_counter() - start)  # up and back down


async def _echo_server() -> tuple[web.AppRunner, int]:
    async def echo(request: web.Request) -> web.Response:
        return web.Response(body=await request.read())

    app = web.Application(client_max_size=BULK + 1024)
    app.router.add_post("/echo", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    return runner, runner.addresses[0][1]


async def _best_of(rounds: int, direct: Callable[[], Awaitable[float]], proxied: Callable[[], Awaitable[float]]
                   ) -> tuple[float, float]:
    ours, theirs = [], []
    for _ in range(rounds):
        theirs.append(await direct())
        ours.append(await proxied())
    return max(ours), max(theirs)


async def _run(requests: int, bulk: int, rounds: int) -> list[Result]:
    runner, port = await _echo_server()
    try:
        async with FaultProxy("127.0.0.1", port) as proxy, aiohttp.ClientSession() as http:
            direct, proxied = f"http://127.0.0.1:{port}/echo", f"{proxy.url}/echo"
            await _requests_per_second(http, direct, 10)  # warm both connections up
            await _requests_per_second(http, proxied, 10)
            rate, direct_rate = await _best_of(rounds, lambda: _requests_per_second(http, direct, requests),
                                               lambda: _requests_per_second(http, proxied, requests))
            speed, direct_speed = await _best_of(rounds, lambda: _megabytes_per_second(http, direct, bulk),
                                                 lambda: _megabytes_per_second(http, proxied, bulk))
            if proxy.log:
                raise RuntimeError("a proxy without toxics logged faults")
    finally:
        await runner.cleanup()
    return [
        Result("fault_proxy", f"echo requests/s, {len(BODY)} B, no toxics", rate, "req/s", baseline=direct_rate,
               target=0.3),
        Result("fault_proxy", f"bulk echo, {bulk >> 20} MiB, no toxics", speed, "MB/s", baseline=direct_speed,
               target=0.3),
    ]


def main(requests: int = REQUESTS, bulk: int = BULK, rounds: int = ROUNDS) -> list[Result]:
    return asyncio.run(_run(requests, bulk, rounds))


if __name__ == "__main__":
    for result in main():
        print(result, f"ratio={result.ratio:.2f}")
