"""The board path end to end: the real esptool flashes the emulated board through its serial port, the
board boots what was flashed, and the real cloud (in-process, open operator API) sees it run.

* An image from `ecowatt firmware build` goes over a pty (ROM loader, compressed, in-band "run user
  code") and over rfc2217:// (DTR/RTS resets, the flasher stub, compressed, hard reset), to two boards
  at once; each then reports the new version to the cloud.
* A corrupt image in the passive slot, with otadata pointing at it, is refused by the bootloader; the
  old firmware keeps running and keeps telling the cloud so.
* `ecowatt provision` over the pty: the board reboots as the provisioned device, with its key, and its
  upload arrives in the cloud under that id.
* `ecowatt monitor` shows the console with timestamps, over a pty and over rfc2217://, without resetting
  the board, and stops on Ctrl-C.

Over a pty esptool cannot drive DTR/RTS: it is told `--before no-reset` (the endpoint's auto-download
answers its SYNC) and `--after soft-reset` with `--no-stub` (the ROM's "run user code" boots the app).
"""

from __future__ import annotations

import asyncio
import re
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import pytest

from cloud.key_registry import FIRMWARE_DEVICE_ID, KeyFiles
from cloud.server import CloudServer
from cloud.settings import CloudSettings
from device_emulator.config import DeviceConfig
from device_emulator.device import Device
from harness.cli import main as ecowatt
from harness.flashing import FlashOptions, flash_image
from protocol.otadata import blank_otadata, set_boot_slot
from protocol.partition_table import default_partition_table
from sim_inverter.service import SimConfig, SimService

SCALE = 40.0  # device seconds per loop second: an upload every 0.375 s, an OTA check every 0.5 s
TIMINGS = {"upload_s": 15.0, "ota_check_s": 20.0}  # the spec build's too (its upload is 15 min)
NOWHERE = "http://127.0.0.1:9"
# Generous connect timeouts: the tests are about flashing, not about how soon a silent port is reported.
PTY = FlashOptions(no_stub=True, before="no-reset", after="soft-reset", compress=True, connect_timeout=30)
RFC2217 = FlashOptions(connect_timeout=30)  # what a user types: reset lines, the stub, compressed
FIRMWARE_LINE = re.compile(r"^\[\s*\d+\]\[[EWID]\]")
# The board commands exactly as `ecowatt` mounts them, without importing every other part's CLI.
ECOWATT = [
    sys.executable,
    "-c",
    "import argparse, sys; from harness import board_cli; p = argparse.ArgumentParser(prog='ecowatt'); "
    "board_cli.add_commands(p.add_subparsers()); a = p.parse_args(); sys.exit(a.func(a))",
]
T = TypeVar("T")


@pytest.fixture
async def sim() -> AsyncIterator[SimService]:
    service = SimService(SimConfig(http_port=0, modbus_port=None, time_scale=SCALE, time_offset=12 * 3600.0))
    await service.start()
    yield service
    await service.stop()


class Cloud:
    """The real cloud, and what an operator reads of it."""

    def __init__(self, server: CloudServer, http: aiohttp.ClientSession, keys: KeyFiles) -> None:
        self.server, self.http, self.keys = server, http, keys

    @property
    def url(self) -> str:
        return self.server.url

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.http.get(self.url + path) as response:
            return response.status, await response.json(content_type=None)

    async def version(self, device_id: str) -> str | None:
        status, body = await self.get(f"/api/v1/devices/{device_id}")
        return body["firmware_version"] if status == 200 else None

    async def ota_checks(self) -> float:
        """OTA checks the cloud has answered so far (its Prometheus counter)."""
        async with self.http.get(self.url + "/metrics") as response:
            text = await response.text()
        pattern = r'ecowatt_http_responses_total\{[^}]*route="/ota/check/\{device_id\}"[^}]*\} (\S+)'
        return sum(float(count) for count in re.findall(pattern, text))


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[Cloud]:
    base = tmp_path / "cloud"
    settings = CloudSettings(
        host="127.0.0.1",
        port=0,
        data_dir=base / "data",
        keys_dir=base / "keys",
        firmware_dir=base / "firmware",
        open_operator_api=True,
    )
    async with CloudServer(settings) as server, aiohttp.ClientSession() as http:
        yield Cloud(server, http, KeyFiles(settings.keys_dir))


