"""`ecowatt flash | provision | monitor | firmware build`: the board path from the command line.

    ecowatt flash --port PORT IMAGE [--offset 0x10000] [--baud B]
    ecowatt provision --port PORT --cloud URL --inverter URL --device-id ID --key HEX [--poll S] [--upload S]
    ecowatt monitor --port PORT
    ecowatt firmware build --version V --profile P [--out firmware/]

`flash` runs esptool (harness/flashing.py) with a progress bar and fails, naming the port, when nothing
answers within the connect timeout. `provision` writes the board's settings (and, if given, its poll
and upload periods) into an NVS partition image and flashes it the same way (harness/provisioning.py). `monitor` prints the board's console, each line
with the host's time of day, until Ctrl-C; it opens the port without touching DTR/RTS, so it does not
reset the board. `firmware build` writes an ESP32 app image whose app description (`esp_app_desc_t`)
names the emulator's firmware profile and version; `esptool image-info` reads it like any IDF build,
and the emulated bootloader boots it as that firmware.

PORT is a serial device, a pty path, or a pyserial URL (`rfc2217://HOST:PORT`, `socket://HOST:PORT`).

`firmware` is a command group other parts add to (`firmware prepare` lives with the cloud's OTA tools):
`build` joins the group if another module created it first, else creates it.
"""

from __future__ import annotations

import argparse
import asyncio
import codecs
import re
import sys
import threading
import time
from collections.abc import Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import Any, TextIO

import serial
from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

from device_emulator.cli import parse_key
from harness import serial_urls
from harness.flashing import (
    AFTER_CHOICES,
    BEFORE_CHOICES,
    DEFAULT_BAUD,
    DEFAULT_OFFSET,
    FlashingFailed,
    FlashOptions,
    FlashResult,
    ProgressHook,
    flash_image,
)
from protocol.errors import EcoWattError
from protocol.esp_image import FIRMWARE_PROFILES, build_firmware_image, firmware_identity

_SAFE_VERSION = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
PORT_HELP = "serial port: /dev/ttyUSB0, a pty path, rfc2217://HOST:PORT, socket://HOST:PORT"
MONITOR_BAUD = 115200  # the ESP32 ROM's and ESP-IDF's console rate
MONITOR_READ_S = 0.2  # how long one read waits, which bounds how late a stop request is seen
_LINE_PIECES = re.compile(r"[^\n]*\n|[^\n]+")  # whole lines with their ending, then a partial one


def add_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    flash = subparsers.add_parser(
        "flash", help="write a firmware image to a board (or an emulated one) with esptool"
    )
    flash.add_argument("--port", required=True, help=PORT_HELP)
    flash.add_argument("image", type=Path, help="the app image (.bin)")
    flash.add_argument(
        "--offset", type=_address, default=DEFAULT_OFFSET, help="flash address (default 0x10000)"
    )
    _esptool_options(flash)
    flash.set_defaults(func=flash_command)

    provision = subparsers.add_parser(
        "provision", help="write a board's cloud, inverter, id and key into its NVS partition"
    )
    provision.add_argument("--port", required=True, help=PORT_HELP)
    provision.add_argument("--cloud", required=True, help="cloud base URL, e.g. http://192.168.1.10:5001")
    provision.add_argument("--inverter", required=True, help="inverter URL, e.g. http://192.168.1.20:8080")
    provision.add_argument("--device-id", required=True, help="the id the board uploads as")
    provision.add_argument("--key", required=True, type=parse_key, help="its upload key, 64 hex digits")
    provision.add_argument("--poll", type=float, default=None, metavar="S", help="poll period, seconds")
    provision.add_argument("--upload", type=float, default=None, metavar="S", help="upload period, seconds")
    _esptool_options(provision)
    provision.set_defaults(func=provision_command)

    monitor = subparsers.add_parser("monitor", help="print a board's console with timestamps until Ctrl-C")
    monitor.add_argument("--port", required=True, help=PORT_HELP)
    monitor.add_argument(
        "--baud", type=_baud, default=MONITOR_BAUD, help=f"console baud rate ({MONITOR_BAUD})"
    )
    monitor.set_defaults(func=monitor_command)

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


def _esptool_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--baud", type=_baud, default=DEFAULT_BAUD, help=f"baud rate while flashing ({DEFAULT_BAUD})"
    )
    parser.add_argument(
        "--before", choices=BEFORE_CHOICES, default="default-reset", help="how to enter download mode"
    )
    parser.add_argument("--after", choices=AFTER_CHOICES, default="hard-reset", help="what to do when done")
    parser.add_argument("--no-stub", action="store_true", help="talk to the ROM loader only (slower)")


