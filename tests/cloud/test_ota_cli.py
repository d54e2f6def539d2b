"""`ecowatt firmware prepare` (offline) and `ecowatt ota publish|rollout` against a running cloud."""

from __future__ import annotations

import argparse
import asyncio
import json
import stat
from pathlib import Path

import pytest

from cloud.ota_cli import add_commands
from protocol.firmware_crypto import load_public_key_pem
from protocol.firmware_release import FirmwareDownload, run_download
from protocol.ota_messages import UpdateOffer, chunk_of, parse_manifest, verify_manifest
from tests.cloud.ota_stack import image_of, write_release_keys
from tests.cloud.running_cloud import running_cloud


def main(argv: list[str]) -> int:
    """The commands as the top-level `ecowatt` parser wires them (harness/cli.py), without the other parts."""
    parser = argparse.ArgumentParser(prog="ecowatt")
    add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(argv)
    return int(args.func(args))


def test_prepare_writes_a_release_a_device_verifies(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys, firmware, image = tmp_path / "keys", tmp_path / "firmware", tmp_path / "app.bin"
    image.write_bytes(image_of(10_000))
    assert main(["firmware", "prepare", str(image), "--version", "1.0.5", "--keys-dir", str(keys),
                 "--firmware-dir", str(firmware)]) == 0
    assert "prepared 1.0.5" in capsys.readouterr().out
    for secret in ("server_private_key.pem", "aes_firmware_key.bin"):  # made on first use, private
        assert stat.S_IMODE((keys / secret).stat().st_mode) == 0o600

    manifest = parse_manifest((firmware / "firmware_1.0.5_manifest.json").read_bytes())
    public = load_public_key_pem((keys / "server_public_key.pem").read_bytes())
    verify_manifest(manifest, public)
    blob = (firmware / "firmware_1.0.5_encrypted.bin").read_bytes()
    chunks = [chunk_of(blob, i, manifest.chunk_size) for i in range(manifest.total_chunks)]
    download = FirmwareDownload(UpdateOffer.from_manifest(manifest), (keys / "aes_firmware_key.bin").read_bytes(),
                                public, check_manifest_hash=True)
    assert run_download(download, chunks).ok

    assert main(["firmware", "prepare", str(image), "--version", "1.0.6", "--keys-dir", str(keys),
                 "--firmware-dir", str(firmware), "--scheme", "pss"]) == 0
    assert parse_manifest((firmware / "firmware_1.0.6_manifest.json").read_bytes()).security_counter == 2


def test_prepare_refuses_what_is_not_an_app_image(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    image = tmp_path / "notes.txt"
    image.write_text("hello")
    assert main(["firmware", "prepare", str(image), "--version", "1.0.5", "--keys-dir", str(tmp_path / "k"),
                 "--firmware-dir", str(tmp_path / "f")]) == 1
    error = capsys.readouterr().err
    assert error.startswith("error: ") and "0xE9" in error and error.count("\n") == 1


async def test_publish_and_rollout_through_the_operator_api(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    async def ecowatt(*args: str) -> tuple[int, str, str]:
        # The real command line, in a thread: the command runs its own event loop, as in a shell.
        code = await asyncio.to_thread(main, list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    image = tmp_path / "app.bin"
    image.write_bytes(image_of(500_000))  # several upload parts
    write_release_keys(tmp_path / "keys")
    async with running_cloud(tmp_path) as cloud:
        target = ["--url", cloud.url, "--token", cloud.token]
        code, out, err = await ecowatt("ota", "publish", str(image), "--version", "1.0.5", *target)
        assert code == 0, err
        assert out.startswith("published 1.0.5 for ecowatt-esp32: 500000 bytes, security counter 1")
        code, out, err = await ecowatt("ota", "rollout", "1.0.5", "--devices", "a", "b", "--name", "canary",
                                       *target)
        assert code == 0 and "rollout canary" in out and "2 devices" in out, err

        check = await cloud.request("GET", "/ota/check/a?version=1.0.4")
        assert json.loads(check.body)["update_info"]["original_size"] == 500_000

        code, out, err = await ecowatt("ota", "rollout", "9.9.9", "--devices", "a", *target)
        assert code == 1 and err.startswith("error: Firmware version 9.9.9 not found") and "(HTTP 400)" in err
        code, out, err = await ecowatt("ota", "publish", str(image), "--version", "1.0.6", "--url", cloud.url,
                                       "--token", "wrong")
        assert code == 1 and "HTTP 401" in err and err.count("\n") == 1
