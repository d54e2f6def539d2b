"""Commands per profile: polled from a stand-in cloud, executed on the simulator (sim_inverter) through
the real protocol adapter, results reported; 1.0.4's write_register and non-integer quirks."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from device_emulator.command_executor import CommandExecutor
from device_emulator.inverter_link import HttpFrameLink
from device_emulator.profiles import PROFILES
from protocol.command_message import Command
from protocol.registers import EXPORT_LIMIT_ADDRESS
from sim_inverter.service import SimConfig, SimService
from tests.device_emulator.component_board import SCALE, Board, StandInCloud

REFERENCE, SPEC = "reference-1.0.4", "spec"


@pytest.fixture
async def sim() -> AsyncIterator[SimService]:
    async with SimService(SimConfig(http_port=0, modbus_port=None)) as service:
        yield service


def executor(
    tmp_path: Path, session: aiohttp.ClientSession, cloud: StandInCloud, sim: SimService, profile: str
) -> tuple[CommandExecutor, HttpFrameLink]:
    async def sleep(seconds: float) -> None:
        await asyncio.sleep(seconds / SCALE)

    assert sim.http_url is not None
    link = HttpFrameLink(sim.http_url, session, PROFILES[profile], sleep=sleep, time_scale=SCALE)
    board = Board(tmp_path, session, cloud.url, inverter=link)
    board.factory(profile, "1.0.4" if profile == REFERENCE else "1.1.0")
    return CommandExecutor(board.boot()), link


async def export_limit(link: HttpFrameLink) -> int:
    read = await link.read_registers(EXPORT_LIMIT_ADDRESS, 1)
    assert read.values is not None
    return read.values[0]


def command(kind: str, **parameters: object) -> Command:
    return Command(f"CMD_{kind}", kind, dict(parameters))


@pytest.mark.parametrize("profile", [REFERENCE, SPEC])
async def test_no_pending_command_means_no_result(tmp_path, session, cloud, sim, profile: str) -> None:
    commands, _ = executor(tmp_path, session, cloud, sim, profile)
    assert await commands.poll() is None
    assert cloud.results == []


@pytest.mark.parametrize("profile", [REFERENCE, SPEC])
@pytest.mark.parametrize(
    ("sent", "limit"),
    [
        (command("set_power", power_value=5000), 50),  # 5000 W of the hard-coded 10 kW
        (command("set_power", power_value=25_000), 100),  # clamped
        (command("set_power_percentage", percentage=75), 75),
    ],
)
async def test_power_commands_write_register_8_and_report(
    tmp_path, session, cloud, sim, profile, sent, limit
) -> None:
    commands, link = executor(tmp_path, session, cloud, sim, profile)
    cloud.commands.append(sent)
    result = await commands.poll()
    assert result is not None and result.status == "completed"
    assert cloud.results == [result]
    assert result.result == f"Command {sent.command_type}: executed successfully"
    assert await export_limit(link) == limit


@pytest.mark.parametrize(("profile", "executed"), [(REFERENCE, False), (SPEC, True)])
async def test_write_register(tmp_path, session, cloud, sim, profile: str, executed: bool) -> None:
    commands, link = executor(tmp_path, session, cloud, sim, profile)
    before = await export_limit(link)
    target = 33 if before != 33 else 34
    cloud.commands.append(command("write_register", register_address=EXPORT_LIMIT_ADDRESS, value=target))
    result = await commands.poll()
    assert result is not None and result.status == ("completed" if executed else "failed")
    assert await export_limit(link) == (target if executed else before)


async def test_spec_write_register_refuses_a_read_only_register(tmp_path, session, cloud, sim) -> None:
    commands, _ = executor(tmp_path, session, cloud, sim, SPEC)
    cloud.commands.append(command("write_register", register_address=0, value=2300))
    result = await commands.poll()
    assert result is not None and result.status == "failed"


@pytest.mark.parametrize("parameter", ["50", 50.5])
@pytest.mark.parametrize("profile", [REFERENCE, SPEC])
async def test_a_non_integer_parameter(
    tmp_path, session, cloud, sim, profile: str, parameter: object
) -> None:
    commands, link = executor(tmp_path, session, cloud, sim, profile)
    cloud.commands.append(command("set_power_percentage", percentage=60))
    await commands.poll()
    cloud.commands.append(command("set_power_percentage", percentage=parameter))
    result = await commands.poll()
    assert result is not None
    if profile == REFERENCE:  # read as 0: export power set to 0 %, and reported a success
        assert result.status == "completed" and await export_limit(link) == 0
    else:
        assert result.status == "failed" and await export_limit(link) == 60


@pytest.mark.parametrize("profile", [REFERENCE, SPEC])
async def test_unknown_and_statistics_commands(tmp_path, session, cloud, sim, profile: str) -> None:
    commands, _ = executor(tmp_path, session, cloud, sim, profile)
    cloud.commands += [command("get_power_stats"), command("reset_peripheral_stats"), command("reboot_now")]
    statuses = [(await commands.poll()).status for _ in range(3)]  # type: ignore[union-attr]
    assert statuses == ["completed", "completed", "failed"]
    assert [r.command_id for r in cloud.results] == [
        "CMD_get_power_stats",
        "CMD_reset_peripheral_stats",
        "CMD_reboot_now",
    ]


async def test_a_write_the_inverter_does_not_confirm_is_reported_failed(
    tmp_path, session, cloud, sim
) -> None:
    commands, _ = executor(tmp_path, session, cloud, sim, SPEC)
    await sim.stop()  # the inverter is gone: every attempt fails
    cloud.commands.append(command("set_power_percentage", percentage=10))
    result = await commands.poll()
    assert result is not None and result.status == "failed"
    assert cloud.results == [result]
