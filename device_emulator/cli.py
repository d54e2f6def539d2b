"""`ecowatt device run | fleet | quirks`: run emulated boards from the command line.

`run` starts one board and prints `state directory: DIR`, then runs until SIGINT or SIGTERM. With
`--console-pty` (a pty) or `--serial URL` (`socket://HOST:PORT`, `rfc2217://HOST:PORT`, port 0 for a
free one) the board has a serial port, printed first as `listening on serial://PATH` (or the URL): its
UART console, and the ROM download mode the real esptool flashes it through.

`fleet` runs N boards in one process, each with its own id, key, state directory and jittered timer
phases, and writes the ids and keys the cloud must know to `fleet.json` in the base directory.
`quirks` prints the profiles' quirk table.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

from device_emulator.config import DEFAULT_DEVICE_ID, FLEET_KEY, DeviceConfig, Transport
from device_emulator.device import Device
from device_emulator.profiles import PROFILES, REFERENCE, quirks_document
from device_emulator.rom_loader import DEFAULT_MAC
from protocol.envelope import PSK_SIZE


def add_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    device = subparsers.add_parser("device", help="the emulated EcoWatt board")
    commands = device.add_subparsers(dest="device_command", metavar="COMMAND")

    run = commands.add_parser("run", help="run one emulated board")
    _common(run)
    run.add_argument(
        "--device-id", default=DEFAULT_DEVICE_ID, help=f"device id (default {DEFAULT_DEVICE_ID})"
    )
    run.add_argument(
        "--key", type=parse_key, default=FLEET_KEY, help="upload PSK, 64 hex digits (default: fleet key)"
    )
    run.add_argument(
        "--state-dir", type=Path, default=None, help="flash and NVS live here (default: new temp dir)"
    )
    port = run.add_mutually_exclusive_group()
    port.add_argument("--console-pty", action="store_true", help="give the board a serial port on a new pty")
    port.add_argument(
        "--serial",
        type=_serial_url,
        default=None,
        help="give the board a serial port served at socket://HOST:PORT or rfc2217://HOST:PORT",
    )
    run.add_argument("--mac", type=_mac, default=DEFAULT_MAC, help="its MAC address (aa:bb:cc:dd:ee:ff)")
    run.add_argument("--quiet", action="store_true", help="do not echo the console on stderr")
    run.set_defaults(func=run_command)

    fleet = commands.add_parser("fleet", help="run N emulated boards in one process")
    _common(fleet)
    fleet.add_argument("--count", type=_count, required=True, help="number of boards")
    fleet.add_argument("--id-prefix", default="ecowatt-", help="device ids are PREFIX0000, PREFIX0001, ...")
    fleet.add_argument(
        "--state-dir", type=Path, default=None, help="base directory (one subdirectory per board)"
    )
    fleet.add_argument("--seed", type=int, default=1, help="seed of the keys and of the timer jitter")
    fleet.set_defaults(func=fleet_command)

    quirks = commands.add_parser("quirks", help="print the quirk switches of the firmware profiles")
    quirks.set_defaults(func=quirks_command)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cloud", required=True, help="cloud base URL, e.g. http://127.0.0.1:5001")
    parser.add_argument(
        "--inverter", default="", help="inverter URL: http://HOST:PORT or modbus-tcp://HOST:PORT"
    )
    parser.add_argument(
        "--transport", type=_transport, default=Transport("http"), help="http | modbus-tcp | rtu:PATH"
    )
    parser.add_argument(
        "--profile", choices=list(PROFILES), default=REFERENCE, help="firmware flashed at first start"
    )
    parser.add_argument(
        "--version", dest="firmware_version", default=None, help="its version (default per profile)"
    )
    parser.add_argument("--time-scale", type=_positive, default=1.0, help="device seconds per real second")
    parser.add_argument("--api-key", default="", help="Authorization value for the inverter's frame API")
    parser.add_argument(
        "--firmware-keys", type=Path, default=None, help="keys directory for OTA (AES key, public key)"
    )


def _config(args: argparse.Namespace, **kw: object) -> DeviceConfig:
    return DeviceConfig(
        cloud_url=args.cloud,
        inverter_url=args.inverter or "http://127.0.0.1:8080",
        transport=args.transport,
        profile=args.profile,
        version=args.firmware_version,
        time_scale=args.time_scale,
        api_key=args.api_key,
        firmware_keys=args.firmware_keys,
        **kw,  # type: ignore[arg-type]
    )


def run_command(args: argparse.Namespace) -> int:
    state_dir = args.state_dir or Path(tempfile.mkdtemp(prefix="ecowatt-device-"))
    try:
        config = _config(args, state_dir=state_dir, device_id=args.device_id, key=args.key)
    except ValueError as error:
        print(f"ecowatt device run: {error}", file=sys.stderr)
        return 2
    serial = "pty" if args.console_pty else args.serial
    return asyncio.run(_run([config], serial=serial, mac=args.mac, echo=not args.quiet))


def fleet_command(args: argparse.Namespace) -> int:
    base = args.state_dir or Path(tempfile.mkdtemp(prefix="ecowatt-fleet-"))
    base.mkdir(parents=True, exist_ok=True)
    configs = []
    try:
        for index in range(args.count):
            device_id = f"{args.id_prefix}{index:04d}"
            configs.append(
                _config(
                    args,
                    state_dir=base / device_id,
                    device_id=device_id,
                    key=fleet_key(args.seed, device_id),
                    seed=args.seed * 1_000_003 + index,
                    durable=False,  # emulated power cuts only: no fsync per nonce for hundreds of boards
                )
            )
    except ValueError as error:
        print(f"ecowatt device fleet: {error}", file=sys.stderr)
        return 2
    keys = {c.device_id: c.key.hex() for c in configs}
    (base / "fleet.json").write_text(json.dumps({"devices": keys}, indent=2) + "\n")
    print(f"fleet file: {base / 'fleet.json'}", flush=True)
    return asyncio.run(_run(configs, serial=None, echo=False))


def quirks_command(args: argparse.Namespace) -> int:
    print(quirks_document(), end="")
    return 0


def fleet_key(seed: int, device_id: str) -> bytes:
    """A board's own PSK in a fleet: reproducible from the seed, different for every id."""
    return hashlib.sha256(f"ecowatt-fleet/{seed}/{device_id}".encode()).digest()


