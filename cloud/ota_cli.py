"""Firmware and OTA commands:

    ecowatt firmware prepare IMAGE --version V [--device-type T] [--security-counter N] [--scheme pkcs1v15|pss]
    ecowatt ota publish IMAGE --version V [--device-type T] [--security-counter N] [--scheme pkcs1v15|pss]
    ecowatt ota rollout VERSION --devices ID [ID ...] [--name NAME]

`firmware prepare` works offline: it encrypts and signs the image with the keys in the keys directory
(made on first use) and writes the blob and the signed manifest into the firmware directory, as the
reference tool does. `ota publish` and `ota rollout` talk to a running cloud's operator API (URL and
token from `--url`/`--token`, else ECOWATT_CLOUD_URL / ECOWATT_TOKEN, else the local defaults); the
image travels in parts, since no request body may exceed the service's limit. Errors are one line on
stderr and a non-zero exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from cloud.operator_client import DEFAULT_KEYS_DIR, OperatorClient, OperatorError
from cloud.ota_repository import (
    DEFAULT_DEVICE_TYPE,
    SIGNATURE_SCHEMES,
    ReleaseKeys,
    prepare_files,
    utc_timestamp,
)
from protocol.errors import EcoWattError
from protocol.ota_messages import REFERENCE_CHUNK_SIZE, parse_manifest

EXIT_FAILED = 1
# Part size of an upload: under the service's 256 KiB body limit with room for the headers.
UPLOAD_PART = 192 * 1024


def _fail(message: str) -> int:
    print(f"error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    return EXIT_FAILED


def _read_image(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise OperatorError(f"cannot read {path}: {error.strerror}") from None


def _next_counter(firmware_dir: Path) -> int:
    """One above the highest security counter among the manifests already in the directory."""
    highest = 0
    for manifest_file in firmware_dir.glob("firmware_*_manifest.json"):
        try:
            counter = parse_manifest(manifest_file.read_bytes()).security_counter
        except (OSError, EcoWattError):
            continue
        highest = max(highest, counter or 0)
    return highest + 1


def _prepare(args: argparse.Namespace) -> int:
    try:
        image = _read_image(args.image)
        keys = ReleaseKeys.load_or_create(args.keys_dir)
        counter = args.security_counter or _next_counter(args.firmware_dir)
        release, blob, manifest = prepare_files(
            image, args.version, keys, args.firmware_dir, timestamp=utc_timestamp(time.time),
            device_type=args.device_type, security_counter=counter, scheme=SIGNATURE_SCHEMES[args.scheme],
            chunk_size=args.chunk_size)
    except (OperatorError, EcoWattError, OSError) as error:
        return _fail(str(error))
    m = release.manifest
    print(f"prepared {m.version}: {m.original_size} bytes -> {m.encrypted_size} encrypted in {m.total_chunks} "
          f"chunks, security counter {m.security_counter}, {args.scheme} signature", flush=True)
    print(f"  {blob}\n  {manifest}", flush=True)
    return 0


async def _put_part(client: OperatorClient, upload_id: str, offset: int, data: bytes) -> None:
    url = f"{client.url}/api/v1/firmware/uploads/{upload_id}"
    try:
        async with client.session.put(url, params={"offset": str(offset)}, data=data,
                                      headers={"Content-Type": "application/octet-stream"}) as response:
            if response.status < 400:
                return
            text = await response.text(errors="replace")
            status = response.status
    except (aiohttp.ClientError, TimeoutError, OSError) as error:
        raise OperatorError(f"cannot reach the cloud at {client.url}: {error or type(error).__name__}") from None
    try:
        reason = json.loads(text).get("error")
    except (ValueError, AttributeError):
        reason = None
    raise OperatorError(str(reason or text[:200] or "upload refused"), status)


async def _publish(client: OperatorClient, args: argparse.Namespace) -> str:
    image = _read_image(args.image)
    upload = await client.request("POST", "/api/v1/firmware/uploads")
    for offset in range(0, len(image), UPLOAD_PART):
        await _put_part(client, upload["upload_id"], offset, image[offset : offset + UPLOAD_PART])
    body: dict[str, Any] = {"version": args.version, "upload_id": upload["upload_id"],
                            "sha256": hashlib.sha256(image).hexdigest(), "device_type": args.device_type,
                            "scheme": args.scheme}
    if args.security_counter is not None:
        body["security_counter"] = args.security_counter
    firmware = await client.request("POST", "/api/v1/firmware", body)
    if args.json:
        return json.dumps(firmware, indent=2)
    return (f"published {firmware['version']} for {firmware['device_type']}: {firmware['original_size']} bytes, "
            f"security counter {firmware['security_counter']}")


async def _rollout(client: OperatorClient, args: argparse.Namespace) -> str:
    body: dict[str, Any] = {"version": args.version, "devices": args.devices}
    if args.name:
        body["name"] = args.name
    rollout = await client.request("POST", "/api/v1/rollouts", body)
    if args.json:
        return json.dumps(rollout, indent=2)
    return f"rollout {rollout['name']} (id {rollout['id']}): {rollout['version']} to {len(rollout['targets'])} devices"


def _online(action: Callable[[OperatorClient, argparse.Namespace], Awaitable[str]]) -> Callable[[argparse.Namespace],
                                                                                                   int]:
    def handler(args: argparse.Namespace) -> int:
        async def main() -> str:
            async with OperatorClient(args.url, args.token, keys_dir=args.keys_dir) as client:
                return await action(client, args)

        try:
            line = asyncio.run(main())
        except OperatorError as error:
            return _fail(str(error))
        print(line, flush=True)
        return 0

    return handler


def _release_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("image", type=Path, help="the ESP32 app image (.bin)")
    parser.add_argument("--version", required=True, help="release version, dotted integers (1.0.5)")
    parser.add_argument("--device-type", default=DEFAULT_DEVICE_TYPE, help="device type the image is built for")
    parser.add_argument("--security-counter", type=int, help="anti-rollback counter (default: the next one)")
    parser.add_argument("--scheme", choices=sorted(SIGNATURE_SCHEMES), default="pkcs1v15",
                        help="image signature: pkcs1v15 (what firmware 1.0.4 verifies) or pss")


def _usage(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    def usage(_args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    return usage


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    operator = argparse.ArgumentParser(add_help=False)
    operator.add_argument("--url", help="the cloud's base URL (else $ECOWATT_CLOUD_URL, else http://127.0.0.1:5001)")
    operator.add_argument("--token", help="operator bearer token (else $ECOWATT_TOKEN, else keys/operator.token)")
    operator.add_argument("--keys-dir", type=Path, default=DEFAULT_KEYS_DIR, help=argparse.SUPPRESS)
    operator.add_argument("--json", action="store_true", help="print the server's whole JSON answer")

    firmware = subparsers.add_parser("firmware", help="prepare firmware releases offline")
    firmware.set_defaults(func=_usage(firmware))
    firmware_actions = firmware.add_subparsers(dest="firmware_command", metavar="ACTION")
    prepare = firmware_actions.add_parser("prepare", help="encrypt and sign an image, write blob and manifest")
    _release_options(prepare)
    prepare.add_argument("--keys-dir", type=Path, default=DEFAULT_KEYS_DIR, help="release keys (made if missing)")
    prepare.add_argument("--firmware-dir", type=Path, default=Path("firmware"), help="where the release goes")
    prepare.add_argument("--chunk-size", type=int, default=REFERENCE_CHUNK_SIZE,
                         help="bytes per OTA chunk, a multiple of 16 up to 1040")
    prepare.set_defaults(func=_prepare)

    ota = subparsers.add_parser("ota", help="publish firmware to a cloud and roll it out")
    ota.set_defaults(func=_usage(ota))
    ota_actions = ota.add_subparsers(dest="ota_command", metavar="ACTION")
    publish = ota_actions.add_parser("publish", help="upload, encrypt, sign and publish a release", parents=[operator])
    _release_options(publish)
    publish.set_defaults(func=_online(_publish))
    rollout = ota_actions.add_parser("rollout", help="offer a published release to named devices", parents=[operator])
    rollout.add_argument("version")
    rollout.add_argument("--devices", nargs="+", required=True, metavar="ID", help="the devices to update")
    rollout.add_argument("--name", help="rollout name (default: made from the version)")
    rollout.set_defaults(func=_online(_rollout))
