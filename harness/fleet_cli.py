"""`ecowatt fleet load`: a fleet of emulated boards against a cloud, driven by Locust.

The command (1) works out the fleet every Locust process must agree on (`FleetPlan`: device ids,
their keys, which cloud URL each one talks to), (2) registers those devices' keys with the cloud, in
its database (`--db`, what several cloud processes share) or its keys directory (`--keys-dir`), and
(3) replaces itself with Locust running `harness/fleet_load.py`, whose users are the boards.

Locust runs in a fresh interpreter because it monkey-patches the standard library with gevent as it
is imported; this process has already imported aiohttp and asyncio, and must not be patched late.
The fleet's own options reach Locust as `--fleet-*` arguments, which a Locust master hands to its
workers, so a worker started with only `--worker --master-host H` runs the master's fleet.

Distributed mode: `--workers W` alone forks W local worker processes under a local master (Locust
`--processes`); `--master --workers W` waits for W workers (`--expect-workers`) that are started
anywhere with `ecowatt fleet load --worker --master-host H`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from device_emulator.cli import fleet_key
from device_emulator.profiles import PROFILES, REFERENCE
from protocol.errors import EcoWattError

LOCUSTFILE = Path(__file__).with_name("fleet_load.py")
DEFAULT_MASTER_PORT = 5557  # Locust's own default
DEFAULT_WEB_PORT = 8089


@dataclass(frozen=True)
class FleetPlan:
    """What every process of one load run agrees on. Device `i` is `PREFIX` + `i` (4 digits), signs
    with `fleet_key(seed, id)` (as `ecowatt device fleet` does) and talks to cloud `i mod len(clouds)`.

    Locust spreads users evenly over `workers` processes (never more than ceil(devices/workers) on
    one), and worker `k` gives its j-th board index k + workers*j, so the ids in use are always
    among the first `slots` ids: those are the ones registered.
    """

    devices: int
    clouds: tuple[str, ...]
    workers: int = 1
    seed: int = 1
    id_prefix: str = "load-"

    @property
    def slots(self) -> int:
        return self.workers * math.ceil(self.devices / self.workers)

    def device_id(self, index: int) -> str:
        return f"{self.id_prefix}{index:04d}"

    def key(self, device_id: str) -> bytes:
        return fleet_key(self.seed, device_id)

    def cloud_for(self, index: int) -> str:
        return self.clouds[index % len(self.clouds)]

    def device_keys(self) -> dict[str, bytes]:
        """Every id a board of this run may use, with its key."""
        ids = (self.device_id(i) for i in range(self.slots))
        return {device_id: self.key(device_id) for device_id in ids}


def split_clouds(text: str) -> tuple[str, ...]:
    """`URL[,URL...]`: boards are spread over the cloud URLs round-robin."""
    urls = tuple(u.strip().rstrip("/") for u in text.split(",") if u.strip())
    for url in urls:
        if not url.startswith(("http://", "https://")):
            raise argparse.ArgumentTypeError(f"not an http(s) URL: {url!r}")
    if not urls:
        raise argparse.ArgumentTypeError("give at least one cloud URL")
    return urls


# --- registering the fleet's keys with the cloud ---------------------------------------------------


async def register_in_database(db_url: str, keys: dict[str, bytes]) -> None:
    """Store the keys in the cloud's database: every cloud process on it honours them at once."""
    from cloud.storage import open_storage  # the storage stack is only needed here

    async with open_storage(db_url) as storage:
        for device_id, key in keys.items():
            await storage.register_device(device_id, key.hex())


