"""A new image that never confirms itself is rolled back: the device boots the update on probation, its
self-test fails, and the bootloader returns to the previous image, which keeps running and says so.

Course: boot confirmation and automatic rollback (firmware-protocol.md §7.3 step 9; ESP-IDF app rollback).
"""

from __future__ import annotations

import pytest

UPLOAD_S = 30


async def failing_self_test() -> bool:
    return False


@pytest.mark.hil(upload=UPLOAD_S)
@pytest.mark.requires("events")  # the emulated image's self-test is made to fail
async def test_an_image_that_never_confirms_is_rolled_back(hil_stack, hil_clock, hil_cloud, updates,
                                                           hil_measure):
    dut = hil_stack.dut
    old = await updates.running()
    dut.device.self_test = failing_self_test  # whatever image boots next fails its self-test
    new = await updates.release()

    async def tried_the_new_image() -> bool:
        return any(e.kind.label == "boot" and e.details.get("version") == new for e in dut.events())

    await hil_clock.until(tried_the_new_image, timeout=5 * updates.CHECK_S, poll=1.0)
    tried_at = hil_clock.now()

    async def back_on_the_old_image() -> bool:
        return dut.device.version == old and dut.device.firmware is not None

    await hil_clock.until(back_on_the_old_image, timeout=2 * updates.CHECK_S, poll=1.0)
    hil_measure("time_on_unconfirmed_image", hil_clock.now() - tried_at, "s", high=updates.CHECK_S)
    await hil_clock.advance(seconds=2 * updates.CHECK_S)
    assert dut.device.version == old, f"the device runs {dut.device.version} again"
    history = await updates.history()
    assert history["firmware_version"] == old, history["firmware_version"]
    steps = [(r["kind"], r["status"]) for r in history["reports"]]
    assert ("boot", "rolled_back") in steps, f"the rollback was not reported: {steps}"
