"""FOTA success: a release published in the cloud and rolled out to the device is downloaded, verified,
installed in the other slot and booted; the device then runs and reports the new version, keeps its data
flowing, and (a course requirement) reports each step of the update to the cloud.

Course: firmware update over the air with verification and reporting (firmware-protocol.md §7).
"""

from __future__ import annotations

import pytest

UPLOAD_S = 30


@pytest.mark.hil(upload=UPLOAD_S)
async def test_a_release_is_downloaded_verified_and_booted(hil_stack, hil_clock, hil_cloud, updates, hil_measure):
    old = await updates.running()
    new = await updates.release()
    took = await updates.until_running(new, timeout=15 * 60)
    hil_measure("update_time", took, "s", high=5 * updates.CHECK_S)
    history = await updates.history()
    assert history["rollout"]["state"] == "succeeded", history["rollout"]
    assert old != new

    before = len(await hil_cloud.uploads(hil_stack.dut.device_id))
    await hil_clock.advance(seconds=4 * UPLOAD_S)
    uploads = await hil_cloud.uploads(hil_stack.dut.device_id)
    assert sum(1 for u in uploads[before:] if u["verdict"] == "accepted") >= 2, "no data after the update"


@pytest.mark.hil(upload=UPLOAD_S)
async def test_each_step_of_the_update_is_reported(hil_stack, hil_clock, updates):
    new = await updates.release()
    await updates.until_running(new, timeout=15 * 60)
    await hil_clock.advance(seconds=updates.CHECK_S)
    history = await updates.history()
    steps = [(r["kind"], r["status"]) for r in history["reports"]]
    for step in [("progress", "started"), ("verification", "passed"), ("complete", "success"),
                 ("reboot", "rebooting"), ("boot", "confirmed")]:
        assert step in steps, f"no {step} report; reported: {steps}"
    assert [s["status"] for s in history["sessions"]][-1] == "completed", history["sessions"]
