"""Acquisition and buffering: the device polls the inverter at its interval, every sample reaches the
cloud with the values the inverter served, and while the cloud is out of reach the samples wait in the
device's queue and arrive once it is back; a queue that fills up drops whole new packets and says so.

Course: acquisition at the configured poll interval, local buffering (firmware-protocol.md §2.1-§2.4).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest

POLL_S = 2.0  # the firmware's default poll period
UPLOAD_S = 30  # short enough that one upload document carries what accumulated (a packet every 14 s)
BATCH = 7  # samples per packet


async def delivered_reads(stack: Any) -> list[Any]:
    """The reads the simulator answered with values, oldest first (device time)."""
    reads = await stack.sims[stack.dut.device_id].ledger()
    return [r for r in reads if r.operation == "read" and r.delivered]


@dataclass(frozen=True)
class CloudSample:
    addresses: tuple[int, ...]
    values: tuple[int, ...]
    status: str


def cloud_samples(rows: list[dict[str, Any]]) -> list[CloudSample]:
    """The cloud's telemetry rows (one per register) as samples, in the order they were stored."""
    grouped: dict[tuple[Any, ...], dict[int, tuple[int, str]]] = {}
    for row in sorted(rows, key=lambda r: r["id"]):
        key = (row["boot_id"], row["packet_ts"], row["sample_index"])
        grouped.setdefault(key, {})[row["address"]] = (row["raw"], row["status"])
    samples = []
    for registers in grouped.values():
        addresses = tuple(sorted(registers))
        samples.append(CloudSample(addresses, tuple(registers[a][0] for a in addresses),
                                   min(registers[a][1] for a in addresses)))
    return samples


def served_values(read: Any, addresses: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(read.values[a - read.start] for a in addresses)


@pytest.mark.hil(upload=UPLOAD_S)
async def test_every_poll_reaches_the_cloud_with_the_served_values(hil_stack, hil_clock, hil_cloud, hil_measure):
    await hil_clock.advance(minutes=10)

    reads = await delivered_reads(hil_stack)
    spacing = [b.time - a.time for a, b in zip(reads, reads[1:], strict=False)]
    hil_measure("poll_interval", sum(spacing) / len(spacing), "s", low=POLL_S * 0.98, high=POLL_S * 1.02)
    samples = cloud_samples(await hil_cloud.telemetry(hil_stack.dut.device_id))
    # everything up to the last upload: the newest samples still wait on the device for the next one
    hil_measure("share_of_polls_in_cloud", len(samples) / len(reads), "fraction", low=0.9)
    inexact = sorted({s.status for s in samples} - {"decoded"})
    assert not inexact, f"the cloud could not decode every packet exactly: {inexact}"
    mismatched = [(s.values, served_values(r, s.addresses))
                  for s, r in zip(samples, reads, strict=False) if s.values != served_values(r, s.addresses)]
    assert not mismatched, f"samples differ from what the inverter served (first: {mismatched[:3]})"


@pytest.mark.hil(upload=UPLOAD_S)
async def test_an_outage_is_buffered_and_delivered_afterwards(hil_stack, hil_clock, hil_faults, delivery,
                                                              drained, hil_measure):
    await hil_clock.advance(minutes=2)
    outage = 3 * 60.0  # about 13 packets: within the 20-packet queue
    hil_faults.partition("cloud", mode="refuse", duration=outage)
    depths: list[int] = []
    device = hil_stack.dut.device
    for _ in range(int(outage // 10)):
        await hil_clock.advance(seconds=10)
        if device is not None and device.queue is not None:
            depths.append(len(device.queue))
    if depths:
        hil_measure("deepest_queue_during_outage", max(depths), "packets", low=8, high=20)

    hil_measure("catch_up_time", await drained(hil_stack, UPLOAD_S), "s", high=20 * UPLOAD_S)
    delivered = await delivery(hil_stack)
    assert not delivered.lost, f"samples buffered during the outage did not arrive: {delivered.lost}"
    hil_measure("samples_stored_twice", delivered.stored_twice, "samples", high=0)


@pytest.mark.hil(upload=UPLOAD_S)
async def test_a_full_queue_refuses_new_packets_and_counts_them(hil_stack, hil_clock, hil_faults, delivery,
                                                                drained, hil_measure):
    await hil_clock.advance(minutes=1)
    hil_faults.partition("cloud", mode="refuse", duration=9 * 60.0)  # about 38 packets for a 20-packet queue
    await hil_clock.advance(minutes=9)
    if "events" in hil_stack.dut.capabilities:
        overflows = sum(1 for e in hil_stack.dut.events() if e.kind.label == "queue_overflow")
        hil_measure("packets_dropped_by_full_queue", overflows, "packets", low=10, high=25)

    await drained(hil_stack, UPLOAD_S)
    delivered = await delivery(hil_stack)
    dropped = {reason: n for reason, n in delivered.lost.items() if reason.startswith("queue full")}
    hil_measure("samples_dropped_by_full_queue", sum(dropped.values()), "samples", low=10 * BATCH)
    # the 20 packets the queue kept all arrive; the only loss is what the device said it dropped
    others = {reason: n for reason, n in delivered.lost.items() if reason not in dropped}
    assert not others, f"samples lost beyond the full queue's drops: {others}"
