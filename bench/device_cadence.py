"""How many emulated boards one core sustains at firmware cadence, in scaled time, every deadline met.

The boards (reference profile: 2 s poll, 15 s upload, 5 s config check, 10 s command poll, 60 s OTA
check) run in this process on one event loop at `SCALE` device seconds per real second, against the
real simulator and the fleet bench's stand-in cloud, both served from a child process (so they do not
share this core). A fleet size passes when, over `DEVICE_SECONDS`, no timer expiry of any board
collapsed into the next (a missed deadline) and no poll started later than `LATENESS` of its period
after its expiry. The fleet size doubles until it fails.

Baseline, measured side by side: a bare client doing the same wire traffic (a frame read every poll
period, an envelope every upload period) with no firmware model, ramped the same way; the ratio shows
what the model costs on top of aiohttp.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import time
from pathlib import Path

import aiohttp

from bench import Result
from bench.fleet import stand_in
from device_emulator.config import DeviceConfig
from device_emulator.device import Device
from protocol import modbus
from protocol.envelope import REFERENCE_PSK, build_envelope
from protocol.registers import SLAVE_ADDRESS

SCALE = 10.0  # device seconds per real second
WARM_UP = 20.0  # device seconds of boot, factory flashing and first connections, not judged
DEVICE_SECONDS = 60.0  # observed window per fleet size
LATENESS = 0.5  # a poll may start at most this fraction of its period after its expiry
START = 25
LIMIT = 1600


async def _emulated(count: int, inverter: str, cloud: str, base: Path) -> bool:
    devices = [
        Device(
            DeviceConfig(
                cloud_url=cloud,
                inverter_url=inverter,
                state_dir=base / f"board{i}",
                device_id=f"bench-{i}",
                time_scale=SCALE,
                seed=i,  # jittered phases, as a real fleet has
                durable=False,
            )
        )
        for i in range(count)
    ]
    for device in devices:
        await device.start()
    await asyncio.sleep(WARM_UP / SCALE)
    before = {}
    for device in devices:
        if device.firmware is not None:
            for timer in device.firmware.timers.values():
                timer.max_lateness = 0.0
            before[device] = (device.boots, sum(t.collapsed for t in device.firmware.timers.values()))
    await asyncio.sleep(DEVICE_SECONDS / SCALE)
    worst, missed = 0.0, 0
    for device in devices:
        firmware = device.firmware
        if (
            firmware is None
            or device.crash is not None
            or device not in before
            or device.boots != before[device][0]
        ):
            missed += 1
            continue
        missed += sum(t.collapsed for t in firmware.timers.values()) - before[device][1]
        worst = max(worst, firmware.timers["poll"].max_lateness / firmware.timers["poll"].period)
    for device in devices:
        await device.stop()
    print(f"    worst poll lateness {worst:.1%} of the period, {missed} missed deadlines", flush=True)
    return missed == 0 and worst <= LATENESS


async def _bare(count: int, inverter: str, cloud: str) -> bool:
    """The same traffic without the model: one task per board, each deadline checked."""
    request = modbus.http_body(modbus.to_hex(modbus.build_read_request(SLAVE_ADDRESS, 0, 10)))
    envelope = build_envelope(REFERENCE_PSK, 10001, b'{"device_id":"bench"}')
    poll_s, upload_s = 2.0 / SCALE, 15.0 / SCALE
    met = True

    async def board(http: aiohttp.ClientSession, phase: float) -> None:
        nonlocal met
        loop = asyncio.get_running_loop()
        start = loop.time() + phase
        judged = start + WARM_UP / SCALE
        end = judged + DEVICE_SECONDS / SCALE
        n = 1
        while start + n * poll_s < end:
            due = start + n * poll_s
            await asyncio.sleep(max(0.0, due - loop.time()))
            if due >= judged and loop.time() - due > LATENESS * poll_s:
                met = False
            async with http.post(f"{inverter}/api/inverter/read", data=request) as reply:
                await reply.read()
            if n % round(upload_s / poll_s) == 0:
                async with http.post(f"{cloud}/process", data=envelope) as reply:
                    await reply.read()
            n += 1

    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as http:
        await asyncio.gather(*(board(http, (i % 97) / 97 * poll_s) for i in range(count)))
    return met


async def _ramp(kind: str, inverter: str, cloud: str) -> int:
    best, count = 0, START
    while count <= LIMIT:
        base = Path(tempfile.mkdtemp(prefix="ecowatt-cadence-"))
        try:
            ok = await (
                _emulated(count, inverter, cloud, base)
                if kind == "emulated"
                else _bare(count, inverter, cloud)
            )
        finally:
            shutil.rmtree(base, ignore_errors=True)
        print(
            f"  {kind:8} {count:5d} boards: {'every deadline met' if ok else 'deadlines missed'}", flush=True
        )
        if not ok:
            break
        best, count = count, count * 2
    return best


def main() -> list[Result]:
    with stand_in(simulator_scale=SCALE) as servers:
        assert servers.inverter is not None
        started = time.perf_counter()
        emulated = asyncio.run(_ramp("emulated", servers.inverter, servers.cloud))
        bare = asyncio.run(_ramp("bare", servers.inverter, servers.cloud))
        print(f"  ({time.perf_counter() - started:.0f} s)")
    return [
        Result(
            "device_cadence",
            f"boards per core at firmware cadence, {SCALE:g}x time",
            float(emulated),
            "boards",
            baseline=float(bare) or None,
        )
    ]


if __name__ == "__main__":
    for result in main():
        ratio = f"{result.ratio:.2f}" if result.ratio is not None else "n/a"
        print(f"{result.metric}: {result.value:g} (bare client {result.baseline}), ratio {ratio}")
