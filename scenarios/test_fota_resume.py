"""FOTA interrupted, then resumed: a download cut short (the power goes mid-chunk, or the network goes
away mid-download) continues from the last chunk the device verified, not from the start, and the update
completes.

Course: OTA resume after an interruption (firmware-protocol.md §7.3 steps 4-5).
"""

from __future__ import annotations

from typing import Any

import pytest

UPLOAD_S = 30
IMAGE_SIZE = 64 * 1024  # about 64 chunks
CUT_AFTER_CHUNKS = 32


async def chunks_fetched(updates: Any) -> tuple[int, int]:
    """Chunks the cloud served across every download session, and the chunks of the image."""
    sessions = (await updates.history())["sessions"]
    return sum(s["chunks_served"] for s in sessions), max(s["total_chunks"] for s in sessions)


@pytest.mark.hil(upload=UPLOAD_S)
@pytest.mark.requires("tagged_power_cut")
async def test_a_download_cut_by_a_power_loss_resumes(hil_stack, hil_clock, hil_faults, updates, hil_measure):
    await updates.running()
    hil_faults.power_cut(point="ota.chunk.written", skip=CUT_AFTER_CHUNKS - 1, off_s=10)
    new = await updates.release(size=IMAGE_SIZE)
    await updates.until_running(new, timeout=15 * 60)

    fetched, total = await chunks_fetched(updates)
    hil_measure("download_overhead", fetched / total, "x", high=1.05)
    assert (await updates.history())["rollout"]["state"] == "succeeded"


@pytest.mark.hil(upload=UPLOAD_S)
async def test_a_download_cut_by_a_network_outage_resumes(hil_stack, hil_clock, hil_faults, updates,
                                                          hil_measure):
    await updates.running()
    # slow the chunks down so the outage lands in the middle of the download
    hil_faults.network("cloud", "latency", latency=500, stream="downstream")
    new = await updates.release(size=IMAGE_SIZE)

    async def halfway() -> bool:
        sessions = (await updates.history())["sessions"]
        return bool(sessions) and sessions[-1]["chunks_served"] >= CUT_AFTER_CHUNKS

    await hil_clock.until(halfway, timeout=5 * updates.CHECK_S, poll=0.5)
    hil_faults.partition("cloud", duration=2 * updates.CHECK_S)
    await updates.until_running(new, timeout=15 * 60)

    fetched, total = await chunks_fetched(updates)
    hil_measure("download_overhead", fetched / total, "x", high=1.05)
