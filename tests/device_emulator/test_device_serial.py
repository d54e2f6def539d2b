"""The emulated board with its serial port: the host's reset lines stop and restart the firmware, the
ROM banner goes out once per reset, and the board boots with the settings provisioned in its flash.

Everything runs in this process (the endpoint's reset circuit is driven with `set_lines`, as the RFC
2217 server drives it); the real esptool over a pty and RFC 2217 is in tests/harness/test_board_path.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import struct
import zlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from device_emulator.config import DeviceConfig
from device_emulator.context import FirmwareContext
from device_emulator.device import Device
from device_emulator.firmware import Components
from device_emulator.flash import Flash, factory_program
from device_emulator.serial_endpoint import ChipMode
from harness.provisioning import BoardSettings, nvs_image, nvs_partition
from protocol.envelope import open_envelope
from protocol.esp_image import build_firmware_image
from sim_inverter.service import SimConfig, SimService
from tests.device_emulator.core_support import IdlePart, read_pty
from tests.device_emulator.standin_cloud import StandInCloud

SCALE = 40.0  # device seconds per loop second: an upload every 0.375 s
NOWHERE = "http://127.0.0.1:9"  # the discard port: nothing answers there
FIRMWARE_LINE = re.compile(r"^\[\s*\d+\]\[[EWID]\]")


@pytest.fixture
async def sim() -> AsyncIterator[SimService]:
    service = SimService(SimConfig(http_port=0, modbus_port=None, time_scale=SCALE, time_offset=12 * 3600.0))
    await service.start()
    yield service
    await service.stop()


@pytest.fixture
async def cloud() -> AsyncIterator[StandInCloud]:
    stand_in = StandInCloud()
    await stand_in.start()
    yield stand_in
    await stand_in.stop()


async def until(predicate: Callable[[], bool], timeout: float = 8.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.01)


def config(tmp_path: Path, cloud_url: str, inverter_url: str, **kw: object) -> DeviceConfig:
    return DeviceConfig(
        cloud_url=cloud_url, inverter_url=inverter_url, state_dir=tmp_path / "board", time_scale=SCALE, **kw
    )  # type: ignore[arg-type]


async def test_download_mode_stops_the_firmware_and_the_next_run_boots_what_the_flash_holds(
    tmp_path: Path, sim: SimService, cloud: StandInCloud
) -> None:
    device = Device(config(tmp_path, cloud.url, sim.http_url), serial="pty")
    await device.start()
    try:
        await until(lambda: len(cloud.accepted) >= 1)
        board = device.endpoint
        assert board is not None
        board.set_lines(dtr=False, rts=True)  # esptool's classic sequence: EN low...
        board.set_lines(dtr=True, rts=False)  # ...released with IO0 low
        assert device.chip_mode is ChipMode.DOWNLOAD
        await until(lambda: not device.running)
        uploads = len(cloud.uploads)
        # What esptool would write meanwhile; the firmware is not there to see it.
        device.flash.write_app_image(0, build_firmware_image("spec", "1.0.7"))
        await asyncio.sleep(1.0)  # 40 device seconds: two uploads and a poll every 2 s, were it running
        assert len(cloud.uploads) == uploads and device.boots == 1 and device.firmware is None

        board.set_lines(dtr=False, rts=True)  # a hard reset: EN pulse with IO0 high
        board.set_lines(rts=False)
        await device.wait_booted(2)
        assert (device.profile.name, device.version) == ("spec", "1.0.7")
    finally:
        await device.stop()
    lines = list(device.console.lines)
    assert [line for line in lines if line.startswith("rst:")] == [
        "rst:0x1 (POWERON_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)",
        "rst:0x1 (POWERON_RESET),boot:0x3 (DOWNLOAD_BOOT(UART0/UART1/SDIO_REI_REO_V2))",
        "rst:0x1 (POWERON_RESET),boot:0x13 (SPI_FAST_FLASH_BOOT)",
    ]
    download = lines.index("waiting for download")
    rebooted = next(i for i in range(download, len(lines)) if lines[i].startswith("rst:"))
    assert not [line for line in lines[download:rebooted] if FIRMWARE_LINE.match(line)]
    assert any(re.fullmatch(r"I \(\d+\) boot: Partition Table:", line) for line in lines[rebooted:])
    assert "][I][main] EcoWatt spec firmware 1.0.7" in " ".join(lines[rebooted:])


class RebootOnce(IdlePart):
    """An OTA part whose first check asks for a restart (as a verified update does)."""

    def __init__(self, ctx: FirmwareContext, asked: list[str]) -> None:
        super().__init__(ctx.clock)
        self.ctx, self.asked = ctx, asked

    async def check(self) -> None:
        if not self.asked:
            self.asked.append(self.ctx.version)
            self.ctx.request_reboot("test restart")


async def test_a_restart_of_the_firmware_prints_the_software_reset_banner_on_the_port(
    tmp_path: Path, sim: SimService, cloud: StandInCloud
) -> None:
    asked: list[str] = []

    def components(ctx: FirmwareContext) -> Components:
        return Components(IdlePart(ctx.clock), IdlePart(ctx.clock), RebootOnce(ctx, asked))

    device = Device(
        config(tmp_path, cloud.url, sim.http_url, timings={"ota_check_s": 5.0}),
        serial="pty",
        components=components,
    )
    port = (await device.open_serial()).port
    reader = os.open(port, os.O_RDONLY | os.O_NONBLOCK)
    try:
        await device.start()
        await device.wait_booted(2)
        text = ""
        async with asyncio.timeout(5):
            while text.count("][main] EcoWatt") < 2:  # the firmware's first line, after each boot
                text += read_pty(reader, "\n", timeout=0.1)
                await asyncio.sleep(0.01)
    finally:
        await device.stop()
        os.close(reader)
    assert text.count("ets Jun  8 2016") == 2  # one ROM banner per reset, and only the endpoint's
    assert "rst:0x1 (POWERON_RESET),boot:0x13" in text and "rst:0xc (SW_CPU_RESET),boot:0x13" in text
    assert device.last_reboot_reason == "test restart" and device.counters["boots.power-on"] == 1


def provisioned_board(tmp_path: Path, nvs: bytes) -> None:
    """A factory board whose nvs partition holds `nvs` (what `ecowatt provision` leaves)."""
    flash = Flash(tmp_path / "board" / "flash.bin")
    factory_program(flash, build_firmware_image("reference-1.0.4", "1.0.4"))
    flash.write(nvs_partition().offset, nvs)


async def test_the_board_runs_with_the_provisioned_id_key_cloud_and_inverter(
    tmp_path: Path, sim: SimService, cloud: StandInCloud
) -> None:
    key = bytes(range(32))
    provisioned_board(tmp_path, nvs_image(BoardSettings(cloud.url, sim.http_url, "site-7-gw", key)))
    cloud.keys = [key]
    device = Device(config(tmp_path, NOWHERE, NOWHERE))  # the build's settings lead nowhere
    await device.start()
    try:
        await until(lambda: len(cloud.accepted) >= 1)
    finally:
        await device.stop()
    opened = open_envelope(cloud.accepted[0].body, key)
    assert json.loads(opened.document)["device_id"] == "site-7-gw"
    assert device.device_id == "site-7-gw" and device.state()["provisioned"] is True
    assert any("provisioned: device site-7-gw" in line for line in device.console.lines)


async def test_an_unreadable_nvs_partition_leaves_the_builds_settings(
    tmp_path: Path, sim: SimService, cloud: StandInCloud
) -> None:
    nvs = bytearray(nvs_image(BoardSettings(NOWHERE, NOWHERE, "never-used", bytes(32))))
    nvs[8] = 0xFD  # a page format version this firmware does not know (header CRC still right)
    struct.pack_into("<I", nvs, 28, zlib.crc32(bytes(nvs[4:28]), 0xFFFFFFFF))
    provisioned_board(tmp_path, bytes(nvs))
    device = Device(config(tmp_path, cloud.url, sim.http_url))
    await device.start()
    try:
        await until(lambda: len(cloud.accepted) >= 1)
    finally:
        await device.stop()
    assert device.device_id == "ESP32_EcoWatt_Smart" and not device.provisioned.present
    assert any("NVS partition unreadable" in line for line in device.console.lines)
