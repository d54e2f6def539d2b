"""One emulated board's serial port, as an ESP32 DevKit's USB-UART presents it to a host.

The port is a pseudo-terminal the endpoint creates (`serial:///dev/pts/N`: any serial tool opens the
path), or a server for pyserial's URL handlers: `socket://HOST:PORT` (raw TCP) and `rfc2217://HOST:PORT`
(telnet with the RFC 2217 serial-port options, which carry baud rate and the DTR/RTS modem lines).

Behind it the chip is in one of three states (`ChipMode`): held in reset, in the ROM's serial download
mode (the bytes go to `RomLoader`, so esptool can flash the emulated flash), or running the app (the
port carries the console: the ROM boot banner, then whatever the device writes with `write_console`).

How the chip moves between them, as on a board:

* The DevKit's auto-reset circuit: EN is low while RTS is asserted and DTR is not; IO0 is low while DTR
  is asserted and RTS is not. Releasing EN boots; IO0 low at that moment means download mode. pyserial's
  RFC 2217 client needs 50-100 ms per modem-line change (it waits for each acknowledgement), so esptool's
  classic sequence reaches "IO0 low" only after EN has risen; the strapping decision therefore waits
  `STRAP_WINDOW` after EN rises and picks download if IO0 was low at any moment in it (the board's EN
  capacitor does the same job on real hardware). Only RFC 2217 carries the lines; `set_lines()` is the
  same circuit for callers in-process.
* A pty or a raw socket cannot carry modem lines (esptool warns, or skips the reset for socket://). With
  `auto_download` (their default) a SYNC request arriving while the app runs stands in for the reset the
  host tried to do: the chip enters download mode and answers it.
* In-band: esptool's "run user code" (FLASH_END with the run flag, or the stub's RUN_USER_CODE) leaves
  download mode for the app; a software reset (FLASH_END with the reboot flag) restarts the ROM loader.
* `reset()` is the EN button (with BOOT held: `download=True`).

Every change the host causes is recorded in `transitions` and reported to `on_reset(mode)`: the device
stops its firmware on HELD and DOWNLOAD and boots what the flash holds on RUN. Changes the board causes
itself go the other way: `restart(cause)` (power-on, esp_restart) reads the straps from the lines as
they are, prints the banner and returns the mode for the caller to act on; `power_off()` silences the
chip. `on_rom_output(text)` sees every banner the ROM prints, so the device's console records exactly
what went out on the wire.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from urllib.parse import urlsplit

import serial.rfc2217

from device_emulator.rom_loader import DEFAULT_MAC, Exit, FlashMemory, Op, RomLoader, parse_request
from device_emulator.slip import SlipDecoder, encode
from protocol.errors import ImageError, LoaderFrameError
from protocol.esp_image import FlashFrequency, parse_app_image

STRAP_WINDOW = 0.3  # seconds after EN rises during which IO0 low still selects download mode
MAX_CONSOLE_BACKLOG = 16 * 1024  # console bytes held for a slow (or absent) reader, then dropped
BOOTLOADER_OFFSET = 0x1000
BOOTLOADER_MAX = 0x7000  # the second-stage bootloader sits between 0x1000 and the partition table

ROM_VERSION = "ets Jun  8 2016 00:22:57"
STRAP_FLASH_BOOT = (0x13, "SPI_FAST_FLASH_BOOT")
STRAP_DOWNLOAD = (0x03, "DOWNLOAD_BOOT(UART0/UART1/SDIO_REI_REO_V2)")
# What the ROM prints while loading a typical ESP-IDF v4.4 bootloader, when the emulated flash holds
# none at 0x1000 (the emulator's bootloader is device_emulator/boot.py, not code in flash).
DEFAULT_LOAD_LINES = (
    "mode:DIO, clock div:2",
    "load:0x3fff0030,len:1344",
    "load:0x40078000,len:13964",
    "load:0x40080400,len:3600",
    "entry 0x400805f0",
)
_CLOCK_DIVIDERS = {
    FlashFrequency.F80M: 1,
    FlashFrequency.F40M: 2,
    FlashFrequency.F26M: 3,
    FlashFrequency.F20M: 4,
}


class ChipMode(Enum):
    HELD = "held"  # EN low: the chip is in reset
    DOWNLOAD = "download"  # the ROM's serial download mode (or the flasher stub esptool loaded)
    RUN = "run"  # the app runs; the port carries its console


class ResetCause(Enum):
    """The reset reasons the ROM prints on its `rst:` line (the ones this emulator produces)."""

    POWERON = (0x1, "POWERON_RESET")  # power-on and the EN pin
    SW_CPU = (0xC, "SW_CPU_RESET")  # esp_restart(), or esptool's reboot from the stub
    TG0WDT_SYS = (0x7, "TG0WDT_SYS_RESET")  # task watchdog
    RTCWDT_BROWN_OUT = (0xF, "RTCWDT_BROWN_OUT_RESET")  # brownout detector

    @property
    def code(self) -> int:
        return int(self.value[0])

    @property
    def label(self) -> str:
        return str(self.value[1])


@dataclass(frozen=True)
class Transition:
    at: float  # event-loop time
    mode: ChipMode
    cause: str


ResetHook = Callable[[ChipMode], None]
InputHook = Callable[[bytes], None]
OutputHook = Callable[[str], None]


def boot_banner(cause: ResetCause, *, download: bool, flash: FlashMemory | None = None) -> str:
    """What the ESP32 ROM prints on its UART after a reset, up to the jump into the bootloader."""
    strap, boot_mode = STRAP_DOWNLOAD if download else STRAP_FLASH_BOOT
    lines = [ROM_VERSION, "", f"rst:{cause.code:#x} ({cause.label}),boot:{strap:#x} ({boot_mode})"]
    if download:
        lines.append("waiting for download")
    else:
        lines += [
            "configsip: 0, SPIWP:0xee",
            "clk_drv:0x00,q_drv:0x00,d_drv:0x00,cs0_drv:0x00,hd_drv:0x00,wp_drv:0x00",
        ]
        lines += _bootloader_lines(flash)
    return "".join(line + "\r\n" for line in lines)


def _bootloader_lines(flash: FlashMemory | None) -> list[str]:
    """The ROM's lines about the bootloader image in flash: its SPI mode and every segment it loads."""
    if flash is None:
        return list(DEFAULT_LOAD_LINES)
    try:
        image = parse_app_image(
            flash.read(BOOTLOADER_OFFSET, min(BOOTLOADER_MAX, flash.size - BOOTLOADER_OFFSET))
        )
    except ImageError:
        return list(DEFAULT_LOAD_LINES)
    divider = _CLOCK_DIVIDERS.get(image.header.flash.frequency, 2)
    lines = [f"mode:{image.header.flash.mode.name}, clock div:{divider}"]
    lines += [f"load:{segment.load_address:#010x},len:{len(segment.data)}" for segment in image.segments]
    lines.append(f"entry {image.header.entry_point:#010x}")
    return lines


