"""The secured-upload and compression vectors through the real service, over HTTP on loopback."""

from __future__ import annotations

import base64
import json
import re
import struct
from pathlib import Path
from typing import Any

from tests.cloud.firmware_uploads import COMPRESSION, SECURED, FirmwareDevice, packet_entry
from tests.cloud.running_cloud import JSON, Cloud, Reply, running_cloud

DEVICE = SECURED["device_id"]

def _check(case: dict[str, Any], reply: Reply, original: dict[str, bytes]) -> None:
    verdict = case["recommended_verdict"]
    name = case["name"]
    if verdict == "accept":
        assert (reply.status, reply.verdict) == (200, "accepted"), (name, reply)
        original[name] = reply.body
    elif verdict == "reject_mac":
        assert (reply.status, reply.code) == (401, "unauthenticated"), (name, reply)
    elif verdict == "reject_replay":
        assert (reply.status, reply.code) == (401, "replay"), (name, reply)
    else:
        assert verdict == "reject"
        assert 400 <= reply.status < 500 and reply.verdict is None, (name, reply)
    if reply.status != 200:
        text = reply.body.decode()
        assert case["psk_hex"] not in text and case["mac"] not in text  # nothing secret or computed echoed
        # no stored nonce either: the only number an error may name is the one the sender sent
        assert {int(n) for n in re.findall(r"\d{4,}", text)} <= {case["nonce"], 2**32 - 1}, text


async def _apply_cases(cloud: Cloud, send: Any) -> dict[str, bytes]:
    original: dict[str, bytes] = {}
    for case in SECURED["cases"]:
        if case["reset_server_nonces_before"]:
            # Without the operator token the reset is refused, so captured envelopes stay replays.
            reset = await cloud.request("DELETE", "/security/nonces")
            assert reset.status == 401
        _check(case, await send(case), original)
    return original


async def test_every_secured_upload_case_gets_its_recommended_verdict_on_process(tmp_path: Path) -> None:
    async with running_cloud(tmp_path) as cloud:
        await _apply_cases(cloud, lambda case: cloud.process(case["envelope_body"].encode()))

        uploads = await cloud.uploads(DEVICE)
        assert [(u["nonce"], u["verdict"]) for u in uploads] == [
            # replay_exact_body copies the last accepted envelope: refused, logged apart as a "resend"
            (10001, "accepted"), (10002, "bad_mac"), (10001, "resend"), (10000, "replay"), (10003, "bad_mac"),
            (10002, "accepted"), (10003, "bad_mac"), (10004, "bad_mac"), (50000, "accepted"),
            (50001, "accepted"), (50000, "replay"), (10001, "replay"),
        ]  # the oversize nonce never parsed: nothing is recorded for it
        # Three batches (packet timestamps 29877, 43880, 998001); the encrypted upload repeats the last
        # one (same boot, timestamp and bytes), which is recognised and not stored again.
        samples = await cloud.telemetry(DEVICE)
        assert sorted({s["packet_ts"] for s in samples}) == [29877, 43880, 998001]
        assert len(samples) == 3 * 42
        assert [u["new_packets"] for u in uploads if u["verdict"] == "accepted"] == [1, 1, 1, 0]


async def test_every_secured_upload_case_gets_its_recommended_verdict_on_security_validate(tmp_path: Path) -> None:
    async with running_cloud(tmp_path) as cloud:
        def send(case: dict[str, Any]) -> Any:
            return cloud.request("POST", f"/security/validate/{case['device_id_in_url']}",
                                 data=case["envelope_body"].encode(), headers=JSON)

        original = await _apply_cases(cloud, send)
        first = [c for c in SECURED["cases"] if c["name"] == "valid_first_upload"][0]
        assert Reply(200, original["valid_first_upload"], {}).json()["decrypted_payload"] == first["payload"]
        assert await cloud.telemetry(DEVICE) == []  # validation stores no data


def _expected(case: dict[str, Any]) -> list[list[int]]:
    return [list(row) for row in case["expected_decoded_samples"]]


