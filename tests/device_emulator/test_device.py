"""The whole emulated board end to end: the real simulator over HTTP frames and Modbus TCP, a stand-in
cloud that verifies every envelope, power cuts and resets, boot identity, runtime configuration."""

from __future__ import annotations

import asyncio
import json
import os
import random
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest

from device_emulator.config import DeviceConfig
from device_emulator.context import PowerCut
from device_emulator.device import Device
from device_emulator.nvs import current_nonce
from device_emulator.uploader import POINT_SENT
from protocol import modbus
from sim_inverter.service import SimConfig, SimService
from tests.device_emulator.core_support import read_pty
from tests.device_emulator.standin_cloud import StandInCloud

SCALE = 40.0  # device seconds per loop second: a 15 s upload every 0.375 s
NOON = 12 * 3600.0  # sim time: the PV registers are not all zero


@pytest.fixture
async def sim() -> AsyncIterator[SimService]:
    service = SimService(SimConfig(http_port=0, modbus_port=0, time_scale=SCALE, time_offset=NOON))
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
async def cloud() -> AsyncIterator[StandInCloud]:
    stand_in = StandInCloud()
    await stand_in.start()
    yield stand_in
    await stand_in.stop()


@asynccontextmanager
async def running(config: DeviceConfig, **kw) -> AsyncIterator[Device]:
    device = Device(config, **kw)
    await device.start()
    try:
        yield device
    finally:
        await device.stop()
        assert device.crash is None, device.console.tail()


def config(tmp_path, cloud, sim, **kw) -> DeviceConfig:
    transport = kw.pop("transport", "http")
    url = sim.modbus_url if transport == "modbus-tcp" else sim.http_url
    return DeviceConfig(
        cloud_url=cloud.url,
        inverter_url=url,
        transport=transport,
        state_dir=kw.pop("state_dir", tmp_path / "board"),
        time_scale=SCALE,
        **kw,
    )


