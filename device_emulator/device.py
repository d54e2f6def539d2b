"""One emulated EcoWatt board: flash, NVS, bootloader, and the firmware model the booted image selects.

    device = Device(DeviceConfig(cloud_url=..., inverter_url=..., state_dir=...))
    await device.start()        # power on: boot path, then the firmware loop in the background
    await device.power_cut()    # RAM lost (queue, codec state, timers); NVS and flash persist; boots again
    await device.reset()        # the same through the reset line (no time without power)
    await device.stop()

Boot path at every power-on: open flash (a fresh state directory is factory-flashed with an image of
the configured profile and version), run the bootloader (boot.boot_device: otadata, image checks,
rollback), open NVS, and run the firmware model whose profile and version come from the booted image's
app description. The firmware asks for a reboot (OTA) through the context; the device then runs the
boot path again.

Power cuts at tagged points: `cut_power_at(tag)` arms a PowerCut raised when the firmware, NVS or
flash reaches that point (e.g. "upload.sent", "nvs.write.torn", "flash.boot.switched"); the device
stays off for `off_s` device seconds and boots again.

The event log and the power meter belong to the device object, not to one boot, so an observer sees
one stream and one energy account across reboots; the firmware's own counters are restored from NVS
at start on the `spec` profile, as its diagnostics module does.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import Counter
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import aiohttp

from device_emulator.acquisition import CompressionTimer, modelled_compression_time
from device_emulator.boot import BootDecision, boot_device
from device_emulator.config import TRANSPORT_HTTP, TRANSPORT_MODBUS_TCP, DeviceConfig
from device_emulator.console import POWERON_RESET, SW_CPU_RESET, Console
from device_emulator.context import FirmwareContext, PowerCut
from device_emulator.event_log import EventKind, EventLog, Subscription, decode_counters
from device_emulator.firmware import ComponentFactory, Firmware, default_components
from device_emulator.flash import Flash, factory_program
from device_emulator.inverter_link import HttpFrameLink, InverterLink, ModbusLink
from device_emulator.nvs import DIAGNOSTICS_COUNTERS, NvsStore
from device_emulator.ota_client import FirmwareKeys, SelfTest
from device_emulator.packet_queue import PacketQueue
from device_emulator.power import Activity, PowerMeter, PowerReport, PowerState
from device_emulator.profiles import Profile
from protocol.errors import DocumentError, ImageError
from protocol.esp_image import build_firmware_image

FLASH_FILE = "flash.bin"
NVS_FILE = "nvs.log"
PointHook = Callable[[str], None]


class Device:
    def __init__(
        self,
        config: DeviceConfig,
        *,
        wall_clock: Callable[[], float] = time.time,
        point: PointHook | None = None,
        components: ComponentFactory | None = None,
        compression_time: CompressionTimer = modelled_compression_time,
        self_test: SelfTest | None = None,
    ) -> None:
        """`components` replaces the firmware's configuration/command/OTA parts (tests); `self_test`
        decides whether a freshly updated image confirms itself (spec; default: it does)."""
        self.config = config
        self.state_dir = Path(config.state_dir)
        self.wall_clock = wall_clock
        self.point_hook = point  # called at every tagged point; may raise PowerCut
        self.components = components
        self.self_test = self_test
        self.keys = FirmwareKeys.load(config.firmware_keys) if config.firmware_keys else None
        self.compression_time = compression_time
        self.console = Console(self.millis)
        self.points: Counter[str] = Counter()  # how often each tagged point was reached
        self.boots = 0
        self.boot_decision: BootDecision | None = None
        self.firmware: Firmware | None = None
        self.nvs: NvsStore | None = None
        self.flash: Flash | None = None
        self.profile: Profile | None = None
        self.version: str | None = None
        self.last_reboot_reason: str | None = None
        self.crash: BaseException | None = None  # an exception that stopped the firmware model
        self._armed: dict[str, tuple[int, float]] = {}  # tag -> (hits to skip, seconds off)
        self._cut_off_s = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._t0 = 0.0
        self._boot_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self.events: EventLog | None = None
        self.power: PowerMeter | None = None
        self.powered = False

    # --- clocks (device seconds: loop time times the time scale) ------------------------------------

    def clock(self) -> float:
        if self._loop is None:
            return 0.0
        return (self._loop.time() - self._t0) * self.config.time_scale

    def millis(self) -> int:
        return int((self.clock() - self._boot_at) * 1000) & 0xFFFF_FFFF

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds / self.config.time_scale)

    # --- lifecycle --------------------------------------------------------------------------------

    async def start(self) -> None:
        """Power on (the first time, or again after stop())."""
        if self._task is not None:
            raise RuntimeError("the device is already running")
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._t0 = self._loop.time()
            self.power = PowerMeter(PowerState.OFF, clock=self.clock)
            self.events = EventLog(clock=self.clock, wall_clock=self.wall_clock)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._power_on("power-on")

    async def stop(self) -> None:
        """Power off for good (the state directory keeps flash and NVS)."""
        await self._kill()
        self.console.close()

    async def power_cut(self, off_s: float = 0.0) -> None:
        """Cut the power now; it comes back after `off_s` device seconds and the device boots."""
        await self._kill()
        if off_s > 0:
            await self.sleep(off_s)
        self._power_on("power-on")

    async def reset(self) -> None:
        """Pull the reset line: RAM is lost, the boot path runs again at once."""
        await self._kill()
        self._power_on("reset")

    def cut_power_at(self, tag: str, *, skip: int = 0, off_s: float = 0.0) -> None:
        """Arm a power cut at the (skip+1)-th time tagged point `tag` is reached from now."""
        self._armed[tag] = (skip, off_s)

    async def wait_booted(self, boots: int, timeout: float = 10.0) -> None:
        """Wait (loop seconds) until the device has booted `boots` times in all."""
        async with asyncio.timeout(timeout):
            while self.boots < boots or self.firmware is None:
                await asyncio.sleep(0.01)

    def subscribe(self, maxsize: int = 1000) -> Subscription:
        """The device's event stream (across reboots)."""
        if self.events is None:
            raise RuntimeError("start the device first")
        return self.events.subscribe(maxsize)

    # --- observable state -------------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._task is not None and not self._task.done()

    @property
    def queue(self) -> PacketQueue | None:
        return self.firmware.queue if self.firmware is not None else None

    @property
    def counters(self) -> dict[str, int]:
        return self.events.counters if self.events is not None else {}

    def energy(self) -> PowerReport:
        if self.power is None:
            raise RuntimeError("start the device first")
        return self.power.report()

    def state(self) -> dict[str, Any]:
        """A JSON-ready summary for reports and the CLI."""
        return {
            "device_id": self.config.device_id,
            "state_dir": str(self.state_dir),
            "powered": self.powered,
            "profile": self.profile.name if self.profile else None,
            "version": self.version,
            "boots": self.boots,
            "slot": self.boot_decision.slot if self.boot_decision else None,
            "slots": self._slots(),
            "queue": len(self.queue) if self.queue is not None else 0,
            "counters": self.counters,
            "energy": self.energy().as_dict() if self.power is not None else None,
        }

    def _slots(self) -> list[dict[str, Any]]:
        """Each OTA slot as the bootloader last saw it: image identity and otadata state."""
        decision, flash = self.boot_decision, self.flash
        if decision is None or flash is None:
            return []
        ota = flash.ota_state()
        return [
            {
                "slot": check.slot,
                "label": check.partition.label,
                "firmware": list(check.identity) if check.identity else None,
                "state": ota.state_of(check.slot, len(decision.checks)),
                "problem": check.reason or None,
            }
            for check in decision.checks
        ]

    # --- internals --------------------------------------------------------------------------------

    def _point(self, tag: str) -> None:
        self.points[tag] += 1
        if self.point_hook is not None:
            self.point_hook(tag)
        armed = self._armed.get(tag)
        if armed is not None:
            skip, off_s = armed
            if skip:
                self._armed[tag] = (skip - 1, off_s)
            else:
                del self._armed[tag]
                self._cut_off_s = off_s
                raise PowerCut(tag)

    def _power_on(self, reason: str) -> None:
        assert self._loop is not None
        self._task = self._loop.create_task(self._life(reason), name=f"device {self.config.device_id}")

    async def _kill(self) -> None:
        task, self._task = self._task, None
        # Cancel until it stops: code that awaits inside a `finally` may swallow one cancellation.
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.05)
        if task is not None and not task.cancelled() and task.exception() is not None:
            self.console.log("main", f"firmware stopped with {task.exception()!r}", "E")
        self._off()

    def _off(self) -> None:
        self.powered = False
        self.firmware = None
        if self.power is not None:
            self.power.enter(PowerState.OFF)

    async def _life(self, reason: str) -> None:
        """Boot, run, reboot when asked; after a power cut at a tagged point, boot again."""
        while True:
            try:
                reason = await self._boot_and_run(reason)
                self.last_reboot_reason = reason
            except PowerCut as cut:
                self._off()
                self.last_reboot_reason = f"power cut at {cut.point}"
                if self._cut_off_s > 0:
                    await self.sleep(self._cut_off_s)
                reason = "power-on"
            except ImageError as error:  # nothing bootable: a real chip resets forever
                self.console.log("boot", f"no bootable app: {error}", "E")
                self._off()
                return
            except Exception as error:  # a bug in the model: show it as the board would, keep it
                self.crash = error
                self.console.log("main", f"Guru Meditation Error: {error!r}", "E")
                self._off()
                raise

    async def _boot_and_run(self, reason: str) -> str:
        assert self.events is not None and self.power is not None
        self.powered = True
        self._boot_at = self.clock()
        self.console.banner(POWERON_RESET if reason in ("power-on", "reset") else SW_CPU_RESET)
        self.power.enter(PowerState.CPU_240)
        flash = Flash(self.state_dir / FLASH_FILE, on_point=self._point)
        if flash.created:
            image = build_firmware_image(self.config.profile, self.config.factory_version)
            factory_program(flash, image)
            self.console.log("boot", f"factory flashed {self.config.profile} {self.config.factory_version}")
        decision = boot_device(flash)
        for tag, message in decision.log:
            self.console.log(tag, message)
        nvs = NvsStore(self.state_dir / NVS_FILE, on_point=self._point, durable=self.config.durable)
        profile = self.config.profile_for(decision.identity.profile)
        self.flash, self.nvs, self.boot_decision = flash, nvs, decision
        self.profile, self.version = profile, decision.identity.version
        self.boots += 1
        if self.boots == 1 and profile.posts_diagnostics:
            self._restore_counters(nvs)
        self.events.started = self.clock()
        self.events.record(EventKind.BOOT, reason=reason, slot=decision.slot, version=self.version)
        if not nvs.load_report.clean:
            self.events.record(EventKind.NVS_RECOVERED, damage=len(nvs.load_report.damage))

        session = aiohttp.ClientSession(trace_configs=[self._radio_trace(profile)])
        link: InverterLink | None = None
        try:
            link = self._link(profile, session)
            holder: list[Firmware] = []
            ctx = FirmwareContext(
                device_id=self.config.device_id,
                version=self.version,
                profile=profile,
                nvs=nvs,
                flash=flash,
                events=self.events,
                power=self.power,
                console=self.console,
                http=session,
                cloud_url=self.config.cloud_url.rstrip("/"),
                inverter=link,
                clock=self.clock,
                wall_clock=self.wall_clock,
                millis=self.millis,
                sleep=self.sleep,
                request_reboot=lambda why: holder[0].request_reboot(why) if holder else None,
                point=self._point,
                time_scale=self.config.time_scale,
            )
            jitter = None if self.config.seed is None else random.Random(f"{self.config.seed}/{self.boots}")
            components = self.components or partial(
                default_components, keys=self.keys, running_slot=decision.slot, self_test=self.self_test
            )
            firmware = Firmware(
                ctx,
                link,
                self.config.key,
                components=components,
                compression_time=self.compression_time,
                jitter=jitter,
            )
            holder.append(firmware)
            self.firmware = firmware
            why = await firmware.run()
            self.console.log("main", f"restarting: {why}")
            return why
        finally:
            self.firmware = None
            if link is not None:
                await link.close()
            await session.close()

    def _restore_counters(self, nvs: NvsStore) -> None:
        assert self.events is not None
        saved = DIAGNOSTICS_COUNTERS.read(nvs)
        if isinstance(saved, bytes):
            with contextlib.suppress(DocumentError):
                for name, value in decode_counters(saved).items():
                    self.events.count(name, value)

    def _link(self, profile: Profile, session: aiohttp.ClientSession) -> InverterLink:
        transport = self.config.transport
        common: dict[str, Any] = {
            "sleep": self.sleep,
            "time_scale": self.config.time_scale,
            "log": lambda level, message: self.console.log("adapter", message, level),
        }
        if transport.kind == TRANSPORT_HTTP:
            return HttpFrameLink(
                self.config.inverter_url, session, profile, api_key=self.config.api_key, **common
            )
        if transport.kind == TRANSPORT_MODBUS_TCP:
            return ModbusLink(profile, tcp_url=self.config.inverter_url, **common)
        return ModbusLink(profile, serial_path=transport.serial_path, **common)

    def _radio_trace(self, profile: Profile) -> aiohttp.TraceConfig:
        """Meter the radio: transmitting while a request goes out, receiving until its answer."""
        policy = profile.power_policy
        trace = aiohttp.TraceConfig()

        def enter(activity: Activity) -> Callable[..., Any]:
            async def hook(*_: object) -> None:
                if self.power is not None and self.powered:
                    self.power.enter(policy.state_for(activity))

            return hook

        trace.on_request_start.append(enter(Activity.TRANSMIT))
        trace.on_request_headers_sent.append(enter(Activity.RECEIVE))
        trace.on_request_end.append(enter(Activity.COMPUTE))
        trace.on_request_exception.append(enter(Activity.COMPUTE))
        return trace
