"""Ingest behaviour through real HTTP: exactly once, replays, lost acknowledgements, reboots, data
that cannot be decoded, per-device keys, limits and operator access."""

from __future__ import annotations

import asyncio
import base64
import json
from collections import Counter
from pathlib import Path

import aiohttp

from cloud.app_keys import EVENTS
from cloud.events import EventBus
from protocol.envelope import REFERENCE_PSK, build_envelope
from protocol.seed_codecs import SeedMethod, encode_seed
from protocol.upload_document import CompressedPacket, PacketMetadata
from tests.cloud.firmware_uploads import FirmwareDevice, envelope
from tests.cloud.running_cloud import JSON, running_cloud

NEAR_PATTERN_3 = [[2431 + s, 164 - s, 72 + s, 4153 + 5 * s, 64 - s % 3, 546] for s in range(7)]


def rows_from(samples: list[dict], width: int = 6) -> list[list[int]]:
    return [[s["raw"] for s in samples[i:i + width]] for i in range(0, len(samples), width)]


async def test_fifty_concurrent_copies_of_one_envelope_store_it_once(tmp_path: Path) -> None:
    device = FirmwareDevice()
    device.sample(NEAR_PATTERN_3)
    body = device.upload()
    async with running_cloud(tmp_path) as cloud:
        replies = await asyncio.gather(*(cloud.process(body) for _ in range(50)))

        # One is accepted; the 49 copies are refused by the anti-replay check and store nothing.
        assert Counter((r.status, r.verdict or r.code) for r in replies) == {(200, "accepted"): 1, (401, "replay"): 49}
        assert len(await cloud.telemetry(device.device_id)) == 42
        verdicts = Counter(u["verdict"] for u in await cloud.uploads(device.device_id))
        assert verdicts == {"accepted": 1, "resend": 49}

        # Once a newer envelope is accepted, copies of the old one are plain replays: 401 every time.
        device.sample(NEAR_PATTERN_3)
        assert (await cloud.process(device.upload())).status == 200
        late = await asyncio.gather(*(cloud.process(body) for _ in range(10)))
        assert {(r.status, r.code) for r in late} == {(401, "replay")}
        assert len(await cloud.telemetry(device.device_id)) == 84


async def test_packets_resent_after_a_lost_acknowledgement_are_stored_once(tmp_path: Path) -> None:
    device = FirmwareDevice()
    sent = []
    async with running_cloud(tmp_path) as cloud:
        for _ in range(2):
            k = len(sent)  # far from the built-in patterns; no value repeats the learned entry (§3.2)
            rows = [[2300 + 40 * k + 11 * s, 900 + 10 * k + s, 300 + 10 * k + s, 3000 + 10 * k + s,
                     310 + 10 * k + s, 999 + 10 * k - s] for s in range(7)]
            device.sample(rows)
            sent.append(rows)
        lost = device.upload(keep_queue=True)  # the cloud stores it, the device never hears the 200
        assert (await cloud.process(lost)).status == 200
        device.sample(NEAR_PATTERN_3)
        sent.append(NEAR_PATTERN_3)
        retry = await cloud.process(device.upload())  # the same two packets again, one new, a new nonce

        assert retry.status == 200
        assert (retry.json()["packets"], retry.json()["new_packets"]) == (3, 1)
        samples = await cloud.telemetry(device.device_id)
        assert rows_from(samples) == [r for batch in sent for r in batch]  # once each, mirror still exact


async def test_a_reboot_restarts_the_mirror_and_the_boot_counter(tmp_path: Path) -> None:
    device = FirmwareDevice()
    far = [[3900 + s, 900 + s, 300 + s, 3000 + 7 * s, 310 + s, 999 - s] for s in range(7)]
    other = [[1000 + 3 * s, 20 + s, 10 + s, 800 + 9 * s, 12 + s, 700 - s] for s in range(7)]
    # small deltas, none zero, against the entry learned from `other` (its last sample)
    near_other = [[v + (1 + s) * (1 if j % 2 else -1) for j, v in enumerate(other[-1])] for s in range(7)]
    async with running_cloud(tmp_path) as cloud:
        device.sample(far)  # learned by the device as dictionary entry 4
        assert (await cloud.process(device.upload())).status == 200
        device.reboot()
        device.sample(other)  # after the reboot entry 4 is learned again, from other values
        packet = device.sample(near_other)  # and this one is sent as 0xD0 against that new entry 4
        assert packet[:2] == bytes([0xD0, 4])
        assert (await cloud.process(device.upload())).status == 200

        samples = await cloud.telemetry(device.device_id)
        assert rows_from(samples) == far + other + near_other
        assert [s["boot_id"] for s in samples[::42]] == [0, 1, 1]
        uploads = await cloud.uploads(device.device_id)
        assert "rebooted" in (uploads[-1]["reason"] or "")


