"""The real esptool flashes the emulated board over a pty and over rfc2217://, as it would a DevKit.

Every test runs the `esptool` command of this venv as a subprocess against a `SerialEndpoint` and then
looks at the emulated flash itself: what esptool says it wrote must be there, byte for byte.

Over a pty esptool cannot drive DTR/RTS (it warns and carries on; the endpoint's auto-download answers
its SYNC). Over RFC 2217 it resets the board into download mode and back into the app for real; pyserial's
RFC 2217 client takes ~0.2 s per command there, so those runs go concurrently, one board each.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from device_emulator.boot import boot_device
from device_emulator.flash import Flash, factory_program
from device_emulator.rom_loader import LoaderMode, Op
from device_emulator.serial_endpoint import ChipMode, SerialEndpoint
from protocol.esp_image import build_firmware_image

ESPTOOL = str(Path(sys.executable).with_name("esptool"))
MAC = bytes.fromhex("240ac4123456")
MAC_TEXT = "24:0a:c4:12:34:56"
PTY_QUIET = ("--before", "no-reset")  # esptool cannot reset through a pty; say so instead of a warning


async def esptool(port: str, *args: str, timeout: float = 90.0) -> str:
    """Run esptool against `port`; its output (asserting it succeeded)."""
    code, output = await esptool_status(port, *args, timeout=timeout)
    assert code == 0, output
    return output


async def esptool_status(port: str, *args: str, timeout: float = 90.0) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        ESPTOOL, "--chip", "esp32", "--port", port, *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return process.returncode or 0, output.decode("utf-8", "replace")


def payload(size: int, seed: int = 1) -> bytes:
    return random.Random(seed).randbytes(size)


def firmware_like(size: int) -> bytes:
    """Data that deflates (esptool sends incompressible data uncompressed even when told -z)."""
    chunk = payload(4096, seed=size)
    return ((chunk + bytes(4096)) * (size // 8192 + 1))[:size]


def ops(board: SerialEndpoint) -> set[int]:
    return {op for op, count in board.loader.commands.items() if count}


@pytest.fixture
def flash(tmp_path: Path) -> Flash:
    return Flash(tmp_path / "flash.bin")


@pytest.fixture
async def board(flash: Flash) -> AsyncIterator[SerialEndpoint]:
    async with SerialEndpoint(flash, mac=MAC) as endpoint:
        yield endpoint


# --- over a pty --------------------------------------------------------------------------------------


async def test_chip_id_identifies_an_esp32_and_its_mac(board: SerialEndpoint) -> None:
    output = await esptool(board.port, *PTY_QUIET, "--no-stub", "chip-id")
    assert "Chip type:          ESP32-D0WD (revision v1.0)" in output
    assert f"MAC:                {MAC_TEXT}" in output
    assert board.mode is ChipMode.DOWNLOAD


async def test_read_mac_through_the_stub(board: SerialEndpoint) -> None:
    output = await esptool(board.port, *PTY_QUIET, "--after", "no-reset-stub", "read-mac")
    assert "Stub flasher running." in output
    assert output.count(f"MAC:                {MAC_TEXT}") == 2  # in the chip summary and as the answer
    assert board.loader.mode is LoaderMode.STUB


async def test_flash_id_reports_the_emulated_4_mb_winbond(board: SerialEndpoint) -> None:
    output = await esptool(board.port, *PTY_QUIET, "--no-stub", "flash-id")
    assert "Manufacturer: ef" in output and "Device: 4016" in output
    assert "Detected flash size: 4MB" in output


WRITES = {
    # name: (esptool options before the command, write-flash options, opcodes that must have been used)
    "rom-uncompressed": (("--no-stub",), ("-u",), {Op.FLASH_BEGIN, Op.FLASH_DATA}),
    "rom-compressed-fast": (
        ("--no-stub", "--baud", "921600"),
        ("-z",),
        {Op.FLASH_DEFL_DATA, Op.CHANGE_BAUDRATE},
    ),
    "stub-compressed-fast": (("--baud", "921600"), (), {Op.MEM_DATA, Op.FLASH_DEFL_DATA, Op.CHANGE_BAUDRATE}),
    "stub-uncompressed": ((), ("-u",), {Op.MEM_DATA, Op.FLASH_DATA}),
}


@pytest.mark.parametrize("variant", list(WRITES))
async def test_write_flash_puts_exactly_the_file_in_the_emulated_flash(
    variant: str, board: SerialEndpoint, flash: Flash, tmp_path: Path
) -> None:
    options, write_options, used = WRITES[variant]
    data = firmware_like(70_000)
    image = tmp_path / "app.bin"
    image.write_bytes(data)
    output = await esptool(
        board.port,
        *PTY_QUIET,
        "--after",
        "no-reset-stub",
        *options,
        "write-flash",
        *write_options,
        "0x10000",
        str(image),
    )
    assert "Hash of data verified." in output
    assert flash.read(0x10000, len(data)) == data
    assert used <= ops(board)
    if "921600" in options:
        assert "Changed." in output and board.loader.baudrate == 921600
    if options[:1] == ("--no-stub",):
        assert Op.MEM_BEGIN not in ops(board)  # the ROM did it all


async def test_a_soft_reset_after_a_rom_write_runs_the_app(
    board: SerialEndpoint, flash: Flash, tmp_path: Path
) -> None:
    modes: list[ChipMode] = []
    board.on_reset = modes.append
    image = tmp_path / "app.bin"
    image.write_bytes(payload(8192))
    await esptool(
        board.port, *PTY_QUIET, "--after", "soft-reset", "--no-stub", "write-flash", "0x10000", str(image)
    )
    assert modes == [ChipMode.DOWNLOAD, ChipMode.RUN]
    assert board.transitions[-1].cause == "run user code"


async def test_verify_flash_passes_on_a_match_and_fails_on_a_difference(
    board: SerialEndpoint, flash: Flash, tmp_path: Path
) -> None:
    data = payload(20_000, seed=2)
    flash.write(0x30000, data)
    image = tmp_path / "app.bin"
    image.write_bytes(data)
    assert "digest matched" in await esptool(
        board.port, *PTY_QUIET, "--no-stub", "verify-flash", "0x30000", str(image)
    )
    flash.write(0x30000 + 5000, b"\x00")  # clear one byte's bits
    code, output = await esptool_status(board.port, *PTY_QUIET, "verify-flash", "0x30000", str(image))
    assert code != 0 and "Verification failed" in output


@pytest.mark.parametrize("stub", [False, True], ids=["rom-read-flash-slow", "stub-read-flash"])
async def test_read_flash_returns_what_the_flash_holds(
    stub: bool, board: SerialEndpoint, flash: Flash, tmp_path: Path
) -> None:
    data = payload(10_000 if stub else 2_000, seed=3)
    flash.write(0x50000, data)
    out = tmp_path / "read.bin"
    options = () if stub else ("--no-stub",)
    await esptool(
        board.port,
        *PTY_QUIET,
        "--after",
        "no-reset",
        *options,
        "read-flash",
        "0x50000",
        str(len(data)),
        str(out),
    )
    assert out.read_bytes() == data
    assert (Op.READ_FLASH if stub else Op.READ_FLASH_SLOW) in ops(board)


async def test_erase_flash_erases_the_whole_chip(board: SerialEndpoint, flash: Flash) -> None:
    flash.write(0x0, b"\x00" * 0x1000)
    flash.write(flash.size - 0x1000, b"\x00" * 0x1000)
    await esptool(board.port, *PTY_QUIET, "erase-flash")
    assert flash.read(0, 0x1000) == flash.read(flash.size - 0x1000, 0x1000) == b"\xff" * 0x1000


async def test_a_flashed_firmware_image_is_what_the_bootloader_boots(
    board: SerialEndpoint, flash: Flash, tmp_path: Path
) -> None:
    factory_program(flash, build_firmware_image("reference-1.0.4", "1.0.4"))
    image = tmp_path / "ecowatt-spec-2.1.0.bin"
    image.write_bytes(build_firmware_image("spec", "2.1.0", size=64 * 1024))
    await esptool(
        board.port, *PTY_QUIET, "--after", "soft-reset", "--no-stub", "write-flash", "0x10000", str(image)
    )
    assert board.mode is ChipMode.RUN
    decision = boot_device(flash)
    assert (decision.identity.profile, decision.identity.version) == ("spec", "2.1.0")


# --- over RFC 2217, with real DTR/RTS resets ----------------------------------------------------------


async def test_esptool_over_rfc2217_resets_the_board_flashes_it_and_boots_it(tmp_path: Path) -> None:
    boards = [
        SerialEndpoint(Flash(tmp_path / f"flash{i}.bin"), url="rfc2217://127.0.0.1:0", mac=MAC)
        for i in range(7)
    ]
    image, rom_image, readable = payload(16 * 1024, seed=4), payload(4096, seed=5), payload(4096, seed=6)
    (tmp_path / "app.bin").write_bytes(image)
    (tmp_path / "rom.bin").write_bytes(rom_image)
    (tmp_path / "readable.bin").write_bytes(readable)
    boards[4].flash.write(0x40000, readable)
    boards[5].flash.write(0x40000, readable)
    boards[6].flash.write(0x0, b"\x00" * 0x1000)
    for endpoint in boards:
        await endpoint.start()
    try:
        runs = [
            ("chip-id",),
            ("--baud", "460800", "write-flash", "0x10000", str(tmp_path / "app.bin")),
            ("--no-stub", "--after", "soft-reset", "write-flash", "-u", "0x10000", str(tmp_path / "rom.bin")),
            ("flash-id",),
            ("verify-flash", "0x40000", str(tmp_path / "readable.bin")),
            ("read-flash", "0x40000", "4096", str(tmp_path / "read.bin")),
            ("erase-flash",),
        ]
        outputs = await asyncio.gather(
            *(esptool(endpoint.url, *args, timeout=120) for endpoint, args in zip(boards, runs, strict=True))
        )
    finally:
        for endpoint in boards:
            await endpoint.close()
    chip_id, write, rom_write, flash_id, verify, _read, _erase = outputs

    # The classic DTR/RTS sequence held the chip in reset and released it with IO0 low...
    causes = [t.cause for t in boards[0].transitions]
    assert causes[:2] == ["EN low", "EN released with IO0 low"]
    # ...and the hard reset at the end released it with IO0 high: the app boots.
    assert causes[-2:] == ["EN low", "EN released with IO0 high"] and boards[0].mode is ChipMode.RUN
    assert f"MAC:                {MAC_TEXT}" in chip_id

    assert "Stub flasher running." in write and "Changed." in write and "Hash of data verified." in write
    assert boards[1].flash.read(0x10000, len(image)) == image and boards[1].mode is ChipMode.RUN
    assert (
        hashlib.md5(boards[2].flash.read(0x10000, len(rom_image))).digest() == hashlib.md5(rom_image).digest()
    )
    assert boards[2].transitions[-1].cause == "run user code"
    assert "Detected flash size: 4MB" in flash_id
    assert "digest matched" in verify
    assert (tmp_path / "read.bin").read_bytes() == readable
    assert boards[6].flash.read(0, 0x1000) == b"\xff" * 0x1000
