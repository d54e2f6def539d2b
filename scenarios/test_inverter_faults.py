"""Inverter faults: a Modbus answer that comes back as an exception, with a bad CRC, garbled, not at all,
or late is never taken for data. The device retries as the firmware does, recovers on its own, and every
sample the inverter did deliver reaches the cloud; a poll that fails for good is counted and stores
nothing (not even a failure marker), whatever the register selection.

Course: robust acquisition over an unreliable field bus (firmware-protocol.md §1.4, §1.6).
"""

from __future__ import annotations

from typing import Any

import pytest

UPLOAD_S = 30
FAULTS = {  # bus fault, and how many spoiled answers make a whole poll fail (§1.6)
    "exception": ({"error_type": "EXCEPTION", "exception_code": 4}, 4),  # 1 send + 3 parse retries
    "crc_error": ({"error_type": "CRC_ERROR"}, 4),
    "corrupt": ({"error_type": "CORRUPT"}, 4),
    "packet_drop": ({"error_type": "PACKET_DROP"}, 4),  # the SIM answers no frame: a parse-level retry
    "delay": ({"error_type": "DELAY", "delay_ms": 6500}, 3),  # past the 5 s timeout: 3 failed attempts
}


async def reads_after(stack: Any, since: float) -> list[Any]:
    return [r for r in await stack.sims[stack.dut.device_id].ledger() if r.operation == "read" and r.time >= since]


@pytest.mark.hil(upload=UPLOAD_S)
@pytest.mark.parametrize("fault", list(FAULTS))
async def test_a_spoiled_answer_is_retried_and_recovered(hil_stack, hil_clock, hil_faults, delivery, hil_measure,
                                                        fault):
    spec, _ = FAULTS[fault]
    await hil_clock.advance(seconds=30)
    injected_at = hil_clock.now()
    await hil_faults.bus(**spec)
    await hil_clock.advance(seconds=90)

    reads = await reads_after(hil_stack, injected_at)
    spoiled = next(r for r in reads if r.outcome != "ok")
    retried = next(r for r in reads if r.seq > spoiled.seq and r.delivered and r.outcome == "ok")
    hil_measure("recovery_time", retried.time - spoiled.time, "s", high=10.0)
    delivered = await delivery(hil_stack)
    hil_measure("samples_lost", sum(delivered.lost.values()), "samples", high=0)
    hil_measure("samples_stored_twice", delivered.stored_twice, "samples", high=0)


@pytest.mark.hil(upload=UPLOAD_S)
@pytest.mark.parametrize("fault", ["crc_error", "packet_drop", "delay"])
async def test_a_poll_that_fails_for_good_is_counted_and_stores_nothing(hil_stack, hil_clock, hil_faults,
                                                                        delivery, hil_measure, fault):
    spec, spoil_whole_poll = FAULTS[fault]
    await hil_clock.advance(seconds=30)
    await hil_faults.bus(**spec, count=spoil_whole_poll)
    await hil_clock.advance(minutes=2)
    delivered = await delivery(hil_stack)
    if "events" in hil_stack.dut.capabilities:
        failures = [e for e in hil_stack.dut.events() if e.kind.label == "poll_failed"]
        assert len(failures) == 1, f"expected one failed poll, the device reported {len(failures)}"
    hil_measure("samples_lost", sum(delivered.lost.values()), "samples", high=0)
    hil_measure("samples_stored_twice", delivered.stored_twice, "samples", high=0)


@pytest.mark.hil(upload=UPLOAD_S)
async def test_a_failed_poll_of_a_single_register_stores_no_failure_marker(hil_stack, hil_clock, hil_cloud,
                                                                          hil_faults):
    dut = hil_stack.dut
    await hil_cloud.set_config(dut.device_id, registers=["Pac"])

    async def delivered() -> bool:
        history = await hil_cloud.config_history(dut.device_id)
        return bool(history) and history[0]["status"] in ("delivered", "acknowledged")

    await hil_clock.until(delivered, timeout=60, poll=1.0)
    await dut.reset()  # in force now whichever way the firmware applies a configuration

    async def polling_one_register() -> bool:
        reads = await reads_after(hil_stack, hil_clock.now() - 10)
        return bool(reads) and reads[-1].count == 1

    await hil_clock.until(polling_one_register, timeout=3 * 60, poll=2.0)
    spec, spoil_whole_poll = FAULTS["crc_error"]
    await hil_faults.bus(**spec, count=spoil_whole_poll)
    await hil_clock.advance(minutes=3)
    rows = await hil_cloud.telemetry(dut.device_id)
    markers = [row for row in rows if row["raw"] == 0xFFFF]
    assert rows and not markers, f"the failure marker 0xFFFF was stored as {len(markers)} reading(s)"
