"""OTA over real HTTP: the firmware 1.0.4 flow byte for byte, re-initiation, version order, resume,
reports, rollouts, expiry, faults, and clear 4xx answers for anything wrong."""

from __future__ import annotations

import base64
import hashlib
import json
import random
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud.ota_repository import version_key
from protocol.errors import DocumentError
from protocol.firmware_crypto import SignatureScheme
from protocol.firmware_release import FirmwareDownload, run_download
from protocol.ota_messages import (
    FIRMWARE_CHUNK_LIMIT,
    OtaReport,
    ReportPhase,
    initiate_request,
    parse_check_reply,
    parse_chunk_reply,
    parse_initiate_reply,
    parse_manifest,
    verify_manifest,
)
from tests.cloud.ota_stack import AES_KEY, FOTA_IMAGE, PUBLIC_KEY, CloudStack, cloud_stack, image_of
from tests.cloud.storage_backends import FakeClock, StorageFactory

BOARD = "ESP32_EcoWatt_Smart"


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def stack(tmp_path: Path, clock: FakeClock):
    async with cloud_stack(tmp_path, wall_clock=clock) as running:
        yield running


async def device_check(stack: CloudStack, device: str, version: str) -> dict:
    response = await stack.client.get(f"/ota/check/{device}", params={"version": version})
    assert response.status == 200
    return await response.json()


async def initiate(stack: CloudStack, device: str, version: str) -> str:
    # Exactly what the firmware sends: Content-Type application/json, {"firmware_version": ...}.
    response = await stack.client.post(f"/ota/initiate/{device}", data=initiate_request(version),
                                       headers={"Content-Type": "application/json"})
    assert response.status in (200, 201)
    return parse_initiate_reply(await response.read())


async def fetch_chunk(stack: CloudStack, device: str, version: str, index: int) -> bytes:
    response = await stack.client.get(f"/ota/chunk/{device}", params={"version": version, "chunk": str(index)})
    assert response.status == 200, await response.text()
    assert response.headers.get("Transfer-Encoding") is None and response.content_length
    return parse_chunk_reply(await response.read())


async def download(stack: CloudStack, device: str, version: str, indices: list[int]) -> dict[int, bytes]:
    return {i: await fetch_chunk(stack, device, version, i) for i in indices}


async def test_firmware_104_downloads_and_verifies_a_published_release(stack: CloudStack) -> None:
    image = image_of(50_000)
    await stack.publish(image, "1.0.5")
    await stack.rollout("1.0.5", [BOARD])

    reply = await device_check(stack, BOARD, "1.0.4")
    info = reply["update_info"]  # nested, as the firmware reads it (§7.2)
    assert reply["update_available"] is True and info["latest_version"] == "1.0.5"
    assert info["current_version"] == "1.0.4" and info["firmware_size"] == info["original_size"] == len(image)
    offer = parse_check_reply(json.dumps(reply))
    assert offer is not None and len(offer.iv) == 16

    session = await initiate(stack, BOARD, "1.0.5")
    assert session.startswith(f"{BOARD}_1.0.5_")
    device = FirmwareDownload(offer, AES_KEY, PUBLIC_KEY, check_manifest_hash=True)
    served = b""
    for index in range(offer.total_chunks):
        response = await stack.client.get(f"/ota/chunk/{BOARD}?version=1.0.5&chunk={index}")
        body = await response.json()
        data = base64.b64decode(body["chunk_data"], validate=True)  # standard base64, padded
        assert body["success"] is True and body["chunk_size"] == len(data)
        assert len(data) % 16 == 0 and 0 < len(data) <= FIRMWARE_CHUNK_LIMIT
        device.accept_chunk(index, data)
        served += data
    assert device.finish() == hashlib.sha256(image).hexdigest()

    # The manifest carries our extensions and is itself signed with the key the devices hold.
    record = await stack.operator("GET", "/api/v1/firmware/1.0.5")
    manifest = parse_manifest(json.dumps(record["manifest"]))
    verify_manifest(manifest, PUBLIC_KEY)
    assert (manifest.device_type, manifest.security_counter) == ("ecowatt-esp32", 1)
    assert manifest.encrypted_sha256 == hashlib.sha256(served).hexdigest() == record["encrypted_sha256"]
    assert "path" not in record


