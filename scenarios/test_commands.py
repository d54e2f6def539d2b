"""Command round trip: an operator's command goes cloud -> device -> inverter -> cloud. `set_power`
and `write_register` change the inverter's export limit and come back completed; an invalid command is
refused by the cloud with its reason and never reaches the device or the inverter.

Course: remote commands with a result report (firmware-protocol.md §6).
"""

from __future__ import annotations

from typing import Any

import pytest

from harness.hil_cloud import OperatorError
from harness.product import EXPORT_LIMIT_ADDRESS

UPLOAD_S = 30
COMMAND_POLL_S = 10  # the firmware's command poll (every 2nd configuration check)


async def writes(stack: Any) -> list[Any]:
    """The writes the inverter received (and how each ended)."""
    return [r for r in await stack.sims[stack.dut.device_id].ledger() if r.operation == "write"]


async def run_command(stack: Any, clock: Any, cloud: Any, kind: str, **params: Any) -> tuple[dict[str, Any], float]:
    """Queue a command and wait until the device reported its result; (final status, round trip in s)."""
    queued_at = clock.now()
    command_id = (await cloud.queue_command(stack.dut.device_id, kind, **params))["command_id"]

    async def finished() -> dict[str, Any] | None:
        status = (await cloud.command_status(command_id))["status"]
        return status if status["status"] in ("completed", "failed", "timed_out") else None

    status = await clock.until(finished, timeout=5 * 60, poll=1.0)
    return status, clock.now() - queued_at


@pytest.mark.hil(upload=UPLOAD_S)
async def test_set_power_reaches_the_inverter_and_reports_completed(hil_stack, hil_clock, hil_cloud,
                                                                   hil_measure):
    await hil_clock.advance(seconds=30)
    status, round_trip = await run_command(hil_stack, hil_clock, hil_cloud, "set_power", power_value=4000)
    assert status["status"] == "completed", status
    hil_measure("command_round_trip", round_trip, "s", high=2 * COMMAND_POLL_S + 5)
    written = await writes(hil_stack)
    assert [(w.start, w.values, w.outcome) for w in written] == [(EXPORT_LIMIT_ADDRESS, (40,), "ok")], written
    await hil_clock.advance(seconds=10)
    reads = [r for r in await hil_stack.sims[hil_stack.dut.device_id].ledger()
             if r.operation == "read" and r.delivered and r.time > written[-1].time]
    assert reads and all(r.values[EXPORT_LIMIT_ADDRESS - r.start] == 40 for r in reads), (
        "the inverter does not report the new export limit")


@pytest.mark.hil(upload=UPLOAD_S)
async def test_write_register_reaches_the_inverter_and_reports_completed(hil_stack, hil_clock, hil_cloud,
                                                                        hil_measure):
    await hil_clock.advance(seconds=30)
    status, round_trip = await run_command(hil_stack, hil_clock, hil_cloud, "write_register",
                                           register_address=EXPORT_LIMIT_ADDRESS, value=30)
    assert status["status"] == "completed", status
    hil_measure("command_round_trip", round_trip, "s", high=2 * COMMAND_POLL_S + 5)
    written = await writes(hil_stack)
    assert [(w.start, w.values, w.outcome) for w in written] == [(EXPORT_LIMIT_ADDRESS, (30,), "ok")], written


@pytest.mark.hil(upload=UPLOAD_S)
@pytest.mark.parametrize(("kind", "params", "reason"), [
    ("write_register", {"register_address": 0, "value": 2300}, "read-only"),
    ("write_register", {"register_address": EXPORT_LIMIT_ADDRESS, "value": 150}, "0..100"),
    ("set_power", {"power_value": "50"}, "power_value"),
    ("reboot_now", {}, "reboot_now"),
], ids=["read_only_register", "out_of_range", "text_parameter", "unknown_command"])
async def test_an_invalid_command_is_refused_and_never_reaches_the_inverter(hil_stack, hil_clock, hil_cloud,
                                                                           kind, params, reason):
    await hil_clock.advance(seconds=15)
    with pytest.raises(OperatorError) as refused:
        await hil_cloud.queue_command(hil_stack.dut.device_id, kind, **params)
    assert refused.value.status is not None and 400 <= refused.value.status < 500, str(refused.value)
    assert reason in str(refused.value), str(refused.value)
    await hil_clock.advance(seconds=3 * COMMAND_POLL_S)
    assert await hil_cloud.commands(hil_stack.dut.device_id) == []
    assert await writes(hil_stack) == []
