"""`ecowatt device run | fleet | quirks` as a user runs them (subprocesses, real simulator, stand-in cloud)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import AsyncIterator

import pytest

from device_emulator.profiles import quirks_document
from harness.cli import main
from protocol.envelope import open_envelope
from protocol.errors import EcoWattError
from sim_inverter.service import SimConfig, SimService
from tests.device_emulator.core_support import read_pty
from tests.device_emulator.standin_cloud import StandInCloud

# The device subcommands exactly as `ecowatt` mounts them, without importing every other part's CLI
# (the simulator's pulls pvlib, seconds of start-up); `ecowatt` itself is exercised in-process below.
ECOWATT = [
    sys.executable,
    "-c",
    "import argparse, sys; from device_emulator import cli; p = argparse.ArgumentParser(prog='ecowatt'); "
    "cli.add_commands(p.add_subparsers()); a = p.parse_args(); sys.exit(a.func(a))",
]


@pytest.fixture
async def stack() -> AsyncIterator[tuple[SimService, StandInCloud]]:
    sim = SimService(SimConfig(http_port=0, modbus_port=None))
    cloud = StandInCloud()
    await sim.start()
    await cloud.start()
    yield sim, cloud
    await cloud.stop()
    await sim.stop()


async def _start(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *ECOWATT, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )


async def _stop(process: asyncio.subprocess.Process) -> int:
    process.send_signal(signal.SIGINT)
    async with asyncio.timeout(8):
        return await process.wait()


async def _until(predicate, timeout: float = 8.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_run_prints_its_state_dir_and_pty_and_uploads(stack, tmp_path) -> None:
    sim, cloud = stack
    process = await _start(
        "device", "run", "--cloud", cloud.url, "--inverter", sim.http_url,
        "--state-dir", str(tmp_path / "board"), "--time-scale", "40", "--console-pty", "--quiet",
    )  # fmt: skip
    try:
        async with asyncio.timeout(8):
            first = (await process.stdout.readline()).decode().strip()
            second = (await process.stdout.readline()).decode().strip()
        assert first.startswith("listening on serial://")
        pty = os.open(first.removeprefix("listening on serial://"), os.O_RDONLY | os.O_NONBLOCK)
        assert second == f"state directory: {tmp_path / 'board'}"
        await _until(lambda: len(cloud.accepted) >= 1)
        console = read_pty(pty, "upload ok")
        os.close(pty)
        assert "][I][uploader] upload ok" in console
    finally:
        assert await _stop(process) == 0
    assert (tmp_path / "board" / "flash.bin").exists() and (tmp_path / "board" / "nvs.log").exists()


async def test_fleet_runs_boards_with_their_own_ids_and_keys(stack, tmp_path) -> None:
    sim, cloud = stack
    process = await _start(
        "device", "fleet", "--count", "3", "--cloud", cloud.url, "--inverter", sim.http_url,
        "--state-dir", str(tmp_path), "--time-scale", "40", "--seed", "7",
    )  # fmt: skip
    try:
        async with asyncio.timeout(8):
            line = (await process.stdout.readline()).decode().strip()
        assert line == f"fleet file: {tmp_path / 'fleet.json'}"
        keys = json.loads((tmp_path / "fleet.json").read_text())["devices"]
        assert sorted(keys) == ["ecowatt-0000", "ecowatt-0001", "ecowatt-0002"]
        assert len(set(keys.values())) == 3
        cloud.keys = [bytes.fromhex(k) for k in keys.values()]
        await _until(lambda: len(cloud.uploads) >= 3)
    finally:
        assert await _stop(process) == 0
    senders = set()
    for upload in cloud.uploads:
        for device_id, key in keys.items():
            try:
                opened = open_envelope(upload.body, bytes.fromhex(key))
            except EcoWattError:
                continue
            assert json.loads(opened.document)["device_id"] == device_id
            senders.add(device_id)
    assert senders == set(keys)


def test_ecowatt_device_quirks_prints_the_table(capsys) -> None:
    assert main(["device", "quirks"]) == 0
    assert capsys.readouterr().out == quirks_document()


def test_bad_arguments_fail_with_a_message(capsys) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["device", "run", "--cloud", "http://127.0.0.1:1", "--key", "abcd"])
    assert exit_.value.code == 2 and "--key" in capsys.readouterr().err
    assert main(["device", "run", "--cloud", "nowhere", "--state-dir", "unused"]) == 2
    assert "not a URL" in capsys.readouterr().err