async def test_the_reference_vector_image_round_trips_under_pss_too(stack: CloudStack) -> None:
    await stack.publish(FOTA_IMAGE, "1.0.5", scheme="pss")
    await stack.rollout("1.0.5", [BOARD])
    offer = parse_check_reply(json.dumps(await device_check(stack, BOARD, "1.0.4")))
    assert offer is not None and offer.total_chunks == 5  # 4096 bytes -> 4112 encrypted -> 4 x 1024 + 16
    await initiate(stack, BOARD, "1.0.5")
    chunks = await download(stack, BOARD, "1.0.5", list(range(offer.total_chunks)))
    verdict = run_download(FirmwareDownload(offer, AES_KEY, PUBLIC_KEY, scheme=SignatureScheme.PSS),
                           [chunks[i] for i in sorted(chunks)])
    assert verdict.ok, verdict
    # A 1.0.4 board (PKCS#1 v1.5 only) must refuse a PSS-signed image.
    refused = run_download(FirmwareDownload(offer, AES_KEY, PUBLIC_KEY), [chunks[i] for i in sorted(chunks)])
    assert (refused.ok, refused.stage) == (False, "rsa_signature")


async def test_initiating_again_is_always_allowed_and_replaces_the_session(stack: CloudStack) -> None:
    await stack.publish(image_of(5000), "1.0.5")
    await stack.rollout("1.0.5", [BOARD])
    first = await initiate(stack, BOARD, "1.0.5")
    await fetch_chunk(stack, BOARD, "1.0.5", 0)
    # 1.0.4 aborts on any chunk error and, a minute later, initiates again from chunk 0.
    second = await initiate(stack, BOARD, "1.0.5")
    third = await initiate(stack, BOARD, "1.0.5")
    assert len({first, second, third}) == 3
    await fetch_chunk(stack, BOARD, "1.0.5", 0)
    history = await stack.operator("GET", f"/api/v1/devices/{BOARD}/ota")
    assert {s["session_id"]: s["status"] for s in history["sessions"]} == {
        first: "replaced", second: "replaced", third: "active"}


async def test_only_newer_versions_are_offered_in_semantic_order(stack: CloudStack) -> None:
    await stack.publish(image_of(3000, 1), "1.0.9")
    second = await stack.publish(image_of(3000, 2), "1.0.10")
    assert second["security_counter"] == 2  # the next one, automatically
    await stack.rollout("1.0.10", [BOARD])

    offered = await device_check(stack, BOARD, "1.0.9")  # "1.0.10" < "1.0.9" as strings: not as versions
    assert offered["update_info"]["latest_version"] == "1.0.10"
    for running in ("1.0.10", "1.0.10.0", "1.1", "2.0.0"):  # the running version, or newer
        reply = await device_check(stack, BOARD, running)
        assert reply["update_available"] is False
        assert reply["update_info"] == {"available": False, "current_version": running}

    # The repository refuses a release below the newest one, and a counter that does not go up.
    refused = await stack.publish(image_of(3000, 3), "1.0.8", expect=400)
    assert "above the newest release" in refused["error"]
    refused = await stack.publish(image_of(3000, 3), "1.0.11", expect=400, security_counter=2)
    assert "security_counter" in refused["error"]
    await stack.publish(image_of(3000, 3), "1.0.10", expect=400)  # versions are immutable


async def test_a_device_cannot_initiate_what_it_is_not_offered(stack: CloudStack) -> None:
    await stack.publish(image_of(3000, 1), "1.0.5")
    await stack.publish(image_of(3000, 2), "1.0.6")
    await stack.rollout("1.0.6", [BOARD])
    await device_check(stack, BOARD, "1.0.6")  # it now runs 1.0.6
    for version in ("1.0.5", "1.0.6", "9.9.9"):
        response = await stack.client.post(f"/ota/initiate/{BOARD}", json={"firmware_version": version})
        body = await response.json()
        assert response.status == 400 and body["success"] is False and body["error"]