async def until(predicate: Callable[[], bool], timeout: float = 8.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def served_samples(sim: SimService, selection: list[int]) -> list[list[int]]:
    """What the simulator delivered to the device's reads, as samples of `selection`."""
    entries = [e for e in sim.ledger.since(0, 100_000) if e.operation == "read" and e.delivered]
    return [modbus.pick_selection(e.values, e.start, selection) for e in entries]


async def test_reference_end_to_end_over_http_frames(tmp_path, sim, cloud) -> None:
    async with running(config(tmp_path, cloud, sim)) as device:
        # the device counts an upload once it has read the 200, a moment after the cloud took it
        await until(lambda: len(cloud.accepted) >= 3 and device.counters["uploads_ok"] >= 3)
    assert [u.nonce for u in cloud.uploads[:3]] == [10001, 10002, 10003]
    first = cloud.accepted[0].document
    assert first.device_id == "ESP32_EcoWatt_Smart"
    assert first.packets[0].metadata.register_layout == (0, 1, 5, 9, 6, 7)  # the default, firmware order
    # every packet the reference firmware sent that can be decoded holds what the simulator served
    served = served_samples(sim, [0, 1, 5, 9, 6, 7])
    decoded = [s for u in cloud.accepted for s in u.samples]
    assert decoded and all(sample in served for sample in decoded)
    assert decoded[:7] == served[:7]
    assert device.counters["uploads_ok"] >= 3


async def test_spec_end_to_end_over_modbus_tcp_delivers_every_sample_exactly(tmp_path, sim, cloud) -> None:
    cfg = config(tmp_path, cloud, sim, transport="modbus-tcp", profile="spec", timings={"upload_s": 15.0})
    async with running(cfg) as device:
        await until(lambda: len(cloud.accepted) >= 3)
        assert device.profile.name == "spec" and device.version == "1.1.0"
    served = served_samples(sim, [0, 1, 5, 9, 6, 7])
    received = cloud.samples()
    assert len(received) >= 21 and received == served[: len(received)]
    assert all(p.metrics.lossless_verified for u in cloud.accepted for p in u.document.packets)
    assert all(p.metadata.original_size_bytes == 84 for u in cloud.accepted for p in u.document.packets)


async def test_power_cut_mid_upload_never_reuses_a_nonce(tmp_path, sim, cloud) -> None:
    async with running(config(tmp_path, cloud, sim)) as device:
        await until(lambda: len(cloud.accepted) >= 1)
        device.cut_power_at(POINT_SENT)  # the cloud has the envelope, the device never hears back
        await until(lambda: device.boots == 2)
        assert len(device.queue or []) == 0  # the queue was RAM
        await until(lambda: len(cloud.accepted) >= 3)
        cut_nonce = cloud.uploads[1].nonce
        assert current_nonce(device.nvs) > cut_nonce
        assert device.last_reboot_reason == f"power cut at {POINT_SENT}"
    nonces = cloud.nonces_seen
    assert nonces == sorted(set(nonces))  # strictly increasing: none reused
    assert all(u.status == 200 for u in cloud.uploads)  # so the cloud never saw a replay


async def test_power_cut_while_the_nonce_is_written_never_reuses_it(tmp_path, sim, cloud) -> None:
    cuts: list[int] = []

    def cut_inside_the_nonce_write(tag: str) -> None:
        fw = device.firmware
        if tag == "nvs.write.torn" and fw is not None and fw.running == "upload" and not cuts:
            cuts.append(current_nonce(device.nvs))
            raise PowerCut(tag)

    device = Device(config(tmp_path, cloud, sim), point=cut_inside_the_nonce_write)
    await device.start()
    try:
        await until(lambda: len(cloud.accepted) >= 2)
    finally:
        await device.stop()
    assert len(cuts) == 1 and device.boots == 2
    nonces = cloud.nonces_seen
    assert nonces == sorted(set(nonces)) and nonces[0] == 10001
    assert all(u.status == 200 for u in cloud.uploads)


async def test_reset_keeps_nvs_and_flash_and_boots_again(tmp_path, sim, cloud) -> None:
    async with running(config(tmp_path, cloud, sim)) as device:
        await until(lambda: len(cloud.accepted) >= 1)
        nonce = current_nonce(device.nvs)
        await device.reset()
        await device.wait_booted(2)
        assert current_nonce(device.nvs) == nonce
        await until(lambda: len(cloud.accepted) >= 2)
        assert device.counters["boots.reset"] == 1
    assert cloud.accepted[-1].nonce == nonce + 1
    # the reboot is visible to the cloud: millis since boot went down
    assert cloud.accepted[-1].document.timestamp < cloud.accepted[0].document.timestamp + 15_000


async def test_power_cut_with_time_off_meters_no_current(tmp_path, sim, cloud) -> None:
    async with running(config(tmp_path, cloud, sim)) as device:
        await until(lambda: device.firmware is not None)
        await device.power_cut(off_s=10.0)
        report = device.energy()
        assert report.seconds[next(s for s in report.seconds if s.label == "off")] >= 9.5
        await until(lambda: device.boots == 2)


async def test_image_decides_the_firmware_not_the_configuration(tmp_path, sim, cloud) -> None:
    state = tmp_path / "board"
    async with running(config(tmp_path, cloud, sim, profile="spec", state_dir=state)) as device:
        await device.wait_booted(1)
        assert (device.profile.name, device.version, device.boot_decision.slot) == ("spec", "1.1.0", 0)
        slots = device.state()["slots"]
        assert slots[0]["firmware"] == ["spec", "1.1.0"] and slots[1]["firmware"] is None
    # the same board configured for the other profile still runs what is flashed
    async with running(config(tmp_path, cloud, sim, profile="reference-1.0.4", state_dir=state)) as device:
        await until(lambda: device.firmware is not None)
        assert (device.profile.name, device.version) == ("spec", "1.1.0")
        assert not any("factory flashed" in line for line in device.console.lines)


async def test_config_never_applied_at_runtime(tmp_path, sim, cloud) -> None:
    change = {"Changed": True, "pollFreqChanged": True, "newPollTimer": 1, "uploadFreqChanged": False,
              "newUploadTimer": 0, "regsChanged": False, "regsCount": 0, "regs": 0}  # fmt: skip
    cloud.config_replies.append(dict(change))
    async with running(config(tmp_path, cloud, sim)) as device:
        await until(lambda: len(cloud.config_replies) == 0 and len(cloud.accepted) >= 2)
        assert device.firmware.timers["poll"].period == 2.0  # stored, not applied
        await device.reset()
        await until(lambda: device.boots == 2 and device.firmware is not None)
        assert device.firmware.timers["poll"].period == 1.0  # a reboot applies it

    cloud.config_replies.append(dict(change))
    spec = config(
        tmp_path, cloud, sim, profile="spec", state_dir=tmp_path / "spec", device_id="spec-board",
        timings={"upload_s": 15.0},
    )  # fmt: skip
    async with running(spec) as device:
        await until(lambda: device.firmware is not None and device.firmware.timers["poll"].period == 1.0)
        assert device.boots == 1  # applied after the next upload, without a reboot
    acks = [json.loads(body) for _, path, body in cloud.requests if path == "/config/ack/spec-board"]
    assert acks[0]["config_ack"]["accepted"] == ["poll_interval"]


async def test_spec_posts_diagnostics_and_draws_less_current(tmp_path, sim, cloud) -> None:
    quick = {"diagnostics_s": 10.0, "upload_s": 15.0}
    spec = config(tmp_path, cloud, sim, profile="spec", state_dir=tmp_path / "spec", timings=quick)
    reference = config(tmp_path, cloud, sim, state_dir=tmp_path / "ref", device_id="ref-board")
    async with running(spec) as managed, running(reference) as always_on:
        await until(lambda: len(cloud.diagnostics) >= 2)
        managed_ma, always_on_ma = managed.energy().average_ma, always_on.energy().average_ma
    report = cloud.diagnostics[-1]
    assert report["device_id"] == "ESP32_EcoWatt_Smart" and report["firmware_version"] == "1.1.0"
    assert report["counters"]["boots"] == 1 and report["power"]["average_ma"] > 0
    assert managed_ma < always_on_ma / 2  # light sleep between timers versus the radio always listening


async def test_the_console_goes_out_on_the_boards_serial_port(tmp_path, sim, cloud) -> None:
    device = Device(config(tmp_path, cloud, sim), serial="pty")
    endpoint = await device.open_serial()
    reader = os.open(endpoint.port, os.O_RDONLY | os.O_NONBLOCK)
    try:
        await device.start()
        await until(lambda: any("[main]" in line for line in device.console.lines))
        text = read_pty(reader, "[main] EcoWatt")
    finally:
        await device.stop()
        os.close(reader)
    assert text.count("rst:0x1 (POWERON_RESET)") == 1  # one ROM banner: the endpoint's
    assert "][I][main] EcoWatt reference-1.0.4 firmware 1.0.4" in text


async def test_power_cuts_at_seeded_random_times_never_reuse_a_nonce(tmp_path, sim, cloud) -> None:
    rng = random.Random(20)
    async with running(config(tmp_path, cloud, sim)) as device:
        for cut in range(8):
            await asyncio.sleep(rng.uniform(0.05, 0.6))  # 2 to 24 device seconds
            await device.power_cut(off_s=rng.choice([0.0, 3.0]))
            await device.wait_booted(cut + 2)
        await until(lambda: len(cloud.accepted) >= 3)
    nonces = cloud.nonces_seen
    assert nonces == sorted(set(nonces)) and all(u.status == 200 for u in cloud.uploads)
    assert device.counters["boots"] == 9