async def test_authentic_but_undecodable_data_is_answered_200_and_kept_with_its_reason(tmp_path: Path) -> None:
    device = FirmwareDevice()
    async with running_cloud(tmp_path) as cloud:
        # The firmware's 2048-byte buffer cuts a long document: authentic, not JSON. 200, or the device
        # would resend it forever; the loss is recorded.
        for _ in range(8):
            device.sample(NEAR_PATTERN_3)
        document = json.dumps({"device_id": device.device_id}).encode()[:-1] + b',"timestamp":9,"data_ty'
        truncated = build_envelope(REFERENCE_PSK, 10001, document)
        reply = await cloud.process(truncated)
        assert (reply.status, reply.json()["packets"]) == (200, 0)
        [upload] = await cloud.uploads(device.device_id)
        assert upload["verdict"] == "accepted" and "data lost" in upload["reason"]

        # A packet no firmware can have produced for its layout: stored as undecodable, bytes kept.
        garbage = CompressedPacket(
            compressed_binary=base64.b64encode(b"\x42\x01\x02").decode(),
            metadata=PacketMetadata(method="BATCH_BITPACK", register_count=6, original_size_bytes=12,
                                    compressed_size_bytes=3, timestamp=500_000, register_layout=(0, 1, 5, 9, 6, 7)))
        reply = await cloud.process(envelope(device.device_id, 10002, 600_000, [garbage]))
        assert (reply.status, reply.json()["undecodable"]) == (200, 1)
        packets = (await cloud.request("GET", f"/api/v1/devices/{device.device_id}/packets", operator=True)).json()
        [stored] = packets["packets"]
        assert (stored["status"], stored["raw_hex"], stored["samples"]) == ("undecodable", "420102", 0)
        assert "marker" in stored["reason"]


async def test_each_device_signs_with_its_own_key(tmp_path: Path) -> None:
    async with running_cloud(tmp_path) as cloud:
        key = cloud.keys.add_device("inverter-7")
        device = FirmwareDevice(device_id="inverter-7", key=REFERENCE_PSK)
        device.sample(NEAR_PATTERN_3)
        forged = await cloud.process(device.upload(keep_queue=True))  # the public fleet key: refused
        assert (forged.status, forged.code) == (401, "unauthenticated")
        device.key = key
        assert (await cloud.process(device.upload())).status == 200
        unknown = FirmwareDevice(device_id="nobody")
        unknown.sample(NEAR_PATTERN_3)
        assert (await cloud.process(unknown.upload())).status == 401
        assert [u["verdict"] for u in await cloud.uploads("inverter-7")] == ["bad_mac", "accepted"]


async def test_bodies_over_256_kib_get_413_json(tmp_path: Path) -> None:
    async with running_cloud(tmp_path) as cloud:
        big = b"{" + b" " * (256 * 1024) + b"}"
        reply = await cloud.process(big)
        assert (reply.status, reply.code) == (413, "body_too_large")

        async def chunks():  # no Content-Length: cut off while reading
            for _ in range(40):
                yield b" " * 8192

        reply = await cloud.request("POST", "/process", data=chunks(), headers=JSON)
        assert (reply.status, reply.code) == (413, "body_too_large")