async def test_chunks_are_served_in_any_order_so_a_device_can_resume(stack: CloudStack) -> None:
    image = image_of(20_000)
    await stack.publish(image, "1.0.5")
    await stack.rollout("1.0.5", [BOARD])
    offer = parse_check_reply(json.dumps(await device_check(stack, BOARD, "1.0.4")))
    assert offer is not None and offer.total_chunks == 20
    order = list(range(offer.total_chunks))
    random.Random(7).shuffle(order)
    await initiate(stack, BOARD, "1.0.5")
    chunks = await download(stack, BOARD, "1.0.5", order[:8])
    await initiate(stack, BOARD, "1.0.5")  # interrupted: a new session, the rest of the chunks
    chunks |= await download(stack, BOARD, "1.0.5", list(reversed(order[8:])))
    verdict = run_download(FirmwareDownload(offer, AES_KEY, PUBLIC_KEY, check_manifest_hash=True),
                           [chunks[i] for i in range(offer.total_chunks)])
    assert verdict.ok and verdict.sha256 == hashlib.sha256(image).hexdigest()


async def test_reports_are_stored_with_times_and_move_the_rollout(stack: CloudStack, clock: FakeClock) -> None:
    await stack.publish(image_of(3000), "1.0.5")
    rollout = await stack.rollout("1.0.5", [BOARD, "other"])
    await device_check(stack, BOARD, "1.0.4")
    session = await initiate(stack, BOARD, "1.0.5")
    reports = [
        OtaReport(ReportPhase.PROGRESS, "started", "1.0.5", 0, 3),
        OtaReport(ReportPhase.PROGRESS, "downloading", "1.0.5", 3, 3),
        OtaReport(ReportPhase.VERIFICATION, "passed", "1.0.5"),
        OtaReport(ReportPhase.REBOOT, "rebooting", "1.0.5"),
    ]
    start = clock.now
    for report in reports[:3]:
        response = await stack.client.post(f"/ota/report/{BOARD}", data=report.to_json())
        assert response.status == 200 and (await response.json())["report"]["session_id"] == session
        clock.advance(10)
    completed = await stack.client.post(f"/ota/complete/{BOARD}", json={"success": True})
    assert completed.status == 200 and (await completed.json())["session"]["status"] == "completed"
    await stack.client.post(f"/ota/report/{BOARD}", data=reports[3].to_json())
    clock.advance(10)
    boot = OtaReport(ReportPhase.BOOT, "confirmed", "1.0.5", running_version="1.0.5")
    assert (await stack.client.post(f"/ota/report/{BOARD}", data=boot.to_json())).status == 200

    history = await stack.operator("GET", f"/api/v1/devices/{BOARD}/ota")
    assert [(r["kind"], r["status"]) for r in history["reports"]] == [
        ("progress", "started"), ("progress", "downloading"), ("verification", "passed"),
        ("complete", "success"), ("reboot", "rebooting"), ("boot", "confirmed")]
    assert [r["reported_at"] - start for r in history["reports"]] == [0, 10, 20, 30, 30, 40]
    assert all(r["session_id"] == session for r in history["reports"])
    assert history["firmware_version"] == "1.0.5" and history["rollout"]["state"] == "succeeded"
    targets = (await stack.operator("GET", f"/api/v1/rollouts/{rollout['id']}"))["targets"]
    assert {t["device_id"]: t["state"] for t in targets} == {BOARD: "succeeded", "other": "pending"}
    assert (await device_check(stack, BOARD, "1.0.5"))["update_available"] is False
    stats = await stack.operator("GET", "/ota/stats")
    assert (stats["successful_updates"], stats["active_sessions"], stats["success_rate"]) == (1, 0, 100.0)


async def test_a_rollout_completes_when_every_device_is_done(stack: CloudStack) -> None:
    await stack.publish(image_of(3000), "1.0.5")
    rollout = await stack.rollout("1.0.5", [BOARD, "other"])
    await device_check(stack, BOARD, "1.0.5")  # 1.0.4 never reports: running the release is the proof
    assert (await stack.operator("GET", f"/api/v1/rollouts/{rollout['id']}"))["state"] == "active"
    rolled = OtaReport(ReportPhase.BOOT, "rolled_back", "1.0.5", running_version="1.0.4")
    assert (await stack.client.post("/ota/report/other", data=rolled.to_json())).status == 200
    done = await stack.operator("GET", f"/api/v1/rollouts/{rollout['id']}")
    assert done["state"] == "completed"
    assert {t["device_id"]: t["state"] for t in done["targets"]} == {BOARD: "succeeded", "other": "rolled_back"}