class SerialEndpoint:
    """The serial port of one emulated board. `url`: "pty", "socket://HOST:PORT" or "rfc2217://HOST:PORT"
    (port 0 picks a free one). After `start()`, `url` is where a client connects and `port` what esptool
    and pyserial take as their port argument."""

    def __init__(
        self,
        flash: FlashMemory,
        *,
        url: str = "pty",
        mac: bytes = DEFAULT_MAC,
        on_reset: ResetHook | None = None,
        on_input: InputHook | None = None,
        on_rom_output: OutputHook | None = None,
        auto_download: bool | None = None,
        mode: ChipMode = ChipMode.RUN,
    ) -> None:
        self.flash = flash
        self.loader = RomLoader(flash, mac=mac)
        self.on_reset = on_reset
        self.on_input = on_input
        self.on_rom_output = on_rom_output
        self._requested = url
        self.transport = _transport_kind(url)
        self.auto_download = self.transport != "rfc2217" if auto_download is None else auto_download
        self.mode = mode  # the state the chip is in when the port opens (nothing printed for it)
        self.transitions: list[Transition] = []
        self.url = url
        self.port = url
        self.dtr = False
        self.rts = False
        self._strap_timer: asyncio.TimerHandle | None = None
        self._sniffer = SlipDecoder()  # finds esptool's SYNC among console input (auto_download)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._link: _Link | None = None

    # --- lifecycle ------------------------------------------------------------------------------------

    async def start(self) -> str:
        """Open the port; returns `url`."""
        self._loop = asyncio.get_running_loop()
        if self.transport == "pty":
            link: _Link = _PtyLink(self._loop, self._received)
        else:
            parts = urlsplit(self._requested)
            tcp = _TcpLink(self, parts.hostname or "127.0.0.1", parts.port or 0)
            await tcp.start()
            link = tcp
        self._link = link
        self.url, self.port = link.url, link.port
        return self.url

    async def close(self) -> None:
        if self._strap_timer is not None:
            self._strap_timer.cancel()
            self._strap_timer = None
        if self._link is not None:
            await self._link.close()
            self._link = None

    async def __aenter__(self) -> SerialEndpoint:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # --- what the device does ---------------------------------------------------------------------------

    def write_console(self, data: bytes | str) -> None:
        """UART0 output of the running app; dropped unless the app runs (the ROM owns the UART otherwise)."""
        if self.mode is ChipMode.RUN:
            raw = data.encode("utf-8", "replace") if isinstance(data, str) else bytes(data)
            self._send(raw, droppable=True)

    def reset(self, *, download: bool = False, cause: ResetCause = ResetCause.POWERON) -> None:
        """Pulse EN (holding BOOT if `download`): the chip restarts and prints its banner."""
        self._cancel_strap()
        mode = ChipMode.DOWNLOAD if download else ChipMode.RUN
        self._enter(mode, f"reset ({cause.label})", cause)

    def restart(self, cause: ResetCause = ResetCause.POWERON) -> ChipMode:
        """The board restarts by itself (power-on, esp_restart, a watchdog): the ROM samples the straps
        as the lines hold them now and prints its banner. `on_reset` is not called: the caller caused
        it and acts on the mode returned (held in reset, the ROM loader, or the app)."""
        self._cancel_strap()
        if self._en_low:
            self._enter(ChipMode.HELD, f"{cause.label} with EN low", notify=False)
        elif self._io0_low:
            self._enter(ChipMode.DOWNLOAD, f"{cause.label} with IO0 low", cause, notify=False)
        else:
            self._enter(ChipMode.RUN, cause.label, cause, notify=False)
        return self.mode

    def power_off(self) -> None:
        """No power: the chip neither prints nor hears anything until `restart()`."""
        self._cancel_strap()
        self._enter(ChipMode.HELD, "power off", notify=False)

    def set_lines(self, *, dtr: bool | None = None, rts: bool | None = None) -> None:
        """Drive the modem-control lines as the USB-UART does (True = asserted), through the auto-reset
        circuit to EN and IO0."""
        was_held = self._en_low
        if dtr is not None:
            self.dtr = dtr
        if rts is not None:
            self.rts = rts
        if self._en_low:
            if not was_held:
                self._cancel_strap()
                self._enter(ChipMode.HELD, "EN low")
        elif was_held:  # EN rises: the ROM reads the straps, IO0 low meaning download
            if self._io0_low or self._loop is None:
                self._released(download=self._io0_low)
            else:
                self._strap_timer = self._loop.call_later(STRAP_WINDOW, self._released, False)
        elif self._strap_timer is not None and self._io0_low:
            self._released(download=True)

    @property
    def _en_low(self) -> bool:
        return self.rts and not self.dtr

    @property
    def _io0_low(self) -> bool:
        return self.dtr and not self.rts

    def _released(self, download: bool) -> None:
        self._cancel_strap()
        if download:
            self._enter(ChipMode.DOWNLOAD, "EN released with IO0 low", ResetCause.POWERON)
        else:
            self._enter(ChipMode.RUN, "EN released with IO0 high", ResetCause.POWERON)

    def _cancel_strap(self) -> None:
        if self._strap_timer is not None:
            self._strap_timer.cancel()
            self._strap_timer = None

    # --- the chip -----------------------------------------------------------------------------------------

    def _enter(
        self, mode: ChipMode, cause: str, banner: ResetCause | None = None, *, notify: bool = True
    ) -> None:
        self.mode = mode
        self.transitions.append(Transition(self._loop.time() if self._loop else 0.0, mode, cause))
        if mode is ChipMode.DOWNLOAD:
            self.loader.reset()
        self._sniffer.reset()
        if banner is not None:
            text = boot_banner(banner, download=mode is ChipMode.DOWNLOAD, flash=self.flash)
            self._send(text.encode())
            if self.on_rom_output is not None:
                self.on_rom_output(text)
        if notify and self.on_reset is not None:
            self.on_reset(mode)

    def _received(self, data: bytes) -> None:
        if self.mode is ChipMode.DOWNLOAD:
            self._to_loader(data)
        elif self.mode is ChipMode.RUN:
            sync = self._sync_request(data) if self.auto_download else None
            if sync is not None:
                self._enter(ChipMode.DOWNLOAD, "SYNC on a port without modem lines")
                self._to_loader(encode(sync))
            elif self.on_input is not None:
                self.on_input(data)
        # HELD: the chip is in reset and hears nothing.

    def _sync_request(self, data: bytes) -> bytes | None:
        """The first SYNC request framed in `data` (console input otherwise)."""
        for frame in self._sniffer.feed(data):
            try:
                if parse_request(frame).op == Op.SYNC:
                    return frame
            except LoaderFrameError:
                continue
        return None

    def _to_loader(self, data: bytes) -> None:
        reply = self.loader.feed(data)
        self._send(reply.data)
        if reply.exit is Exit.RUN:
            self._enter(ChipMode.RUN, "run user code")
        elif reply.exit is Exit.REBOOT:
            self._enter(ChipMode.DOWNLOAD, "software reset", ResetCause.SW_CPU)

    def _send(self, data: bytes, *, droppable: bool = False) -> None:
        """Send to the host. Console output may be dropped when nobody reads it, as a UART's would be;
        the loader's answers never are (esptool is waiting for them)."""
        if data and self._link is not None:
            self._link.send(data, droppable=droppable)


