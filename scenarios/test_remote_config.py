"""Remote configuration: a new poll interval, upload interval and register selection set in the cloud
take effect after the device's next upload, without a reboot; the device acknowledges it; sending the
same configuration again changes nothing and is acknowledged as unchanged; invalid values are refused
with their reason and never reach the device.

Course: runtime configuration, applied after the next upload cycle, idempotent, validated, with an
acknowledgement (firmware-protocol.md §5).
"""

from __future__ import annotations

from typing import Any

import pytest

from harness.hil_cloud import OperatorError

UPLOAD_S = 30
NEW_POLL_S = 5
NEW_UPLOAD_S = 60
NEW_REGISTERS = ["Vac1", "Iac1", "Pac"]  # addresses 0, 1, 9


async def poll_times(stack: Any, since: float) -> list[float]:
    reads = await stack.sims[stack.dut.device_id].ledger()
    return [r.time for r in reads if r.operation == "read" and r.delivered and r.time >= since]


def boots(dut: Any) -> int:
    return sum(1 for e in dut.events() if e.kind.label == "boot")


async def newest_version(cloud: Any, device_id: str) -> dict[str, Any]:
    return (await cloud.config_history(device_id))[0]


@pytest.mark.hil(upload=UPLOAD_S)
async def test_applied_after_the_next_upload_without_reboot(hil_stack, hil_clock, hil_cloud, hil_measure):
    dut = hil_stack.dut
    await hil_clock.advance(minutes=2)
    boots_before = boots(dut)
    asked_at = hil_clock.now()
    await hil_cloud.set_config(dut.device_id, poll=NEW_POLL_S, upload=NEW_UPLOAD_S, registers=NEW_REGISTERS)

    async def polling_at_new_interval() -> float | None:
        times = await poll_times(hil_stack, asked_at)
        recent = [b - a for a, b in zip(times[-4:], times[-3:], strict=False)]
        return times[-4] if len(recent) == 3 and all(abs(g - NEW_POLL_S) < 0.01 for g in recent) else None

    in_force_at = await hil_clock.until(polling_at_new_interval, timeout=5 * 60, poll=1.0)
    # the firmware applies a configuration after its next upload: one upload period, plus the 5 s check
    hil_measure("time_to_apply", in_force_at - asked_at, "s", high=UPLOAD_S + 5 + NEW_POLL_S + 1)
    await hil_clock.advance(seconds=3 * NEW_UPLOAD_S)
    if "events" in dut.capabilities:
        assert boots(dut) == boots_before, "the device rebooted to apply the configuration"
    rows = await hil_cloud.telemetry(dut.device_id, since=hil_clock.wall_at(in_force_at + NEW_UPLOAD_S))
    assert rows, "nothing uploaded since the configuration took effect"
    assert {row["register"] for row in rows} == set(NEW_REGISTERS)
    uploads = [u for u in await hil_cloud.uploads(dut.device_id) if u["verdict"] == "accepted"]
    times = [u["received_at"] for u in uploads if u["received_at"] > hil_clock.wall_at(in_force_at)]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert gaps and all(abs(g - NEW_UPLOAD_S) < 1.0 for g in gaps), f"uploads not every {NEW_UPLOAD_S} s: {gaps}"


@pytest.mark.hil(upload=UPLOAD_S)
async def test_acknowledged_and_idempotent(hil_stack, hil_clock, hil_cloud):
    dut = hil_stack.dut
    await hil_clock.advance(seconds=20)
    await hil_cloud.set_config(dut.device_id, poll=NEW_POLL_S)

    async def acknowledged() -> dict[str, Any] | None:
        version = await newest_version(hil_cloud, dut.device_id)
        return version if version["status"] == "acknowledged" else None

    first = await hil_clock.until(acknowledged, timeout=3 * 60, poll=5.0)
    assert first["outcome"] == "accepted", first
    assert "poll_interval" in first["ack"]["accepted"]

    await hil_cloud.set_config(dut.device_id, poll=NEW_POLL_S)  # the same again
    await hil_clock.until(lambda: _newer(hil_cloud, dut.device_id, first["version"]), timeout=3 * 60, poll=5.0)
    again = await hil_clock.until(acknowledged, timeout=3 * 60, poll=5.0)
    assert again["outcome"] == "unchanged", again
    assert "poll_interval" in again["ack"]["unchanged"] and not again["ack"]["accepted"], again["ack"]
    await hil_clock.advance(seconds=2 * UPLOAD_S)
    times = await poll_times(hil_stack, hil_clock.now() - 30)
    gaps = {round(b - a, 3) for a, b in zip(times, times[1:], strict=False)}
    assert gaps == {float(NEW_POLL_S)}, f"the device does not poll every {NEW_POLL_S} s: {gaps}"


async def _newer(cloud: Any, device_id: str, version: int) -> bool:
    return (await newest_version(cloud, device_id))["version"] > version


@pytest.mark.hil(upload=UPLOAD_S)
@pytest.mark.parametrize(("change", "reason"), [
    ({"poll": 0}, "poll_interval must be 1..3600 s"),
    ({"upload": 86_400}, "upload_interval must be 1..3600 s"),
    ({"registers": ["Vac1", "Voltage9"]}, "no register 'Voltage9'"),
    ({"registers": []}, "registers must be a non-empty list"),
], ids=["poll_zero", "upload_a_day", "unknown_register", "no_registers"])
async def test_invalid_values_are_refused_with_their_reason(hil_stack, hil_clock, hil_cloud, change, reason):
    dut = hil_stack.dut
    await hil_clock.advance(seconds=30)
    with pytest.raises(OperatorError) as refused:
        await hil_cloud.set_config(dut.device_id, **change)
    assert refused.value.status == 400 and reason in str(refused.value), str(refused.value)
    assert await hil_cloud.config_history(dut.device_id) == [], "a refused configuration was recorded"
    await hil_clock.advance(seconds=2 * UPLOAD_S)
    times = await poll_times(hil_stack, hil_clock.now() - 30)
    gaps = {round(b - a, 3) for a, b in zip(times, times[1:], strict=False)}
    assert gaps == {2.0}, f"the device's polling changed: {gaps}"