async def test_operator_routes_need_the_bearer_token(tmp_path: Path) -> None:
    device = FirmwareDevice()
    device.sample(NEAR_PATTERN_3)
    first = device.upload()
    async with running_cloud(tmp_path) as cloud:
        assert (await cloud.process(first)).status == 200  # device route: no token
        path = f"/api/v1/devices/{device.device_id}/telemetry"
        assert (await cloud.request("GET", path)).status == 401
        wrong = await cloud.request("GET", path, headers={"Authorization": "Bearer nope"})
        assert (wrong.status, wrong.code, wrong.headers.get("WWW-Authenticate")) == (
            401, "unauthorized", 'Bearer realm="ecowatt"')
        assert (await cloud.request("GET", path, operator=True)).status == 200
        assert (await cloud.request("GET", "/health")).status == 200
        assert (await cloud.request("DELETE", "/security/nonces")).status == 401
        assert (await cloud.request("GET", "/security/stats")).status == 401
        missing = await cloud.request("GET", "/no/such/route")
        assert (missing.status, missing.code) == (404, "not_found")

        # An operator may reset the nonces on purpose: the old envelope is then fresh again, and its
        # packet, already stored, is recognised.
        reset = await cloud.request("DELETE", f"/security/nonces/{device.device_id}", operator=True)
        assert (reset.status, reset.json()["cleared"]) == (200, 1)
        again = await cloud.process(first)
        assert (again.status, again.verdict, again.json()["new_packets"]) == (200, "accepted", 0)
        stats = (await cloud.request("GET", "/security/stats", operator=True)).json()["stats"]
        assert (stats["successful_validations"], stats["devices_tracked"]) == (2, 1)

    async with running_cloud(tmp_path / "lab", open_operator_api=True) as lab:
        assert (await lab.request("GET", "/security/stats")).status == 200


async def test_aggregated_uploads_of_the_seed_family_are_stored(tmp_path: Path) -> None:
    def seed_envelope(nonce: int, document: dict) -> bytes:
        return build_envelope(key, nonce, json.dumps(document).encode())

    async with running_cloud(tmp_path) as cloud:
        key = cloud.keys.add_device("seed-1")
        packed = base64.b64encode(encode_seed(SeedMethod.BITPACK, [2400, 2410, 170, 171])).decode()
        reply = await cloud.request("POST", "/aggregated/seed-1", headers=JSON, data=seed_envelope(
            1, {"device_id": "seed-1", "compressed_data": packed, "register_layout": ["Vac1", "Vac1", "Iac1", 1]}))
        assert (reply.status, reply.json()["samples_count"]) == (200, 4)
        reply = await cloud.request("POST", "/aggregated/seed-1", headers=JSON, data=seed_envelope(
            2, {"aggregated_data": [{"Vac1": 2401, "Pac": 4000}, {"register": "Temp", "avg": 551}]}))
        assert (reply.status, reply.json()["samples_count"]) == (200, 3)
        samples = await cloud.telemetry("seed-1")
        assert [(s["register"], s["raw"]) for s in samples] == [
            ("Vac1", 2400), ("Vac1", 2410), ("Iac1", 170), ("Iac1", 171),
            ("Vac1", 2401), ("Pac", 4000), ("Temp", 551)]

        # A wrong inner document is refused (400) before its nonce is spent: nonce 3 stays usable.
        bad = await cloud.request("POST", "/aggregated/seed-1", headers=JSON, data=seed_envelope(3, {"x": 1}))
        assert (bad.status, bad.code) == (400, "bad_document")
        ok = await cloud.request("POST", "/aggregated/seed-1", headers=JSON,
                                 data=seed_envelope(3, {"aggregated_data": []}))
        assert ok.status == 200
        elsewhere = await cloud.request("POST", "/aggregated/seed-2", headers=JSON, data=seed_envelope(
            4, {"device_id": "seed-1", "aggregated_data": []}))
        assert elsewhere.status == 401


async def test_uploads_are_announced_on_the_event_bus_after_commit(tmp_path: Path) -> None:
    device = FirmwareDevice()
    device.sample(NEAR_PATTERN_3)
    async with running_cloud(tmp_path) as cloud:
        assert cloud.server.app is not None
        bus: EventBus = cloud.server.app[EVENTS]
        with_events = bus.subscribe({"telemetry"}, device.device_id)
        assert (await cloud.process(device.upload())).status == 200
        event = await asyncio.wait_for(with_events.__anext__(), 5)
        assert event.kind == "telemetry" and len(event.data["samples"]) == 42
        assert event.data["samples"][0]["register"] == "Vac1"
        with_events.close()


async def test_every_answer_has_a_content_length_and_no_chunking(tmp_path: Path) -> None:
    async with running_cloud(tmp_path) as cloud, aiohttp.ClientSession() as http:
        for method, path in [("POST", "/process"), ("GET", "/health"), ("GET", "/nowhere")]:
            async with http.request(method, cloud.url + path, data=b"{}") as response:
                assert "Content-Length" in response.headers
                assert "chunked" not in response.headers.get("Transfer-Encoding", "")