def _flash_options(args: argparse.Namespace, offset: int = DEFAULT_OFFSET) -> FlashOptions:
    return FlashOptions(
        offset=offset, baud=args.baud, before=args.before, after=args.after, no_stub=args.no_stub
    )


def _flash_with_progress(
    command: str, label: str, run: Callable[[ProgressHook], Coroutine[Any, Any, FlashResult]]
) -> FlashResult | None:
    """Run one esptool job under a progress bar; None (the error printed) when it failed."""
    console = Console(stderr=True)
    columns = (TextColumn("{task.description}"), BarColumn(), TaskProgressColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task(label, total=100.0)
        try:
            return asyncio.run(run(lambda done: bar.update(task, completed=done)))
        except FlashingFailed as error:
            bar.stop()
            print(f"ecowatt {command}: {error}", file=sys.stderr)
            return None


def flash_command(args: argparse.Namespace) -> int:
    options = _flash_options(args, args.offset)
    result = _flash_with_progress(
        "flash",
        f"{args.image.name} -> {args.port} @ {args.offset:#x}",
        lambda progress: flash_image(args.port, args.image, options, progress=progress),
    )
    if result is None:
        return 1
    print(
        f"flashed {result.size} bytes at {result.offset:#x} through {result.port} "
        f"({result.chip or 'ESP32'}, MAC {result.mac or 'unknown'}); hash verified",
        flush=True,
    )
    return 0


def provision_command(args: argparse.Namespace) -> int:
    # Imported here: the NVS generator costs a noticeable share of every `ecowatt` start-up.
    from harness.provisioning import BoardSettings, nvs_partition, provision

    try:
        settings = BoardSettings(args.cloud, args.inverter, args.device_id, args.key, poll_s=args.poll,
                                 upload_s=args.upload)
    except ValueError as error:
        print(f"ecowatt provision: {error}", file=sys.stderr)
        return 2
    result = _flash_with_progress(
        "provision",
        f"NVS -> {args.port} @ {nvs_partition().offset:#x}",
        lambda progress: provision(args.port, settings, _flash_options(args), progress=progress),
    )
    if result is None:
        return 1
    print(
        f"provisioned {settings.device_id} through {result.port} (MAC {result.mac or 'unknown'}): "
        f"cloud {settings.cloud_url}, inverter {settings.inverter_url}; "
        f"{result.size}-byte NVS partition at {result.offset:#x}, hash verified",
        flush=True,
    )
    return 0


def monitor_command(args: argparse.Namespace) -> int:
    print(f"--- ecowatt monitor on {args.port} (Ctrl-C to quit) ---", file=sys.stderr, flush=True)
    try:
        return monitor(args.port, sys.stdout, baud=args.baud)
    except KeyboardInterrupt:
        return 0


def monitor(
    port: str,
    out: TextIO,
    *,
    baud: int = MONITOR_BAUD,
    wall_clock: Callable[[], float] = time.time,
    stop: threading.Event | None = None,
) -> int:
    """Copy the console on `port` to `out`, each line prefixed with the local time it began, until
    `stop` is set (or KeyboardInterrupt); 1 with a message naming the port when it fails or goes away."""
    serial_urls.install()
    try:
        port_handle = serial.serial_for_url(port, baudrate=baud, timeout=MONITOR_READ_S, do_not_open=True)
        # Released lines through the DevKit's auto-reset circuit: EN and IO0 stay high, no reset.
        port_handle.dtr = False
        port_handle.rts = False
        port_handle.open()
    except (serial.SerialException, ValueError, OSError) as error:
        print(f"ecowatt monitor: cannot open {port}: {error}", file=sys.stderr)
        return 1
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    at_line_start = True
    try:
        while stop is None or not stop.is_set():
            try:
                data = port_handle.read(4096)
            except (serial.SerialException, OSError) as error:
                print(f"\necowatt monitor: {port} went away: {error}", file=sys.stderr)
                return 1
            text = decoder.decode(data).replace("\r\n", "\n").replace("\r", "")
            for piece in _LINE_PIECES.findall(text):
                if at_line_start:
                    stamp = datetime.fromtimestamp(wall_clock()).strftime("%H:%M:%S.%f")[:-3]
                    out.write(f"{stamp} ")
                out.write(piece)
                at_line_start = piece.endswith("\n")
            out.flush()
    finally:
        port_handle.close()
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