async def until(predicate: Callable[[], bool], timeout: float = 15.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


async def eventually(
    probe: Callable[[], Awaitable[T]], accept: Callable[[T], bool], timeout: float = 20.0
) -> T:
    """Ask `probe` until `accept` takes its answer; the answer (TimeoutError with the last one otherwise)."""
    value = await probe()
    try:
        async with asyncio.timeout(timeout):
            while not accept(value):
                await asyncio.sleep(0.05)
                value = await probe()
    except TimeoutError:
        raise TimeoutError(f"last answer: {value!r}") from None
    return value


@asynccontextmanager
async def board(
    tmp_path: Path, name: str, serial: str, cloud_url: str, inverter_url: str, **config: Any
) -> AsyncIterator[Device]:
    device = Device(
        DeviceConfig(
            cloud_url=cloud_url,
            inverter_url=inverter_url,
            state_dir=tmp_path / name,
            time_scale=SCALE,
            timings=TIMINGS,
            **config,
        ),
        serial=serial,
    )
    await device.start()
    try:
        yield device
    finally:
        await device.stop()
        assert device.crash is None, device.console.tail()


def build(tmp_path: Path, version: str, profile: str = "spec") -> Path:
    """`ecowatt firmware build`, as a user runs it."""
    out = tmp_path / "firmware"
    assert ecowatt(["firmware", "build", "--version", version, "--profile", profile, "--out", str(out)]) == 0
    return out / f"ecowatt-{profile}-{version}.bin"


async def run(*argv: str, timeout: float = 60.0) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), timeout)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    return process.returncode or 0, output.decode("utf-8", "replace")


def firmware_lines_while_downloading(device: Device) -> list[str]:
    """Firmware log lines between the ROM's "waiting for download" and the next reset."""
    lines = list(device.console.lines)
    found: list[str] = []
    downloading = False
    for line in lines:
        if line == "waiting for download":
            downloading = True
        elif line.startswith("rst:"):
            downloading = False
        elif downloading and FIRMWARE_LINE.match(line):
            found.append(line)
    return found


async def test_esptool_flashes_a_built_image_over_a_pty_and_over_rfc2217_and_the_cloud_sees_it_run(
    tmp_path: Path, cloud: Cloud, sim: SimService
) -> None:
    image = build(tmp_path, "1.0.7")
    keys = {name: cloud.keys.add_device(name) for name in ("board-pty", "board-rfc2217")}

    async def flash_and_watch(device: Device, options: FlashOptions) -> None:
        def version() -> Awaitable[str | None]:
            return cloud.version(device.device_id)

        assert await eventually(version, lambda v: v is not None) == "1.0.4"  # the factory build
        assert device.serial_port is not None
        result = await flash_image(device.serial_port, image, options)
        assert result.verified and result.size == image.stat().st_size
        await eventually(version, lambda v: v == "1.0.7")

    async with (
        board(tmp_path, "pty", "pty", cloud.url, sim.http_url, device_id="board-pty", key=keys["board-pty"]) as pty,
        board(
            tmp_path, "rfc", "rfc2217://127.0.0.1:0", cloud.url, sim.http_url,
            device_id="board-rfc2217", key=keys["board-rfc2217"],
        ) as rfc,
    ):  # fmt: skip
        await asyncio.gather(flash_and_watch(pty, PTY), flash_and_watch(rfc, RFC2217))
        transitions = {
            name: [t.cause for t in d.endpoint.transitions]
            for name, d in (("pty", pty), ("rfc", rfc))
            if d.endpoint
        }

    for device in (pty, rfc):
        assert (device.profile.name if device.profile else None, device.boots) == ("spec", 2)
        assert device.boot_decision is not None and device.boot_decision.slot == 0
        assert any(line.endswith("boot: spec firmware 1.0.7 (ota_0)") for line in device.console.lines)
    # Over the pty esptool's SYNC took the chip into the ROM loader, "run user code" out of it.
    assert transitions["pty"][-2:] == ["SYNC on a port without modem lines", "run user code"]
    # Over RFC 2217 the DTR/RTS sequences did it, with the ROM's banners; no firmware ran meanwhile.
    assert transitions["rfc"][-4:] == [
        "EN low",
        "EN released with IO0 low",
        "EN low",
        "EN released with IO0 high",
    ]
    assert firmware_lines_while_downloading(rfc) == []