async def test_the_firmware_flow_on_each_storage_backend(tmp_path: Path, storage_factory: StorageFactory) -> None:
    async with cloud_stack(tmp_path, storage_url=await storage_factory.new_url()) as stack:
        await stack.publish(image_of(8000), "1.0.5")
        await stack.rollout("1.0.5", [BOARD])
        offer = parse_check_reply(json.dumps(await device_check(stack, BOARD, "1.0.4")))
        assert offer is not None
        await initiate(stack, BOARD, "1.0.5")
        chunks = await download(stack, BOARD, "1.0.5", list(range(offer.total_chunks)))
        assert run_download(FirmwareDownload(offer, AES_KEY, PUBLIC_KEY), [chunks[i] for i in sorted(chunks)]).ok
        completed = await stack.client.post(f"/ota/complete/{BOARD}", json={"success": True})
        assert completed.status == 200
        assert (await stack.operator("GET", "/ota/stats"))["total_bytes_transferred"] == offer.encrypted_size


async def test_a_rolled_back_device_is_not_offered_the_release_again(stack: CloudStack) -> None:
    await stack.publish(image_of(3000), "1.0.5")
    await stack.rollout("1.0.5", [BOARD])
    await initiate(stack, BOARD, "1.0.5")
    rolled = OtaReport(ReportPhase.BOOT, "rolled_back", "1.0.5", running_version="1.0.4")
    assert (await stack.client.post(f"/ota/report/{BOARD}", data=rolled.to_json())).status == 200
    assert (await device_check(stack, BOARD, "1.0.4"))["update_available"] is False
    response = await stack.client.post(f"/ota/initiate/{BOARD}", json={"firmware_version": "1.0.5"})
    assert response.status == 400


async def test_a_rollout_targets_only_the_devices_it_names(stack: CloudStack) -> None:
    await stack.publish(image_of(3000), "1.0.5")
    rollout = await stack.rollout("1.0.5", ["alpha", "beta"], name="canary")
    assert rollout["name"] == "canary" and [t["device_id"] for t in rollout["targets"]] == ["alpha", "beta"]
    assert (await device_check(stack, "alpha", "1.0.4"))["update_available"] is True
    assert (await device_check(stack, "gamma", "1.0.4"))["update_available"] is False
    response = await stack.client.post("/ota/initiate/gamma", json={"firmware_version": "1.0.5"})
    assert response.status == 400
    response = await stack.client.get("/ota/chunk/gamma?version=1.0.5&chunk=0")
    assert response.status == 400 and (await response.json())["error"].startswith("No active OTA session")

    await stack.operator("PATCH", f"/api/v1/rollouts/{rollout['id']}", json={"state": "paused"})
    assert (await device_check(stack, "alpha", "1.0.4"))["update_available"] is False
    await stack.operator("PATCH", f"/api/v1/rollouts/{rollout['id']}", json={"state": "active"})
    assert (await device_check(stack, "beta", "1.0.4"))["update_available"] is True
    listed = await stack.operator("GET", "/api/v1/rollouts")
    assert [r["name"] for r in listed["rollouts"]] == ["canary"]
    clash = await stack.operator("POST", "/api/v1/rollouts", json={"version": "1.0.5", "devices": ["x"],
                                                                   "name": "canary"}, expect=400)
    assert "exists" in clash["error"]
    await stack.operator("POST", "/api/v1/rollouts", json={"version": "9.9.9", "devices": ["x"]}, expect=400)
    await stack.operator("GET", "/api/v1/rollouts/999", expect=404)


