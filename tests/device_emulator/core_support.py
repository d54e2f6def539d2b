"""Shared pieces for the tests of the emulator's core (firmware loop, acquisition, upload, device).

Stand-ins here replace E2's components (configuration, commands, OTA) where a test isolates the core,
and a scripted inverter link replaces the transport where a test isolates acquisition.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from device_emulator.console import Console
from device_emulator.context import FirmwareContext
from device_emulator.event_log import EventLog
from device_emulator.firmware import Components
from device_emulator.flash import Flash
from device_emulator.inverter_link import OK, InverterLink, Reply
from device_emulator.nvs import NvsStore
from device_emulator.power import PowerMeter
from device_emulator.profiles import PROFILES, Profile

VECTORS = Path(__file__).resolve().parents[2] / "fixtures" / "vectors"


def read_pty(fd: int, until: str, timeout: float = 3.0) -> str:
    """Read a non-blocking pty until `until` shows up (the kernel hands pty data over asynchronously)."""
    import os
    import time

    text, deadline = "", time.monotonic() + timeout
    while until not in text and time.monotonic() < deadline:
        try:
            text += os.read(fd, 65536).decode("utf-8", "replace")
        except BlockingIOError:
            time.sleep(0.01)
    return text


def vectors(name: str) -> Any:
    return json.loads((VECTORS / name).read_text())


class IdlePart:
    """Stand-in for a component that has nothing to do; records when the loop called it."""

    def __init__(self, clock: Callable[[], float] = lambda: 0.0) -> None:
        self.clock = clock
        self.calls: list[tuple[str, float]] = []

    async def check(self) -> None:
        self.calls.append(("check", self.clock()))

    async def poll(self) -> None:
        self.calls.append(("poll", self.clock()))

    def apply_pending(self) -> None:
        self.calls.append(("apply_pending", self.clock()))

    def on_boot(self) -> None:
        self.calls.append(("on_boot", self.clock()))


def idle_components(ctx: FirmwareContext) -> Components:
    return Components(IdlePart(ctx.clock), IdlePart(ctx.clock), IdlePart(ctx.clock))


class ScriptedLink(InverterLink):
    """An inverter that answers reads from a script: one sample per read (the values of `layout`, in
    its order, placed into the block read) or None for a failed read. Without a layout a scripted
    entry is the whole block."""

    def __init__(
        self, profile: Profile, script: list[tuple[int, ...] | None], layout: list[int] | None = None
    ) -> None:
        async def no_wait(seconds: float) -> None:
            return None

        super().__init__(profile, sleep=no_wait)
        self.script = list(script)
        self.layout = layout
        self.reads: list[tuple[int, int]] = []
        self.writes: list[tuple[int, int]] = []

    async def _send_read(self, start: int, count: int) -> Reply | None:
        self.reads.append((start, count))
        sample = self.script.pop(0)
        if sample is None:
            return None
        if self.layout is None:
            return Reply(OK, sample)
        block = [0] * count
        for address, value in zip(self.layout, sample, strict=True):
            if address >= 0:
                block[address - start] = value
        return Reply(OK, tuple(block))

    async def _send_write(self, address: int, value: int) -> Reply | None:
        self.writes.append((address, value))
        return Reply(OK, echoed=True)


class ManualClock:
    """Device seconds that only move when a test says so."""

    def __init__(self, start: float = 0.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def millis(self) -> int:
        return int(self.now * 1000) & 0xFFFF_FFFF


class LoopClock(ManualClock):
    """Device seconds that follow the running loop, `scale` device seconds per loop second."""

    def __init__(self, scale: float = 1.0) -> None:
        import asyncio

        self.loop = asyncio.get_running_loop()
        self.t0 = self.loop.time()
        self.scale = scale

    @property  # type: ignore[override]
    def now(self) -> float:
        return (self.loop.time() - self.t0) * self.scale

    async def sleep(self, seconds: float) -> None:
        import asyncio

        await asyncio.sleep(seconds / self.scale)


def make_context(
    tmp_path: Path,
    profile: Profile | str = "reference-1.0.4",
    *,
    inverter: InverterLink | None = None,
    http: aiohttp.ClientSession | None = None,
    cloud_url: str = "http://127.0.0.1:9",
    clock: ManualClock | None = None,
    millis: Callable[[], int] | None = None,
    point: Callable[[str], None] = lambda tag: None,
    sleep: Callable[[float], Awaitable[None]] | None = None,
    device_id: str = "ESP32_EcoWatt_Smart",
) -> FirmwareContext:
    """A context for one component under test, with real NVS, flash, event log, meter and console."""
    profile = PROFILES[profile] if isinstance(profile, str) else profile
    clock = clock or ManualClock()

    async def no_sleep(seconds: float) -> None:
        clock.now += seconds

    if isinstance(clock, LoopClock):
        sleep = sleep or clock.sleep

    return FirmwareContext(
        device_id=device_id,
        version="1.0.4",
        profile=profile,
        nvs=NvsStore(tmp_path / "nvs.log", on_point=point, durable=False),
        flash=Flash(tmp_path / "flash.bin"),
        events=EventLog(clock=clock, wall_clock=lambda: 1_700_000_000.0),
        power=PowerMeter(clock=clock),
        console=Console(millis or clock.millis),
        http=http,  # type: ignore[arg-type]
        cloud_url=cloud_url,
        inverter=inverter or ScriptedLink(profile, []),
        clock=clock,
        wall_clock=lambda: 1_700_000_000.0,
        millis=millis or clock.millis,
        sleep=sleep or no_sleep,
        request_reboot=lambda reason: None,
        point=point,
        time_scale=clock.scale if isinstance(clock, LoopClock) else 1.0,
    )
