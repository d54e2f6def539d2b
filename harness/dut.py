"""The device under test, behind one interface whatever it is: `Dut`.

    await dut.console.expect(r"upload ok", timeout=120)     # device seconds
    await dut.power_cut()                                    # or reset(), flash(image), read_mac(), info()

Backends:

* `EmulatedDut`: the emulator (`device_emulator.Device`) in this process, on the stack's loop (virtual
  time included); its console lines, its event stream and its RAM state are at hand.
* `ProcessDut`: the emulator as `ecowatt device run` in a subprocess (its console arrives on stderr);
  power cut = SIGKILL and start again on the same state directory.
* `SerialBoardDut`: a real ESP32 (or the emulator's serial endpoint) on a serial port: esptool's Python
  API to query it, `harness.flashing` (esptool) to flash and `harness.provisioning` to provision it,
  pyserial for the console (harness.serial_urls for rfc2217://), DTR/RTS for reset.

Every backend logs its console, raw, to one file per DUT (`log_path`), and `console.expect()` reads what
was logged: a failed expect shows the tail of the buffer and the log path. Fail patterns ("Guru
Meditation Error", "Brownout detector", watchdog resets, "abort() was called") mark the DUT `fatal` the
moment they appear and call the `on_fatal` hooks, which the pytest plugin uses to end the test at once.

`capabilities` says what the backend can do (see CAPABILITIES); the plugin skips a test whose marker
needs one it lacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import signal
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Protocol, runtime_checkable

from harness import serial_urls
from harness.clocks import Clock, DeviceTimeoutError
from harness.flashing import FlashOptions, FlashResult, flash_image

if TYPE_CHECKING:
    from device_emulator.device import Device
    from device_emulator.event_log import Event, Subscription
    from harness.provisioning import BoardSettings

# Capabilities a backend may have.
POWER_CUT = "power_cut"  # remove and restore power (RAM lost, NVS and flash kept)
TAGGED_POWER_CUT = "tagged_power_cut"  # cut the power at a tagged point of the firmware
RESET = "reset"  # pull the reset line
FLASH = "flash"  # write an image to the flash through the ROM loader (esptool)
EVENTS = "events"  # the device's event stream and RAM state are observable
BOARD = "board"  # a board on a serial port (real, or the emulator's serial endpoint)
CAPABILITIES = (POWER_CUT, TAGGED_POWER_CUT, RESET, FLASH, EVENTS, BOARD)

# What a board prints when it dies: the test fails at once.
FAIL_PATTERNS: tuple[str, ...] = (
    r"Guru Meditation Error",
    r"Brownout detector was triggered",
    r"abort\(\) was called",
    r"rst:0x[0-9a-f]+ \([A-Z0-9_]*WDT[A-Z0-9_]*\)",  # a watchdog reset (task, interrupt or RTC WDT)
    r"Task watchdog got triggered",
)
TAIL_LINES = 30


class ConsoleTimeout(AssertionError):
    """`expect()` found no match in time; the message holds the buffer tail and the log path."""


class DutFatal(AssertionError):
    """The DUT printed a fail pattern (panic, brownout, watchdog reset, abort)."""


class DutConsole:
    """The console of one DUT: everything it printed, in a raw log file and a buffer that `expect()`
    consumes (a match drops the buffer up to the end of the match). `poll`: device seconds between
    looks for a console fed from another thread (None: at every idle point of the virtual clock)."""

    def __init__(self, name: str, log_path: Path, clock: Clock, *,
                 fail_patterns: tuple[str, ...] = FAIL_PATTERNS, poll: float | None = None) -> None:
        self.name = name
        self.log_path = log_path
        self.clock = clock
        self.poll = poll
        self.fatal: str | None = None
        self.on_fatal: list[Callable[[str], None]] = []
        self.on_line: list[Callable[[str], None]] = []  # every line, as it is fed (from any thread)
        self._fail = re.compile("|".join(f"(?:{p})" for p in fail_patterns)) if fail_patterns else None
        self._buffer = ""
        self._partial = ""
        self._lines: list[str] = []
        self._lock = threading.Lock()
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log: IO[str] | None = log_path.open("a", encoding="utf-8", errors="replace")

    def feed_line(self, line: str) -> None:
        """One console line (without its ending); callable from any thread."""
        with self._lock:
            self._buffer += line + "\n"
            self._lines.append(line)
            if self._log is not None:
                self._log.write(line + "\n")
                self._log.flush()
        for watch in list(self.on_line):
            watch(line)
        if self._fail is not None and self.fatal is None and self._fail.search(line):
            self.fatal = line
            for hook in list(self.on_fatal):
                hook(line)

    def feed(self, text: str) -> None:
        """Console text in any chunks (a serial port's reads); lines are split on their endings."""
        pending = self._partial + text
        *complete, self._partial = re.split(r"\r?\n|\r", pending)
        for line in complete:
            self.feed_line(line)

    @property
    def lines(self) -> list[str]:
        """Every line so far (the buffer's consumption does not touch these)."""
        with self._lock:
            return list(self._lines)

    def tail(self, count: int = TAIL_LINES) -> list[str]:
        with self._lock:
            return self._lines[-count:]

    def clear(self) -> None:
        """Forget the unconsumed buffer: the next expect() sees only what comes after."""
        with self._lock:
            self._buffer = ""

    def _search(self, pattern: re.Pattern[str]) -> re.Match[str] | None:
        with self._lock:
            match = pattern.search(self._buffer)
            if match is not None:
                self._buffer = self._buffer[match.end():]
            return match

    async def expect(self, pattern: str | re.Pattern[str], timeout: float = 30.0) -> re.Match[str]:
        """The first match of `pattern` in what the DUT printed since the last match, waiting up to
        `timeout` device seconds. ConsoleTimeout (buffer tail, log path) when nothing matches;
        DutFatal when the DUT died meanwhile."""
        regex = re.compile(pattern, re.MULTILINE) if isinstance(pattern, str) else pattern

        def found() -> re.Match[str] | None:
            if self.fatal is not None:
                raise DutFatal(self.fatal_message())
            return self._search(regex)

        try:
            match: re.Match[str] = await self.clock.until(found, timeout=timeout, poll=self.poll)
        except DeviceTimeoutError:
            raise ConsoleTimeout(
                f"{self.name}: {regex.pattern!r} not seen within {timeout:g} s of device time\n"
                f"--- last {TAIL_LINES} console lines ---\n" + "\n".join(self.tail()) +
                f"\n--- full log: {self.log_path}"
            ) from None
        return match

    def fatal_message(self) -> str:
        return (f"{self.name} died: {self.fatal}\n--- last {TAIL_LINES} console lines ---\n"
                + "\n".join(self.tail()) + f"\n--- full log: {self.log_path}")

    def close(self) -> None:
        with self._lock:
            if self._log is not None:
                self._log.close()
                self._log = None


@runtime_checkable
class Dut(Protocol):
    """What scenarios use of a device under test, whatever backs it."""

    device_id: str
    profile: str
    console: DutConsole
    capabilities: frozenset[str]

    @property
    def device(self) -> Device | None:
        """The emulator's Device when it runs in this process, else None."""

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def power_cut(self, off_s: float = 0.0) -> None: ...

    async def reset(self) -> None: ...

    async def flash(self, image: bytes, offset: int = 0x10000) -> Any: ...

    async def read_mac(self) -> str: ...

    async def info(self) -> dict[str, Any]: ...

    def events(self) -> list[Event]:
        """The device's events so far (empty when the backend cannot observe them)."""


# --- the emulator in this process -----------------------------------------------------------------------


class EventRecorder:
    """Every event of a device's stream, kept (the device's own log keeps 50)."""

    def __init__(self, subscription: Subscription) -> None:
        self.subscription = subscription
        self._events: list[Event] = []

    def events(self) -> list[Event]:
        queue = self.subscription.queue
        while not queue.empty():
            self._events.append(queue.get_nowait())
        return list(self._events)

    @property
    def dropped(self) -> int:
        return self.subscription.dropped


@dataclass(frozen=True)
class AcceptedRead:
    """A register block the firmware received from the inverter and took as a sample (or a failure
    marker the firmware stores as one)."""

    time: float  # stack device seconds
    boot: int  # the device's boot count when it was read
    selection: tuple[int, ...]  # the firmware's register selection then (its batch layout)
    start: int
    values: tuple[int, ...]  # the block's values from `start`
    marker: bool = False  # not a reading: the failure marker 0xFFFF the firmware stores (§11.2.10)


class EmulatedDut:
    """The emulator in-process (see the module docstring).

    `accepted` records every sample the firmware accepted: the DUT watches the emulator's inverter link
    (the emulator makes a new link at every boot through `Device._link`, which the DUT wraps), the way a
    probe on the RS-485 bus would, so conservation is checked against what the device really took."""

    capabilities = frozenset({POWER_CUT, TAGGED_POWER_CUT, RESET, EVENTS})

    def __init__(self, device: Device, console: DutConsole, clock: Clock) -> None:
        self._device = device
        self.device_id = device.config.device_id
        self.profile = device.config.profile
        self.console = console
        self.clock = clock
        self.recorder: EventRecorder | None = None
        self.accepted: list[AcceptedRead] = []
        self._unsubscribe: Callable[[], None] | None = None
        self._probe_link()

    @property
    def device(self) -> Device:
        return self._device

    def _probe_link(self) -> None:
        device = self._device
        make_link = device._link

        def probed(*args: Any, **kwargs: Any) -> Any:
            link = make_link(*args, **kwargs)
            read = link.read_registers

            async def read_registers(start: int, count: int) -> Any:
                result = await read(start, count)
                firmware = device.firmware
                selection = tuple(firmware.acquisition.selection) if firmware is not None else ()
                if result.values is not None:
                    self.accepted.append(AcceptedRead(self.clock.now(), device.boots, selection, start,
                                                      tuple(result.values)))
                elif firmware is not None and firmware.profile.quirks.single_register_failure_marker \
                        and len(selection) == 1:
                    self.accepted.append(AcceptedRead(self.clock.now(), device.boots, selection, selection[0],
                                                      (0xFFFF,), marker=True))
                return result

            link.read_registers = read_registers
            return link

        device._link = probed  # type: ignore[method-assign]

    async def start(self) -> None:
        self._unsubscribe = self._device.console.subscribe(self.console.feed_line)
        await self._device.start()
        # Subscribed before the boot task first runs: the stream misses nothing.
        self.recorder = EventRecorder(self._device.subscribe(maxsize=10_000_000))

    async def stop(self) -> None:
        await self._device.stop()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None

    async def power_cut(self, off_s: float = 0.0) -> None:
        """Power off now (RAM lost); power returns after `off_s` device seconds and the device boots."""
        await self._device.power_cut(off_s)

    def cut_power_at(self, point: str, *, skip: int = 0, off_s: float = 0.0) -> None:
        """Cut the power when the firmware reaches tagged point `point` (after `skip` earlier hits)."""
        self._device.cut_power_at(point, skip=skip, off_s=off_s)

    async def reset(self) -> None:
        await self._device.reset()

    async def flash(self, image: bytes, offset: int = 0x10000) -> Any:
        raise NotImplementedError("the in-process emulator has no ROM loader port: use --dut board")

    async def read_mac(self) -> str:
        """The MAC in the emulated board's eFuse."""
        return ":".join(f"{b:02x}" for b in self._device.mac)

    async def info(self) -> dict[str, Any]:
        return {"backend": "emulated", **self._device.state()}

    def events(self) -> list[Event]:
        return self.recorder.events() if self.recorder is not None else []

    def in_ram(self) -> tuple[int, int]:
        """(samples in the batch being filled, packets queued): what the device holds and has not sent."""
        firmware = self._device.firmware
        if firmware is None:
            return 0, 0
        return len(firmware.acquisition.samples), len(firmware.queue)

    @property
    def busy_uploading(self) -> bool:
        firmware = self._device.firmware
        return firmware is not None and firmware.running == "upload"


# --- the emulator in a subprocess -----------------------------------------------------------------------


class ProcessDut:
    """`ecowatt device run` in a subprocess; its console arrives on stderr (see the module docstring)."""

    capabilities = frozenset({POWER_CUT, RESET})

    def __init__(self, device_id: str, profile: str, argv: list[str], console: DutConsole,
                 state_dir: Path) -> None:
        self.device_id = device_id
        self.profile = profile
        self.argv = argv
        self.console = console
        self.state_dir = state_dir
        self.process: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None

    @property
    def device(self) -> None:
        return None

    async def start(self) -> None:
        self.process = await asyncio.create_subprocess_exec(
            *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        assert self.process.stdout is not None and self.process.stderr is not None
        ready = await _read_until(self.process.stdout, "state directory:", 60.0, self.argv)
        self.console.feed_line(f"# {ready}")
        self._reader = asyncio.create_task(self._read(self.process.stderr))

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while raw := await stream.readline():
            self.console.feed_line(raw.decode("utf-8", "replace").rstrip("\r\n"))

    async def _end(self, signum: int) -> None:
        process, self.process = self.process, None
        if process is not None and process.returncode is None:
            process.send_signal(signum)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(process.wait(), 10.0)
            if process.returncode is None:
                process.kill()
                await process.wait()
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._reader, 5.0)
            self._reader = None

    async def stop(self) -> None:
        await self._end(signal.SIGTERM)

    async def power_cut(self, off_s: float = 0.0) -> None:
        """SIGKILL (RAM lost, the state directory kept), then start again after `off_s` seconds."""
        await self._end(signal.SIGKILL)
        if off_s > 0:
            await asyncio.sleep(off_s)
        await self.start()

    async def reset(self) -> None:
        await self.power_cut()

    async def flash(self, image: bytes, offset: int = 0x10000) -> Any:
        raise NotImplementedError("a device run without a serial endpoint has no ROM loader: use --dut board")

    async def read_mac(self) -> str:
        from device_emulator.rom_loader import DEFAULT_MAC

        return ":".join(f"{b:02x}" for b in DEFAULT_MAC)

    async def info(self) -> dict[str, Any]:
        return {"backend": "process", "device_id": self.device_id, "profile": self.profile,
                "pid": self.process.pid if self.process else None, "state_dir": str(self.state_dir)}

    def events(self) -> list[Event]:
        return []


async def _read_until(stream: asyncio.StreamReader, prefix: str, timeout: float, argv: list[str]) -> str:
    """The first line of `stream` starting with `prefix` (RuntimeError naming the command otherwise)."""
    seen: list[str] = []
    try:
        async with asyncio.timeout(timeout):
            while raw := await stream.readline():
                line = raw.decode("utf-8", "replace").strip()
                seen.append(line)
                if line.startswith(prefix):
                    return line
    except TimeoutError:
        pass
    raise RuntimeError(f"{' '.join(argv[:4])}... did not print {prefix!r}; it printed: {seen[-5:]}")


# --- a board on a serial port ---------------------------------------------------------------------------

# The line the EcoWatt firmware prints when it starts: its build (profile, version) and the device it is.
FIRMWARE_BANNER = re.compile(
    r"\[main\] EcoWatt (?P<profile>\S+) firmware (?P<version>[^,\s]+)(?:, device (?P<device_id>\S+))?"
)
BOOT_REAL_S = 20.0  # real seconds a board may take from its reset to the firmware's banner


@dataclass
class BoardInfo:
    chip: str
    mac: str
    features: list[str]
    crystal_mhz: int | None
    flash_id: int | None


@dataclass(frozen=True)
class FirmwareBanner:
    """What the board's firmware said about itself when it started."""

    profile: str
    version: str
    device_id: str | None


class SerialBoardDut:
    """An ESP32 on a serial port (a device path, or an rfc2217:// / socket:// URL); see the module
    docstring. The console is read by a thread into `console`; esptool needs the port to itself, so
    the console stops reading while esptool runs.

    With `settings` (harness.provisioning.BoardSettings) `start()` provisions the board for the run, the
    way `ecowatt provision` does (the same function): cloud and inverter URLs, device id, key and
    periods go into its NVS partition with esptool; then it resets the board and returns once the
    firmware has printed its banner (`banner`: profile, version, device id), failing with the console
    tail when the board does not boot as the provisioned device. The MAC and chip esptool reported are
    kept (`mac`, `chip`), so reports name the board without another esptool reset mid-run."""

    capabilities = frozenset({RESET, FLASH, BOARD})

    def __init__(self, port: str, console: DutConsole, *, device_id: str, profile: str,
                 baud: int = 115200, settings: BoardSettings | None = None,
                 flash_options: FlashOptions | None = None) -> None:
        self.port = port
        self.console = console
        self.device_id = device_id
        self.profile = profile
        self.baud = baud
        self.settings = settings
        self.flash_options = flash_options or FlashOptions()
        self.provisioned = False
        self.mac: str | None = None
        self.chip: str | None = None
        self.banner: FirmwareBanner | None = None
        self._serial: Any = None
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        console.on_line.append(self._watch)

    @property
    def device(self) -> None:
        return None

    @property
    def firmware_version(self) -> str | None:
        return self.banner.version if self.banner is not None else None

    def _watch(self, line: str) -> None:
        """Called for every console line (reader thread): the firmware's banner names its build."""
        match = FIRMWARE_BANNER.search(line)
        if match is not None:
            self.banner = FirmwareBanner(match["profile"], match["version"], match["device_id"])
            self.profile = self.banner.profile

    # --- lifecycle ----------------------------------------------------------------------------------

    async def start(self) -> None:
        """Open the console; first provision the board, then reset it and wait for it to boot, when
        there are settings to provision."""
        serial_urls.install()
        if self.settings is None or self.provisioned:
            await self._open()
            return
        from harness.provisioning import provision  # the NVS generator: imported only for a board

        settings = self.settings
        options = dataclasses.replace(self.flash_options, after="no-reset")  # the console sees the boot
        result = await provision(self.port, settings, options)
        self.provisioned = True
        self._learn(result)
        await self._open()
        periods = ", ".join(f"{key.key} {micros / 1e6:g} s" for key, micros in settings.periods())
        self.console.feed_line(f"# provisioned {settings.device_id} through {self.port} (MAC {result.mac}): "
                               f"cloud {settings.cloud_url}, inverter {settings.inverter_url}"
                               + (f", {periods}" if periods else ""))
        banner = await self.reboot()
        if banner.device_id is not None and banner.device_id != settings.device_id:
            raise RuntimeError(
                f"{self.port}: the board booted as {banner.device_id}, not as the provisioned "
                f"{settings.device_id} (does its firmware read the provision namespace of its NVS?)\n"
                f"--- last {TAIL_LINES} console lines ---\n" + "\n".join(self.console.tail())
                + f"\n--- full log: {self.console.log_path}")

    async def stop(self) -> None:
        await asyncio.to_thread(self._close)

    async def reboot(self) -> FirmwareBanner:
        """Reset the board and wait (up to BOOT_REAL_S real seconds) for its firmware's banner."""
        clock = self.console.clock
        self.banner = None
        await self.reset()

        def booted() -> FirmwareBanner | None:
            if self.console.fatal is not None:
                raise DutFatal(self.console.fatal_message())
            return self.banner

        try:
            banner: FirmwareBanner = await clock.until(booted, timeout=BOOT_REAL_S * clock.time_scale,
                                                       poll=self.console.poll)
        except DeviceTimeoutError:
            raise ConsoleTimeout(
                f"{self.console.name}: no firmware banner within {BOOT_REAL_S:g} s of a reset on {self.port}\n"
                f"--- last {TAIL_LINES} console lines ---\n" + "\n".join(self.console.tail())
                + f"\n--- full log: {self.console.log_path}") from None
        return banner

    # --- the console ------------------------------------------------------------------------------

    async def _open(self) -> None:
        await asyncio.to_thread(self._open_port)

    def _open_port(self) -> None:
        import serial

        self._serial = serial.serial_for_url(self.port, baudrate=self.baud, timeout=0.1,
                                             do_not_open=True)
        # Opening a port must not reset the board: keep DTR and RTS released.
        self._serial.dtr = False
        self._serial.rts = False
        self._serial.open()
        self._stop.clear()
        self._thread = threading.Thread(target=self._read, name=f"console {self.port}", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        port = self._serial
        raw_path = self.console.log_path.with_suffix(".raw")
        with raw_path.open("ab") as raw:  # the bytes as they came, next to the console's text log
            while not self._stop.is_set():
                try:
                    data = port.read(4096)
                except Exception as error:  # the port went away (USB unplugged, server closed)
                    self.console.feed_line(f"# console read failed: {error!r}")
                    return
                if data:
                    raw.write(data)
                    raw.flush()
                    self.console.feed(data.decode("utf-8", "replace"))

    def _close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        if self._serial is not None:
            with contextlib.suppress(Exception):
                self._serial.close()
            self._serial = None

    # --- reset and power ------------------------------------------------------------------------------

    def _pulse_reset(self) -> None:
        """EN low then high through the DevKit's auto-reset circuit (RTS asserted, DTR released)."""
        import time

        port = self._serial
        try:
            port.dtr = False
            port.rts = True
            time.sleep(0.1)  # a real line needs its pulse: this runs in a worker thread, not on the loop
            port.rts = False
        except OSError as error:  # a pty has no modem lines
            raise RuntimeError(f"cannot reset the board on {self.port}: its port has no DTR/RTS lines "
                               f"({error.strerror}); give a USB serial port or an rfc2217:// URL") from error

    async def reset(self) -> None:
        if self._serial is None:
            raise RuntimeError(f"{self.port}: the console is not open")
        await asyncio.to_thread(self._pulse_reset)

    async def power_cut(self, off_s: float = 0.0) -> None:
        """A board has no power switch here: hold it in reset for `off_s`, then release (RTS)."""
        await self.reset()

    # --- esptool ----------------------------------------------------------------------------------

    def _learn(self, result: FlashResult) -> None:
        self.mac = result.mac or self.mac
        self.chip = result.chip or self.chip

    async def flash(self, image: bytes, offset: int = 0x10000) -> Any:
        """Write `image` at `offset` with esptool (verified), then reset the board into it. esptool
        leaves the chip in its loader, so the console is listening again before the boot banner."""
        await self.stop()
        try:
            options = dataclasses.replace(self.flash_options, offset=offset, after="no-reset")
            result = await flash_image(self.port, image, options)
        finally:
            await self._open()
        self._learn(result)
        self.console.feed_line(f"# flashed {result.size} bytes at {offset:#x}, MAC {result.mac}")
        await self.reset()
        return result

    def _query(self) -> BoardInfo:
        from esptool.cmds import detect_chip

        esp = detect_chip(self.port, connect_attempts=3)
        try:
            mac = ":".join(f"{b:02x}" for b in esp.read_mac())
            try:
                flash = esp.flash_id()
            except Exception:
                flash = None
            return BoardInfo(esp.get_chip_description(), mac, list(esp.get_chip_features()),
                             esp.get_crystal_freq(), flash)
        finally:
            esp._port.close()

    async def _with_loader(self) -> BoardInfo:
        """Query the ROM loader; the console is closed meanwhile and the board is reset after (RTS)."""
        await self.stop()
        try:
            board = await asyncio.to_thread(self._query)
        finally:
            await self._open()
            await self.reset()
        self.mac, self.chip = board.mac, board.chip
        return board

    async def read_mac(self) -> str:
        """The MAC esptool read when it last talked to the board (asking it resets the board)."""
        return self.mac or (await self._with_loader()).mac

    async def info(self) -> dict[str, Any]:
        board = await self._with_loader()
        return {"backend": "board", "port": self.port, "device_id": self.device_id, "profile": self.profile,
                "version": self.firmware_version, "chip": board.chip, "mac": board.mac,
                "features": board.features, "crystal_mhz": board.crystal_mhz, "flash_id": board.flash_id}

    def provenance(self) -> dict[str, Any]:
        """What a report says about the board: what esptool and the firmware's banner told (no reset)."""
        return {"board_mac": self.mac, "board_chip": self.chip, "board_port": self.port,
                "device_id": self.device_id, "firmware_profile": self.banner.profile if self.banner else None,
                "firmware_version": self.firmware_version}

    def events(self) -> list[Event]:
        return []


def capability_reason(dut_kind: str, needed: Iterable[str], have: Iterable[str]) -> str | None:
    """Why a test needing `needed` cannot run on a DUT that has `have` (None: it can)."""
    missing = sorted(set(needed) - set(have))
    if not missing:
        return None
    return f"the {dut_kind} DUT lacks {', '.join(missing)}"
