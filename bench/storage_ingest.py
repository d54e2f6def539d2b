"""Durable ingests per second on SQLite: group commit vs one COMMIT per ingest, side by side.

Both runs use the same storage code with WAL and synchronous=FULL on the same disk, the same number
of concurrent writers (one device each, sequential nonces) and the same uploads (one packet of
6 registers x 7 samples, as firmware 1.0.4 sends). Only the writer's batching differs, so the ratio
is what group commit buys. Run: python -m bench.storage_ingest [--ingests N] [--writers W]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import statistics
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from cloud.storage import BatchSamples, DecodedUpload, IngestRequest, PacketIn, Verdict, open_storage

LAYOUT = (0, 1, 5, 9, 6, 7)


def _request(device: str, nonce: int) -> IngestRequest:
    content = f"{device}/{nonce}".encode()
    raw = [2300 + i + a for i in range(7) for a in LAYOUT]
    packet = PacketIn(0, nonce * 15_000, hashlib.sha256(content).hexdigest(), "BATCH_DICTIONARY",
                      samples=BatchSamples(LAYOUT, raw, sampled_at=1_764_000_000.0 + nonce))

    def decode(state: str | None) -> DecodedUpload:
        return DecodedUpload([packet], '{"history":[]}')

    return IngestRequest(device, nonce, hashlib.sha256(content).hexdigest(), 380, decode,
                         reply=lambda result: '{"status":"success"}')


@dataclass
class Run:
    label: str
    ingests: int
    seconds: float
    latencies: list[float]

    @property
    def rate(self) -> float:
        return self.ingests / self.seconds

    def line(self) -> str:
        q = statistics.quantiles(self.latencies, n=100)
        return (f"{self.label:<24} {self.rate:9.0f} ingests/s   p50 {q[49] * 1000:6.1f} ms   "
                f"p99 {q[98] * 1000:6.1f} ms")


async def _measure(label: str, directory: Path, ingests: int, writers: int, group_commit: bool) -> Run:
    latencies: list[float] = []
    async with open_storage(directory / f"{label}.db", group_commit=group_commit) as storage:
        async def writer(n: int) -> None:
            for nonce in range(1, ingests // writers + 1):
                started = time.perf_counter()
                result = await storage.ingest(_request(f"dev{n}", nonce))
                latencies.append(time.perf_counter() - started)
                assert result.verdict is Verdict.ACCEPTED

        started = time.perf_counter()
        await asyncio.gather(*(writer(n) for n in range(writers)))
        seconds = time.perf_counter() - started
    return Run(label, len(latencies), seconds, latencies)


async def _compare(ingests: int, writers: int) -> tuple[Run, Run]:
    with tempfile.TemporaryDirectory(prefix="ecowatt-bench-") as tmp:
        directory = Path(tmp)
        await _measure("warm-up", directory, writers * 4, writers, True)
        single = await _measure("commit per ingest", directory, ingests, writers, False)
        grouped = await _measure("group commit", directory, ingests, writers, True)
    return single, grouped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.storage_ingest", description=__doc__.splitlines()[0])
    parser.add_argument("--ingests", type=int, default=800, help="ingests per run (default 800)")
    parser.add_argument("--writers", type=int, default=32, help="concurrent writers (default 32)")
    args = parser.parse_args(argv)
    single, grouped = asyncio.run(_compare(args.ingests, args.writers))
    print(f"storage ingest, SQLite WAL synchronous=FULL, {args.writers} concurrent writers")
    print(single.line())
    print(grouped.line())
    print(f"ratio group/single: {grouped.rate / single.rate:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
