"""`ecowatt flash` and `ecowatt firmware build`, through the top-level command line."""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from device_emulator.flash import Flash
from device_emulator.serial_endpoint import SerialEndpoint
from harness import board_cli, cli
from protocol.esp_image import build_firmware_image, firmware_identity

ESPTOOL = str(Path(sys.executable).with_name("esptool"))


@pytest.fixture(autouse=True)
def board_commands(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make sure `ecowatt` has this module's commands (until the lead registers them for good)."""
    if "harness.board_cli" not in cli.COMMAND_MODULES:
        monkeypatch.setattr(cli, "COMMAND_MODULES", (*cli.COMMAND_MODULES, "harness.board_cli"))


@pytest.fixture
def silent_port() -> Iterator[str]:
    """A serial port with nothing behind it: a pty whose other end nobody reads or answers."""
    master, slave = os.openpty()
    try:
        yield os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


def test_flash_fails_within_10_s_naming_the_port_when_nothing_answers(
    silent_port: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    image = tmp_path / "app.bin"
    image.write_bytes(build_firmware_image("spec", "1.0.0"))
    cli.build_parser()  # import every command module first: the bound is on the command, not on imports
    with ThreadPoolExecutor(1) as pool:
        status = pool.submit(cli.main, ["flash", "--port", silent_port, str(image)]).result(timeout=10)
    assert status == 1
    error = capsys.readouterr().err
    assert silent_port in error and "ESP32" in error


async def test_flash_writes_an_image_to_an_emulated_board(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    flash = Flash(tmp_path / "flash.bin")
    image = build_firmware_image("spec", "3.0.1", size=32 * 1024)
    (tmp_path / "app.bin").write_bytes(image)
    async with SerialEndpoint(flash) as board:
        argv = [
            "flash",
            "--port",
            board.port,
            str(tmp_path / "app.bin"),
            "--offset",
            "0x20000",
            "--baud",
            "921600",
        ]
        status = await asyncio.to_thread(cli.main, argv)
    assert status == 0, capsys.readouterr().err
    assert flash.read(0x20000, len(image)) == image
    summary = capsys.readouterr().out
    assert f"flashed {len(image)} bytes at 0x20000 through {board.port}" in summary
    assert "ESP32-D0WD" in summary and "hash verified" in summary


def test_firmware_build_makes_an_image_esptool_accepts(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "firmware"
    assert cli.main(["firmware", "build", "--version", "1.2.3", "--profile", "spec", "--out", str(out)]) == 0
    path = out / "ecowatt-spec-1.2.3.bin"
    assert str(path) in capsys.readouterr().out
    assert firmware_identity(path.read_bytes()) == ("spec", "1.2.3")
    info = subprocess.run(
        [ESPTOOL, "--chip", "esp32", "image-info", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    ).stdout
    assert "Checksum: " in info and "(valid)" in info and "invalid" not in info
    assert "Project name: ecowatt:spec" in info and "App version: 1.2.3" in info


def test_firmware_build_refuses_a_version_the_image_cannot_hold(tmp_path: Path) -> None:
    status = cli.main(
        ["firmware", "build", "--version", "9" * 40, "--profile", "spec", "--out", str(tmp_path)]
    )
    assert status == 2 and not list(tmp_path.iterdir())


def test_firmware_build_joins_a_firmware_group_another_module_created() -> None:
    parser = argparse.ArgumentParser(prog="ecowatt")
    subparsers = parser.add_subparsers(dest="command")
    firmware = subparsers.add_parser("firmware").add_subparsers(dest="firmware_command")
    firmware.add_parser("prepare").set_defaults(func=lambda args: 0)
    board_cli.add_commands(subparsers)
    assert parser.parse_args(["firmware", "prepare"]).firmware_command == "prepare"
    built = parser.parse_args(["firmware", "build", "--version", "1.0.0", "--profile", "reference-1.0.4"])
    assert built.func is board_cli.build_command