def _rows(samples: list[dict[str, Any]], layout: list[int]) -> list[list[int]]:
    assert [s["address"] for s in samples] == layout * (len(samples) // len(layout))
    return [[s["raw"] for s in samples[i:i + len(layout)]] for i in range(0, len(samples), len(layout))]


def _prepare(device: FirmwareDevice, case: dict[str, Any]) -> None:
    """Batches that bring the device (and so the cloud's mirror) into the state the vector needs."""
    required = case["decoder_state_required"] or {}
    if "dictionary_patterns" in required:
        for entry in required["dictionary_patterns"][4:]:
            # Varying samples (sent exactly, bit-packed), whose last one is the entry: the device learns it.
            row = [entry[r] for r in device.layout]
            device.sample([[v + k for v in row] for k in range(6, 0, -1)] + [row])
    if "batches_compressed_since_boot_before_this_one" in required:
        (reg, prev1), = required["prev1_last_value_of_previous_batch"].items()
        prev2 = required["prev2_last_value_of_batch_before"][reg]
        count = required["batches_compressed_since_boot_before_this_one"]
        for n in range(count):
            last = prev1 if n == count - 1 else prev2 if n == count - 2 else 4000 + n
            device.sample([[last - 3], [last + 2], [last - 1], [last + 5], [last], [last + 1], [last]])
    assert device.state.patterns[4:] == [tuple(p) for p in required.get("dictionary_patterns", [])[4:]]


async def test_every_compression_vector_sent_through_process_shows_up_decoded(tmp_path: Path) -> None:
    async with running_cloud(tmp_path) as cloud:
        for number, case in enumerate(COMPRESSION["cases"]):
            device = FirmwareDevice(device_id=f"vector-{number}", layout=tuple(case["register_layout"]))
            device.key = cloud.keys.add_device(device.device_id)
            _prepare(device, case)
            before = len(device.queue)
            packet = bytes.fromhex(case["encoded_hex"])
            device.millis += 14_000
            packet_ts = device.millis
            device.queue.append(packet_entry(packet, device.layout, packet_ts))
            reply = await cloud.process(device.upload())
            assert reply.status == 200 and reply.json()["undecodable"] == 0, (case["name"], reply)

            samples = await cloud.telemetry(device.device_id)
            per_packet = 7 * len(device.layout)
            assert len(samples) == per_packet * (before + 1)
            mine = samples[-per_packet:]
            assert {s["packet_ts"] for s in mine} == {packet_ts}
            if case["name"] == "temporal_delta_8bit_tokens":
                # These 14 bytes are also a headerless raw batch. For the 0x71 reading's values the
                # firmware's smart selection picks bit-packing, so a device cannot have sent them as
                # 0x71; the cloud keeps the one reading a device could have sent.
                assert _rows(mine, case["register_layout"]) == [[v] for v in struct.unpack("<7H", packet)]
                continue
            assert _rows(mine, case["register_layout"]) == _expected(case), case["name"]
            statuses = {s["status"] for s in mine}
            if not case["lossless"]:
                assert statuses == {"ambiguous"}  # lossy 0x50: stored, flagged
            assert [s["register"] for s in mine[: len(device.layout)]] == case["register_names"]


async def test_a_byte_stream_built_as_firmware_1_0_4_builds_it_is_found_decoded(tmp_path: Path) -> None:
    device = FirmwareDevice()
    sampled: list[list[int]] = []
    bodies = []
    for upload in range(4):
        for batch in range(2):
            if upload < 3:  # near built-in pattern 3 with small non-zero deltas: 0xD0 packets
                rows = [[2431 + (7 * s + upload) % 30, 164 - s, 72 + s, 4153 + 5 * s + batch, 64 - s % 3,
                         546 + upload] for s in range(7)]
            else:  # far from the patterns: bit-packed and learned, then 0xD0 against the learned entry
                b = batch
                rows = [[3900 + s + 37 * b, 900 + 13 * b + s, 300 + s + 11 * b, 3000 + 7 * s + 29 * b,
                         310 + 7 * b + s, 999 - s + 5 * b] for s in range(7)]
            device.sample(rows)
            sampled.extend(rows)
        bodies.append(device.upload())
    # the firmware's quirks are on the wire: unpadded base64, the 2n "original size", compact JSON
    document = base64.b64decode(json.loads(bodies[0])["payload"])
    assert b'"original_size_bytes":12' in document and b'="' not in document and b": " not in document

    async with running_cloud(tmp_path) as cloud:
        for body in bodies:
            reply = await cloud.process(body)
            assert reply.status == 200 and reply.json()["undecodable"] == 0, reply
        samples = await cloud.telemetry(device.device_id)
    assert _rows(samples, list(device.layout)) == sampled
    assert {s["codec"] for s in samples} == {"0xD0", "0x01"}
    assert {s["boot_id"] for s in samples} == {0}
    first = samples[0]
    assert (first["register"], first["unit"], first["value"]) == ("Vac1", "V", 243.1)