async def test_an_idle_session_expires(stack: CloudStack, clock: FakeClock) -> None:
    await stack.publish(image_of(3000), "1.0.5")
    await stack.rollout("1.0.5", [BOARD])
    await initiate(stack, BOARD, "1.0.5")
    await fetch_chunk(stack, BOARD, "1.0.5", 0)
    clock.advance(stack.settings.limits.ota_session_timeout_seconds - 1)
    await fetch_chunk(stack, BOARD, "1.0.5", 1)  # activity keeps it open
    clock.advance(stack.settings.limits.ota_session_timeout_seconds)
    response = await stack.client.get(f"/ota/chunk/{BOARD}?version=1.0.5&chunk=2")
    assert response.status == 400 and "No active OTA session" in (await response.json())["error"]
    history = await stack.operator("GET", f"/api/v1/devices/{BOARD}/ota")
    assert [s["status"] for s in history["sessions"]] == ["expired"]
    await initiate(stack, BOARD, "1.0.5")
    await fetch_chunk(stack, BOARD, "1.0.5", 2)


async def test_seed_status_cancel_and_stats(stack: CloudStack) -> None:
    await stack.publish(image_of(3000), "1.0.5")
    await stack.rollout("1.0.5", [BOARD])
    idle = await stack.operator("GET", f"/ota/status/{BOARD}")
    assert idle["status"] == {"error": "No active OTA session"}
    await initiate(stack, BOARD, "1.0.5")
    await download(stack, BOARD, "1.0.5", [0, 1])
    status = (await stack.operator("GET", f"/ota/status/{BOARD}"))["status"]
    assert (status["chunks_served"], status["bytes_transferred"], status["progress_percent"]) == (2, 2048, 66.7)
    assert len((await stack.operator("GET", "/ota/status"))["sessions"]) == 1
    cancelled = await stack.operator("POST", f"/ota/cancel/{BOARD}")
    assert cancelled["session"]["status"] == "cancelled"
    await stack.operator("POST", f"/ota/cancel/{BOARD}", expect=400)
    stats = await stack.operator("GET", "/ota/stats")
    assert (stats["total_updates_initiated"], stats["total_bytes_transferred"]) == (1, 2048)
    assert stats["sessions"]["cancelled"] == 1


async def test_faults_corrupt_a_chunk_or_announce_a_wrong_hash(stack: CloudStack) -> None:
    await stack.publish(image_of(5000), "1.0.5")
    await stack.rollout("1.0.5", [BOARD])
    await stack.operator("POST", "/fault/enable", json={"fault_type": "wrong_hash", "device_id": BOARD})
    offer = parse_check_reply(json.dumps(await device_check(stack, BOARD, "1.0.4")))
    assert offer is not None
    await initiate(stack, BOARD, "1.0.5")
    chunks = await download(stack, BOARD, "1.0.5", list(range(offer.total_chunks)))
    ordered = [chunks[i] for i in range(offer.total_chunks)]
    # Firmware 1.0.4 ignores the manifest hash (§7.3 step 7); a device that checks it refuses.
    assert run_download(FirmwareDownload(offer, AES_KEY, PUBLIC_KEY), ordered).ok
    strict = run_download(FirmwareDownload(offer, AES_KEY, PUBLIC_KEY, check_manifest_hash=True), ordered)
    assert (strict.ok, strict.stage) == (False, "manifest_hash")

    await stack.operator("POST", "/fault/disable", json={})
    await stack.operator("POST", "/fault/enable", json={"fault_type": "corrupt_chunk", "device_id": BOARD})
    offer = parse_check_reply(json.dumps(await device_check(stack, BOARD, "1.0.4")))
    assert offer is not None
    corrupted = await download(stack, BOARD, "1.0.5", list(range(offer.total_chunks)))
    verdict = run_download(FirmwareDownload(offer, AES_KEY, PUBLIC_KEY), [corrupted[i] for i in sorted(corrupted)])
    assert not verdict.ok and all(len(corrupted[i]) == len(chunks[i]) for i in chunks)
    await stack.operator("POST", "/fault/disable", json={})


