"""The emulated board's serial port: the auto-reset circuit, boot banners, console bytes, transports."""

from __future__ import annotations

import asyncio
import os
import struct
import time
from pathlib import Path

import pytest
import serial
from esp_pylib.serial_reset import classic_bootloader_reset, hard_reset

from device_emulator.flash import Flash
from device_emulator.serial_endpoint import STRAP_WINDOW, ChipMode, ResetCause, SerialEndpoint, boot_banner
from device_emulator.slip import SlipDecoder, encode
from protocol.esp_image import build_firmware_image

SYNC_REQUEST = encode(struct.pack("<BBHI", 0, 0x08, 36, 0) + b"\x07\x07\x12\x20" + b"\x55" * 32)
RUN_BANNER = b"rst:0x1 (POWERON_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)"
DOWNLOAD_BANNER = (
    b"rst:0x1 (POWERON_RESET),boot:0x3 (DOWNLOAD_BOOT(UART0/UART1/SDIO_REI_REO_V2))\r\nwaiting for download"
)


@pytest.fixture
def flash(tmp_path: Path) -> Flash:
    return Flash(tmp_path / "flash.bin")


class Client:
    """A raw TCP client of a socket:// endpoint, reading with bounded waits."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.received = bytearray()

    @classmethod
    async def connect(cls, url: str) -> Client:
        host, port = url.removeprefix("socket://").rsplit(":", 1)
        return cls(*await asyncio.open_connection(host, int(port)))

    async def read_until(self, marker: bytes, timeout: float = 2.0) -> bytes:
        async with asyncio.timeout(timeout):
            while marker not in self.received:
                self.received += await self.reader.read(4096)
        return bytes(self.received)

    async def read_for(self, seconds: float) -> bytes:
        try:
            async with asyncio.timeout(seconds):
                while True:
                    chunk = await self.reader.read(4096)
                    if not chunk:
                        break
                    self.received += chunk
        except TimeoutError:
            pass
        return bytes(self.received)

    async def close(self) -> None:
        self.writer.close()
        await self.writer.wait_closed()


async def test_esptools_classic_reset_sequence_enters_download_mode_despite_the_intermediate_state(
    flash: Flash,
) -> None:
    modes: list[ChipMode] = []
    async with SerialEndpoint(flash, url="socket://127.0.0.1:0", on_reset=modes.append) as board:
        client = await Client.connect(board.url)
        board.set_lines(dtr=False, rts=True)  # EN low
        board.set_lines(dtr=True)  # both asserted: EN rises while IO0 is still high...
        await asyncio.sleep(0.05)  # ...for as long as an RFC 2217 round trip takes
        board.set_lines(rts=False)  # IO0 low
        board.set_lines(dtr=False)
        assert modes == [ChipMode.HELD, ChipMode.DOWNLOAD]
        assert DOWNLOAD_BANNER in await client.read_until(b"waiting for download")
        await client.close()


async def test_an_en_pulse_with_io0_high_boots_the_app_and_prints_the_rom_banner(flash: Flash) -> None:
    modes: list[ChipMode] = []
    async with SerialEndpoint(flash, url="socket://127.0.0.1:0", on_reset=modes.append) as board:
        client = await Client.connect(board.url)
        board.set_lines(rts=True)
        board.set_lines(rts=False)
        assert modes == [ChipMode.HELD]  # the straps are read once the window has passed
        received = await client.read_until(b"entry 0x", timeout=STRAP_WINDOW + 2)
        assert modes == [ChipMode.HELD, ChipMode.RUN]
        assert received.startswith(b"ets Jun  8 2016 00:22:57\r\n\r\n" + RUN_BANNER)
        await client.close()


async def test_the_console_passes_only_while_the_app_runs(flash: Flash) -> None:
    async with SerialEndpoint(flash, url="socket://127.0.0.1:0", mode=ChipMode.DOWNLOAD) as board:
        client = await Client.connect(board.url)
        await asyncio.sleep(0.05)  # let the endpoint take the connection
        board.write_console("[  1000][I][main] not while in the ROM\r\n")
        board.reset()
        board.write_console("[  2000][I][main] app says hi\r\n")
        received = await client.read_until(b"app says hi")
        assert b"not while in the ROM" not in received
        assert received.index(RUN_BANNER) < received.index(b"app says hi")
        await client.close()


async def test_a_sync_on_a_port_without_modem_lines_stands_in_for_the_reset(flash: Flash) -> None:
    typed: list[bytes] = []
    async with SerialEndpoint(flash, url="socket://127.0.0.1:0", on_input=typed.append) as board:
        client = await Client.connect(board.url)
        client.writer.write(b"help\r\n")
        await client.writer.drain()
        await asyncio.sleep(0.05)
        assert typed == [b"help\r\n"] and board.mode is ChipMode.RUN
        client.writer.write(SYNC_REQUEST)
        await client.writer.drain()
        await client.read_until(bytes.fromhex("c0 01 08 0400 07071220 00000000 c0") * 8)
        assert board.mode is ChipMode.DOWNLOAD
        assert board.transitions[-1].cause == "SYNC on a port without modem lines"
        await client.close()


async def test_without_auto_download_a_running_app_ignores_esptool(flash: Flash) -> None:
    typed: list[bytes] = []
    async with SerialEndpoint(
        flash, url="socket://127.0.0.1:0", on_input=typed.append, auto_download=False
    ) as board:
        client = await Client.connect(board.url)
        client.writer.write(SYNC_REQUEST)
        await client.writer.drain()
        assert await client.read_for(0.2) == b""
        assert board.mode is ChipMode.RUN and typed == [SYNC_REQUEST]
        await client.close()


async def test_run_user_code_boots_the_app_without_a_rom_banner_and_a_software_reset_prints_one(
    flash: Flash,
) -> None:
    modes: list[ChipMode] = []
    async with SerialEndpoint(
        flash, url="socket://127.0.0.1:0", on_reset=modes.append, mode=ChipMode.DOWNLOAD
    ) as board:
        client = await Client.connect(board.url)
        await asyncio.sleep(0.05)
        client.writer.write(encode(struct.pack("<BBHII", 0, 0x04, 4, 0, 0)))  # FLASH_END, reboot
        await client.read_until(b"rst:0xc (SW_CPU_RESET),boot:0x3")
        assert modes == [ChipMode.DOWNLOAD]
        client.writer.write(encode(struct.pack("<BBHII", 0, 0x04, 4, 0, 1)))  # FLASH_END, run user code
        received = await client.read_for(0.2)
        assert modes == [ChipMode.DOWNLOAD, ChipMode.RUN]
        assert received.count(b"ets Jun") == 1  # only the software reset's
        await client.close()


async def test_rfc2217_carries_dtr_and_rts_from_a_real_pyserial_client(flash: Flash) -> None:
    modes: list[ChipMode] = []
    async with SerialEndpoint(flash, url="rfc2217://127.0.0.1:0", on_reset=modes.append) as board:

        def session() -> bytes:
            port = serial.serial_for_url(board.url, timeout=1)
            try:
                classic_bootloader_reset(port)  # esptool's sequence, through the RFC 2217 client
                banner = port.read_until(b"waiting for download")
                hard_reset(port)
                return banner
            finally:
                port.close()

        banner = await asyncio.to_thread(session)
        await asyncio.sleep(STRAP_WINDOW + 0.2)
        assert DOWNLOAD_BANNER in banner
        assert modes == [ChipMode.HELD, ChipMode.DOWNLOAD, ChipMode.HELD, ChipMode.RUN]


async def test_a_pty_endpoint_is_a_serial_port_any_tool_can_open(flash: Flash) -> None:
    async with SerialEndpoint(flash) as board:
        assert board.url == f"serial://{board.port}" and os.path.exists(board.port)

        def talk() -> bytes:
            with serial.Serial(board.port, 115200, timeout=1) as port:
                port.write(SYNC_REQUEST)
                return port.read(14 * 8)

        answer = await asyncio.to_thread(talk)
        assert SlipDecoder().feed(answer) == [bytes.fromhex("01 08 0400 07071220 00000000")] * 8


def test_the_banner_lists_the_segments_of_the_bootloader_in_flash(flash: Flash) -> None:
    assert "load:0x3fff0030,len:1344" in boot_banner(ResetCause.POWERON, download=False, flash=flash)
    flash.write(0x1000, build_firmware_image("spec", "9.9.9"))  # any valid image stands in for one
    banner = boot_banner(ResetCause.SW_CPU, download=False, flash=flash)
    lines = banner.split("\r\n")
    assert lines[2] == "rst:0xc (SW_CPU_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)"
    assert "mode:DIO, clock div:2" in lines
    assert [line for line in lines if line.startswith("load:")] == [
        "load:0x3f400020,len:256",
        "load:0x40080000,len:4",
    ]
    assert lines[-2] == "entry 0x40080000"


async def test_console_output_nobody_reads_is_bounded_and_does_not_block_esptool(flash: Flash) -> None:
    async with SerialEndpoint(flash) as board:
        for index in range(20_000):  # ~1 MB of log lines while no one has the port open
            board.write_console(f"[{index:6d}][I][main] nobody is listening\r\n")

        answers = bytes.fromhex("c0 01 08 0400 07071220 00000000 c0") * 8

        def talk() -> bytes:
            # Read in bulk (read_until goes byte by byte, too slow for a backlog on a busy machine).
            with serial.Serial(board.port, 115200, timeout=0.2) as port:
                port.write(SYNC_REQUEST)
                received, deadline = b"", time.monotonic() + 10
                while not received.endswith(answers) and time.monotonic() < deadline:
                    received += port.read(65536)
                return received

        received = await asyncio.to_thread(talk)
        assert received.endswith(answers)
        assert len(received) < 128 * 1024  # the stale console backlog was capped, not kept whole
