"""`ecowatt cloud serve` and `ecowatt keys generate | add-device | list`.

`cloud serve` prints exactly one `listening on http://HOST:PORT` line (flushed) once it accepts
connections; SIGTERM or SIGINT stop it: no new connections, in-flight requests finish, exit 0.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import signal
import sys
from pathlib import Path

from cloud.key_registry import (
    FIRMWARE_DEVICE_ID,
    FIRMWARE_FLEET_KEY,
    KeyFiles,
    key_fingerprint,
    parse_key_hex,
)
from cloud.server import CloudServer
from cloud.settings import DEFAULT_PORT, CloudSettings
from protocol.errors import EcoWattError

DEFAULT_KEYS_DIR = Path("keys")


def add_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    cloud = subparsers.add_parser("cloud", help="the cloud service")
    commands = cloud.add_subparsers(dest="cloud_command", metavar="COMMAND")
    serve = commands.add_parser("serve", help="serve the device API and the operator API")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=DEFAULT_PORT, help=f"port, 0 = any free (default {DEFAULT_PORT})")
    serve.add_argument("--data-dir", type=Path, default=CloudSettings.data_dir,
                       help=f"SQLite database directory (default {CloudSettings.data_dir})")
    serve.add_argument("--db", default=None, help="database URL (postgresql://...); default SQLite in --data-dir")
    serve.add_argument("--mqtt", default=None, metavar="URL", help="publish telemetry to this MQTT broker")
    serve.add_argument("--keys-dir", type=Path, default=DEFAULT_KEYS_DIR, help="device keys and operator tokens")
    serve.add_argument("--firmware-dir", type=Path, default=CloudSettings.firmware_dir, help="firmware repository")
    serve.add_argument("--open-operator-api", action="store_true",
                       help="lab only: operator routes without a bearer token")
    serve.add_argument("--log-level", default="INFO", help="logging level (default INFO)")
    serve.set_defaults(func=serve_command)

    keys = subparsers.add_parser("keys", help="device keys and operator tokens")
    keys.add_argument("--keys-dir", type=Path, default=DEFAULT_KEYS_DIR, help="where keys live (default keys/)")
    key_commands = keys.add_subparsers(dest="keys_command", metavar="COMMAND")
    generate = key_commands.add_parser("generate", help="make a new operator bearer token (printed once)")
    generate.add_argument("--name", default="operator", help="name of the token (replaces a token of that name)")
    generate.set_defaults(func=keys_generate_command)
    add = key_commands.add_parser("add-device", help="register a device and its 32-byte HMAC key")
    add.add_argument("device_id")
    add.add_argument("--key", default=None, metavar="HEX", help="the key as 64 hex digits (default: a new random one)")
    add.set_defaults(func=keys_add_device_command)
    listing = key_commands.add_parser("list", help="registered devices (key fingerprints only) and token names")
    listing.set_defaults(func=keys_list_command)


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("a port is 0..65535")
    return value


def serve_command(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = CloudSettings(host=args.host, port=args.port, data_dir=args.data_dir, db_url=args.db,
                             mqtt_url=args.mqtt, open_operator_api=args.open_operator_api,
                             keys_dir=args.keys_dir, firmware_dir=args.firmware_dir)
    return asyncio.run(_serve(settings))


async def _serve(settings: CloudSettings) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    if not settings.db_url:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    server = CloudServer(settings)
    try:
        await server.start()
    except (OSError, EcoWattError) as error:  # port taken, database unreachable, unreadable keys...
        print(f"ecowatt cloud serve: {error}", file=sys.stderr)
        return 1
    # What start-up made lives as long as the process: frozen, the collector's full passes stop walking it
    # again and again (they showed as pauses in the tail of upload latency; bench/cloud_ingest does the same).
    gc.collect()
    gc.freeze()
    try:
        print(f"listening on {server.url}", flush=True)
        await stop.wait()
    finally:
        await server.stop()
    return 0


def keys_generate_command(args: argparse.Namespace) -> int:
    files = KeyFiles(args.keys_dir)
    token = files.generate_operator_token(args.name)
    print(f"operator token {args.name!r} (shown once; also saved to {files.token_path}):")
    print(token)
    return 0


def keys_add_device_command(args: argparse.Namespace) -> int:
    files = KeyFiles(args.keys_dir)
    try:
        key = files.add_device(args.device_id, None if args.key is None else parse_key_hex(args.key))
    except EcoWattError as error:
        print(f"ecowatt keys add-device: {error}", file=sys.stderr)
        return 2
    print(f"device {args.device_id}: key {key.hex()}")
    return 0


def keys_list_command(args: argparse.Namespace) -> int:
    files = KeyFiles(args.keys_dir)
    try:
        devices = files.device_keys()
        tokens = files.operator_token_hashes()
    except EcoWattError as error:
        print(f"ecowatt keys list: {error}", file=sys.stderr)
        return 2
    if FIRMWARE_DEVICE_ID not in devices:
        print(f"device {FIRMWARE_DEVICE_ID}  key {key_fingerprint(FIRMWARE_FLEET_KEY)}  (firmware 1.0.4 fleet key, public)")
    for device_id, key in sorted(devices.items()):
        print(f"device {device_id}  key {key_fingerprint(key)}")
    for name in sorted(tokens):
        print(f"operator token {name}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """The cloud's commands alone (`python -m cloud.cli cloud serve ...`): the same parsers `ecowatt`
    mounts, without importing the rest of the harness (faster to start)."""
    parser = argparse.ArgumentParser(prog="ecowatt")
    add_commands(parser.add_subparsers(dest="command", metavar="COMMAND"))
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
