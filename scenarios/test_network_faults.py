"""Network faults between the device and the cloud: latency with jitter, lost connections, answers lost
after the cloud stored the upload (ack loss), and a partition. Whatever happens on the way, every sample
reaches the cloud exactly once: retries use fresh nonces, duplicates are stored once, and what waited in
the queue arrives when the link is back.

Course: reliable upload over an unreliable network (firmware-protocol.md §2.4, §4.5; ARCHITECTURE
"Durability and invariants").
"""

from __future__ import annotations

from typing import Any

import pytest

UPLOAD_S = 30
POLL_S = 2.0
FAULT_S = 10 * 60
TOXICS: dict[str, dict[str, Any]] = {
    "latency": {"toxic": "latency", "latency": 1500, "jitter": 1000},  # ms, each way of every message
    "lost_connections": {"toxic": "reset_peer", "timeout": 200, "toxicity": 0.3},
    "ack_loss": {"toxic": "ack_loss", "toxicity": 0.5},  # stored, but the device never hears so
}
PARTITIONS = {"blackhole": 3 * 60, "refuse": 3 * 60}  # nothing flows / connections refused


async def accepted(cloud: Any, device_id: str) -> int:
    return sum(1 for u in await cloud.uploads(device_id) if u["verdict"] == "accepted")


async def nothing_lost(stack: Any, clock: Any, delivery: Any, drained: Any, measure: Any) -> None:
    """Let the queue drain (an upload carries what fits in one document: a backlog takes some cycles),
    then account for every sample served."""
    measure("backlog_drain_time", await drained(stack, UPLOAD_S), "s")
    delivered = await delivery(stack)
    measure("samples_in_cloud", delivered.in_cloud, "samples")
    # the firmware's loop waits out every request to an unreachable cloud, so polls come late (informative)
    measure("poll_coverage", delivered.account.served * POLL_S / clock.now(), "fraction")
    measure("samples_lost", sum(delivered.lost.values()), "samples", high=0)
    measure("samples_stored_twice", delivered.stored_twice, "samples", high=0)
    assert not delivered.lost, f"samples lost on the way: {delivered.lost}"


@pytest.mark.hil(upload=UPLOAD_S)
@pytest.mark.parametrize("fault", list(TOXICS))
async def test_nothing_is_lost_through_a_bad_link(hil_stack, hil_clock, hil_cloud, hil_faults, delivery,
                                                  drained, hil_measure, fault):
    spec = dict(TOXICS[fault])
    await hil_clock.advance(seconds=30)
    before = await accepted(hil_cloud, hil_stack.dut.device_id)
    hil_faults.network("cloud", spec.pop("toxic"), duration=FAULT_S, **spec)
    await hil_clock.advance(seconds=FAULT_S)
    hil_measure("uploads_accepted_during_fault",
                await accepted(hil_cloud, hil_stack.dut.device_id) - before, "uploads", low=1)
    await nothing_lost(hil_stack, hil_clock, delivery, drained, hil_measure)


@pytest.mark.hil(upload=UPLOAD_S)
@pytest.mark.parametrize("mode", list(PARTITIONS))
async def test_nothing_is_lost_across_a_partition(hil_stack, hil_clock, hil_cloud, hil_faults, delivery,
                                                  drained, hil_measure, mode):
    await hil_clock.advance(seconds=30)
    hil_faults.partition("cloud", mode=mode, duration=PARTITIONS[mode])
    await hil_clock.advance(seconds=PARTITIONS[mode])
    healed = hil_clock.now()
    before = await accepted(hil_cloud, hil_stack.dut.device_id)

    async def uploading_again() -> bool:
        return await accepted(hil_cloud, hil_stack.dut.device_id) > before

    await hil_clock.until(uploading_again, timeout=3 * UPLOAD_S, poll=1.0)
    hil_measure("time_to_first_upload_after_partition", hil_clock.now() - healed, "s", high=UPLOAD_S + 5)
    await nothing_lost(hil_stack, hil_clock, delivery, drained, hil_measure)
