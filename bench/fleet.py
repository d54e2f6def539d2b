"""Fleet load: boards one Locust worker process keeps at firmware cadence, and cloud latency at N boards.

Firmware cadence is the `--profile` firmware's timers at time scale 1 (default `spec`: a poll every
2 s, `/changes` every 5 s, `/command/poll` every 10 s, `/ota/check` every 60 s, an upload every 15 min;
`reference-1.0.4` uploads every 15 s).

1. Boards per worker. `ecowatt fleet load` with one Locust process (no workers) against a stand-in
   cloud that answers at once (a child process). A missed deadline is a timer expiry that found the
   previous one unserved (a DEADLINE failure in Locust's CSV). The fleet doubles until more than
   `SATURATED` of the expiries are missed; the figure is the largest fleet that missed at most
   `TOLERATED` of them (scheduler hiccups of a shared machine) with no failed request.
2. Cloud latency. The same command against `CLOUD_PROCESSES` `ecowatt cloud serve` processes on one
   PostgreSQL (harness.pg_cluster, a throwaway cluster; SQLite and one process if PostgreSQL is not
   installed), for growing fleets up to `SIZES[-1]`. Each fleet is spread over as many Locust worker
   processes as step 1 says keep it at cadence (`--workers`). p99 of every device request and of
   `/process` (durable, acknowledged after commit) come from Locust's CSV. Baseline, side by side: the
   same fleet against the stand-in cloud, so the ratio is what the real cloud adds to the generator's
   own latency; a fleet size counts as driven at cadence only if that baseline run missed at most
   `TOLERATED` of the expiries (against the real cloud a board misses deadlines when answers are slow,
   as a real board would). The curve stops past the cloud's limit (more than 1 % of requests failing).
   A board's first upload comes one to two upload periods after its boot, so at `spec` cadence a run
   shorter than 15 minutes has no `/process` traffic; `--profile reference-1.0.4` measures the cloud
   under uploads.

Loopback only; every run is bounded by its run time. `python -m bench.fleet --sizes 250,500 --seconds 20`
runs a shorter ramp by hand.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import multiprocessing
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from bench import Result
from device_emulator.profiles import PROFILES, SPEC
from harness import pg_cluster

CADENCE_SECONDS = 40.0
CADENCE_START, CADENCE_LIMIT = 500, 16000
TOLERATED, SATURATED = 0.001, 0.01  # shares of timer expiries missed
SIZES = (100, 250, 500, 1000, 2500, 5000)
LATENCY_SECONDS = 45.0  # each fleet: a 10 s ramp, then two upload periods at least
CLOUD_PROCESSES = 2


def stand_in_app() -> web.Application:
    """A cloud that answers every device route at once, as the firmware expects: what a bench measures
    against when the cloud is not what it measures (or as the baseline next to the real one)."""

    async def answer(request: web.Request) -> web.Response:
        await request.read()
        if request.path.startswith("/ota/check/"):
            return web.json_response({"success": True, "update_available": False, "update_info": {}})
        if request.path == "/command/poll":
            return web.json_response({"message": "No pending commands"})
        return web.json_response({"Changed": False} if request.path == "/changes" else {"status": "success"})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    return app


@dataclass(frozen=True)
class StandIn:
    cloud: str  # the stand-in cloud's base URL
    inverter: str | None = None  # the simulator's frame API, when one was asked for


def _serve_stand_in(urls: Any, stop: Any, simulator_scale: float | None) -> None:
    """Child process: the stand-in cloud, and the simulator at `simulator_scale` when asked (noon)."""
    import asyncio

    async def main() -> None:
        runner = web.AppRunner(stand_in_app(), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0, backlog=4096).start()
        host, port = runner.addresses[0][:2]
        sim = None
        if simulator_scale is not None:
            from sim_inverter.service import SimConfig, SimService

            sim = SimService(SimConfig(http_port=0, modbus_port=None, time_scale=simulator_scale,
                                       time_offset=43200))
            await sim.start()
        urls.put(StandIn(f"http://{host}:{port}", None if sim is None else sim.http_url))
        while not stop.is_set():
            await asyncio.sleep(0.1)
        await runner.cleanup()
        if sim is not None:
            await sim.stop()

    asyncio.run(main())


@contextlib.contextmanager
def stand_in(simulator_scale: float | None = None) -> Iterator[StandIn]:
    """The stand-in cloud (and simulator) in a child process, so they do not share the measured core."""
    context = multiprocessing.get_context("spawn")
    urls, stop = context.Queue(), context.Event()
    server = context.Process(target=_serve_stand_in, args=(urls, stop, simulator_scale), daemon=True)
    server.start()
    try:
        yield urls.get(timeout=120)
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
    workers: int  # Locust worker processes (1: a single Locust process)
    expiries: float  # timer expiries the fleet's firmware was due to serve in the run
    requests: int
    failures: int  # HTTP exchanges that failed
    missed: int  # timer expiries that found the previous one unserved
    p50_process: float
    p99_process: float
    p99_all: float
    rps: float

    @property
    def missed_share(self) -> float:
        return self.missed / self.expiries if self.expiries else 0.0

    @property
    def at_cadence(self) -> bool:
        return self.missed_share <= TOLERATED and self.requests > 0


def fleet_run(clouds: list[str], boards: int, seconds: float, profile: str, directory: Path,
              db: str | None = None, workers: int = 1) -> Run:
    """One headless `ecowatt fleet load` at firmware cadence, summarised from its CSV."""
    prefix = directory / f"run-{boards}-{time.monotonic_ns()}"
    command = [sys.executable, "-m", "harness.fleet_cli", "fleet", "load", "--devices", str(boards),
               "--cloud", ",".join(clouds), "--headless", "--run-time", f"{seconds:g}", "--profile", profile,
               "--time-scale", "1", "--spawn-rate", f"{max(1.0, boards / 10):g}", "--csv", str(prefix),
               "--loglevel", "WARNING"]
    if workers > 1:
        command += ["--workers", str(workers)]
    command += ["--db", db] if db else ["--keys-dir", str(directory / "keys")]
    subprocess.run(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=seconds + 180,
                   check=False)
    stats = {row["Name"]: row for row in _rows(prefix, "stats")}
    failures = _rows(prefix, "failures")
    missed = sum(int(f["Occurrences"]) for f in failures if f["Method"] == "DEADLINE")
    upload, total = stats.get("/process", {}), stats.get("Aggregated", {})
    return Run(
        boards=boards,
        workers=workers,
        expiries=expiries(boards, seconds, profile),
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


def expiries(boards: int, seconds: float, profile: str) -> float:
    """Timer expiries a fleet's firmware is due to serve in a run at time scale 1."""
    timings = PROFILES[profile].timings
    per_second = sum(1 / p for p in (timings.poll_s, timings.upload_s, timings.config_check_s, timings.ota_check_s))
    return boards * seconds * per_second