@pytest.mark.parametrize(("path", "needle"), [
    (f"/ota/chunk/{BOARD}", "version and chunk parameters are required"),
    (f"/ota/chunk/{BOARD}?version=1.0.5", "version and chunk parameters are required"),
    (f"/ota/chunk/{BOARD}?version=1.0.5&chunk=-1", "Invalid chunk index"),
    (f"/ota/chunk/{BOARD}?version=1.0.5&chunk=3", "Invalid chunk index: 3"),
    (f"/ota/chunk/{BOARD}?version=1.0.4&chunk=0", "Firmware version mismatch"),
    (f"/ota/check/{BOARD}?version=latest", "version must be dotted integers"),
])
async def test_bad_device_requests_get_a_clear_json_400(stack: CloudStack, path: str, needle: str) -> None:
    await stack.publish(image_of(3000), "1.0.5")
    await stack.rollout("1.0.5", [BOARD])
    await initiate(stack, BOARD, "1.0.5")
    response = await stack.client.get(path)
    body = await response.json()
    assert response.status == 400 and body["success"] is False and needle in body["error"]


@pytest.mark.parametrize("body", [b"", b"{}", b"[]", b'{"firmware_version": 5}', b"\xff"])
async def test_a_malformed_initiate_is_refused(stack: CloudStack, body: bytes) -> None:
    response = await stack.client.post(f"/ota/initiate/{BOARD}", data=body)
    assert response.status == 400 and (await response.json())["success"] is False


async def test_operator_routes_need_the_token(stack: CloudStack) -> None:
    for method, path in (("GET", "/ota/stats"), ("POST", f"/ota/cancel/{BOARD}"), ("GET", "/api/v1/firmware"),
                         ("POST", "/api/v1/firmware/uploads"), ("POST", "/api/v1/rollouts"),
                         ("GET", f"/api/v1/devices/{BOARD}/ota")):
        response = await stack.client.request(method, path)
        assert response.status == 401, path
    assert (await stack.client.get(f"/ota/check/{BOARD}?version=1.0.4")).status == 200  # a device route


async def test_uploads_are_checked_before_publishing(stack: CloudStack) -> None:
    upload = await stack.operator("POST", "/api/v1/firmware/uploads", expect=201)
    part = f"/api/v1/firmware/uploads/{upload['upload_id']}"
    assert (await stack.operator("PUT", f"{part}?offset=0", data=b"\xe9" + b"x" * 99))["size"] == 100
    assert (await stack.operator("PUT", f"{part}?offset=50", data=b"y" * 10))["size"] == 60  # a part sent again
    await stack.operator("PUT", f"{part}?offset=61", data=b"z", expect=400)  # a gap
    await stack.operator("PUT", "/api/v1/firmware/uploads/" + "0" * 32 + "?offset=0", data=b"z", expect=400)
    wrong = {"version": "1.0.5", "upload_id": upload["upload_id"], "sha256": "00" * 32}
    assert "SHA-256" in (await stack.operator("POST", "/api/v1/firmware", json=wrong, expect=400))["error"]
    not_an_image = await stack.publish(b"\x00" * 64, "1.0.5", expect=400)
    assert "0xE9" in not_an_image["error"]
    assert (await stack.operator("GET", "/api/v1/firmware"))["firmware"] == []
    await stack.operator("GET", "/api/v1/firmware/1.0.5", expect=404)


async def test_a_tampered_image_file_is_never_served(stack: CloudStack) -> None:
    await stack.publish(image_of(3000), "1.0.5")
    await stack.rollout("1.0.5", [BOARD])
    blob = stack.settings.firmware_dir / "firmware_1.0.5_encrypted.bin"
    data = bytearray(blob.read_bytes())
    data[100] ^= 1
    blob.write_bytes(bytes(data))
    response = await stack.client.get(f"/ota/check/{BOARD}?version=1.0.4")
    assert response.status == 400 and "does not match" in (await response.json())["error"]


@given(st.one_of(st.text(max_size=30), st.from_regex(r"[0-9]{1,3}(\.[0-9]{1,3}){0,3}", fullmatch=True)))
def test_any_version_text_orders_or_is_refused_with_a_typed_error(text: str) -> None:
    try:
        key = version_key(text)
    except DocumentError:
        return
    if text.count(".") < 3:  # a version has at most four parts
        assert key == version_key(text + ".0") and key < version_key(text + ".1")