async def test_a_corrupt_image_in_the_passive_slot_is_refused_and_the_old_firmware_keeps_running(
    tmp_path: Path, cloud: Cloud, sim: SimService
) -> None:
    corrupt = bytearray(build(tmp_path, "2.0.0").read_bytes())
    corrupt[len(corrupt) // 2] ^= 0xFF  # inside a segment: checksum and SHA-256 both fail
    (tmp_path / "corrupt.bin").write_bytes(corrupt)
    table = default_partition_table()
    passive, otadata = table.ota_apps[1], table.otadata
    assert otadata is not None
    (tmp_path / "otadata.bin").write_bytes(set_boot_slot(blank_otadata(), 1, len(table.ota_apps)))

    async with board(tmp_path, "board", "pty", cloud.url, sim.http_url) as device:

        def version() -> Awaitable[str | None]:
            return cloud.version(FIRMWARE_DEVICE_ID)

        assert await eventually(version, lambda v: v is not None) == "1.0.4"
        assert device.serial_port is not None
        code, output = await run(
            sys.executable, "-m", "esptool", "--chip", "esp32", "--port", device.serial_port,
            "--before", "no-reset", "--after", "soft-reset", "--no-stub", "write-flash", "-z",
            hex(passive.offset), str(tmp_path / "corrupt.bin"), hex(otadata.offset), str(tmp_path / "otadata.bin"),
        )  # fmt: skip
        assert code == 0 and output.count("Hash of data verified.") == 2, output
        await until(lambda: device.boots == 2 and device.firmware is not None)
        checks = await cloud.ota_checks()
        await eventually(cloud.ota_checks, lambda n: n > checks)  # the rebooted firmware has asked since
        assert await cloud.version(FIRMWARE_DEVICE_ID) == "1.0.4"
        assert device.state()["slots"][1]["firmware"] is None and device.boot_decision is not None
        assert (device.version, device.boot_decision.slot) == ("1.0.4", 0)
    refused = [line for line in device.console.lines if "OTA app partition slot 1 is not bootable" in line]
    assert len(refused) == 1 and refused[0].startswith("E (")
    assert any(
        line.endswith("boot: reference-1.0.4 firmware 1.0.4 (ota_0)") for line in device.console.tail(40)
    )


async def test_provisioning_over_the_pty_makes_the_board_upload_as_the_provisioned_device(
    tmp_path: Path, cloud: Cloud, sim: SimService
) -> None:
    key = cloud.keys.add_device("site-7-gw")
    async with board(
        tmp_path, "board", "pty", NOWHERE, NOWHERE
    ) as device:  # the build's settings lead nowhere
        assert device.serial_port is not None
        code, output = await run(
            *ECOWATT, "provision", "--port", device.serial_port, "--cloud", cloud.url, "--inverter", sim.http_url,
            "--device-id", "site-7-gw", "--key", key.hex(),
            "--before", "no-reset", "--after", "soft-reset", "--no-stub",
        )  # fmt: skip
        assert code == 0, output
        assert f"provisioned site-7-gw through {device.serial_port}" in output

        async def uploads() -> list[dict[str, Any]]:
            status, body = await cloud.get("/api/v1/devices/site-7-gw/uploads")
            return body["uploads"] if status == 200 else []

        first = (await eventually(uploads, lambda found: len(found) >= 1))[0]
        assert first["verdict"] == "accepted" and first["samples"] > 0, first
        assert device.device_id == "site-7-gw" and device.boots == 2
    assert key.hex() not in "\n".join(device.console.lines)  # the key is never printed


STAMPED = re.compile(r"^\d\d:\d\d:\d\d\.\d{3} (.*)$")


@pytest.mark.parametrize("serial", ["pty", "rfc2217://127.0.0.1:0"])
async def test_monitor_prints_the_console_with_timestamps_without_resetting_the_board(
    tmp_path: Path, serial: str
) -> None:
    async with board(tmp_path, "board", serial, NOWHERE, NOWHERE) as device:
        assert device.serial_port is not None
        process = await asyncio.create_subprocess_exec(
            *ECOWATT, "monitor", "--port", device.serial_port,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        assert process.stdout is not None
        seen: list[str] = []

        async def line_matching(pattern: str) -> str:
            async with asyncio.timeout(20):
                while True:
                    raw = await process.stdout.readline()  # type: ignore[union-attr]
                    assert raw, f"monitor ended; it printed {seen[-5:]}"
                    stamped = STAMPED.match(raw.decode().rstrip("\n"))
                    assert stamped, raw
                    seen.append(stamped.group(1))
                    if re.search(pattern, stamped.group(1)):
                        return stamped.group(1)

        try:
            await line_matching(r"^\[\s*\d+\]\[[EWI]\]\[\w+\] ")  # the running firmware's log
            assert device.boots == 1  # opening the port reset nothing
            await device.reset()
            await line_matching(r"^rst:0x1 \(POWERON_RESET\),boot:0x13")
            await line_matching(r"\]\[I\]\[main\] EcoWatt reference-1.0.4 firmware 1.0.4")
        finally:
            process.send_signal(signal.SIGINT)
            async with asyncio.timeout(10):
                code = await process.wait()
        assert code == 0


async def test_provision_names_the_port_when_nothing_answers_and_refuses_a_bad_key(tmp_path: Path) -> None:
    port = str(tmp_path / "no-such-port")
    common = ("--cloud", "http://127.0.0.1:5001", "--inverter", "http://127.0.0.1:8080", "--device-id", "gw")
    code, output = await run(*ECOWATT, "provision", "--port", port, *common, "--key", "ab" * 32)
    assert code == 1 and f"ecowatt provision: could not connect to an ESP32 on {port}" in output, output
    code, output = await run(*ECOWATT, "provision", "--port", port, *common, "--key", "abcd")
    assert code == 2 and "the key is 32 bytes" in output
