"""The emulated board (device_emulator's OTA client, booted by its bootloader) updating itself from
this cloud: firmware 1.0.4 silently, the spec firmware with resume, reports and boot confirmation."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from device_emulator.ota_client import POINT_CHUNK_WRITTEN, FirmwareKeys, OtaClient
from protocol.esp_image import build_firmware_image
from tests.cloud.ota_stack import AES_KEY, PUBLIC_KEY, CloudStack, cloud_stack
from tests.device_emulator.component_board import Board, run_until_cut

KEYS = FirmwareKeys(AES_KEY, PUBLIC_KEY)
FAST = {"ota_reboot_delay_s": 0.01}
BOARD = "ESP32_EcoWatt_Smart"


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[CloudStack]:
    async with cloud_stack(tmp_path / "cloud") as running:
        yield running


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def ota(board: Board) -> OtaClient:
    ctx = board.boot()
    assert board.decision is not None
    return OtaClient(ctx, KEYS, running_slot=board.decision.slot)


async def release(stack: CloudStack, profile: str, version: str) -> None:
    await stack.publish(build_firmware_image(profile, version, size=20_000), version)
    await stack.rollout(version, [BOARD])


async def test_firmware_104_updates_from_this_cloud(tmp_path: Path, stack: CloudStack,
                                                    http: aiohttp.ClientSession) -> None:
    board = Board(tmp_path / "board", http, str(stack.client.make_url("")).rstrip("/"), timings=FAST)
    board.factory("reference-1.0.4", "1.0.4")
    await release(stack, "reference-1.0.4", "1.0.5")
    result = await ota(board).check()
    assert result.ok, result
    assert board.boot() and board.decision is not None and board.decision.identity.version == "1.0.5"

    assert (await ota(board).check()).stage == "no_update"  # it now asks with 1.0.5
    history = await stack.operator("GET", f"/api/v1/devices/{BOARD}/ota")
    assert history["reports"] == []  # 1.0.4 never reports...
    assert history["rollout"]["state"] == "succeeded"  # ...its next check says what runs


async def test_the_spec_firmware_resumes_reports_and_confirms(tmp_path: Path, stack: CloudStack,
                                                              http: aiohttp.ClientSession) -> None:
    board = Board(tmp_path / "board", http, str(stack.client.make_url("")).rstrip("/"), timings=FAST)
    board.factory("spec", "1.1.0")
    await release(stack, "spec", "1.2.0")
    board.cut(POINT_CHUNK_WRITTEN, after=7)  # the power goes after 8 chunks
    client = ota(board)
    assert await run_until_cut(client.check) == POINT_CHUNK_WRITTEN

    result = await ota(board).check()  # powered again: initiates again and resumes
    assert result.ok and result.first_chunk > 0, result
    assert await ota(board).on_boot() == "confirmed"

    history = await stack.operator("GET", f"/api/v1/devices/{BOARD}/ota")
    kinds = [(r["kind"], r["status"]) for r in history["reports"]]
    assert kinds[0] == ("progress", "started") and ("progress", "resumed") in kinds
    assert kinds[-4:] == [("verification", "passed"), ("complete", "success"), ("reboot", "rebooting"),
                          ("boot", "confirmed")]
    assert [s["status"] for s in history["sessions"]] == ["completed", "replaced"]
    assert history["firmware_version"] == "1.2.0" and history["rollout"]["state"] == "succeeded"