def register_in_keys_dir(directory: Path, keys: dict[str, bytes]) -> None:
    """Merge the keys into the cloud's `device_keys.json` in one atomic write (the cloud re-reads the
    file when it changes; one `ecowatt keys add-device` per board would rewrite it N times)."""
    from cloud.key_registry import KeyFiles

    files = KeyFiles(directory)
    merged = {device_id: key.hex() for device_id, key in files.device_keys().items()}
    merged.update({device_id: key.hex() for device_id, key in keys.items()})
    directory.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".device_keys.")
    try:
        os.fchmod(fd, 0o600)  # keys: owner only, as the cloud writes them
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(merged, handle, indent=2, sort_keys=True)
            handle.write("\n")
        os.replace(tmp, files.device_keys_path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# --- the command ------------------------------------------------------------------------------------


def add_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    fleet = subparsers.add_parser("fleet", help="fleets of emulated boards beyond one machine")
    commands = fleet.add_subparsers(dest="fleet_command", metavar="COMMAND")
    load = commands.add_parser(
        "load",
        help="Locust load test whose users are emulated boards",
        description="A Locust load test whose users are emulated EcoWatt boards (docs/fleet.md).",
    )
    load.add_argument("--devices", type=_count, help="number of boards (Locust users)")
    load.add_argument("--cloud", type=split_clouds, help="cloud base URL, or several separated by commas")
    load.add_argument("--inverter", default="", help="the SIM's frame API (http://H:P); default: an "
                      "in-process inverter model per worker")
    load.add_argument("--api-key", default="", help="Authorization value for the inverter's frame API")
    load.add_argument("--profile", choices=list(PROFILES), default=REFERENCE, help="firmware whose cadence "
                      "and packet format the boards follow")
    load.add_argument("--time-scale", type=_positive, default=1.0, help="device seconds per real second")
    load.add_argument("--spawn-rate", type=_positive, default=None, help="boards started per second "
                      "(default: all within about 10 s)")
    load.add_argument("--run-time", type=_positive, default=None, help="stop after S seconds")
    load.add_argument("--headless", action="store_true", help="no web UI; start at once")
    load.add_argument("--web-port", type=int, default=DEFAULT_WEB_PORT, help="Locust web UI port on 127.0.0.1")
    load.add_argument("--csv", default=None, metavar="PREFIX", help="write Locust's CSV files PREFIX_*.csv")
    load.add_argument("--ledger", type=Path, default=None, help="append one JSON line per upload "
                      "(device, nonce, HTTP status, packet timestamps) to this file")
    load.add_argument("--workers", type=_count, default=None, help="worker processes: forked here, or "
                      "with --master the number to wait for")
    load.add_argument("--master", action="store_true", help="coordinate workers started elsewhere")
    load.add_argument("--worker", action="store_true", help="run boards for a master")
    load.add_argument("--master-host", default="127.0.0.1", help="the master's address (workers)")
    load.add_argument("--master-port", type=int, default=DEFAULT_MASTER_PORT, help="the master's port")
    load.add_argument("--seed", type=int, default=1, help="seed of the board keys and timer phases")
    load.add_argument("--id-prefix", default=None, help="device ids are PREFIX0000, PREFIX0001, ... "
                      "(default: fresh per run, so nonces start anew as on factory-fresh boards)")
    load.add_argument("--db", default=None, metavar="URL", help="register the boards' keys in the cloud's "
                      "database (postgresql://... or a SQLite path)")
    load.add_argument("--keys-dir", type=Path, default=None, help="register the boards' keys in the "
                      "cloud's keys directory")
    load.add_argument("--loglevel", default="INFO", help="Locust log level")
    load.set_defaults(func=load_command)


def locust_argv(args: argparse.Namespace, plan: FleetPlan | None) -> list[str]:
    """The Locust command line for these options (`plan` is None for a worker: its master's rules)."""
    argv = [sys.executable, "-m", "locust", "-f", str(LOCUSTFILE), "--loglevel", args.loglevel]
    fleet = [
        "--fleet-time-scale", repr(args.time_scale),
        "--fleet-profile", args.profile,
        "--fleet-inverter", args.inverter,
        "--fleet-api-key", args.api_key,
    ]
    if args.ledger is not None:
        fleet += ["--fleet-ledger", str(args.ledger)]
    if args.worker:
        return argv + fleet + ["--worker", "--master-host", args.master_host, "--master-port",
                               str(args.master_port)]
    assert plan is not None
    fleet += [
        "--fleet-devices", str(plan.devices),
        "--fleet-clouds", ",".join(plan.clouds),
        "--fleet-workers", str(plan.workers),
        "--fleet-seed", str(plan.seed),
        "--fleet-id-prefix", plan.id_prefix,
    ]
    spawn_rate = args.spawn_rate or max(1.0, plan.devices / 10)
    argv += ["--users", str(plan.devices), "--spawn-rate", repr(spawn_rate), "--host", plan.clouds[0]]
    if args.headless:
        argv.append("--headless")
    else:  # the UI on loopback only; with a run time, start without waiting for a click
        argv += ["--web-host", "127.0.0.1", "--web-port", str(args.web_port)]
        if args.run_time is not None:
            argv.append("--autostart")
    if args.run_time is not None:
        argv += ["--run-time", f"{args.run_time:g}s"]
    if args.csv:
        argv += ["--csv", args.csv]
    if args.master:
        argv += ["--master", "--master-bind-host", args.master_host, "--master-bind-port", str(args.master_port),
                 "--expect-workers", str(plan.workers)]
    elif args.workers:
        argv += ["--processes", str(args.workers)]
    return argv + fleet


def load_command(args: argparse.Namespace) -> int:
    error = _check(args)
    if error:
        print(f"ecowatt fleet load: {error}", file=sys.stderr)
        return 2
    plan = None
    if not args.worker:
        plan = FleetPlan(
            devices=args.devices,
            clouds=args.cloud,
            workers=args.workers or 1,
            seed=args.seed,
            id_prefix=args.id_prefix if args.id_prefix is not None else f"load-{int(time.time()):x}-",
        )
        keys = plan.device_keys()
        try:
            if args.db:
                asyncio.run(register_in_database(args.db, keys))
            if args.keys_dir is not None:
                register_in_keys_dir(args.keys_dir, keys)
        except (OSError, ValueError, EcoWattError) as problem:  # unreachable database, unwritable directory
            print(f"ecowatt fleet load: cannot register the boards' keys: {problem}", file=sys.stderr)
            return 1
        print(f"fleet: {plan.devices} boards {plan.device_id(0)}..{plan.device_id(plan.devices - 1)} "
              f"on {', '.join(plan.clouds)}; {len(keys)} keys registered", flush=True)
    argv = locust_argv(args, plan)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)  # Locust takes over this process (signals, exit status)
    return 1  # not reached


def _check(args: argparse.Namespace) -> str | None:
    if args.master and args.worker:
        return "--master and --worker exclude each other"
    if args.worker:
        return None
    if args.devices is None or args.cloud is None:
        return "--devices and --cloud are required (except for --worker)"
    if args.master and not args.workers:
        return "--master needs --workers W (how many workers to wait for)"
    if not args.db and args.keys_dir is None:
        return "say where the cloud keeps device keys: --db URL (its database) or --keys-dir DIR"
    return None


def _count(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 1_000_000:
        raise argparse.ArgumentTypeError("must be 1..1000000")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def main(argv: Iterable[str] | None = None) -> int:
    """The fleet commands alone (`python -m harness.fleet_cli fleet load ...`): the same parsers
    `ecowatt` mounts."""
    parser = argparse.ArgumentParser(prog="ecowatt")
    add_commands(parser.add_subparsers(dest="command", metavar="COMMAND"))
    args = parser.parse_args(None if argv is None else list(argv))
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
