"""The stack as scenarios use it: sim, cloud and emulated DUT wired on loopback through fault proxies, on
virtual time, with faults of every family; the invariants (checked by the plugin after each test) hold."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from harness.clocks import RealClock
from harness.dut import ConsoleTimeout
from harness.stack import Stack, StackOptions


def kinds(dut: Any) -> list[str]:
    return [e.kind.label for e in dut.events()]


@pytest.mark.hil(upload=30)
async def test_the_device_reaches_sim_and_cloud_only_through_the_proxies_on_virtual_time(
        hil_stack: Any, hil_clock: Any, hil_cloud: Any, hil_dut: Any) -> None:
    started = time.monotonic()
    await hil_dut.console.expect(r"upload ok: \d+ packets", timeout=60)
    await hil_clock.advance(minutes=2)
    assert hil_clock.now() >= 120 and time.monotonic() - started < 60  # device minutes, real seconds
    rows = await hil_cloud.telemetry(hil_dut.device_id)
    assert {r["register"] for r in rows} >= {"Vac1", "Pac"}
    assert hil_stack.proxies[("cloud", hil_dut.device_id)].connections > 0
    assert hil_stack.proxies[("sim", hil_dut.device_id)].connections > 0
    assert len(hil_stack.sim.ledger) > 0 and hil_dut.device.config.inverter_url.endswith(
        f":{hil_stack.proxies[('sim', hil_dut.device_id)].port}")


@pytest.mark.hil(upload=30)
async def test_expect_failure_shows_the_console_tail_and_the_log_path(hil_dut: Any) -> None:
    with pytest.raises(ConsoleTimeout) as failure:
        await hil_dut.console.expect("this line is never printed", timeout=20)
    text = str(failure.value)
    assert "not seen within 20 s of device time" in text and "[main]" in text
    assert str(hil_dut.console.log_path) in text and hil_dut.console.log_path.read_text().count("\n") > 5


@pytest.mark.hil(upload=30)
async def test_a_bus_fault_reaches_the_device_as_a_failed_poll(hil_faults: Any, hil_clock: Any, hil_dut: Any,
                                                               hil_sim: Any) -> None:
    await hil_clock.advance(seconds=5)
    await hil_faults.bus("EXCEPTION", exception_code=4, count=12)  # more than one poll's retries
    await hil_clock.advance(seconds=60)
    assert "poll_failed" in kinds(hil_dut)
    assert [e.outcome for e in hil_sim.ledger.since(0)].count("exception") == 12
    hil_faults.bus_profile({"CRC_ERROR": 0.5}, seed=3)  # seeded random faults on every read from now
    await hil_clock.advance(seconds=20)
    hil_faults.bus_profile(None)
    outcomes = [e.outcome for e in hil_sim.ledger.since(0)]
    assert 0 < outcomes.count("crc_error") < len(outcomes)
    assert [f.family for f in hil_faults.log] == ["bus", "bus", "bus"]


@pytest.mark.hil(upload=30)
async def test_a_partition_of_the_cloud_link_delays_uploads_and_loses_nothing(
        hil_faults: Any, hil_clock: Any, hil_dut: Any, hil_cloud: Any) -> None:
    await hil_clock.advance(seconds=40)
    hil_faults.partition("cloud", mode="refuse", duration=120)
    await hil_clock.advance(seconds=120)
    assert "upload_failed" in kinds(hil_dut)
    stored = len(await hil_cloud.telemetry(hil_dut.device_id))
    await hil_clock.advance(seconds=90)
    assert len(await hil_cloud.telemetry(hil_dut.device_id)) > stored


@pytest.mark.hil(upload=30)
async def test_a_power_cut_at_a_tagged_point_reboots_the_device(hil_faults: Any, hil_clock: Any,
                                                               hil_dut: Any) -> None:
    hil_faults.power_cut(point="upload.sent")
    await hil_clock.until(lambda: hil_dut.device.boots == 2, timeout=120)
    assert hil_dut.device.last_reboot_reason == "power cut at upload.sent"
    cut = hil_faults.power_cut(at=20, off_s=10)  # a plain cut, 20 device seconds from now
    await hil_clock.advance(seconds=25)
    assert not hil_dut.device.powered and not cut.done()  # off for 10 s from t+20
    await hil_clock.advance(seconds=60)
    assert cut.done() and kinds(hil_dut).count("boot") == 3


@pytest.mark.hil(upload=30)
async def test_the_cloud_killed_and_restarted_in_process_loses_nothing(
        hil_faults: Any, hil_clock: Any, hil_dut: Any, hil_cloud: Any) -> None:
    await hil_clock.advance(seconds=35)
    await hil_faults.kill_cloud()
    await hil_clock.advance(seconds=60)
    await hil_faults.restart_cloud()
    await hil_clock.advance(seconds=60)
    assert "upload_failed" in kinds(hil_dut) and kinds(hil_dut)[-1] != "upload_failed"
    assert [f.what for f in hil_faults.log] == ["kill", "restart"]


@pytest.mark.hil(upload=30, devices=3)
async def test_a_fleet_gets_a_simulator_proxies_and_a_key_each(hil_stack: Any, hil_clock: Any,
                                                               hil_cloud: Any) -> None:
    await hil_clock.advance(seconds=70)
    assert len({sim.url for sim in hil_stack.sims.values()}) == 3
    for device_id in hil_stack.device_ids:
        assert await hil_cloud.telemetry(device_id), device_id


@pytest.mark.hil(upload=60, timings={"ota_check_s": 20.0, "ota_reboot_delay_s": 0.5})
async def test_a_firmware_published_through_hil_cloud_is_installed(hil_cloud: Any, hil_clock: Any,
                                                                   hil_dut: Any) -> None:
    await hil_cloud.publish_firmware("1.2.0", profile="spec", size=40_000)
    await hil_cloud.rollout("1.2.0", [hil_dut.device_id])
    await hil_clock.until(lambda: hil_dut.device.version == "1.2.0", timeout=600)
    await hil_clock.advance(seconds=30)
    history = await hil_cloud.ota(hil_dut.device_id)
    assert history["firmware_version"] == "1.2.0" and history["sessions"][0]["status"] == "completed"


async def test_processes_on_scaled_time_survive_a_kill_9_of_the_cloud(tmp_path: Path) -> None:
    clock = RealClock(20.0)  # device seconds per real second
    clock.bind(asyncio.get_running_loop())
    options = StackOptions(processes=True, upload_s=30, poll_s=2)
    async with Stack(options, clock, tmp_path) as stack:
        device_id = stack.dut.device_id

        async def stored() -> int:
            return len(await stack.cloud.telemetry(device_id))

        await stack.dut.console.expect(r"upload ok", timeout=200)
        before = await stored()
        await stack.faults.kill_cloud()
        await clock.advance(seconds=40)
        await stack.faults.restart_cloud()
        await clock.until(lambda: stored_after(stack, device_id, before), timeout=300, poll=5)
        assert "upload failed" in "\n".join(stack.dut.console.lines)
        assert await stack.invariants.check() == []


async def stored_after(stack: Stack, device_id: str, before: int) -> bool:
    return len(await stack.cloud.telemetry(device_id)) > before


@pytest.mark.timeout(90)
async def test_a_board_on_a_serial_port_is_provisioned_queried_flashed_with_esptool_and_uploads(
        tmp_path: Path) -> None:
    """SerialBoardDut against the emulator's serial endpoint (RFC 2217): real esptool, real pyserial,
    reset through RTS. The board's own settings lead nowhere: the stack provisions it (URLs of its
    proxies, id, key), so it uploads; the flashed image boots and its first upload reaches the cloud."""
    from device_emulator.config import DeviceConfig
    from device_emulator.device import Device
    from protocol.esp_image import build_firmware_image

    scale = 20.0
    clock = RealClock(scale)
    clock.bind(asyncio.get_running_loop())
    nowhere = "http://127.0.0.1:9"
    board = Device(DeviceConfig(cloud_url=nowhere, inverter_url=nowhere, state_dir=tmp_path / "board",
                                device_id="unprovisioned", profile="spec", time_scale=scale,
                                timings={"upload_s": 30.0}),
                   serial="rfc2217://127.0.0.1:0", wall_clock=clock.wall)
    await board.start()
    try:
        options = StackOptions(dut="board", port=board.serial_port, upload_s=30, poll_s=5)
        async with Stack(options, clock, tmp_path / "stack") as stack:
            dut = stack.dut
            mac = ":".join(f"{b:02x}" for b in board.mac)
            assert board.device_id == dut.device_id != "unprovisioned"  # it booted as the stack's device
            assert dut.provenance()["board_mac"] == mac and dut.banner.profile == "spec"
            assert "[main] provisioned: device" in "\n".join(dut.console.lines)
            info = await dut.info()
            assert info["chip"].startswith("ESP32") and info["mac"] == mac
            await dut.flash(build_firmware_image("spec", "1.3.0"))
            await dut.console.expect(r"rst:0x1 \(POWERON_RESET\)", timeout=60)
            await dut.console.expect(r"spec firmware 1\.3\.0", timeout=60)
            assert dut.firmware_version == "1.3.0"
            await dut.console.expect(r"upload ok", timeout=120)
            assert await stack.cloud.telemetry(dut.device_id)
    finally:
        await board.stop()
