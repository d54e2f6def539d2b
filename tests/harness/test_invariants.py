"""The invariant checkers against deliberately broken emulators: each breakage is caught and named, and the
same scenario with the emulator intact passes (the plugin checks every test's invariants afterwards).

Conservation is broken by the emulator's own self-test switch (`drop_every_third_upload`); the other
breakages are patches of the emulator's classes made here, for the test only."""

from __future__ import annotations

from typing import Any

import pytest

import cloud.routes_config
from device_emulator import uploader
from device_emulator.firmware import Firmware
from harness.conservation import Accepted, DeviceEvent, LedgerRead, StoredPacket, StoredSample, reconcile


@pytest.mark.hil(upload=60, quirks={"drop_every_third_upload": True})
async def test_a_broken_emulator_that_loses_uploads_fails_conservation_naming_the_samples(
        hil_stack: Any, hil_clock: Any, hil_cloud: Any) -> None:
    await hil_clock.advance(minutes=6)
    violations = await hil_stack.invariants.check()
    hil_stack.invariants.skip("conservation", "broken on purpose")

    device_id = hil_stack.dut.device_id
    stored = {u["nonce"] for u in await hil_cloud.uploads(device_id)}
    lost = [e.details for e in hil_stack.dut.events() if e.kind.label == "upload_ok" and e.details["nonce"] not in stored]
    account = hil_stack.invariants.accounting[device_id]
    assert lost and len(account.missing) == 7 * sum(upload["packets"] for upload in lost)
    seqs = sorted(s.read.seq for s in account.missing)
    batches = [seqs[i : i + 7] for i in range(0, len(seqs), 7)]
    assert all(batch[-1] - batch[0] == 6 for batch in batches)  # whole packets: 7 consecutive reads
    [violation] = [v for v in violations if v.checker == "conservation"]
    assert f"{len(seqs)} of {account.accepted} samples the device accepted are not in the cloud" in violation.message
    assert violation.evidence[0].startswith(f"seq {seqs[0]} at t=") and "Vac1=" in violation.evidence[0]


@pytest.mark.hil(upload=60)
async def test_the_same_run_without_the_breakage_accounts_for_every_sample(hil_stack: Any, hil_clock: Any) -> None:
    await hil_clock.advance(minutes=6)
    assert await hil_stack.invariants.check() == []
    account = hil_stack.invariants.accounting[hil_stack.dut.device_id]
    assert account.matched > 0 and not account.missing
    assert account.matched + sum(account.explained.values()) == account.accepted


@pytest.mark.hil(upload=30)
async def test_a_reused_nonce_is_caught(hil_stack: Any, hil_clock: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(uploader, "advance_nonce", lambda store: 20_000)  # never moves on
    await hil_clock.advance(minutes=3)
    violations = [v for v in await hil_stack.invariants.check() if v.checker == "nonces"]
    hil_stack.invariants.skip("nonces", "broken on purpose")
    hil_stack.invariants.skip("conservation", "the cloud refuses the replays, so the data waits")
    assert violations and "used a nonce again" in violations[0].message
    assert "nonce 20000" in violations[0].evidence[0]


@pytest.mark.hil(upload=60)
async def test_a_configuration_acknowledged_but_not_applied_is_caught(
        hil_stack: Any, hil_clock: Any, hil_cloud: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Firmware, "apply_settings", lambda self, settings: None)  # acks, never applies
    device_id = hil_stack.dut.device_id
    await hil_cloud.set_config(device_id, upload=120)
    await hil_clock.advance(minutes=3)
    [newest] = (await hil_cloud.config_history(device_id))[:1]
    assert newest["status"] == "acknowledged" and newest["outcome"] == "accepted"
    violations = [v for v in await hil_stack.invariants.check() if v.checker == "config"]
    hil_stack.invariants.skip("config", "broken on purpose")
    assert violations and "upload_interval: cloud has 120.0, device runs 60.0" in violations[0].evidence


@pytest.mark.hil(upload=60)
async def test_an_applied_configuration_passes(hil_stack: Any, hil_clock: Any, hil_cloud: Any) -> None:
    device_id = hil_stack.dut.device_id
    await hil_cloud.set_config(device_id, upload=120, registers=["Vac1", "Pac"])
    await hil_clock.advance(minutes=4)
    firmware = hil_stack.dut.device.firmware
    assert firmware.timers["upload"].period == 120 and sorted(firmware.acquisition.selection) == [0, 9]
    assert [v for v in await hil_stack.invariants.check() if v.checker == "config"] == []


@pytest.fixture
def failing_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    """A cloud whose configuration route has a bug: every device poll of /changes is a 500."""

    async def broken(request: Any) -> Any:
        raise RuntimeError("a bug in the cloud")

    monkeypatch.setattr(cloud.routes_config, "changes", broken)


@pytest.mark.hil(upload=60)
async def test_a_5xx_nobody_injected_is_caught(failing_changes: None, hil_stack: Any, hil_clock: Any) -> None:
    await hil_clock.advance(seconds=30)
    violations = [v for v in await hil_stack.invariants.check() if v.checker == "no_5xx"]
    hil_stack.invariants.skip("no_5xx", "broken on purpose")
    assert violations and "0 of them injected" in violations[0].message


@pytest.mark.hil(upload=60)
async def test_injected_5xx_are_allowed(hil_stack: Any, hil_clock: Any, hil_faults: Any) -> None:
    await hil_faults.cloud("http_503", probability=1.0, paths=["/changes"])
    await hil_clock.advance(seconds=30)
    await hil_faults.cloud_clear()
    assert await hil_stack.invariants.count_5xx() > 0
    assert [v for v in await hil_stack.invariants.check() if v.checker == "no_5xx"] == []


def _reads(count: int) -> list[LedgerRead]:
    return [LedgerRead(n, 2.0 * n, 2.0 * n, "read", 0, 1, (100 + n,), "ok") for n in range(1, count + 1)]


def _packet(reads: list[LedgerRead], ts: int) -> StoredPacket:
    return StoredPacket((0, ts), "decoded", "0x01", "", [StoredSample(k, (0,), r.values) for k, r in enumerate(reads)])


def test_batches_lost_with_the_ram_at_a_reboot_are_explained_but_a_gap_before_is_not() -> None:
    reads = _reads(35)
    # Boot 0 accepted reads 1-28 (4 batches); the cloud has batches 1 and 3; the device rebooted at t=57.
    accepted = [Accepted(r.time, 0 if r.seq <= 28 else 1, (0,), 0, r.values) for r in reads]
    events = [DeviceEvent(0.0, "boot", {"reason": "power-on"}), DeviceEvent(57.0, "boot", {"reason": "reset"})]
    packets = [_packet(reads[0:7], 14), _packet(reads[14:21], 42)]
    account = reconcile("d", reads, accepted, events, packets, [], [], in_ram=(0, 1))
    assert [s.read.seq for s in account.missing if s.read] == list(range(8, 15))  # between two stored packets
    assert account.explained == {"in RAM when the device restarted at t=57.0 s (reset)": 7,
                                 "still on the device (queued)": 7}
    assert account.matched == 14 and account.accepted == 35


def test_a_packet_the_device_dropped_with_an_event_is_accounted_for() -> None:
    reads = _reads(14)
    accepted = [Accepted(r.time, 0, (0,), 0, r.values) for r in reads]
    events = [DeviceEvent(0.0, "boot"), DeviceEvent(28.0, "queue_overflow")]
    account = reconcile("d", reads, accepted, events, [_packet(reads[0:7], 14)], [], [], in_ram=(0, 0))
    assert not account.missing and account.explained == {"queue full: packet dropped by the device": 7}
