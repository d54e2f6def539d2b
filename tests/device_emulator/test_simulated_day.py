"""A whole simulated day on virtual time, the emulator against the real simulator and cloud, on both
firmware profiles. After each test the stack's invariants run: on `spec` every sample the simulator served
and the device accepted is in the cloud exactly once (conservation), nonces only ever increase."""

from __future__ import annotations

from typing import Any

import pytest

DAY_H = 24

# A device-day of the whole stack takes minutes of real time even on virtual time: `make test-slow`.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


@pytest.mark.hil(profile="spec", upload=60, poll=5)
async def test_spec_runs_a_day_and_the_cloud_holds_every_sample(hil_cloud: Any, hil_clock: Any, hil_dut: Any) -> None:
    await hil_clock.advance(hours=DAY_H)
    uploads = [u for u in await hil_cloud.uploads(hil_dut.device_id) if u["verdict"] == "accepted"]
    assert len(uploads) >= 0.9 * DAY_H * 60, len(uploads)  # one a minute, all day
    rows = await hil_cloud.telemetry(hil_dut.device_id)
    assert len(rows) >= 0.9 * DAY_H * 3600 / 5 * 6, len(rows)  # a sample of six registers every 5 s


@pytest.mark.hil(profile="reference-1.0.4")
async def test_reference_runs_a_day_at_the_firmware_cadence(hil_cloud: Any, hil_clock: Any, hil_dut: Any) -> None:
    await hil_clock.advance(hours=DAY_H)
    uploads = [u for u in await hil_cloud.uploads(hil_dut.device_id) if u["verdict"] == "accepted"]
    # the firmware's 15 s upload; a packet every 14 s, so some ticks find the queue empty and send nothing
    assert len(uploads) >= 0.9 * DAY_H * 3600 / 15, len(uploads)
