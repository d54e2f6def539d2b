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

The serial port (`serial="pty" | "socket://HOST:0" | "rfc2217://HOST:0"`): one SerialEndpoint per
device, over the same Flash object the bootloader boots from. It carries the console while the app
runs (the ROM banner, the bootloader's lines, then the firmware's) and the ROM download mode esptool
talks to. The host moves the chip (DTR/RTS over RFC 2217, a SYNC on a pty or socket, "run user code"):
the device stops its firmware while the chip is held in reset or in the ROM loader, and boots what the
flash then holds when the chip runs again. Resets the board makes itself (power-on, power cuts,
esp_restart) go through the endpoint too, which prints the ROM banner; without a serial port the
device prints the same banner on its console.

Provisioning: at every boot the device reads the nvs partition of its flash (nvs_partition.py); the
cloud URL, inverter URL, device id and key in the `provision` namespace, when present, take the place
of the DeviceConfig's.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
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
from device_emulator.console import Console
from device_emulator.context import FirmwareContext, PowerCut
from device_emulator.event_log import EventKind, EventLog, Subscription, decode_counters
from device_emulator.firmware import ComponentFactory, Firmware, default_components
from device_emulator.flash import Flash, factory_program
from device_emulator.inverter_link import HttpFrameLink, InverterLink, ModbusLink
from device_emulator.nvs import DIAGNOSTICS_COUNTERS, FIRMWARE_KEYS, NvsStore
from device_emulator.nvs_partition import Provisioned, provisioned, read_nvs_partition
from device_emulator.ota_client import FirmwareKeys, SelfTest
from device_emulator.packet_queue import PacketQueue
from device_emulator.power import Activity, PowerMeter, PowerReport, PowerState
from device_emulator.profiles import Profile
from device_emulator.rom_loader import DEFAULT_MAC
from device_emulator.serial_endpoint import ChipMode, ResetCause, SerialEndpoint, boot_banner
from protocol.envelope import PSK_SIZE
from protocol.errors import DocumentError, ImageError, NvsError
from protocol.esp_image import DEFAULT_IDF_VERSION, build_firmware_image, is_flash_mapped
from protocol.partition_table import AppSubtype, DataSubtype, Partition, PartitionType

