"""Secure transmission: the cloud takes only what the device itself signed, once. A captured upload
replayed, a tampered one, one signed with another key and one a device signs in another device's name
are all refused with a clean 4xx JSON error, store nothing, and do not disturb the real devices, which
keep uploading.

Course: HMAC-SHA256 over nonce and payload, anti-replay (firmware-protocol.md §4.3-§4.6, §11.3.2).
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest

from harness.attacks import signed_upload, tampered

UPLOAD_S = 30
OTHER_KEY = bytes(range(32))  # a key no device has


async def accepted_uploads(cloud: Any, device_id: str) -> list[dict[str, Any]]:
    return [u for u in await cloud.uploads(device_id) if u["verdict"] == "accepted"]


@pytest.mark.hil(devices=2, upload=UPLOAD_S)
@pytest.mark.requires("events")  # the captured upload is the one the emulator last sent
async def test_replayed_tampered_wrong_key_and_cross_device_uploads_are_refused(
    hil_stack, hil_clock, hil_cloud, hil_measure
):
    device, other = hil_stack.device_ids

    async def both_uploading() -> bool:
        return all([len(await accepted_uploads(hil_cloud, d)) >= 2 for d in (device, other)])

    await hil_clock.until(both_uploading, timeout=5 * 60, poll=UPLOAD_S)
    last = hil_stack.duts[device].device.firmware.uploader.last
    assert last is not None and last.ok
    key = hil_stack.options.key_for(device)
    captured = signed_upload(key, last.nonce, last.document)  # byte for byte what the device sent
    fresh = last.nonce + 1_000_000  # far ahead: accepting it would lock the device out
    other_document = last.document.replace(device.encode(), other.encode())
    assert other_document != last.document
    attacks = {
        "replayed": ("/process", captured),
        "tampered": ("/process", tampered(signed_upload(key, fresh, last.document))),
        "wrong_key": ("/process", signed_upload(OTHER_KEY, fresh, last.document)),
        "cross_device_signed": ("/process", signed_upload(key, fresh, other_document)),
        "cross_device_url": (f"/security/validate/{other}", signed_upload(key, fresh, last.document)),
    }
    before = {d: len(await hil_cloud.telemetry(d)) for d in (device, other)}
    nonces = {d: (await hil_cloud.device(d))["last_nonce"] for d in (device, other)}

    answers = {}
    async with aiohttp.ClientSession() as http:
        for name, (path, body) in attacks.items():
            async with http.post(hil_stack.cloud_url + path, data=body,
                                 headers={"Content-Type": "application/json"}) as reply:
                answers[name] = (reply.status, await reply.text())
    refused_cleanly = {name: status for name, (status, _) in answers.items() if 400 <= status < 500}
    assert refused_cleanly.keys() == attacks.keys(), f"not refused with a 4xx: {answers}"
    for name, (_, text) in answers.items():
        assert "error" in json.loads(text), f"{name}: the refusal is not the JSON error shape: {text}"

    forged = [u for d in (device, other) for u in await hil_cloud.uploads(d)
              if u["nonce"] == fresh and u["verdict"] == "accepted"]
    hil_measure("forged_uploads_accepted", len(forged), "uploads", high=0)
    after_nonces = {d: (await hil_cloud.device(d))["last_nonce"] for d in (device, other)}
    assert all(after_nonces[d] < fresh for d in after_nonces), (
        f"a refused upload moved a device's nonce: {nonces} -> {after_nonces}")

    # the real devices were not locked out or disturbed: they keep uploading and their data grows
    counts = {d: len(await accepted_uploads(hil_cloud, d)) for d in (device, other)}
    await hil_clock.advance(seconds=3 * UPLOAD_S)
    for d in (device, other):
        assert len(await accepted_uploads(hil_cloud, d)) > counts[d], f"{d} stopped uploading after the attacks"
        assert len(await hil_cloud.telemetry(d)) > before[d]
