"""Device-days per wall-minute on virtual time: the whole HIL stack (simulators, cloud on SQLite, fault
proxies, emulated devices on the spec profile, 15-minute uploads), for 1 device and for 100, at the
firmware's default 2 s polls; and one device polling every 45 s (`COURSE_POLL_S`, what a 15-minute
cycle's queue of 20 packets can hold). Either way the firmware asks the cloud for configuration every
5 s: a device-day is some 30 000 HTTP exchanges on real loopback sockets, plus one per poll.

One device runs a full device-day (`DAY_HOURS`); 100 devices run `FLEET_HOURS` each (the fleet shares
one inverter model, as `Stack` does for fleets). The rate is device-hours run divided by wall minutes,
in device-days.

Baseline, measured side by side: the same devices, simulators and cloud on the same virtual-time loop,
without the harness around them (no fault proxies, no console capture, no event recorder or probe):
the ratio is the share of the bare system's speed the harness keeps.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import Result
from harness.stack import VIRTUAL_SWITCH_INTERVAL, Stack, StackOptions, install_release_keys
from harness.virtual_time import VirtualClock

DAY_HOURS = 24.0
FLEET_HOURS = 0.1
FLEET = 100
TARGET = 0.6  # the harness keeps at least this share of the bare system's speed
UPLOAD_S = 900.0
COURSE_POLL_S = 45.0


async def _harnessed(clock: VirtualClock, devices: int, hours: float, directory: Path, poll_s: float | None) -> None:
    async with Stack(StackOptions(devices=devices, upload_s=UPLOAD_S, poll_s=poll_s), clock, directory):
        await clock.advance(hours=hours)


async def _bare(clock: VirtualClock, devices: int, hours: float, directory: Path, poll_s: float | None) -> None:
    """The same system without the harness: devices talk to their simulator and the cloud directly."""
    from cloud.key_registry import KeyFiles
    from cloud.server import CloudServer
    from cloud.settings import CloudSettings
    from device_emulator.config import DeviceConfig
    from device_emulator.device import Device
    from sim_inverter.model import InverterModel
    from sim_inverter.service import SimConfig, SimService

    options = StackOptions(devices=devices)
    keys = directory / "keys"
    files = KeyFiles(keys)
    for device_id in options.ids():
        files.add_device(device_id, options.key_for(device_id))
    install_release_keys(keys)
    settings = CloudSettings(host="127.0.0.1", port=0, data_dir=directory / "cloud", keys_dir=keys,
                             firmware_dir=directory / "firmware")
    settings.data_dir.mkdir(parents=True)
    model = InverterModel(seed=1) if devices > 1 else None
    sims, fleet = [], []
    async with CloudServer(settings, wall_clock=clock.wall) as cloud:
        try:
            for index, device_id in enumerate(options.ids()):
                sim = SimService(SimConfig(http_port=0, modbus_port=None, time_offset=options.sim_offset_s),
                                 model=model)
                await sim.start()
                sims.append(sim)
                assert sim.http_url is not None
                config = DeviceConfig(cloud_url=cloud.url, inverter_url=sim.http_url,
                                      state_dir=directory / "devices" / device_id, device_id=device_id,
                                      key=options.key_for(device_id), profile="spec", durable=False,
                                      firmware_keys=keys, seed=None if devices == 1 else index,
                                      timings={"upload_s": UPLOAD_S} | ({"poll_s": poll_s} if poll_s else {}))
                device = Device(config, wall_clock=clock.wall)
                await device.start()
                fleet.append(device)
            await clock.advance(hours=hours)
        finally:
            for device in fleet:
                await device.stop()
            for sim in sims:
                await sim.stop()


def _rate(run: object, devices: int, hours: float, poll_s: float | None = None) -> float:
    """Device-days per wall minute for one run of `run` on a fresh virtual clock."""
    directory = Path(tempfile.mkdtemp(prefix="ecowatt-bench-"))
    saved = sys.getswitchinterval()
    sys.setswitchinterval(VIRTUAL_SWITCH_INTERVAL)  # as the stack does on virtual time
    try:
        clock = VirtualClock()
        started = time.perf_counter()
        clock.run(run(clock, devices, hours, directory, poll_s))  # type: ignore[operator]
        elapsed = time.perf_counter() - started
    finally:
        sys.setswitchinterval(saved)
        shutil.rmtree(directory, ignore_errors=True)
    return (devices * hours / 24.0) / (elapsed / 60.0)


def main() -> list[Result]:
    _rate(_harnessed, 1, 0.05)  # imports (pvlib) and the release keys, outside the timings
    results = []
    for devices, hours, poll_s in ((1, DAY_HOURS, None), (FLEET, FLEET_HOURS, None), (1, DAY_HOURS, COURSE_POLL_S)):
        bare = _rate(_bare, devices, hours, poll_s)
        harnessed = _rate(_harnessed, devices, hours, poll_s)
        polls = f"{poll_s:g} s polls" if poll_s else "2 s polls"
        results.append(Result("virtual_day", f"device-days per wall minute, {devices} device(s), {polls}",
                              harnessed, "device-days/min", baseline=bare, target=TARGET))
    return results


if __name__ == "__main__":
    for result in main():
        print(f"{result.metric}: {result.value:.3f} {result.unit} (bare {result.baseline:.3f}, "
              f"ratio {result.ratio:.2f})")
