"""The firmware's main loop: Arduino `loop()` semantics over asyncio (firmware-protocol.md §2.1).

Hardware timers (auto-reload, from boot) only set flags. The loop sleeps until a flag is up, then runs
the work synchronously in a fixed order: poll, upload (then apply a pending configuration), config
check, command poll (every 2nd config check), OTA check, and on the `spec` profile the diagnostics
post. A long task delays everything behind it; several expiries of one timer while the loop is busy
collapse into one run (counted per timer as `collapsed`: deadlines missed; `max_lateness` is the longest
wait from an expiry to the start of its work). During an OTA download the timers are paused: their
expiries are discarded.

Periods: poll and upload come from NVS (`freq/poll_freq`, `freq/upload_freq`, µs) when stored and
valid, else the profile's defaults; the register selection from NVS (§2.2). They are read at boot, and
changed at run time only when the remote configuration's `apply_pending` returns settings (never on
1.0.4, whose inverted flag keeps changes for the next boot).
"""

from __future__ import annotations

import asyncio
import inspect
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp

from device_emulator.acquisition import Acquisition, CompressionTimer, modelled_compression_time
from device_emulator.command_executor import CommandExecutor
from device_emulator.context import FirmwareContext
from device_emulator.event_log import encode_counters
from device_emulator.inverter_link import InverterLink
from device_emulator.nvs import DIAGNOSTICS_COUNTERS, POLL_FREQ, UPLOAD_FREQ, NvsKey, register_selection
from device_emulator.ota_client import FirmwareKeys, OtaClient, SelfTest
from device_emulator.packet_queue import PacketQueue
from device_emulator.power import Activity
from device_emulator.remote_config import RemoteConfig
from device_emulator.uploader import Uploader


class RemoteConfigPart(Protocol):
    def check(self) -> Any: ...  # POST /changes; awaitable
    def apply_pending(self) -> Any: ...  # the settings put in force now (poll/upload s, registers) or None


class CommandPart(Protocol):
    def poll(self) -> Any: ...  # POST /command/poll, execute, report; awaitable


class OtaPart(Protocol):
    def check(self) -> Any: ...  # the §7.3 procedure; awaitable
    def on_boot(self) -> Any: ...  # confirm or roll back a new image; may be awaitable


@dataclass
class Components:
    """The configuration, command and OTA parts the loop drives."""

    config: RemoteConfigPart
    commands: CommandPart
    ota: OtaPart


ComponentFactory = Callable[[FirmwareContext], Components]


def default_components(
    ctx: FirmwareContext,
    *,
    keys: FirmwareKeys | None = None,
    running_slot: int | None = None,
    self_test: SelfTest | None = None,
) -> Components:
    """The firmware's own parts: remote configuration, commands and OTA (with the keys the build has
    compiled in; without keys, updates are checked for but never installed)."""
    return Components(
        RemoteConfig(ctx),
        CommandExecutor(ctx),
        OtaClient(ctx, keys, running_slot=running_slot, self_test=self_test),
    )


async def _settle(result: Any) -> Any:
    """Await `result` if the part's method was a coroutine."""
    return await result if inspect.isawaitable(result) else result


