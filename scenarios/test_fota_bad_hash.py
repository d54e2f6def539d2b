"""FOTA with a bad hash: when the hash the release announces does not match the image, the device
refuses the image before it switches to it, reports the failed verification, and keeps running (and
reporting) the firmware it had.

Course: verify the downloaded image (hash and signature) before booting it (firmware-protocol.md §7.3
steps 6-8).
"""

from __future__ import annotations

import pytest

UPLOAD_S = 30


@pytest.mark.hil(upload=UPLOAD_S)
async def test_a_release_whose_hash_does_not_match_is_refused_and_the_old_firmware_stays(
    hil_stack, hil_clock, hil_cloud, hil_faults, updates, hil_measure
):
    old = await updates.running()
    await hil_faults.cloud("wrong_hash")  # the cloud announces a hash that is not the image's
    new = await updates.release()
    await hil_clock.advance(seconds=5 * updates.CHECK_S)

    history = await updates.history()
    assert history["firmware_version"] == old, f"the device took {history['firmware_version']} with a bad hash"
    dut = hil_stack.dut
    if dut.device is not None:
        assert dut.device.version == old
        assert all(slot["state"] != "pending_verify" for slot in dut.device.state()["slots"])
    attempts = len(history["sessions"])
    hil_measure("update_attempts", attempts, "downloads", low=1)
    assert not any(s["status"] == "completed" for s in history["sessions"]), history["sessions"]
    steps = [(r["kind"], r["status"]) for r in history["reports"]]
    assert ("verification", "failed") in steps, f"the failed verification was not reported: {steps}"

    before = len(await hil_cloud.uploads(dut.device_id))
    await hil_clock.advance(seconds=3 * UPLOAD_S)
    assert len(await hil_cloud.uploads(dut.device_id)) > before, f"the device stopped uploading (offered {new})"
