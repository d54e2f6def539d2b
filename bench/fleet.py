"""Fleet load: boards one Locust worker process keeps at firmware cadence, and cloud latency at N boards.

1. Boards per worker. `ecowatt fleet load` with one Locust process (no workers) against a stand-in
   cloud that answers at once (a child process), at `CADENCE_SCALE` device seconds per second. A
   missed deadline is a timer expiry that found the previous one unserved (a DEADLINE failure in
   Locust's CSV). The fleet doubles until more than `SATURATED` of the expiries are missed; the
   figure is the largest fleet that missed at most `TOLERATED` of them (scheduler hiccups of a
   shared machine) with no failed request.
2. Cloud latency. The same command (one Locust process: on a small machine the cloud needs the other
   cores) at firmware cadence (time scale 1) against two `ecowatt cloud serve` processes on one PostgreSQL (a throwaway cluster; SQLite if PostgreSQL is not installed),
   for growing fleets up to `SIZES[-1]`; p50/p99 of `/process` (durable, acknowledged after commit)
   and of every request, from Locust's CSV. Baseline, side by side: the same fleet against the
   stand-in cloud, so the ratio is what the real cloud adds to the generator's own latency.

Loopback only; every run is bounded by its run time. `python -m bench.fleet --sizes 250,500 --seconds 20`
runs a shorter ramp by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import multiprocessing
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import Result
from device_emulator.profiles import PROFILES, REFERENCE
from harness import pg_cluster

CADENCE_SCALE = 1.0  # firmware cadence; at 10x a shared machine's scheduler stalls alone miss deadlines
CADENCE_SECONDS = 40.0
CADENCE_START, CADENCE_LIMIT = 500, 16000
TOLERATED, SATURATED = 0.001, 0.01  # shares of timer expiries missed
SIZES = (100, 250, 500, 1000, 2500, 5000)
LATENCY_SECONDS = 45.0  # each fleet: a 10 s ramp, then two upload periods at least
CLOUD_PROCESSES = 2


def _stand_in(urls: Any, stop: Any) -> None:
    """Child process: a cloud that answers every device route at once, as the firmware expects."""
    import asyncio

    from aiohttp import web

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        if request.path.startswith("/ota/check/"):
            return web.json_response({"success": True, "update_available": False, "update_info": {}})
        if request.path == "/command/poll":
            return web.json_response({"message": "No pending commands"})
        return web.json_response({"Changed": False} if request.path == "/changes" else {"status": "success"})

    async def main() -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", answer)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, backlog=4096).start()
        host, port = runner.addresses[0][:2]
        urls.put(f"http://{host}:{port}")
        while not stop.is_set():
            await asyncio.sleep(0.1)
        await runner.cleanup()

    asyncio.run(main())


@contextlib.contextmanager
def stand_in_cloud() -> Iterator[str]:
    context = multiprocessing.get_context("spawn")
    urls, stop = context.Queue(), context.Event()
    server = context.Process(target=_stand_in, args=(urls, stop), daemon=True)
    server.start()
    try:
        yield urls.get(timeout=60)
    finally:
        stop.set()
        server.join(timeout=10)


@contextlib.contextmanager
def real_cloud(directory: Path) -> Iterator[tuple[list[str], str]]:
    """Cloud processes on one database: (their URLs, the database URL the fleet registers keys in)."""
    with contextlib.ExitStack() as cleanup:
        if pg_cluster.is_installed():
            db = cleanup.enter_context(pg_cluster.PgCluster(fsync=False)).dsn
            count = CLOUD_PROCESSES
        else:  # one SQLite file takes one writer process
            db, count = str(directory / "cloud.db"), 1
        command = [sys.executable, "-m", "cloud.cli", "cloud", "serve", "--port", "0", "--db", db,
                   "--keys-dir", str(directory / "keys"), "--data-dir", str(directory),
                   "--open-operator-api", "--log-level", "WARNING"]
        processes: list[subprocess.Popen[bytes]] = []

        def stop() -> None:
            for process in processes:
                process.terminate()
                process.wait(timeout=30)

        cleanup.callback(stop)
        urls = []
        for _ in range(count):  # one after the other: the first creates the schema
            process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
            processes.append(process)
            assert process.stdout is not None
            line = process.stdout.readline().decode().strip()
            if not line.startswith("listening on "):
                raise RuntimeError(f"cloud did not start: {line!r}")
            urls.append(line.removeprefix("listening on "))
        yield urls, db


@dataclass(frozen=True)
class Run:
    boards: int
    requests: int
    failures: int  # HTTP exchanges that failed
    missed: int  # timer expiries that found the previous one unserved
    p50_process: float
    p99_process: float
    p99_all: float
    rps: float


def fleet_run(clouds: list[str], boards: int, seconds: float, scale: float, directory: Path,
              db: str | None = None) -> Run:
    """One headless `ecowatt fleet load`, summarised from its CSV."""
    prefix = directory / f"run-{boards}-{time.monotonic_ns()}"
    command = [sys.executable, "-m", "harness.fleet_cli", "fleet", "load", "--devices", str(boards),
               "--cloud", ",".join(clouds), "--headless", "--run-time", f"{seconds:g}",
               "--time-scale", f"{scale:g}", "--spawn-rate", f"{max(1.0, boards / 10):g}", "--csv", str(prefix),
               "--loglevel", "WARNING"]
    command += ["--db", db] if db else ["--keys-dir", str(directory / "keys")]
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=seconds + 180,
                   check=False)
    stats = {row["Name"]: row for row in _rows(prefix, "stats")}
    failures = _rows(prefix, "failures")
    missed = sum(int(f["Occurrences"]) for f in failures if f["Method"] == "DEADLINE")
    upload, total = stats.get("/process", {}), stats.get("Aggregated", {})
    return Run(
        boards=boards,
        requests=int(total.get("Request Count", 0)) - missed,
        failures=sum(int(f["Occurrences"]) for f in failures if f["Method"] != "DEADLINE"),
        missed=missed,
        p50_process=_number(upload.get("50%")),
        p99_process=_number(upload.get("99%")),
        p99_all=_number(total.get("99%")),
        rps=_number(total.get("Requests/s")),
    )


def _rows(prefix: Path, kind: str) -> list[dict[str, str]]:
    path = prefix.with_name(f"{prefix.name}_{kind}.csv")
    if not path.exists():
        return []
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def _number(text: str | None) -> float:
    try:
        return float(text) if text not in (None, "", "N/A") else float("nan")
    except ValueError:
        return float("nan")


def expiries(boards: int, seconds: float, scale: float) -> float:
    """Timer expiries of a fleet in a run (reference profile timers)."""
    timings = PROFILES[REFERENCE].timings
    per_second = sum(1 / p for p in (timings.poll_s, timings.upload_s, timings.config_check_s, timings.ota_check_s))
    return boards * seconds * scale * per_second


def boards_per_worker(cloud: str, directory: Path, seconds: float) -> int:
    best, boards = 0, CADENCE_START
    while boards <= CADENCE_LIMIT:
        run = fleet_run([cloud], boards, seconds, CADENCE_SCALE, directory)
        share = run.missed / expiries(boards, seconds, CADENCE_SCALE)
        met = share <= TOLERATED and run.failures == 0 and run.requests > 0
        print(f"  cadence {boards:5d} boards at {CADENCE_SCALE:g}x: {run.rps:7.0f} req/s, {run.missed} missed "
              f"deadlines ({share:.2%}), {run.failures} failed requests -> {'met' if met else 'NOT met'}", flush=True)
        if met:
            best = max(best, boards)
        if share > SATURATED or run.failures:
            break
        boards *= 2
    return best


def latency_curve(sizes: tuple[int, ...], seconds: float, directory: Path, stand_in: str) -> list[tuple[Run, Run]]:
    curve = []
    with real_cloud(directory) as (clouds, db):
        print(f"  cloud: {len(clouds)} process(es) on {'PostgreSQL' if db.startswith('postgresql') else 'SQLite'}",
              flush=True)
        for boards in sizes:
            real = fleet_run(clouds, boards, seconds, 1.0, directory, db=db)
            bare = fleet_run([stand_in], boards, seconds, 1.0, directory)
            curve.append((real, bare))
            print(f"  {boards:5d} boards: /process p50 {real.p50_process:5.0f} ms p99 {real.p99_process:6.0f} ms, "
                  f"all p99 {real.p99_all:6.0f} ms, {real.rps:6.0f} req/s, {real.failures} failed, "
                  f"{real.missed} missed | stand-in p99 {bare.p99_process:5.0f} ms", flush=True)
            if real.failures > real.requests // 100:  # more than 1 % failing: the cloud is past its limit
                break
    return curve


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="fleet sizes for the latency curve")
    parser.add_argument("--seconds", type=float, default=LATENCY_SECONDS, help="run time of each fleet")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    sizes = tuple(int(s) for s in args.sizes.split(","))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ecowatt-bench-fleet-") as tmp, stand_in_cloud() as stand_in:
        directory = Path(tmp)
        per_worker = boards_per_worker(stand_in, directory, min(args.seconds, CADENCE_SECONDS))
        curve = latency_curve(sizes, args.seconds, directory, stand_in)
    print(f"  ({time.perf_counter() - started:.0f} s)")
    results = [Result("fleet", f"boards per Locust worker at firmware cadence, {CADENCE_SCALE:g}x time",
                      float(per_worker), "boards")]
    for real, bare in curve:
        results.append(Result("fleet", f"cloud /process p99 at {real.boards} boards (1x)", real.p99_process, "ms",
                              baseline=bare.p99_process or None))
    return results


if __name__ == "__main__":
    for result in main():
        ratio = f" (stand-in {result.baseline:g} ms, ratio {result.ratio:.2f})" if result.baseline else ""
        print(f"{result.metric}: {result.value:g} {result.unit}{ratio}")