class Timer:
    """An auto-reload hardware timer in device seconds that only raises its flag."""

    def __init__(self, firmware: Firmware, name: str, period: float, phase: float = 0.0) -> None:
        self.firmware = firmware
        self.name = name
        self.flag = False
        self.expiries = 0
        self.collapsed = 0  # expiries that found the flag still up: deadlines missed
        self.raised_at = 0.0
        self.max_lateness = 0.0  # device seconds from an expiry to the start of its work
        self._handle: asyncio.TimerHandle | None = None
        self.restart(period, phase)

    def restart(self, period: float, phase: float = 0.0) -> None:
        """Count `period` from now (plus `phase`, the first expiry's extra delay)."""
        self.cancel()
        self.period = period
        self._due = self.firmware.ctx.clock() + phase + period
        self._arm()

    def _arm(self) -> None:
        fw = self.firmware
        loop_now = fw.loop.time()
        when = loop_now + fw.ctx.loop_seconds(self._due - fw.ctx.clock())
        self._handle = fw.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._due += self.period  # auto-reload: no drift
        self._arm()
        self.expiries += 1
        if self.flag:
            self.collapsed += 1  # the loop has not served the previous expiry yet
        else:
            self.raised_at = self.firmware.ctx.clock()
        self.flag = True
        self.firmware.wake.set()

    def take(self) -> bool:
        """Lower the flag; True if it was up (and account how late its work starts)."""
        flag, self.flag = self.flag, False
        if flag:
            self.max_lateness = max(self.max_lateness, self.firmware.ctx.clock() - self.raised_at)
        return flag

    def cancel(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None


class Firmware:
    """One boot of the firmware: built by the device once the bootloader picked an image."""

    def __init__(
        self,
        ctx: FirmwareContext,
        link: InverterLink,
        key: bytes,
        *,
        components: ComponentFactory = default_components,
        compression_time: CompressionTimer = modelled_compression_time,
        jitter: random.Random | None = None,
    ) -> None:
        self.ctx = ctx
        self.profile = ctx.profile
        self.timings = ctx.profile.timings
        self.link = link
        self.queue = PacketQueue()
        self.acquisition = Acquisition(
            ctx, link, self.queue, register_selection(ctx.nvs), compression_time=compression_time
        )
        self.uploader = Uploader(ctx, self.queue, key)
        self.parts = components(ctx)
        self.jitter = jitter
        self.wake = asyncio.Event()
        self.loop = asyncio.get_running_loop()
        self.config_checks = 0
        self.reboot_reason: str | None = None
        self.timers: dict[str, Timer] = {}
        self.running: str | None = None  # the task in progress, for observers

    # --- settings ---------------------------------------------------------------------------------

    def _period(self, key: NvsKey, default_s: float) -> float:
        """A period from NVS (µs) when stored and valid, else the profile's default."""
        entry = self.ctx.nvs.entry(key.namespace, key.key)
        if entry is None or entry.type is not key.type:
            return default_s
        value = entry.value
        if not isinstance(value, int) or (key.minimum is not None and value < key.minimum):
            return default_s
        return value / 1_000_000

    def poll_period(self) -> float:
        return self._period(POLL_FREQ, self.timings.poll_s)

    def upload_period(self) -> float:
        return self._period(UPLOAD_FREQ, self.timings.upload_s)

    def apply_settings(self, settings: Any) -> None:
        """Put a configuration in force without a reboot (what `apply_pending` returned: poll and
        upload intervals in seconds and the register selection)."""
        self.timers["poll"].restart(float(settings.poll_interval_s))
        self.timers["upload"].restart(float(settings.upload_interval_s))
        self.acquisition.set_selection(list(settings.registers))

    def request_reboot(self, reason: str) -> None:
        self.reboot_reason = self.reboot_reason or reason
        self.wake.set()

    # --- the loop ---------------------------------------------------------------------------------

    def _start_timers(self) -> None:
        periods = {
            "poll": self.poll_period(),
            "upload": self.upload_period(),
            "config": self.timings.config_check_s,
            "ota": self.timings.ota_check_s,
        }
        if self.profile.posts_diagnostics:
            periods["diagnostics"] = self.timings.diagnostics_s
        for name, period in periods.items():
            phase = self.jitter.uniform(0.0, period) if self.jitter is not None else 0.0
            self.timers[name] = Timer(self, name, period, phase)

    def stop_timers(self) -> None:
        for timer in self.timers.values():
            timer.cancel()

    def _enter(self, activity: Activity) -> None:
        self.ctx.power.enter(self.profile.power_policy.state_for(activity))

    async def run(self) -> str:
        """Run until a reboot is requested; returns its reason. Cancel it to stop the firmware."""
        self.ctx.console.log(
            "main", f"EcoWatt {self.profile.name} firmware {self.ctx.version}, device {self.ctx.device_id}"
        )
        self.ctx.console.log(
            "main",
            f"poll {self.poll_period():g} s, upload {self.upload_period():g} s, "
            f"registers {self.acquisition.selection}",
        )
        self._enter(Activity.COMPUTE)
        try:
            await _settle(self.parts.ota.on_boot())
            self._start_timers()
            while self.reboot_reason is None:
                self._enter(Activity.SLEEP)
                await self.wake.wait()
                self.wake.clear()
                self._enter(Activity.COMPUTE)
                await self._step()
        finally:
            self.stop_timers()
        return self.reboot_reason

    async def _step(self) -> None:
        """One pass of `loop()`: every raised flag, in the firmware's order."""
        t = self.timers
        steps: list[tuple[str, Callable[[], Any]]] = [
            ("poll", self.acquisition.poll),
            ("upload", self._upload),
            ("config", self._config_check),
            ("ota", self._ota_check),
            ("diagnostics", self._post_diagnostics),
        ]
        for name, work in steps:
            if self.reboot_reason is not None:
                return
            if name in t and t[name].take():
                self.running = name
                try:
                    await work()
                finally:
                    self.running = None

    async def _upload(self) -> None:
        await self.uploader.tick()
        settings = await _settle(self.parts.config.apply_pending())
        if settings is not None:
            self.apply_settings(settings)

    async def _config_check(self) -> None:
        await _settle(self.parts.config.check())
        self.config_checks += 1
        if self.config_checks % self.timings.command_every == 0:
            await _settle(self.parts.commands.poll())

    async def _ota_check(self) -> None:
        started = self.ctx.events.counters.get("ota_started", 0)
        before = {name: (t.flag, t.collapsed, t.raised_at) for name, t in self.timers.items()}
        await _settle(self.parts.ota.check())
        if self.ctx.events.counters.get("ota_started", 0) != started:
            # The download paused the timers (§7.3 step 2): what expired meanwhile never happened.
            for name, timer in self.timers.items():
                timer.flag, timer.collapsed, timer.raised_at = before[name]

    async def _post_diagnostics(self) -> None:
        """spec: POST /diagnostics/<id> with the event log, counters and energy (§8.1)."""
        ctx = self.ctx
        document = ctx.events.snapshot(ctx.device_id)
        document["firmware_version"] = ctx.version
        document["profile"] = self.profile.name
        document["queue_depth"] = len(self.queue)
        document["power"] = ctx.power.report().as_dict()
        ctx.nvs.put(DIAGNOSTICS_COUNTERS, encode_counters(ctx.events.counters))
        timeout = aiohttp.ClientTimeout(total=ctx.loop_seconds(self.timings.cloud_timeout_s))
        try:
            async with ctx.http.post(
                ctx.url(f"/diagnostics/{ctx.device_id}"), json=document, timeout=timeout
            ) as response:
                await response.read()
                if response.status >= 300:
                    ctx.console.log("diagnostics", f"POST refused: HTTP {response.status}", "W")
        except (TimeoutError, aiohttp.ClientError) as error:
            ctx.console.log("diagnostics", f"POST failed: {error!r}", "W")
