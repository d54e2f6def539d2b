"""The firmware main loop: timers only raise flags, work runs in the firmware's order, expiries collapse,
the command poll rides every 2nd config check, an OTA download pauses the timers."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from device_emulator.event_log import EventKind
from device_emulator.firmware import Components, Firmware
from device_emulator.profiles import PROFILES, REFERENCE, SPEC
from protocol.envelope import REFERENCE_PSK
from tests.device_emulator.core_support import LoopClock, ScriptedLink, make_context

SCALE = 25.0  # device seconds per loop second: one device second is 40 ms

# On the harness's virtual-time loop the timers fire at exact times, whatever the machine's load.
pytestmark = pytest.mark.hil


class Recorder:
    """Stand-ins for the components and the acquisition/upload steps, writing into one journal."""

    def __init__(self, clock: LoopClock) -> None:
        self.clock = clock
        self.journal: list[tuple[str, float]] = []
        self.busy: dict[str, float] = {}  # step -> device seconds it takes, the next time only
        self.during: dict[str, object] = {}  # step -> callable run inside it

    def part(self, name: str):
        recorder = self

        class Part:
            async def check(self) -> None:
                await recorder.step(f"{name}.check")

            async def poll(self) -> None:
                await recorder.step(f"{name}.poll")

            def apply_pending(self) -> None:
                recorder.journal.append((f"{name}.apply_pending", recorder.clock()))

            def on_boot(self) -> None:
                recorder.journal.append((f"{name}.on_boot", recorder.clock()))

        return Part()

    async def step(self, name: str) -> None:
        self.journal.append((name, self.clock()))
        if name in self.during:
            self.during[name]()
        if name in self.busy:
            await self.clock.sleep(self.busy.pop(name))

    def components(self, ctx) -> Components:
        return Components(self.part("config"), self.part("commands"), self.part("ota"))

    def names(self) -> list[str]:
        return [name for name, _ in self.journal]


def firmware(tmp_path, profile=REFERENCE, **timings) -> tuple[Firmware, Recorder]:
    base = PROFILES[profile]
    profile_ = dataclasses.replace(base, timings=dataclasses.replace(base.timings, **timings))
    clock = LoopClock(SCALE)
    ctx = make_context(tmp_path, profile_, clock=clock)
    recorder = Recorder(clock)
    fw = Firmware(ctx, ScriptedLink(profile_, []), REFERENCE_PSK, components=recorder.components)

    async def poll() -> None:
        await recorder.step("poll")

    async def upload() -> None:
        await recorder.step("upload")

    fw.acquisition.poll = poll  # type: ignore[method-assign]
    fw.uploader.tick = upload  # type: ignore[method-assign]
    return fw, recorder


async def run_for(fw: Firmware, device_seconds: float) -> None:
    task = asyncio.create_task(fw.run())
    await asyncio.sleep(device_seconds / SCALE)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def test_due_work_runs_in_the_firmware_order(tmp_path) -> None:
    fw, rec = firmware(
        tmp_path, SPEC, poll_s=1, upload_s=1, config_check_s=1, ota_check_s=1, diagnostics_s=100
    )
    await run_for(fw, 2.5)
    names = rec.names()
    assert names[0] == "ota.on_boot"
    one_pass = ["poll", "upload", "config.apply_pending", "config.check", "ota.check"]
    assert names[1:6] == one_pass
    # the second pass adds the command poll: it rides every 2nd configuration check
    assert names[6:12] == [
        "poll",
        "upload",
        "config.apply_pending",
        "config.check",
        "commands.poll",
        "ota.check",
    ]


async def test_timers_auto_reload_from_boot(tmp_path) -> None:
    fw, rec = firmware(tmp_path, poll_s=2, upload_s=15)
    await run_for(fw, 16.5)
    started = next(t for name, t in rec.journal if name == "ota.on_boot")
    polls = [t - started for name, t in rec.journal if name == "poll"]
    checks = [t - started for name, t in rec.journal if name == "config.check"]
    assert len(polls) == 8 and len(checks) == 3
    assert all(abs(t - 2 * (i + 1)) < 0.5 for i, t in enumerate(polls))  # no drift
    assert all(abs(t - 5 * (i + 1)) < 0.5 for i, t in enumerate(checks))


async def test_expiries_collapse_while_the_loop_is_busy(tmp_path) -> None:
    fw, rec = firmware(tmp_path, poll_s=1, upload_s=1000, config_check_s=2, ota_check_s=1000)
    rec.busy["config.check"] = 3.5  # a slow /changes keeps the loop away from three poll expiries
    await run_for(fw, 6.6)
    started = next(t for name, t in rec.journal if name == "ota.on_boot")
    polls = [t - started for name, t in rec.journal if name == "poll"]
    # polls at 1 and 2; the check runs 2..5.5; the 3, 4, 5 expiries collapse into one poll at 5.5
    assert len(polls) == 4
    assert polls[2] >= 5.4 and polls[3] >= 5.9
    assert fw.timers["poll"].collapsed == 2  # the expiries at 4 and 5 were missed deadlines
    assert fw.timers["poll"].max_lateness >= 2.4  # the one at 3 waited until 5.5


async def test_ota_download_pauses_the_timers(tmp_path) -> None:
    fw, rec = firmware(tmp_path, poll_s=1, upload_s=1000, config_check_s=1000, ota_check_s=2)
    rec.busy["ota.check"] = 3.5
    rec.during["ota.check"] = lambda: fw.ctx.events.record(EventKind.OTA_STARTED, "download")
    await run_for(fw, 5.8)
    polls = [t for name, t in rec.journal if name == "poll"]
    # polls at 1 and 2; the download runs 2..5.5 with the timers paused: no poll when it ends
    assert len(polls) == 2


async def test_a_quick_ota_check_keeps_the_expiries(tmp_path) -> None:
    fw, rec = firmware(tmp_path, poll_s=1, upload_s=1000, config_check_s=1000, ota_check_s=2)
    rec.busy["ota.check"] = 1.5  # no update offered, but a slow answer: the timers kept running
    await run_for(fw, 3.8)
    assert len([n for n in rec.names() if n == "poll"]) == 3


async def test_reboot_request_ends_the_run(tmp_path) -> None:
    fw, rec = firmware(tmp_path, poll_s=1, upload_s=1000, config_check_s=1000, ota_check_s=1000)
    rec.during["poll"] = lambda: fw.request_reboot("OTA update to 1.0.5")
    reason = await asyncio.wait_for(fw.run(), 2)
    assert reason == "OTA update to 1.0.5"
    assert rec.names() == ["ota.on_boot", "poll"]


async def test_periods_come_from_nvs_when_stored(tmp_path) -> None:
    from device_emulator.nvs import POLL_FREQ, UPLOAD_FREQ

    fw, _ = firmware(tmp_path)
    assert (fw.poll_period(), fw.upload_period()) == (2.0, 15.0)
    fw.ctx.nvs.put(POLL_FREQ, 9_000_000)
    fw.ctx.nvs.put(UPLOAD_FREQ, 500_000)  # below the 1 s minimum: the default applies
    assert (fw.poll_period(), fw.upload_period()) == (9.0, 15.0)
