"""The upload cycle: on the course's 15-minute cycle the device drains its buffer into one signed upload,
the cloud takes each upload once, and the compression the firmware chose is measured on what arrived.

Course: upload every 15 minutes, compressed payload, compression ratio reported
(firmware-protocol.md §2.4, §3, §4.2).
"""

from __future__ import annotations

import pytest

from harness.product import BATCH_SAMPLES, DEFAULT_SELECTION

UPLOAD_S = 900  # the course's cycle
POLL_S = 45  # 20 samples a cycle: about three packets, what one upload document carries
CYCLES = 4


@pytest.mark.hil(upload=UPLOAD_S, poll=POLL_S)
async def test_uploads_arrive_on_the_cycle_and_are_compressed(hil_stack, hil_clock, hil_cloud, hil_measure):
    device_id = hil_stack.dut.device_id
    await hil_clock.advance(seconds=CYCLES * UPLOAD_S + 60)

    uploads = [u for u in await hil_cloud.uploads(device_id) if u["verdict"] == "accepted"]
    assert len(uploads) >= CYCLES, f"only {len(uploads)} uploads in {CYCLES} cycles"
    times = [u["received_at"] for u in uploads]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    hil_measure("upload_interval", sum(gaps) / len(gaps), "s", low=UPLOAD_S * 0.98, high=UPLOAD_S * 1.02)
    nonces = [u["nonce"] for u in uploads]
    assert nonces == sorted(set(nonces)), f"nonces not strictly increasing: {nonces}"

    packets = await hil_cloud.packets(device_id)
    # a packet is one batch: BATCH_SAMPLES samples of the selected registers, 16 bits each, before compression
    raw_bytes = len(packets) * BATCH_SAMPLES * len(DEFAULT_SELECTION) * 2
    compressed_bytes = sum(len(p["raw_hex"]) // 2 for p in packets)
    hil_measure("compression_ratio", raw_bytes / compressed_bytes, "x", low=1.0)
    hil_measure("packets_per_upload", len(packets) / len(uploads), "packets")
    hil_measure("bytes_per_upload", sum(u["bytes"] for u in uploads) / len(uploads), "B")
    hil_measure("packets_not_decoded_exactly", sum(1 for p in packets if p["status"] != "decoded"), "packets")