def _transport_kind(url: str) -> str:
    if url == "pty":
        return "pty"
    scheme = urlsplit(url).scheme
    if scheme in ("socket", "rfc2217"):
        return scheme
    raise ValueError(f"serial endpoint must be 'pty', socket://HOST:PORT or rfc2217://HOST:PORT, not {url!r}")


class _Link:
    url: str
    port: str

    def send(self, data: bytes, *, droppable: bool) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class _PtyLink(_Link):
    """A pseudo-terminal pair: clients open the slave's path; the endpoint reads and writes the master."""

    def __init__(self, loop: asyncio.AbstractEventLoop, on_data: Callable[[bytes], None]) -> None:
        self._loop = loop
        self._on_data = on_data
        self._master, self._slave = os.openpty()
        # Raw, no echo: bytes pass as they are until a client configures the port (pyserial does too).
        # The endpoint keeps the slave open so the master never sees a hang-up between clients.
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.port = os.ttyname(self._slave)
        self.url = f"serial://{self.port}"
        self._pending = bytearray()
        loop.add_reader(self._master, self._readable)

    def _readable(self) -> None:
        try:
            data = os.read(self._master, 65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:  # EIO: no slave open (cannot happen while we hold it); stop reading
            self._loop.remove_reader(self._master)
            return
        if data:
            self._on_data(data)

    def send(self, data: bytes, *, droppable: bool) -> None:
        if droppable and len(self._pending) + len(data) > MAX_CONSOLE_BACKLOG:
            return  # nobody is keeping up with the console: lose it, not the emulator's memory
        if self._pending:
            self._pending += data
            return
        try:
            written = os.write(self._master, data)
        except BlockingIOError:
            written = 0
        if written < len(data):
            self._pending += data[written:]
            self._loop.add_writer(self._master, self._drain)

    def _drain(self) -> None:
        try:
            written = os.write(self._master, self._pending)
        except BlockingIOError:
            return
        del self._pending[:written]
        if not self._pending:
            self._loop.remove_writer(self._master)

    async def close(self) -> None:
        self._loop.remove_reader(self._master)
        self._loop.remove_writer(self._master)
        for fd in (self._master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)


class _ModemPort:
    """The serial port as pyserial's RFC 2217 PortManager drives it on the server side: line settings it
    stores, modem-control lines it forwards to the board's reset circuit."""

    def __init__(self, endpoint: SerialEndpoint) -> None:
        self._endpoint = endpoint
        self.baudrate = 115200
        self.bytesize = 8
        self.parity = "N"
        self.stopbits = 1
        self.xonxoff = False
        self.rtscts = False
        self.break_condition = False
        self.cts = self.dsr = self.ri = self.cd = False

    @property
    def dtr(self) -> bool:
        return self._endpoint.dtr

    @dtr.setter
    def dtr(self, value: bool) -> None:
        self._endpoint.set_lines(dtr=value)

    @property
    def rts(self) -> bool:
        return self._endpoint.rts

    @rts.setter
    def rts(self, value: bool) -> None:
        self._endpoint.set_lines(rts=value)

    def reset_input_buffer(self) -> None:
        """Nothing is buffered between the chip and the network."""

    def reset_output_buffer(self) -> None:
        """Nothing is buffered between the network and the chip."""


class _TcpLink(_Link):
    """A TCP server for pyserial's socket:// or rfc2217:// handler; one client at a time (a newer
    connection replaces an older one, whose host has presumably gone)."""

    def __init__(self, endpoint: SerialEndpoint, host: str, port: int) -> None:
        self._endpoint = endpoint
        self._host, self._port = host, port
        self._rfc2217 = endpoint.transport == "rfc2217"
        self._server: asyncio.Server | None = None
        self._writer: asyncio.StreamWriter | None = None
        self._manager: serial.rfc2217.PortManager | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._client, self._host, self._port)
        host, port = self._server.sockets[0].getsockname()[:2]
        self.url = self.port = f"{self._endpoint.transport}://{host}:{port}"

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        if self._writer is not None:
            self._writer.close()
        self._writer = writer
        manager = (
            serial.rfc2217.PortManager(_ModemPort(self._endpoint), _Connection(writer))
            if self._rfc2217
            else None
        )
        self._manager = manager
        try:
            while data := await reader.read(65536):
                if manager is not None:
                    data = b"".join(manager.filter(data))
                if data and self._writer is writer:
                    self._endpoint._received(data)
        except (ConnectionError, OSError):
            pass
        finally:
            if self._writer is writer:
                self._writer, self._manager = None, None
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    def send(self, data: bytes, *, droppable: bool) -> None:
        if self._writer is None or self._writer.is_closing():
            return  # nobody on the line: a UART's TX goes nowhere
        if droppable and self._writer.transport.get_write_buffer_size() > MAX_CONSOLE_BACKLOG:
            return
        if self._manager is not None:
            data = data.replace(serial.rfc2217.IAC, serial.rfc2217.IAC_DOUBLED)
        self._writer.write(data)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._writer is not None:
            self._writer.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()


class _Connection:
    """What PortManager writes its telnet negotiation to."""

    def __init__(self, writer: asyncio.StreamWriter) -> None:
        self._writer = writer

    def write(self, data: bytes) -> None:
        if not self._writer.is_closing():
            self._writer.write(data)
