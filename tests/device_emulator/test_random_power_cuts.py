"""Power cuts at 200 seeded random times, on virtual time against the real simulator and cloud: the
device always boots a valid image, never loses an accepted configuration, and (the stack's invariants,
checked after the test) never reuses a nonce and loses no acknowledged sample."""

from __future__ import annotations

import random
from typing import Any

import pytest

from device_emulator.nvs import poll_interval_us

CUTS = 200
NEW_POLL_S = 3


@pytest.mark.hil(upload=30, poll=2)
async def test_two_hundred_power_cuts_at_seeded_random_times(hil_cloud: Any, hil_clock: Any, hil_dut: Any) -> None:
    device = hil_dut.device
    version = device.version
    await hil_clock.advance(seconds=20)
    await hil_cloud.set_config(hil_dut.device_id, poll=NEW_POLL_S)

    async def accepted() -> bool:
        history = await hil_cloud.config_history(hil_dut.device_id)
        return bool(history) and history[0].get("outcome") == "accepted"

    await hil_clock.until(accepted, timeout=10 * 60, poll=5.0)
    rng = random.Random(20261128)
    for cut in range(CUTS):
        await hil_clock.advance(seconds=rng.uniform(0.2, 45.0))  # anywhere: mid poll, upload, NVS write
        boots = device.boots
        await hil_dut.power_cut(off_s=rng.uniform(0.0, 3.0))
        await hil_clock.until(lambda b=boots: device.boots > b and device.powered, timeout=60)
        decision = device.boot_decision
        assert decision is not None and decision.identity is not None, f"cut {cut}: no valid image booted"
        assert device.version == version, f"cut {cut}: booted {device.version}"
        assert poll_interval_us(device.nvs) == NEW_POLL_S * 1_000_000, f"cut {cut}: accepted config lost"
    await hil_clock.advance(minutes=5)  # let the queue drain so conservation can be judged
