"""`ecowatt stack up [--devices N] [--time virtual|real|scale:X] ...`: the whole system on loopback for
manual exploration.

Starts simulator(s), cloud, fault proxies and emulated device(s) exactly as scenarios get them
(`harness.stack.Stack`), prints the URLs (the cloud, each device's simulator and proxies, the operator
token, the console logs), then shows a live status view — per device: firmware, boots, queue, polls,
uploads, the cloud's view of it — until Ctrl-C, and stops everything.

On `--time virtual` the stack runs in this process on virtual time: device time runs ahead as fast
as the machine allows, so the view shows hours passing; `real` (the default) and `scale:X` suit poking
at the cloud with `ecowatt command|config|telemetry` or curl while it runs.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from harness.clocks import Clock, parse_time
from harness.stack import PROFILES, Stack, StackOptions

REFRESH_S = 1.0  # real seconds between status refreshes
VIRTUAL_STEP_S = 60.0  # device seconds the virtual clock runs between refreshes


def _time_mode(text: str) -> str:
    try:
        parse_time(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
    return text


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("at least one device")
    return value


def add_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    stack = subparsers.add_parser("stack", help="the whole system on loopback")
    verbs = stack.add_subparsers(dest="stack_command", metavar="VERB", required=True)
    up = verbs.add_parser("up", help="start simulator, cloud, proxies and devices; live status until Ctrl-C")
    up.add_argument("--devices", type=_positive, default=1, help="emulated devices (default 1)")
    up.add_argument("--time", type=_time_mode, default="real", help="virtual | real | scale:X (default real)")
    up.add_argument("--profile", choices=PROFILES, default="spec", help="emulated firmware (default spec)")
    up.add_argument("--seed", type=int, default=1, help="seed of the simulator(s)")
    up.add_argument("--upload", type=float, default=None, metavar="S", help="upload period in seconds")
    up.add_argument("--poll", type=float, default=None, metavar="S", help="poll period in seconds")
    up.add_argument("--cloud-port", type=int, default=0, help="port of the cloud proxy (default: any)")
    up.add_argument("--dir", type=Path, default=None, help="state directory (default: a new temporary one)")
    up.add_argument("--open-operator-api", action="store_true", help="operator routes without a token")
    up.add_argument("--for", dest="duration", type=float, default=None, metavar="S",
                    help="stop after S device seconds instead of waiting for Ctrl-C")
    up.set_defaults(func=stack_up)


def options_from(args: argparse.Namespace) -> StackOptions:
    return StackOptions(profile=args.profile, devices=args.devices, seed=args.seed, upload_s=args.upload,
                        poll_s=args.poll, processes=False, cloud_port=args.cloud_port,
                        open_operator_api=args.open_operator_api)


def stack_up(args: argparse.Namespace) -> int:
    clock = parse_time(args.time)
    directory = args.dir or Path(tempfile.mkdtemp(prefix="ecowatt-stack-"))
    return clock.run(_up(options_from(args), clock, directory, args.duration))


async def _up(options: StackOptions, clock: Clock, directory: Path, duration: float | None) -> int:
    console = Console()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError):  # Ctrl-C ends the view, not the loop in mid-step
        loop.add_signal_handler(signal.SIGINT, stopping.set)
        loop.add_signal_handler(signal.SIGTERM, stopping.set)
    stack = Stack(options, clock, directory)
    await stack.start()
    try:
        print_urls(console, stack)
        await watch(console, stack, stopping, duration)
    finally:
        console.print(f"\nstopping (state kept in {directory})")
        await stack.stop()
    return 0


def print_urls(console: Console, stack: Stack) -> None:
    described = stack.describe()
    console.print(f"[bold]EcoWatt stack up[/] ({described['mode']}, time {described['time']}, "
                  f"profile {described['profile']}, seed {described['seed']})")
    console.print(f"cloud:          {described['cloud']}")
    console.print(f"operator token: {stack.token}   (export ECOWATT_CLOUD_URL={described['cloud']} "
                  f"ECOWATT_TOKEN={stack.token})")
    for device_id, where in described["devices"].items():
        console.print(f"device {device_id}:")
        console.print(f"  simulator:      {where['simulator']}")
        console.print(f"  cloud proxy:    {where['cloud_proxy']}   (what the device calls)")
        console.print(f"  inverter proxy: {where['inverter_proxy']}")
        console.print(f"  console log:    {where['console_log']}")
    console.print(f"state directory: {described['directory']}")
    console.print("Ctrl-C to stop", style="dim")


async def watch(console: Console, stack: Stack, stopping: asyncio.Event, duration: float | None) -> None:
    """Refresh the status view until Ctrl-C (or `duration` device seconds)."""
    clock = stack.clock
    virtual = clock.mode == "virtual"
    end = None if duration is None else clock.now() + duration
    with Live(await status_view(stack), console=console, refresh_per_second=4, transient=False) as live:
        while not stopping.is_set() and (end is None or clock.now() < end):
            step = VIRTUAL_STEP_S if virtual else REFRESH_S * clock.time_scale
            if end is not None:
                step = min(step, end - clock.now())
            await clock.advance(seconds=max(step, 0.0))
            if virtual and end is None:
                # a real pause between device minutes, for the eye (device time stands still meanwhile)
                await asyncio.to_thread(time.sleep, REFRESH_S)
            live.update(await status_view(stack))


async def status_view(stack: Stack) -> Group:
    clock = stack.clock
    now = datetime.fromtimestamp(clock.wall(), UTC).strftime("%Y-%m-%d %H:%M:%S")
    table = Table(title=f"device time {clock.now():,.0f} s ({now} UTC)")
    for column in ("device", "firmware", "boots", "polls ok", "poll failures", "queue", "uploads ok",
                   "uploads failed", "cloud: packets", "cloud: last seen"):
        table.add_column(column, justify="right" if column not in ("device", "firmware") else "left")
    cloud_devices = {d["device_id"]: d for d in await _cloud_devices(stack)}
    for device_id, dut in stack.duts.items():
        device = dut.device
        counters: dict[str, int] = device.counters if device is not None else {}
        firmware = f"{device.profile.name} {device.version}" if device is not None and device.profile else dut.profile
        queue = len(device.queue) if device is not None and device.queue is not None else "-"
        seen = cloud_devices.get(device_id, {}).get("last_seen")
        table.add_row(
            device_id, firmware, str(counters.get("boots", "-")), str(counters.get("polls_ok", "-")),
            str(counters.get("poll_failures", 0)), str(queue), str(counters.get("uploads_ok", "-")),
            str(counters.get("uploads_failed", 0)), await _packet_count(stack, device_id),
            "-" if seen is None else f"{clock.device_time_at(float(seen)):,.0f} s",
        )
    faults = [f"{f.time:,.0f} s {f.family} {f.what} {f.device_id or ''}" for f in stack.faults.log[-3:]]
    footer = Text("faults: " + ("; ".join(faults) if faults else "none"), style="dim")
    return Group(table, footer)


async def _cloud_devices(stack: Stack) -> list[dict[str, Any]]:
    try:
        return await stack.cloud.devices()
    except Exception:  # the cloud may be down on purpose; the view keeps going
        return []


async def _packet_count(stack: Stack, device_id: str) -> str:
    """Packets the cloud stored for the device (from its upload log)."""
    try:
        uploads = await stack.cloud.uploads(device_id)
    except Exception:
        return "-"
    return str(sum(int(u.get("new_packets") or 0) for u in uploads if u.get("verdict") == "accepted"))


def main(argv: list[str] | None = None) -> int:
    """`python -m harness.stack_cli stack up ...`: the command without loading the rest of `ecowatt`."""
    from harness import cli

    return cli.main(argv, modules=("harness.stack_cli",))


if __name__ == "__main__":
    raise SystemExit(main())
