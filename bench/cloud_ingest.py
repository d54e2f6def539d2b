"""Durable secured `/process` uploads per second vs a bare aiohttp handler that only parses the JSON.

Both servers run side by side in this process on 127.0.0.1, taking turns, and get the very same
request bodies: envelopes built as firmware 1.0.4 builds them (one compressed packet of 6 registers
x 7 samples, HMAC-signed), from W devices uploading one after the other with increasing nonces. The cloud
verifies, decodes, stores (SQLite WAL, synchronous=FULL, group commit) and answers after the commit;
the baseline reads and parses the body and answers. Target: cloud/baseline >= 0.5.
Run: python -m bench.cloud_ingest [--uploads N] [--devices W] [--rounds R] [--postgres]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import json
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from bench import Result
from cloud.key_registry import KeyFiles
from cloud.server import CloudServer
from cloud.settings import CloudSettings
from harness import pg_cluster
from protocol.compression import Batch, CodecState, compress_batch, encode_compressed_binary, method_label
from protocol.envelope import build_envelope
from protocol.upload_document import firmware_document, firmware_packet

LAYOUT = (0, 1, 5, 9, 6, 7)
TARGET = 0.5


def device_bodies(device_id: str, key: bytes, uploads: int) -> list[bytes]:
    state = CodecState()
    bodies = []
    for n in range(uploads):
        rows = [(2431 + (s + n) % 20, 164 - s, 72 + s, 4153 + 5 * s, 64 - s % 3, 546) for s in range(7)]
        packet = compress_batch(Batch(tuple(v for row in rows for v in row), LAYOUT), state).packet
        ts = 15_000 * (n + 1)
        entry = firmware_packet(encode_compressed_binary(packet), method=method_label(packet), register_layout=LAYOUT,
                                compressed_size=len(packet), timestamp=ts - 500, compression_time_us=3000)
        document = firmware_document(device_id, ts, [entry]).to_json()
        bodies.append(build_envelope(key, 10_001 + n, document))
    return bodies


@dataclass
class Run:
    label: str
    seconds: float
    latencies: list[float]
    cpu_seconds: float  # this process's CPU time (every thread: client, server, storage writer)

    @property
    def cpu_per_request_us(self) -> float:
        """CPU per request: unlike the rate, barely moved by other load on the machine."""
        return self.cpu_seconds / len(self.latencies) * 1e6

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds

    def quantile(self, q: int) -> float:
        return statistics.quantiles(self.latencies, n=100)[q - 1] * 1000

    def __add__(self, other: Run) -> Run:
        return Run(self.label, self.seconds + other.seconds, self.latencies + other.latencies,
                   self.cpu_seconds + other.cpu_seconds)

    def line(self) -> str:
        return (f"{self.label:<28} {self.rate:8.0f} uploads/s   p50 {self.quantile(50):6.1f} ms   "
                f"p99 {self.quantile(99):6.1f} ms   CPU {self.cpu_per_request_us:6.0f} us/request")


async def drive(label: str, url: str, bodies: list[list[bytes]]) -> Run:
    latencies: list[float] = []
    connector = aiohttp.TCPConnector(limit=len(bodies))
    async with aiohttp.ClientSession(connector=connector) as http:
        async def device(stream: list[bytes]) -> None:
            for body in stream:
                started = time.perf_counter()
                async with http.post(url, data=body, headers={"Content-Type": "application/json"}) as response:
                    await response.read()
                    assert response.status == 200, response.status
                latencies.append(time.perf_counter() - started)

        started, cpu = time.perf_counter(), _cpu_seconds()
        await asyncio.gather(*(device(stream) for stream in bodies))
        seconds = time.perf_counter() - started
    return Run(label, seconds, latencies, _cpu_seconds() - cpu)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def bare_server() -> tuple[web.AppRunner, str]:
    async def parse_only(request: web.Request) -> web.Response:
        json.loads(await request.read())
        return web.json_response({"status": "success"})

    app = web.Application()
    app.router.add_post("/process", parse_only)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{runner.addresses[0][1]}/process"


async def compare(uploads: int, devices: int, rounds: int, db_url: str | None = None) -> tuple[Run, Run]:
    """Both servers in turn, `rounds` times, each time with the next part of every device's uploads:
    a machine whose speed drifts during the run moves both figures alike."""
    with tempfile.TemporaryDirectory(prefix="ecowatt-bench-") as tmp:
        directory = Path(tmp)
        keys = KeyFiles(directory / "keys")
        names = [f"bench-{n}" for n in range(devices)]
        per_round = max(1, uploads // devices // rounds)
        streams = [device_bodies(name, keys.add_device(name), 5 + rounds * per_round) for name in names]
        warm_up = [stream[:5] for stream in streams]
        settings = CloudSettings(host="127.0.0.1", port=0, data_dir=directory / "data", keys_dir=directory / "keys",
                                 db_url=db_url)
        settings.data_dir.mkdir()
        runner, bare_url = await bare_server()
        try:
            async with CloudServer(settings) as cloud:
                gc.collect()
                gc.freeze()  # as `ecowatt cloud serve` does once started (both servers live in this process)
                await drive("warm-up", bare_url, warm_up)
                await drive("warm-up", cloud.url + "/process", warm_up)
                bare = Run("bare aiohttp, parse only", 0.0, [], 0.0)
                durable = Run("cloud /process, durable", 0.0, [], 0.0)
                for n in range(rounds):
                    part = [stream[5 + n * per_round:5 + (n + 1) * per_round] for stream in streams]
                    bare += await drive(bare.label, bare_url, part)
                    durable += await drive(durable.label, cloud.url + "/process", part)
        finally:
            gc.unfreeze()  # other benches may run in this process next
            await runner.cleanup()
    return bare, durable


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(prog="python -m bench.cloud_ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--uploads", type=int, default=2000, help="timed uploads per run (default 2000)")
    parser.add_argument("--devices", type=int, default=32, help="devices uploading at once (default 32)")
    parser.add_argument("--rounds", type=int, default=4, help="turns each server takes (default 4)")
    parser.add_argument("--postgres", action="store_true",
                        help="store in a throwaway local PostgreSQL cluster (fsync on) instead of SQLite")
    args = parser.parse_args(argv)
    with contextlib.ExitStack() as cleanup:
        db_url = cleanup.enter_context(pg_cluster.PgCluster()).dsn if args.postgres else None
        bare, durable = asyncio.run(compare(args.uploads, args.devices, args.rounds, db_url))
    storage = "PostgreSQL (fsync on)" if args.postgres else "SQLite WAL synchronous=FULL with group commit"
    print(f"secured uploads, {args.devices} devices at once, {storage}")
    print(bare.line())
    print(durable.line())
    print(f"ratio durable/bare: {durable.rate / bare.rate:.2f} (target >= {TARGET}); "
          f"CPU per request bare/durable: {bare.cpu_per_request_us / durable.cpu_per_request_us:.2f}")
    return [
        Result("cloud_ingest", "durable /process uploads/s", durable.rate, "1/s", bare.rate, TARGET),
        Result("cloud_ingest", "p50 latency", durable.quantile(50), "ms", bare.quantile(50)),
        Result("cloud_ingest", "p99 latency", durable.quantile(99), "ms", bare.quantile(99)),
        Result("cloud_ingest", "CPU per upload", durable.cpu_per_request_us, "us", bare.cpu_per_request_us),
    ]


if __name__ == "__main__":
    main()