def boards_per_worker(cloud: str, directory: Path, seconds: float, profile: str) -> int:
    best, boards = 0, CADENCE_START
    while boards <= CADENCE_LIMIT:
        run = fleet_run([cloud], boards, seconds, profile, directory)
        met = run.at_cadence and run.failures == 0
        print(f"  cadence {boards:5d} boards, one Locust process: {run.rps:7.0f} req/s, {run.missed} missed "
              f"deadlines ({run.missed_share:.2%}), {run.failures} failed requests -> {'met' if met else 'NOT met'}",
              flush=True)
        if met:
            best = max(best, boards)
        if run.missed_share > SATURATED or run.failures:
            break
        boards *= 2
    return best


def _describe(run: Run) -> str:
    return (f"p99 {run.p99_all:6.0f} ms (/process {run.p99_process:6.0f} ms), {run.rps:6.0f} req/s, "
            f"{run.failures} failed, {run.missed_share:.2%} of the expiries missed")


def latency_curve(sizes: tuple[int, ...], seconds: float, directory: Path, stand_in_url: str, profile: str,
                  per_worker: int) -> list[tuple[Run, Run]]:
    curve = []
    with real_cloud(directory) as (clouds, db):
        print(f"  cloud: {len(clouds)} process(es) on {'PostgreSQL' if db.startswith('postgresql') else 'SQLite'}",
              flush=True)
        for boards in sizes:
            workers = max(1, math.ceil(boards / per_worker)) if per_worker else 1
            real = fleet_run(clouds, boards, seconds, profile, directory, db=db, workers=workers)
            bare = fleet_run([stand_in_url], boards, seconds, profile, directory, workers=workers)
            curve.append((real, bare))
            # A board's loop is sequential, as the firmware's is: a slow cloud makes it miss deadlines too.
            # Whether the generator kept cadence is what the stand-in run, with instant answers, says.
            print(f"  {boards:5d} boards on {workers} Locust process(es): cloud {_describe(real)}\n"
                  f"  {'':5s}{'':31s}stand-in {_describe(bare)}"
                  f"{'' if bare.at_cadence else ' -> the generator did NOT keep cadence'}", flush=True)
            if real.failures > real.requests // 100:  # more than 1 % failing: the cloud is past its limit
                skipped = [size for size in sizes if size > boards]
                if skipped:
                    print(f"  stopped: more than 1 % of requests failed at {boards} boards; "
                          f"{', '.join(map(str, skipped))} not run", flush=True)
                break
    return curve


def main(argv: list[str] | None = None) -> list[Result]:
    parser = argparse.ArgumentParser(prog="python -m bench.fleet", description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default=",".join(map(str, SIZES)), help="fleet sizes for the latency curve")
    parser.add_argument("--seconds", type=float, default=LATENCY_SECONDS, help="run time of each fleet")
    parser.add_argument("--profile", choices=list(PROFILES), default=SPEC, help="firmware whose cadence the boards "
                        f"keep (default {SPEC})")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    sizes = tuple(int(s) for s in args.sizes.split(","))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ecowatt-bench-fleet-") as tmp, stand_in() as servers:
        directory = Path(tmp)
        per_worker = boards_per_worker(servers.cloud, directory, min(args.seconds, CADENCE_SECONDS), args.profile)
        curve = latency_curve(sizes, args.seconds, directory, servers.cloud, args.profile, per_worker)
    print(f"  ({time.perf_counter() - started:.0f} s)")
    results = [Result("fleet", f"boards per Locust worker at {args.profile} cadence", float(per_worker), "boards")]
    for real, bare in curve:
        where = f"{real.boards} boards, {real.workers} Locust proc, {args.profile}"
        if not bare.at_cadence:
            where += ", generator NOT at cadence"
        if real.failures:
            where += f", {real.failures} requests failed"
        results.append(Result("fleet", f"cloud p99, every request, at {where}", real.p99_all, "ms",
                              baseline=bare.p99_all or None))
        if real.p99_process == real.p99_process:  # not NaN: uploads happened
            results.append(Result("fleet", f"cloud /process p99 at {where}", real.p99_process, "ms",
                                  baseline=bare.p99_process or None))
    return results


if __name__ == "__main__":
    for result in main():
        ratio = f" (stand-in {result.baseline:g} ms, ratio {result.ratio:.2f})" if result.baseline else ""
        print(f"{result.metric}: {result.value:g} {result.unit}{ratio}")