async def _run(
    configs: list[DeviceConfig], *, serial: str | None, echo: bool, mac: bytes = DEFAULT_MAC
) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    devices = [Device(config, wall_clock=time.time, serial=serial, mac=mac) for config in configs]
    try:
        for device in devices:
            if echo:
                device.console.subscribe(lambda line: print(line, file=sys.stderr, flush=True))
            if serial is not None:
                # Open before power-on: a client that connects on this line sees the first boot.
                endpoint = await device.open_serial()
                print(f"listening on {endpoint.url}", flush=True)
            await device.start()
            if len(devices) == 1:
                print(f"state directory: {device.state_dir}", flush=True)
        await stop.wait()
    finally:
        for device in devices:
            await device.stop()
    crashed = [d for d in devices if d.crash is not None]
    for device in crashed:
        print(f"{device.config.device_id}: {device.crash!r}", file=sys.stderr)
    return 1 if crashed else 0


def parse_key(text: str) -> bytes:
    """A 32-byte pre-shared key given as hex on the command line (also used by `ecowatt provision`)."""
    try:
        key = bytes.fromhex(text)
    except ValueError:
        raise argparse.ArgumentTypeError("the key is hex") from None
    if len(key) != PSK_SIZE:
        raise argparse.ArgumentTypeError(f"the key is {PSK_SIZE} bytes ({2 * PSK_SIZE} hex digits)")
    return key


def _serial_url(text: str) -> str:
    if not text.startswith(("socket://", "rfc2217://")):
        raise argparse.ArgumentTypeError("a serial URL is socket://HOST:PORT or rfc2217://HOST:PORT")
    return text


def _mac(text: str) -> bytes:
    try:
        mac = bytes.fromhex(text.replace(":", "").replace("-", ""))
    except ValueError:
        mac = b""
    if len(mac) != 6:
        raise argparse.ArgumentTypeError("a MAC address is 6 bytes, e.g. 24:0a:c4:e5:a0:10")
    return mac


def _transport(text: str) -> Transport:
    try:
        return Transport.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value


def _count(text: str) -> int:
    value = int(text)
    if not 1 <= value <= 100_000:
        raise argparse.ArgumentTypeError("count is 1..100000")
    return value
