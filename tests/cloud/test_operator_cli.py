"""The operator CLI (`ecowatt command|config|fault|telemetry`) against a real server on a real port."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from cloud import operator_cli
from cloud.app_keys import EVENTS
from protocol.command_message import parse_poll_reply, poll_request
from tests.cloud.firmware_uploads import FirmwareDevice
from tests.cloud.operator_service import DEVICE, Service, running_service


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[Service]:
    async with running_service(tmp_path) as running:
        yield running


def main(argv: list[str]) -> int:
    """`ecowatt ARGV` with only the operator commands (the installed command is tested once, below)."""
    parser = argparse.ArgumentParser(prog="ecowatt")
    operator_cli.add_commands(parser.add_subparsers())
    args = parser.parse_args(argv)
    return int(args.func(args))


async def ecowatt(service: Service, *argv: str, token: str | None = None) -> int:
    """Run `ecowatt ARGV` in this process (in a thread: the command runs its own event loop)."""
    args = [*argv, "--url", service.url, "--token", token or service.token]
    return await asyncio.to_thread(main, args)


async def test_command_queue_reaches_the_device(service: Service, capsys) -> None:
    assert await ecowatt(service, "command", "queue", DEVICE, "set_power", "--param", "power_value=5000") == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith("queued ") and line.endswith(f"set_power for {DEVICE}")
    async with service.http.post(service.url + "/command/poll", data=poll_request(DEVICE)) as response:
        command = parse_poll_reply(await response.read())
    assert (command.command_id, command.parameters) == (line.split()[1].rstrip(":"), {"power_value": 5000})
    assert await ecowatt(service, "command", "status", command.command_id) == 0
    assert "delivered" in capsys.readouterr().out


async def test_a_refused_command_is_one_line_and_a_non_zero_exit(service: Service, capsys) -> None:
    status = await ecowatt(service, "command", "queue", DEVICE, "write_register", "--param", "register_address=0",
                           "--param", "value=5")
    captured = capsys.readouterr()
    assert status == 1 and captured.out == ""
    [line] = captured.err.splitlines()
    assert line.startswith("error: ") and "read-only" in line and line.endswith("(HTTP 400)")
    assert await service.storage.list_commands(DEVICE) == []


async def test_a_wrong_token_and_an_unreachable_server(service: Service, capsys) -> None:
    assert await ecowatt(service, "fault", "clear", token="not-the-token") == 1
    [line] = capsys.readouterr().err.splitlines()
    assert "Bearer" in line and line.endswith("(HTTP 401)")
    status = await asyncio.to_thread(main, ["fault", "status", "--url", "http://127.0.0.1:9", "--token", "x"])
    [line] = capsys.readouterr().err.splitlines()
    assert status == 1 and line.startswith("error: cannot reach the cloud at http://127.0.0.1:9")


async def test_config_set_then_history(service: Service, capsys) -> None:
    assert await ecowatt(service, "config", "set", DEVICE, "--poll", "9", "--registers", "Vac1,Pac") == 0
    assert "version 1 pending: poll 9 s, upload 15 s, registers Vac1,Pac" in capsys.readouterr().out
    async with service.http.post(service.url + "/changes", data=b'{"device_id":"%s","timestamp":1}' % DEVICE.encode()
                                 ) as response:
        assert (await response.json())["regs"] == 0b10_0000_0001
    assert await ecowatt(service, "config", "set", DEVICE, "--upload", "0") == 1
    assert "upload_interval must be 1..3600 s" in capsys.readouterr().err
    assert await ecowatt(service, "config", "history", DEVICE) == 0
    assert capsys.readouterr().out.startswith("version 1 delivered")


async def test_fault_inject_applies_and_clear_ends_it(service: Service, capsys) -> None:
    assert await ecowatt(service, "fault", "inject", "http_503", "--device", DEVICE, "--duration", "60",
                         "--param", 'paths=["/changes"]') == 0
    assert "http_503 on ESP32_EcoWatt_Smart, probability 1.0, until" in capsys.readouterr().out
    body = b'{"device_id":"%s","timestamp":1}' % DEVICE.encode()
    async with service.http.post(service.url + "/changes", data=body) as response:
        assert response.status == 503
    assert await ecowatt(service, "fault", "status") == 0
    assert "1 rule(s) in force, 1 fault(s) injected" in capsys.readouterr().out
    assert await ecowatt(service, "fault", "clear") == 0
    assert "cleared 1 fault rule(s)" in capsys.readouterr().out
    async with service.http.post(service.url + "/changes", data=body) as response:
        assert response.status == 200
    assert await ecowatt(service, "fault", "inject", "meteor") == 1
    assert "fault_type must be one of" in capsys.readouterr().err


async def test_telemetry_tail_prints_one_line_per_sample(service: Service, capsys) -> None:
    tail = asyncio.create_task(ecowatt(service, "telemetry", "tail", DEVICE, "--count", "6"))
    for _ in range(500):  # until the tail is subscribed
        if service.server.app[EVENTS].subscriber_count:
            break
        await asyncio.sleep(0.01)
    device = FirmwareDevice()
    device.sample([[2301, 52, 40, 1200, 41, 355]] * 7)
    async with service.http.post(service.url + "/process", data=device.upload()) as response:
        assert response.status == 200
    assert await asyncio.wait_for(tail, 10) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 6
    assert f" {DEVICE} Vac1=230.1 V raw=2301 " in lines[0] and " Pac=1200 W raw=1200 " in lines[3]


async def test_the_installed_ecowatt_command_takes_url_and_token_from_the_environment(service: Service) -> None:
    env = {**os.environ, "ECOWATT_CLOUD_URL": service.url, "ECOWATT_TOKEN": service.token}
    ecowatt_bin = Path(sys.executable).with_name("ecowatt")

    async def run(*argv: str) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(ecowatt_bin, *argv, env=env, stdout=asyncio.subprocess.PIPE,
                                                       stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(process.communicate(), 60)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    # a refusal proves the token from the environment was taken (else 401) and shows the error line
    status, out, err = await run("command", "queue", DEVICE, "set_power_percentage", "--param", "percentage=150")
    assert status == 1 and out == "" and len(err.splitlines()) == 1
    assert err.startswith("error: ") and "0..100" in err and err.rstrip().endswith("(HTTP 400)")
