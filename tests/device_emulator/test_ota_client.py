"""The OTA client against a stand-in cloud serving releases made with protocol.firmware_release:
success, bad signature, wrong manifest hash, interrupted downloads, power cuts, boot confirmation and
rollback, per profile; and the verdicts of fota_case.json."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device_emulator.boot import check_slot
from device_emulator.ota_client import (
    POINT_CHUNK_WRITTEN,
    POINT_SWITCHED_UNVERIFIED,
    POINT_VERIFIED,
    FirmwareKeys,
    OtaClient,
)
from protocol.esp_image import build_firmware_image
from protocol.firmware_crypto import generate_rsa_key, load_private_key_pem, load_public_key_pem
from protocol.firmware_release import Release, prepare_release
from protocol.ota_messages import parse_manifest
from tests.device_emulator.component_board import Board, StandInCloud, run_until_cut

REFERENCE, SPEC = "reference-1.0.4", "spec"
CASE = json.loads((Path(__file__).parents[2] / "fixtures/vectors/fota_case.json").read_text())
VERDICTS = CASE["device_verification"]
AES_KEY = bytes.fromhex(CASE["aes256_key_hex"])
SIGNER = load_private_key_pem(CASE["rsa_private_key_pem"])
KEYS = FirmwareKeys(AES_KEY, load_public_key_pem(CASE["rsa_public_key_pem"]))
FAST = {"ota_reboot_delay_s": 0.2}


def release(profile: str, version: str, *, signer: object = SIGNER) -> Release:
    """A real EcoWatt image (bootable) as 9 chunks of 1024 bytes."""
    image = build_firmware_image(profile, version, size=8192)
    return prepare_release(image, version, AES_KEY, signer, timestamp="2025-01-01T00:00:00")  # type: ignore[arg-type]


@pytest.fixture
async def cloud() -> AsyncIterator[StandInCloud]:
    async with StandInCloud() as stand_in:
        yield stand_in
    assert stand_in.errors == []  # every request the device sent parsed


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def make_board(tmp_path: Path, session: aiohttp.ClientSession, cloud: StandInCloud, profile: str) -> Board:
    version = "1.0.4" if profile == REFERENCE else "1.1.0"
    return Board(tmp_path, session, cloud.url, timings=FAST).factory(profile, version)


def client(board: Board, **kw: object) -> OtaClient:
    ctx = board.boot()
    assert board.decision is not None
    return OtaClient(ctx, KEYS, running_slot=board.decision.slot, **kw)  # type: ignore[arg-type]


def running(board: Board) -> tuple[int, str]:
    board.boot()
    assert board.decision is not None
    return board.decision.slot, board.decision.identity.version


# --- success -------------------------------------------------------------------------------------


async def test_no_update_offered_means_nothing_happens(tmp_path, session, cloud) -> None:
    board = make_board(tmp_path, session, cloud, SPEC)
    result = await client(board).check()
    assert (result.ok, result.stage) == (False, "no_update")
    assert cloud.initiations == [] and board.reboots == []


async def test_spec_update_succeeds_reports_and_confirms_after_reboot(tmp_path, session, cloud) -> None:
    board = make_board(tmp_path, session, cloud, SPEC)
    cloud.release = release(SPEC, "1.2.0")
    result = await client(board).check()
    assert result.ok and result.stage == "verified"
    assert cloud.chunk_requests == list(range(9))
    assert board.reboots == ["OTA update to 1.2.0"]
    assert cloud.completions == [True]
    statuses = cloud.report_statuses()
    assert statuses[0] == ("progress", "started")
    assert ("progress", "downloading") in statuses
    assert statuses[-2:] == [("verification", "passed"), ("reboot", "rebooting")]

    ota = client(board)  # the reboot
    assert board.decision is not None and board.decision.pending_verify
    assert board.ctx is not None and board.ctx.version == "1.2.0"
    assert await ota.on_boot() == "confirmed"
    assert cloud.reports[-1].phase == "boot" and cloud.reports[-1].status == "confirmed"
    assert cloud.reports[-1].running_version == "1.2.0"
    assert running(board) == (1, "1.2.0")  # confirmed: it stays
    assert (await client(board).check()).stage == "no_update"


async def test_reference_update_succeeds_silently_and_is_never_confirmed(tmp_path, session, cloud) -> None:
    board = make_board(tmp_path, session, cloud, REFERENCE)
    cloud.release = release(REFERENCE, "1.0.5")
    result = await client(board).check()
    assert result.ok
    assert cloud.reports == [] and cloud.completions == []
    ota = client(board)
    assert board.decision is not None and board.decision.identity.version == "1.0.5"
    assert not board.decision.pending_verify  # switched without rollback states
    assert await ota.on_boot() is None
    assert running(board) == (1, "1.0.5")


async def test_after_a_fallback_the_update_goes_to_the_slot_that_is_not_running(
    tmp_path, session, cloud
) -> None:
    board = make_board(tmp_path, session, cloud, REFERENCE)
    flash = board.flash()
    flash.write_app_image(1, b"\xe9" + bytes(4095))  # a broken image otadata points at
    flash.set_boot_slot(1, rollback=False)
    ctx = board.boot()
    assert board.decision is not None and board.decision.fell_back and board.decision.slot == 0
    cloud.release = release(REFERENCE, "1.0.5")
    assert (await OtaClient(ctx, KEYS).check()).ok  # no running_slot given: found from flash
    assert running(board) == (1, "1.0.5")
    assert check_slot(flash, 0, flash.ota_slot(0)).identity == (REFERENCE, "1.0.4")  # untouched


# --- bad images ----------------------------------------------------------------------------------


async def test_bad_signature_spec_refuses_before_switching(tmp_path, session, cloud) -> None:
    board = make_board(tmp_path, session, cloud, SPEC)
    cloud.release = release(SPEC, "1.2.0", signer=generate_rsa_key())
    result = await client(board).check()
    assert (result.ok, result.stage) == (False, "rsa_signature")
    assert POINT_SWITCHED_UNVERIFIED not in board.points and POINT_VERIFIED not in board.points
    assert board.reboots == []
    assert ("verification", "failed") in cloud.report_statuses()
    assert cloud.completions == [False]
    assert running(board) == (0, "1.1.0")


async def test_bad_signature_reference_switches_then_rolls_back(tmp_path, session, cloud) -> None:
    board = make_board(tmp_path, session, cloud, REFERENCE)
    cloud.release = release(REFERENCE, "1.0.5", signer=generate_rsa_key())
    result = await client(board).check()
    assert (result.ok, result.stage) == (False, "rsa_signature")
    assert POINT_SWITCHED_UNVERIFIED in board.points  # it had switched before verifying
    assert board.reboots == ["OTA verification failed: rolling back"]
    assert running(board) == (0, "1.0.4")
    assert cloud.reports == []


@pytest.mark.parametrize(("profile", "accepted"), [(REFERENCE, True), (SPEC, False)])
async def test_wrong_manifest_hash(tmp_path, session, cloud, profile: str, accepted: bool) -> None:
    board = make_board(tmp_path, session, cloud, profile)
    good = release(profile, "1.2.0")
    cloud.release = Release(dataclasses.replace(good.manifest, sha256_hash="00" * 32), good.encrypted)
    factory_version = client(board).ctx.version
    result = await client(board).check()
    assert result.ok is accepted
    assert result.stage == ("verified" if accepted else "manifest_hash")
    assert running(board) == ((1, "1.2.0") if accepted else (0, factory_version))


@pytest.mark.parametrize(
    "changes",
    [{"encrypted_size": 3 * 1024 * 1024}, {"version": "9" * 5000}],
    ids=["larger than the slot", "version NVS cannot hold"],
)
async def test_an_offer_the_device_cannot_take_is_refused_before_any_download(
    tmp_path, session, cloud, changes: dict[str, object]
) -> None:
    board = make_board(tmp_path, session, cloud, SPEC)
    good = release(SPEC, "1.2.0")
    cloud.release = Release(dataclasses.replace(good.manifest, **changes), good.encrypted)
    result = await client(board).check()
    assert (result.ok, result.stage) == (False, "prepare")
    assert cloud.chunk_requests == [] and board.reboots == []
    assert running(board) == (0, "1.1.0")


# --- interruptions ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("profile", "restart_at"), [(REFERENCE, 0), (SPEC, 4)])
async def test_an_interrupted_download(tmp_path, session, cloud, profile: str, restart_at: int) -> None:
    board = make_board(tmp_path, session, cloud, profile)
    cloud.release = release(profile, "1.2.0")
    cloud.fail_chunks = {4}
    ota = client(board)
    first = await ota.check()
    assert (first.ok, first.stage, first.chunk) == (False, "chunk", 4)
    assert board.reboots == []
    cloud.chunk_requests.clear()
    second = await ota.check()  # the next OTA check, 60 s later
    assert second.ok and second.first_chunk == restart_at
    assert cloud.chunk_requests == list(range(restart_at, 9))
    assert cloud.initiations == ["1.2.0", "1.2.0"]
    assert running(board) == (1, "1.2.0")  # the resumed image is whole: it verified and boots
    if profile == SPEC:
        assert ("progress", "interrupted") in cloud.report_statuses()
        assert ("progress", "resumed") in cloud.report_statuses()


@pytest.mark.parametrize(("profile", "restart_at"), [(REFERENCE, 0), (SPEC, 3)])
async def test_a_power_cut_mid_download(tmp_path, session, cloud, profile: str, restart_at: int) -> None:
    board = make_board(tmp_path, session, cloud, profile)
    cloud.release = release(profile, "1.2.0")
    board.cut(POINT_CHUNK_WRITTEN, after=3)  # chunk 3 is in flash, its progress not yet saved
    assert await run_until_cut(client(board).check) == POINT_CHUNK_WRITTEN
    cloud.chunk_requests.clear()
    result = await client(board).check()  # RAM is gone; NVS and flash remain
    assert result.ok and result.first_chunk == restart_at
    assert cloud.chunk_requests == list(range(restart_at, 9))
    assert running(board) == (1, "1.2.0")  # chunk 3 was programmed twice and the image still verifies


@pytest.mark.parametrize("profile", [REFERENCE, SPEC])
async def test_a_power_cut_between_switch_and_verification(tmp_path, session, cloud, profile: str) -> None:
    board = make_board(tmp_path, session, cloud, profile)
    cloud.release = release(profile, "1.2.0", signer=generate_rsa_key())  # would fail verification
    board.cut(POINT_SWITCHED_UNVERIFIED)
    board.cut(POINT_VERIFIED)
    cut = await run_until_cut(client(board).check)
    if profile == REFERENCE:
        assert cut == POINT_SWITCHED_UNVERIFIED
        assert running(board) == (1, "1.2.0")  # the unverified image boots
    else:
        assert cut is None  # spec never switches before verification, and verification failed
        assert running(board) == (0, "1.1.0")


async def test_spec_power_cut_after_verification_resumes_straight_to_the_switch(
    tmp_path, session, cloud
) -> None:
    board = make_board(tmp_path, session, cloud, SPEC)
    cloud.release = release(SPEC, "1.2.0")
    board.cut(POINT_VERIFIED)
    assert await run_until_cut(client(board).check) == POINT_VERIFIED
    ota = client(board)
    assert board.decision is not None and board.decision.slot == 0  # not switched
    cloud.chunk_requests.clear()
    result = await ota.check()
    assert result.ok and result.first_chunk == 9 and cloud.chunk_requests == []
    assert running(board) == (1, "1.2.0")


# --- boot confirmation -------------------------------------------------------------------------------


async def test_spec_image_that_never_confirms_is_rolled_back_and_reported(tmp_path, session, cloud) -> None:
    board = make_board(tmp_path, session, cloud, SPEC)
    cloud.release = release(SPEC, "1.2.0")
    assert (await client(board).check()).ok
    assert running(board) == (1, "1.2.0")  # booted on probation; the power goes before on_boot
    ota = client(board)
    assert board.decision is not None and board.decision.fell_back
    assert board.ctx is not None and board.ctx.version == "1.1.0"
    assert await ota.on_boot() == "rolled_back"
    last = cloud.reports[-1]
    assert (last.phase, last.status, last.version, last.running_version) == (
        "boot",
        "rolled_back",
        "1.2.0",
        "1.1.0",
    )
    assert running(board) == (0, "1.1.0")


async def test_spec_image_that_fails_its_self_test_rolls_itself_back(tmp_path, session, cloud) -> None:
    board = make_board(tmp_path, session, cloud, SPEC)
    cloud.release = release(SPEC, "1.2.0")
    assert (await client(board).check()).ok

    async def broken() -> bool:
        return False

    assert await client(board, self_test=broken).on_boot() == "rolled_back"
    assert board.reboots[-1] == "self-test failed: rolling back"
    old = client(board)
    assert board.ctx is not None and board.ctx.version == "1.1.0"
    assert await old.on_boot() == "rolled_back"
    assert cloud.report_statuses()[-1] == ("boot", "rolled_back")


async def test_reference_image_that_never_confirms_stays(tmp_path, session, cloud) -> None:
    board = make_board(tmp_path, session, cloud, REFERENCE)
    cloud.release = release(REFERENCE, "1.0.5")
    assert (await client(board).check()).ok
    for _ in range(3):  # reset after reset, never confirmed, never rolled back
        assert running(board) == (1, "1.0.5")


async def test_spec_boot_report_survives_an_unreachable_cloud(tmp_path, session, cloud) -> None:
    board = make_board(tmp_path, session, cloud, SPEC)
    cloud.release = release(SPEC, "1.2.0")
    assert (await client(board).check()).ok
    reports = len(cloud.reports)
    board.cloud_url = "http://127.0.0.1:9"  # nothing listens on the discard port
    assert await client(board).on_boot() == "confirmed"
    board.cloud_url = cloud.url
    await client(board).check()  # the next check delivers the report first
    assert [(r.phase, r.status) for r in cloud.reports[reports:]] == [("boot", "confirmed")]


# --- fota_case.json --------------------------------------------------------------------------------


def _case_release(**manifest_changes: object) -> Release:
    manifest = dataclasses.replace(parse_manifest(json.dumps(CASE["manifest_file"])), **manifest_changes)
    return Release(manifest, base64.b64decode(CASE["encrypted_b64"]))


def _flipped() -> Release:
    case = _case_release()
    encrypted = bytearray(case.encrypted)
    encrypted[2 * 1024 + 100] ^= 1
    return Release(case.manifest, bytes(encrypted))


FOTA_VARIANTS = {
    "genuine": _case_release,
    "chunk2_one_bit_flipped": _flipped,
    "manifest_sha256_wrong_but_signature_valid": lambda: _case_release(sha256_hash="00" * 32),
    "wrong_iv": lambda: _case_release(iv=base64.b64encode(bytes(16)).decode()),
    "manifest_total_chunks_reduced_by_one": lambda: _case_release(total_chunks=4),
}


@pytest.mark.parametrize("variant", sorted(FOTA_VARIANTS))
async def test_fota_case_verdicts_on_reference(tmp_path, session, cloud, variant: str) -> None:
    expected = VERDICTS[variant]
    board = make_board(tmp_path, session, cloud, REFERENCE)
    cloud.release = FOTA_VARIANTS[variant]()
    result = await client(board).check()
    assert result.ok is expected["ok"]
    if not expected["ok"]:
        assert result.stage == expected["stage"]
        assert result.chunk == expected.get("chunk")
    if "sha256_of_written_image" in expected:
        assert board.ctx is not None
        written = board.ctx.flash.read_partition(board.ctx.flash.ota_slot(1), 0, CASE["plaintext_len"])
        assert hashlib.sha256(written).hexdigest() == expected["sha256_of_written_image"]
    # The case's image is 4 KiB of filler after the magic byte, not an app: whatever the verdict, the
    # bootloader refuses it and 1.0.4 keeps running.
    assert running(board) == (0, "1.0.4")


async def test_fota_case_wrong_manifest_hash_is_refused_by_spec(tmp_path, session, cloud) -> None:
    board = make_board(tmp_path, session, cloud, SPEC)
    cloud.release = FOTA_VARIANTS["manifest_sha256_wrong_but_signature_valid"]()
    result = await client(board).check()
    assert (result.ok, result.stage) == (False, "manifest_hash")


# --- whatever the cloud sends -------------------------------------------------------------------------


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(chunk=st.binary(max_size=1100), size_delta=st.sampled_from([0, 0, 1, -16]), index=st.integers(0, 8))
def test_any_chunk_from_the_cloud_ends_in_a_verdict(
    tmp_path_factory: pytest.TempPathFactory, chunk: bytes, size_delta: int, index: int
) -> None:
    """Chunk `index` replaced by arbitrary bytes (with a lying chunk_size) never crashes the client,
    and the device keeps booting its old image."""

    def body(n: int, data: bytes) -> dict[str, object]:
        served = chunk if n == index else data
        return {
            "success": True,
            "chunk_data": base64.b64encode(served).decode(),
            "chunk_size": len(served) + size_delta * (n == index),
        }

    async def scenario() -> None:
        async with StandInCloud() as cloud, aiohttp.ClientSession() as http:
            cloud.release = release(SPEC, "1.2.0")
            cloud.chunk_body = body
            board = Board(tmp_path_factory.mktemp("board"), http, cloud.url, timings=FAST).factory(
                SPEC, "1.1.0"
            )
            result = await client(board).check()
            assert not result.ok and result.stage in ("chunk", "magic_byte", "write", "size", "manifest_hash")
            assert running(board) == (0, "1.1.0")

    asyncio.run(scenario())
