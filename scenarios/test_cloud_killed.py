"""The cloud killed (SIGKILL) while the device uploads, then restarted on the same database: nothing the
device sent is lost or stored twice. The device keeps what the cloud never acknowledged and sends it
again with a fresh nonce; what the cloud committed before dying is there after the restart.

A real kill needs the cloud in a process of its own, so this scenario always runs the stack as
processes (`ecowatt sim serve`, `ecowatt cloud serve`, `ecowatt device run` or the board): on the run's
real or scaled time, or, when the run is on virtual time, on time scaled by SCALE.

Course: durable ingest ("an upload is acknowledged only after what it carried is committed",
ARCHITECTURE "Durability and invariants"; firmware-protocol.md §2.4).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from harness.clocks import Clock, parse_time
from harness.pytest_plugin import stack_options, time_mode
from harness.stack import Stack, StackOptions

UPLOAD_S = 15
SCALE = "scale:10"  # device seconds per real second when the run itself is on virtual time
KILLS = 2
DOWN_S = 10.0  # device seconds the cloud stays dead
IN_CLOUD_S = 3.0  # device seconds each upload spends inside the cloud before it is handled
UPLOAD_DONE = re.compile(r"\[\s*(\d+)\]\[\w\]\[uploader\] upload (?:ok|failed)")


async def kill_during_an_upload(stack: Stack) -> None:
    """Kill the cloud one second into the device's next upload (its upload timer ticks every UPLOAD_S
    from boot: the millis of an upload's log line tell when the next one starts)."""
    clock = stack.clock
    done = await stack.dut.console.expect(UPLOAD_DONE, timeout=3 * UPLOAD_S)
    millis = int(done.group(1))
    next_tick_ms = (millis // (UPLOAD_S * 1000) + 1) * UPLOAD_S * 1000
    await clock.advance(seconds=(next_tick_ms - millis) / 1000 + 1.0)
    await stack.faults.kill_cloud()
    await clock.advance(seconds=DOWN_S)
    await stack.faults.restart_cloud()


async def run(options: StackOptions, clock: Clock, directory: Path, measure: Any, delivery: Any) -> None:
    async with Stack(options, clock, directory) as stack:
        # every upload waits a moment inside the cloud before it is handled: that is when it dies
        await stack.faults.cloud("delay", seconds=IN_CLOUD_S / clock.time_scale, paths=["/process"])
        for _ in range(KILLS):
            await kill_during_an_upload(stack)
        await clock.advance(seconds=6 * UPLOAD_S)  # the backlog drains

        interrupted = [line for line in stack.dut.console.lines if "upload failed" in line]
        measure("uploads_interrupted", len(interrupted), "uploads", low=1)
        delivered = await delivery(stack)
        measure("samples_in_cloud", delivered.in_cloud, "samples")
        measure("samples_lost", sum(delivered.lost.values()), "samples", high=0)
        measure("samples_stored_twice", delivered.stored_twice, "samples", high=0)
        assert not delivered.lost, f"samples lost: {delivered.lost}"
        await stack.invariants.assert_ok()


@pytest.mark.hil(upload=UPLOAD_S)
def test_the_cloud_killed_during_uploads_loses_nothing(request, tmp_path, hil_measure, delivery):
    options = stack_options(request.config, request.node.get_closest_marker("hil")).replace(processes=True)
    mode = time_mode(request.config)
    clock = parse_time(SCALE if mode.strip().lower() == "virtual" else mode)
    clock.run(run(options, clock, tmp_path / "hil", hil_measure, delivery))
