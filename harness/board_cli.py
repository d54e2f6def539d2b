"""`ecowatt flash` and `ecowatt firmware build`: the board path from the command line.

    ecowatt flash --port PORT IMAGE [--offset 0x10000] [--baud B]
    ecowatt firmware build --version V --profile P [--out firmware/]

`flash` runs esptool (harness/flashing.py) with a progress bar and fails, naming the port, when nothing
answers within the connect timeout. `firmware build` writes an ESP32 app image whose app description
(`esp_app_desc_t`) names the emulator's firmware profile and version; `esptool image-info` reads it like
any IDF build, and the emulated bootloader boots it as that firmware.

`firmware` is a command group other parts add to (`firmware prepare` lives with the cloud's OTA tools):
`build` joins the group if another module created it first, else creates it.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from harness.flashing import (
    AFTER_CHOICES,
    BEFORE_CHOICES,
    DEFAULT_BAUD,
    DEFAULT_OFFSET,
    FlashingFailed,
    FlashOptions,
    flash_image,
)
from protocol.errors import EcoWattError
from protocol.esp_image import FIRMWARE_PROFILES, build_firmware_image, firmware_identity

_SAFE_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def add_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    flash = subparsers.add_parser(
        "flash", help="write a firmware image to a board (or an emulated one) with esptool"
    )
    flash.add_argument(
        "--port",
        required=True,
        help="serial port: /dev/ttyUSB0, a pty path, rfc2217://HOST:PORT, socket://HOST:PORT",
    )
    flash.add_argument("image", type=Path, help="the app image (.bin)")
    flash.add_argument(
        "--offset", type=_address, default=DEFAULT_OFFSET, help="flash address (default 0x10000)"
    )
    flash.add_argument(
        "--baud", type=_baud, default=DEFAULT_BAUD, help=f"baud rate while flashing ({DEFAULT_BAUD})"
    )
    flash.add_argument(
        "--before", choices=BEFORE_CHOICES, default="default-reset", help="how to enter download mode"
    )
    flash.add_argument("--after", choices=AFTER_CHOICES, default="hard-reset", help="what to do when done")
    flash.add_argument("--no-stub", action="store_true", help="talk to the ROM loader only (slower)")
    flash.set_defaults(func=flash_command)

    build = _firmware_commands(subparsers).add_parser(
        "build", help="build an EcoWatt app image for a firmware profile and version"
    )
    build.add_argument("--version", required=True, type=_version, help="firmware version, e.g. 1.0.5")
    build.add_argument(
        "--profile", required=True, choices=FIRMWARE_PROFILES, help="emulator firmware profile"
    )
    build.add_argument(
        "--out", type=Path, default=Path("firmware"), help="output directory (default firmware/)"
    )
    build.add_argument("--size", type=int, default=None, help="pad the image to exactly this many bytes")
    build.set_defaults(func=build_command)


def _firmware_commands(subparsers: argparse._SubParsersAction) -> argparse._SubParsersAction:  # type: ignore[type-arg]
    """The `firmware` group's subcommands, creating the group if no other module has."""
    group = subparsers.choices.get("firmware")
    if group is None:
        group = subparsers.add_parser("firmware", help="EcoWatt firmware images")
    for action in group._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action
    commands: argparse._SubParsersAction = group.add_subparsers(dest="firmware_command", metavar="COMMAND")  # type: ignore[type-arg]
    return commands


def flash_command(args: argparse.Namespace) -> int:
    options = FlashOptions(
        offset=args.offset, baud=args.baud, before=args.before, after=args.after, no_stub=args.no_stub
    )
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(f"{args.image.name} -> {args.port} @ {args.offset:#x}", total=100.0)
        try:
            result = asyncio.run(
                flash_image(
                    args.port, args.image, options, progress=lambda done: bar.update(task, completed=done)
                )
            )
        except FlashingFailed as error:
            bar.stop()
            print(f"ecowatt flash: {error}", file=sys.stderr)
            return 1
    print(
        f"flashed {result.size} bytes at {result.offset:#x} through {result.port} "
        f"({result.chip or 'ESP32'}, MAC {result.mac or 'unknown'}); hash verified",
        flush=True,
    )
    return 0


def build_command(args: argparse.Namespace) -> int:
    try:
        image = build_firmware_image(args.profile, args.version, size=args.size)
        profile, version = firmware_identity(image)
    except EcoWattError as error:
        print(f"ecowatt firmware build: {error}", file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    path = args.out / f"ecowatt-{profile}-{version}.bin"
    path.write_bytes(image)
    print(f"{path} ({len(image)} bytes, profile {profile}, version {version})", flush=True)
    return 0


def _address(text: str) -> int:
    try:
        value = int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a flash address: {text!r} (e.g. 0x10000)") from None
    if value < 0:
        raise argparse.ArgumentTypeError("a flash address is not negative")
    return value


def _baud(text: str) -> int:
    value = int(text)
    if not 9600 <= value <= 5_000_000:
        raise argparse.ArgumentTypeError("baud rate must be between 9600 and 5000000")
    return value


def _version(text: str) -> str:
    if not _SAFE_VERSION.match(text):
        raise argparse.ArgumentTypeError(f"version {text!r} must be letters, digits and . _ + - only")
    return text