FLASH_FILE = "flash.bin"
NVS_FILE = "nvs.log"
NVS_PARTITION_DIGEST = "nvs_partition.sha256"  # the nvs partition's bytes the firmware NVS last took keys from
PointHook = Callable[[str], None]
# What the partition table listing of the ESP-IDF bootloader calls each kind of partition.
_USAGE: dict[tuple[int, int], str] = {
    (PartitionType.DATA, DataSubtype.NVS): "WiFi data",
    (PartitionType.DATA, DataSubtype.OTA): "OTA data",
    (PartitionType.DATA, DataSubtype.PHY): "RF data",
    (PartitionType.APP, AppSubtype.FACTORY): "factory app",
}


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
        serial: str | None = None,
        mac: bytes = DEFAULT_MAC,
    ) -> None:
        """`components` replaces the firmware's configuration/command/OTA parts (tests); `self_test`
        decides whether a freshly updated image confirms itself (spec; default: it does); `serial`
        gives the board a serial port ("pty", "socket://HOST:PORT", "rfc2217://HOST:PORT", port 0 for
        a free one), `mac` is the MAC in its eFuse."""
        self.config = config
        self.serial_url = serial
        self.mac = mac
        self.endpoint: SerialEndpoint | None = None
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
        self.device_id = config.device_id  # as the last boot found it: provisioned, else configured
        self.provisioned = Provisioned()  # what the last boot read from the nvs partition
        self._armed: dict[str, tuple[int, float]] = {}  # tag -> (hits to skip, seconds off)
        self._cut_off_s = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._t0 = 0.0
        self._boot_at = 0.0
        self._task: asyncio.Task[None] | None = None
        self._follow: asyncio.Task[None] | None = None  # acting on the serial port's mode changes
        self._wanted = ChipMode.HELD  # the latest mode the host put the chip in
        self._factory_note: str | None = None
        self.events: EventLog | None = None
        self.power: PowerMeter | None = None
        self.powered = False  # the firmware model is booted
        self.switched_on = False  # the chip has power (it may sit in reset or in the ROM loader)

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
        if self.switched_on:
            raise RuntimeError("the device is already running")
        self._attach()
        self._open_flash()
        if self.serial_url is not None:
            await self.open_serial()
        self._power_on("power-on")

    async def open_serial(self) -> SerialEndpoint:
        """Open the board's serial port now (before power-on, so a client sees the first boot); start()
        opens it otherwise. Its `port` is what esptool and pyserial take."""
        if self.endpoint is None:
            if self.serial_url is None:
                raise RuntimeError("this device has no serial port (Device(serial=...))")
            self._attach()
            endpoint = SerialEndpoint(
                self._open_flash(),
                url=self.serial_url,
                mac=self.mac,
                on_reset=self._chip_changed,
                on_rom_output=self._rom_printed,
                mode=ChipMode.HELD,  # no power yet
            )
            await endpoint.start()
            self.endpoint = endpoint
            self.console.sink = endpoint.write_console
        return self.endpoint

    @property
    def serial_port(self) -> str | None:
        """The serial port's name for esptool and pyserial (a pty path or a URL), once open."""
        return self.endpoint.port if self.endpoint is not None else None

    async def stop(self) -> None:
        """Power off for good (the state directory keeps flash and NVS); closes the serial port."""
        await self._kill()
        self.switched_on = False
        if self.endpoint is not None:
            await self.endpoint.close()
            self.endpoint = None
        self.console.close()

    async def power_cut(self, off_s: float = 0.0) -> None:
        """Cut the power now; it comes back after `off_s` device seconds and the device boots."""
        await self._kill()
        self.switched_on = False
        if self.endpoint is not None:
            self.endpoint.power_off()
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
    def chip_mode(self) -> ChipMode | None:
        """What the chip behind the serial port does (None without a serial port)."""
        return self.endpoint.mode if self.endpoint is not None else None

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
            "device_id": self.device_id,
            "state_dir": str(self.state_dir),
            "powered": self.powered,
            "serial_port": self.serial_port,
            "chip_mode": self.chip_mode.value if self.chip_mode is not None else None,
            "provisioned": self.provisioned.present,
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

    def _attach(self) -> None:
        """Bind to the running loop (once): the device clock, the power meter and the event log."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
            self._t0 = self._loop.time()
            self.power = PowerMeter(PowerState.OFF, clock=self.clock)
            self.events = EventLog(clock=self.clock, wall_clock=self.wall_clock)

    def _open_flash(self) -> Flash:
        """The board's flash, one object for the bootloader, the firmware and the ROM loader; a fresh
        state directory is factory-programmed with the configured build."""
        if self.flash is None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            flash = Flash(self.state_dir / FLASH_FILE, on_point=self._flash_point)
            if flash.created:
                image = build_firmware_image(self.config.profile, self.config.factory_version)
                factory_program(flash, image)
                self._factory_note = f"factory flashed {self.config.profile} {self.config.factory_version}"
            self.flash = flash
        return self.flash

    def _flash_point(self, tag: str) -> None:
        # esptool writing through the ROM loader is not the firmware reaching one of its points.
        if self.chip_mode is not ChipMode.DOWNLOAD:
            self._point(tag)

    def _power_on(self, reason: str, cause: ResetCause = ResetCause.POWERON) -> None:
        self.switched_on = True
        if self._rom(cause):
            self._boot(reason)

    def _boot(self, reason: str) -> None:
        assert self._loop is not None
        self._task = self._loop.create_task(self._life(reason), name=f"device {self.config.device_id}")

    def _rom(self, cause: ResetCause) -> bool:
        """The ROM's part of a reset the board makes itself: its banner; True when it goes on to boot
        from flash (with a serial port, the host may hold the chip in reset or in download mode)."""
        if self.endpoint is not None:
            return self.endpoint.restart(cause) is ChipMode.RUN
        for line in boot_banner(cause, download=False, flash=self.flash).splitlines():
            self.console.write(line)
        return True

    def _rom_printed(self, text: str) -> None:
        """The serial endpoint printed ROM output: the console records it (it is on the wire already)."""
        for line in text.splitlines():
            self.console.record(line)

    def _chip_changed(self, mode: ChipMode) -> None:
        """The host moved the chip (reset lines, esptool): stop the app now; boot again on RUN."""
        if not self.switched_on or self._loop is None:
            return
        if self._task is not None:
            self._task.cancel()  # at its next await: nothing more of it reaches flash or the wire
        self._wanted = mode
        if self._follow is None or self._follow.done():
            self._follow = self._loop.create_task(self._follow_chip())

    async def _follow_chip(self) -> None:
        """Bring the firmware in line with the chip's latest mode (changes may come in bursts)."""
        while True:
            mode = self._wanted
            await self._stop_firmware()
            if self._wanted is mode:
                break
        if mode is ChipMode.RUN and self.switched_on:
            self._boot("reset")

    async def _kill(self) -> None:
        follow, self._follow = self._follow, None
        if follow is not None and not follow.done():
            follow.cancel()
            await asyncio.wait({follow})
        await self._stop_firmware()

    async def _stop_firmware(self) -> None:
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
        """Boot, run, reboot when asked; after a power cut at a tagged point, boot again. Ends when
        nothing can boot, or when the host holds the chip at a reset the board made itself."""
        while True:
            try:
                reason = await self._boot_and_run(reason)
                self.last_reboot_reason = reason
                cause = ResetCause.SW_CPU  # esp_restart()
            except PowerCut as cut:
                self._off()
                self.last_reboot_reason = f"power cut at {cut.point}"
                self.switched_on = False
                if self.endpoint is not None:
                    self.endpoint.power_off()
                if self._cut_off_s > 0:
                    await self.sleep(self._cut_off_s)
                self.switched_on = True
                reason, cause = "power-on", ResetCause.POWERON
            except ImageError as error:  # nothing bootable: a real chip resets forever
                self.console.idf("boot", f"no bootable app: {error}", "E")
                self._off()
                return
            except Exception as error:  # a bug in the model: show it as the board would, keep it
                self.crash = error
                self.console.log("main", f"Guru Meditation Error: {error!r}", "E")
                self._off()
                raise
            if not self._rom(cause):
                return

    async def _boot_and_run(self, reason: str) -> str:
        assert self.events is not None and self.power is not None
        self.powered = True
        self._boot_at = self.clock()
        self.power.enter(PowerState.CPU_240)
        flash = self._open_flash()
        if self._factory_note is not None:
            self.console.log("boot", self._factory_note)
            self._factory_note = None
        decision = self._bootloader(flash)
        found = self._read_provisioning(flash)
        self.provisioned = found
        self.device_id = found.device_id or self.config.device_id
        cloud_url = found.cloud_url or self.config.cloud_url
        inverter_url = found.inverter_url or self.config.inverter_url
        key = found.key or self.config.key
        nvs = NvsStore(self.state_dir / NVS_FILE, on_point=self._point, durable=self.config.durable)
        self._adopt_flashed_nvs(flash, nvs)
        profile = self.config.profile_for(decision.identity.profile)
        self.nvs, self.boot_decision = nvs, decision
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
            link = self._link(profile, session, inverter_url)
            holder: list[Firmware] = []
            ctx = FirmwareContext(
                device_id=self.device_id,
                version=self.version,
                profile=profile,
                nvs=nvs,
                flash=flash,
                events=self.events,
                power=self.power,
                console=self.console,
                http=session,
                cloud_url=cloud_url.rstrip("/"),
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
                key,
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

    def _bootloader(self, flash: Flash) -> BootDecision:
        """The second-stage bootloader: its log as ESP-IDF prints it, and the slot it boots
        (ImageError when nothing can boot)."""
        log = self.console.idf
        log("boot", f"ESP-IDF {DEFAULT_IDF_VERSION} 2nd stage bootloader")
        log("boot", "chip revision: v1.0")
        log("boot.esp32", f"SPI Flash Size : {flash.size // (1024 * 1024)}MB")
        table = flash.partition_table()
        log("boot", "Partition Table:")
        log("boot", "## Label            Usage          Type ST Offset   Length")
        for number, part in enumerate(table.partitions):
            log("boot", f"{number:2d} {part.label:<16} {_usage(part):<16} "
                f"{part.type:02x} {part.subtype:02x} {part.offset:08x} {part.size:08x}")  # fmt: skip
        log("boot", "End of partition table")
        decision = boot_device(flash)
        for tag, message in decision.log:
            level = "E" if "not bootable" in message else "W" if "rolled back" in message else "I"
            log(tag, message, level)
        for number, segment in enumerate(decision.image.segments):
            address = decision.partition.offset + segment.offset + 8
            kind = "map" if is_flash_mapped(segment.load_address) else "load"
            log("esp_image", f"segment {number}: paddr={address:08x} vaddr={segment.load_address:08x} "
                f"size={len(segment.data):05x}h ({len(segment.data):6d}) {kind}")  # fmt: skip
        return decision

    def _read_provisioning(self, flash: Flash) -> Provisioned:
        """The provisioned settings in the flash's nvs partition (none when it is blank or unreadable)."""
        try:
            partition = flash.partition_table().find(PartitionType.DATA, DataSubtype.NVS)
            if partition is None:
                return Provisioned()
            contents = read_nvs_partition(flash.read_partition(partition))
        except (ImageError, NvsError) as error:
            self.console.log("nvs", f"NVS partition unreadable, using the build's settings: {error}", "E")
            return Provisioned()
        if contents.damage:
            self.console.log("nvs", f"NVS partition: {len(contents.damage)} damaged items skipped", "W")
        found = provisioned(contents, PSK_SIZE)
        for problem in found.problems:
            self.console.log("nvs", f"{problem}: ignored", "W")
        if found.present:
            self.console.log(
                "main",
                f"provisioned: device {found.device_id or '-'}, cloud {found.cloud_url or '-'}, "
                f"inverter {found.inverter_url or '-'}, key {'set' if found.key else '-'}",
            )
        return found

    def _adopt_flashed_nvs(self, flash: Flash, nvs: NvsStore) -> None:
        """On a board the nvs partition is the NVS: when esptool rewrote it since the last boot (a
        provisioning with periods), the firmware keys it carries replace the ones the firmware kept, so
        a remote configuration overrides them again until the next provisioning."""
        try:
            partition = flash.partition_table().find(PartitionType.DATA, DataSubtype.NVS)
            raw = flash.read_partition(partition) if partition is not None else b""
            contents = read_nvs_partition(raw) if raw else None
        except (ImageError, NvsError):
            return  # _read_provisioning said so already
        seen = self.state_dir / NVS_PARTITION_DIGEST
        digest = hashlib.sha256(raw).hexdigest()
        if contents is None or (seen.is_file() and seen.read_text() == digest):
            return
        adopted = [key for key in FIRMWARE_KEYS
                   if (entry := contents.namespaces.get(key.namespace, {}).get(key.key)) is not None
                   and entry.type is key.type]
        if adopted:
            with nvs.transaction() as tx:
                for key in adopted:
                    tx.put(key, contents.namespaces[key.namespace][key.key].value)
            self.console.log("nvs", "from the flashed NVS partition: " + ", ".join(
                f"{key.namespace}/{key.key}" for key in adopted))
        seen.write_text(digest)

    def _restore_counters(self, nvs: NvsStore) -> None:
        assert self.events is not None
        saved = DIAGNOSTICS_COUNTERS.read(nvs)
        if isinstance(saved, bytes):
            with contextlib.suppress(DocumentError):
                for name, value in decode_counters(saved).items():
                    self.events.count(name, value)

    def _link(self, profile: Profile, session: aiohttp.ClientSession, inverter_url: str) -> InverterLink:
        transport = self.config.transport
        common: dict[str, Any] = {
            "sleep": self.sleep,
            "time_scale": self.config.time_scale,
            "log": lambda level, message: self.console.log("adapter", message, level),
        }
        if transport.kind == TRANSPORT_HTTP:
            return HttpFrameLink(inverter_url, session, profile, api_key=self.config.api_key, **common)
        if transport.kind == TRANSPORT_MODBUS_TCP:
            return ModbusLink(profile, tcp_url=inverter_url, **common)
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


def _usage(partition: Partition) -> str:
    if partition.ota_slot is not None:
        return "OTA app"
    return _USAGE.get((partition.type, partition.subtype), "Unknown data")
