"""Fault campaigns: a scenario run once per seed under a seeded random fault schedule, in parallel.

Each run is a pure function of (scenario, seed, fault profile, firmware profile): the schedule is drawn
from the fault profile by seed (harness.fault_schedule.FaultMix), the stack is seeded with the same
seed and runs on virtual time, so a run replays exactly. Every run is recorded as one JSON line with
its schedule, each invariant's verdict and the violations' evidence.

When a run violates an invariant its schedule is shrunk to a minimal reproducer: delta debugging
(ddmin) over the schedule's faults, then halving each remaining fault's duration, keeping every step
that still violates the same invariants. The reproducer is written next to the records and the command
that replays it is printed.

Runs go to a process pool (one stack per run, runs in a worker one after another); `shard=(i, n)` takes
the seeds at positions i, i+n, i+2n... so n machines (a Kubernetes Indexed Job, see docs/campaigns.md)
share one campaign.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import multiprocessing
import re
import shlex
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.fault_schedule import FaultSchedule, ScheduledFault, load_mix
from protocol.errors import DocumentError

RECORDS_FILE = "campaign.jsonl"
MAX_SHRINK_RUNS = 40  # runs a shrink may spend; the best reproducer so far is kept
MIN_DURATION = 1.0  # device seconds: a fault's duration is not shrunk below this
MAX_SEEDS = 1_000_000
# Imported once in the forkserver, so workers start with them (the model's pvlib alone takes seconds).
PRELOAD = ["harness.campaign", "harness.scenario_file", "harness.stack", "harness.invariants", "sim_inverter.service",
           "sim_inverter.model", "cloud.server", "device_emulator.device"]


def parse_seeds(text: str) -> list[int]:
    """`1..200`, `7`, `1,4,9`, `1..10,50..60` -> the seeds, in order, without repeats."""
    seeds: list[int] = []
    for part in str(text).split(","):
        match = re.fullmatch(r"\s*(\d+)\s*(?:\.\.\s*(\d+)\s*)?", part)
        if not match:
            raise DocumentError("seeds are like 1..200, 7 or 1,4,9", text)
        low = int(match.group(1))
        high = int(match.group(2) or low)
        if high < low or high - low >= MAX_SEEDS:
            raise DocumentError(f"seed range {part.strip()} is empty or too large", text)
        seeds += [s for s in range(low, high + 1) if s not in seeds]
    return seeds


def parse_shard(text: str) -> tuple[int, int]:
    """`i/n` with 0 <= i < n (a Kubernetes Indexed Job's JOB_COMPLETION_INDEX is i)."""
    match = re.fullmatch(r"\s*(\d+)\s*/\s*(\d+)\s*", str(text))
    if not match or not 0 <= int(match.group(1)) < int(match.group(2)):
        raise DocumentError("a shard is i/n with 0 <= i < n, e.g. 0/4", text)
    return int(match.group(1)), int(match.group(2))


def shard_seeds(seeds: Sequence[int], shard: tuple[int, int] | None) -> list[int]:
    if shard is None:
        return list(seeds)
    index, count = shard
    return list(seeds[index::count])


# --- one run -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    """Everything a run depends on (picklable: it crosses into the worker processes)."""

    scenario: str  # path of the scenario file
    seed: int
    faults: str = "mixed"  # fault profile: a built-in name or a YAML file
    profile: str = "spec"  # firmware profile
    schedule: tuple[dict[str, Any], ...] | None = None  # an explicit schedule (replay, shrinking)

    def fault_schedule(self) -> FaultSchedule:
        from harness.scenario_file import load_scenario

        if self.schedule is not None:
            return FaultSchedule.from_json(list(self.schedule))
        return load_mix(self.faults).schedule(self.seed, load_scenario(self.scenario).horizon())

    def with_schedule(self, schedule: Iterable[ScheduledFault]) -> RunSpec:
        return RunSpec(self.scenario, self.seed, self.faults, self.profile,
                       tuple(f.to_json() for f in schedule))


@dataclass
class RunRecord:
    scenario: str
    seed: int
    faults: str
    profile: str
    schedule: list[dict[str, Any]]
    verdicts: dict[str, str]  # invariant -> ok | violated | skipped
    violations: list[str]
    scenario_passed: bool
    failure: str | None
    device_time: float
    wall_s: float
    shrunk: list[dict[str, Any]] | None = None  # the minimal reproducer's schedule
    replay: str | None = None  # the command that replays it
    error: str | None = None  # the run itself broke (not the system under test)

    @property
    def violated(self) -> list[str]:
        return sorted(name for name, verdict in self.verdicts.items() if verdict == "violated")

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> RunRecord:
        return cls(**doc)


def run_one(spec: RunSpec) -> RunRecord:
    """Run one seed in a stack of its own, on a virtual-time loop of its own (top level: a pool calls it)."""
    started = time.perf_counter()
    try:
        from harness.clocks import parse_time

        clock = parse_time("virtual")
        with asyncio.Runner(loop_factory=clock.new_event_loop) as runner:
            return runner.run(_run(spec, clock, started))
    except Exception as error:  # noqa: BLE001 - a broken run is recorded, the campaign goes on
        return RunRecord(spec.scenario, spec.seed, spec.faults, spec.profile, list(spec.schedule or []), {}, [],
                         False, None, 0.0, time.perf_counter() - started, error=f"{type(error).__name__}: {error}")


async def _run(spec: RunSpec, clock: Any, started: float) -> RunRecord:
    from harness.scenario_file import load_scenario, run_in_new_stack
    from harness.stack import StackOptions

    scenario = load_scenario(spec.scenario)
    schedule = spec.fault_schedule()
    options = StackOptions(profile=spec.profile, seed=spec.seed)
    with tempfile.TemporaryDirectory(prefix=f"campaign-{spec.seed}-") as directory:
        outcome = await run_in_new_stack(scenario, options, Path(directory), clock, extra_faults=schedule)
    from harness.invariants import Invariants

    skipped = set(scenario.skip_invariants)
    violated = {v.checker for v in outcome.violations}
    verdicts = {name: "skipped" if name in skipped else "violated" if name in violated else "ok"
                for name in Invariants.NAMES}
    return RunRecord(spec.scenario, spec.seed, spec.faults, spec.profile, schedule.to_json(), verdicts,
                     [str(v) for v in outcome.violations], outcome.result.passed, outcome.result.failure,
                     outcome.result.device_time, time.perf_counter() - started)


# --- shrinking -----------------------------------------------------------------------------------------


def ddmin(items: Sequence[Any], fails: Callable[[list[Any]], bool]) -> list[Any]:
    """Zeller's delta debugging: a 1-minimal sublist of `items` for which `fails` still holds."""
    current = list(items)
    if fails([]):
        return []
    granularity = 2
    while len(current) >= 2:
        size = len(current) // granularity
        chunks = [current[i:i + size] for i in range(0, len(current), size)] if size else [[x] for x in current]
        reduced = False
        for chunk in chunks:
            if fails(chunk):
                current, granularity, reduced = chunk, 2, True
                break
        if not reduced:
            for index in range(len(chunks)):
                complement = [x for j, chunk in enumerate(chunks) if j != index for x in chunk]
                if fails(complement):
                    current, granularity, reduced = complement, max(granularity - 1, 2), True
                    break
        if not reduced:
            if granularity >= len(current):
                break
            granularity = min(len(current), granularity * 2)
    return current


@dataclass
class Shrinker:
    """Shrinks a violating run's schedule while the same invariants stay violated."""

    spec: RunSpec
    target: frozenset[str]  # the invariants the original run violated
    run: Callable[[RunSpec], RunRecord] = run_one
    budget: int = MAX_SHRINK_RUNS
    runs: int = 0
    _seen: dict[str, bool] = field(default_factory=dict)

    def fails(self, faults: Sequence[ScheduledFault]) -> bool:
        key = json.dumps([f.to_json() for f in faults], sort_keys=True)
        if key not in self._seen:
            if self.runs >= self.budget:
                return False  # out of budget: keep what we have
            self.runs += 1
            record = self.run(self.spec.with_schedule(faults))
            self._seen[key] = self.target <= set(record.violated)
        return self._seen[key]

    def shrink(self, schedule: FaultSchedule) -> FaultSchedule:
        faults = ddmin(list(schedule), self.fails)
        for index in range(len(faults)):
            while faults[index].duration is not None and faults[index].duration > MIN_DURATION:
                shorter = faults[index].shortened(round(max(faults[index].duration / 2, MIN_DURATION), 1))
                trial = [*faults[:index], shorter, *faults[index + 1:]]
                if not self.fails(trial):
                    break
                faults = trial
        return FaultSchedule(tuple(faults))


def write_reproducer(record: RunRecord, schedule: FaultSchedule, directory: Path) -> Path:
    """The shrunk run as a file `ecowatt campaign replay` takes."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"repro-{Path(record.scenario).stem}-seed{record.seed}.json"
    doc = {"scenario": record.scenario, "seed": record.seed, "faults": record.faults, "profile": record.profile,
           "schedule": schedule.to_json(), "violated": record.violated}
    path.write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    return path


def replay_command(path: Path) -> str:
    return shlex.join(["ecowatt", "campaign", "replay", str(path)])


def load_reproducer(path: Path) -> RunSpec:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DocumentError(f"{path}: not a readable reproducer ({error})", str(path)) from None
    if not isinstance(doc, dict) or not isinstance(doc.get("scenario"), str) or \
            not isinstance(doc.get("seed"), int) or isinstance(doc.get("seed"), bool):
        raise DocumentError(f"{path}: a reproducer names its scenario and seed", str(path))
    schedule = FaultSchedule.from_json(doc.get("schedule", []))
    return RunSpec(doc["scenario"], doc["seed"], str(doc.get("faults", "mixed")), str(doc.get("profile", "spec")),
                   tuple(f.to_json() for f in schedule))


# --- the campaign ------------------------------------------------------------------------------------


@dataclass
class Campaign:
    scenario: str
    seeds: list[int]
    faults: str = "mixed"
    profile: str = "spec"
    workers: int = 2
    report: Path | None = None
    shard: tuple[int, int] | None = None
    schedule: FaultSchedule | None = None  # the same explicit schedule for every seed
    shrink: bool = True

    def specs(self) -> list[RunSpec]:
        explicit = None if self.schedule is None else tuple(f.to_json() for f in self.schedule)
        return [RunSpec(self.scenario, seed, self.faults, self.profile, explicit)
                for seed in shard_seeds(self.seeds, self.shard)]

    def records_path(self) -> Path | None:
        if self.report is None:
            return None
        if self.shard is None:
            return self.report / RECORDS_FILE
        return self.report / f"campaign-shard-{self.shard[0]}-of-{self.shard[1]}.jsonl"


@dataclass
class CampaignResult:
    records: list[RunRecord]
    records_path: Path | None

    @property
    def violations(self) -> list[RunRecord]:
        return [r for r in self.records if r.violated]

    @property
    def errors(self) -> list[RunRecord]:
        return [r for r in self.records if r.error]


def validate(campaign: Campaign) -> None:
    """Everything checkable before a run starts: the scenario file and the fault profile."""
    from harness.scenario_file import load_scenario

    load_scenario(campaign.scenario)
    load_mix(campaign.faults)


def _pool(workers: int) -> concurrent.futures.Executor:
    # forkserver: workers fork from a clean process (no loop, no threads of ours), with the harness
    # imported once there rather than in each worker.
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(PRELOAD)
    return concurrent.futures.ProcessPoolExecutor(max_workers=workers, mp_context=context)


def run_campaign(campaign: Campaign, *, echo: Callable[[str], object] = print,
                 run: Callable[[RunSpec], RunRecord] = run_one) -> CampaignResult:
    """Run every seed of the campaign (its shard), record each as a JSON line, shrink the violating ones."""
    validate(campaign)
    specs = campaign.specs()
    path = campaign.records_path()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("", encoding="utf-8")
    records: list[RunRecord] = []

    def finish(spec: RunSpec, record: RunRecord) -> None:
        if record.violated and campaign.shrink:
            shrinker = Shrinker(spec, frozenset(record.violated), run)
            shrunk = shrinker.shrink(FaultSchedule.from_json(record.schedule))
            record.shrunk = shrunk.to_json()
            where = write_reproducer(record, shrunk, campaign.report or Path(tempfile.mkdtemp(prefix="campaign-")))
            record.replay = replay_command(where)
            echo(f"seed {record.seed}: violated {', '.join(record.violated)}; schedule shrunk from "
                 f"{len(record.schedule)} to {len(shrunk)} fault(s) in {shrinker.runs} run(s); replay with:\n"
                 f"  {record.replay}")
        elif record.error:
            echo(f"seed {record.seed}: the run broke: {record.error}")
        records.append(record)
        if path is not None:
            with path.open("a", encoding="utf-8") as out:
                out.write(json.dumps(record.to_json(), sort_keys=True) + "\n")

    if campaign.workers <= 1 or len(specs) <= 1:
        for spec in specs:
            finish(spec, run(spec))
    else:
        with _pool(campaign.workers) as pool:
            futures = {pool.submit(run, spec): spec for spec in specs}
            for future in concurrent.futures.as_completed(futures):
                finish(futures[future], future.result())
    records.sort(key=lambda r: r.seed)
    return CampaignResult(records, path)


def summary(result: CampaignResult) -> str:
    records = result.records
    lines = [f"{len(records)} run(s): {len(records) - len(result.violations) - len(result.errors)} clean, "
             f"{len(result.violations)} violating, {len(result.errors)} broken"]
    for record in result.violations:
        lines.append(f"  seed {record.seed}: {', '.join(record.violated)} -> {record.replay or 'not shrunk'}")
    if result.records_path is not None:
        lines.append(f"records: {result.records_path}")
    return "\n".join(lines)
