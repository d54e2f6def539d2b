"""The power model: integration of current over loop time, windows, and the two policies."""

from __future__ import annotations

import pytest

from device_emulator.power import (
    ALWAYS_ON,
    POLICIES,
    POWER_MANAGED,
    Activity,
    PowerMeter,
    PowerPolicy,
    PowerState,
)


def test_one_hour_in_one_state_integrates_to_its_current() -> None:
    meter = PowerMeter(PowerState.WIFI_RX, now=0.0)
    report = meter.report(3600.0)
    assert report.charge_mah == pytest.approx(100.0)
    assert report.energy_mwh == pytest.approx(330.0)
    assert report.average_ma == pytest.approx(100.0)
    assert report.seconds[PowerState.WIFI_RX] == pytest.approx(3600.0)


def test_mixed_states_average_by_time() -> None:
    meter = PowerMeter(PowerState.LIGHT_SLEEP, now=10.0)
    meter.enter(PowerState.WIFI_TX, 19.0)  # 9 s at 0.8 mA
    meter.enter(PowerState.LIGHT_SLEEP, 20.0)  # 1 s at 240 mA
    report = meter.report(30.0)  # 10 s more at 0.8 mA
    assert report.elapsed_s == pytest.approx(20.0)
    assert report.average_ma == pytest.approx((19 * 0.8 + 240.0) / 20)
    assert report.charge_mah == pytest.approx((19 * 0.8 + 240.0) / 3600)
    assert report.seconds[PowerState.LIGHT_SLEEP] == pytest.approx(19.0)
    assert report.seconds[PowerState.WIFI_TX] == pytest.approx(1.0)
    assert report.transitions == 2


def test_a_window_is_the_difference_of_two_reports() -> None:
    meter = PowerMeter(PowerState.CPU_80, now=0.0)
    meter.enter(PowerState.CPU_240, 100.0)
    start = meter.report(100.0)
    meter.enter(PowerState.OFF, 130.0)
    window = meter.report(160.0).since(start)
    assert window.elapsed_s == pytest.approx(60.0)
    assert window.average_ma == pytest.approx(30 * 68.0 / 60)
    assert window.seconds[PowerState.CPU_80] == pytest.approx(0.0)
    assert window.transitions == 1


def test_entering_the_same_state_is_not_a_transition() -> None:
    meter = PowerMeter(PowerState.CPU_160, now=0.0)
    meter.enter(PowerState.CPU_160, 5.0)
    report = meter.report(10.0)
    assert report.transitions == 0
    assert report.charge_mah == pytest.approx(10 * 44.0 / 3600)


def test_an_injected_clock_stamps_transitions() -> None:
    now = [0.0]
    meter = PowerMeter(PowerState.WIFI_TX, clock=lambda: now[0])
    now[0] = 2.0
    meter.enter(PowerState.OFF)
    now[0] = 7.0
    assert meter.report().charge_mah == pytest.approx(2 * 240.0 / 3600)


def test_time_going_backwards_is_refused() -> None:
    meter = PowerMeter(PowerState.CPU_240, now=5.0)
    with pytest.raises(ValueError):
        meter.enter(PowerState.OFF, 4.0)


def test_report_is_json_ready() -> None:
    meter = PowerMeter(PowerState.WIFI_RX, now=0.0)
    meter.enter(PowerState.LIGHT_SLEEP, 1.0)
    data = meter.report(2.0).as_dict()
    assert data["seconds"] == {"wifi_rx": 1.0, "light_sleep": 1.0}
    assert data["average_ma"] == pytest.approx(50.4)


def test_policies_cover_every_activity() -> None:
    for policy in POLICIES.values():
        assert set(policy.states) == set(Activity)
    assert POLICIES["always-on"] is ALWAYS_ON and POLICIES["power-managed"] is POWER_MANAGED


def _run_duty_cycle(policy: PowerPolicy, hours: float) -> float:
    """Average mA for the firmware's duty cycle: poll over HTTP every 2 s, upload every 15 min."""
    meter = PowerMeter(policy.state_for(Activity.SLEEP), now=0.0)
    phases_poll = [(Activity.COMPUTE, 0.002), (Activity.TRANSMIT, 0.005), (Activity.RECEIVE, 0.040)]
    phases_upload = [(Activity.COMPUTE, 0.020), (Activity.TRANSMIT, 0.150), (Activity.RECEIVE, 0.200)]
    now = 0.0
    for tick in range(int(hours * 3600 / 2)):
        now = tick * 2.0
        phases = phases_poll + (phases_upload if tick % 450 == 449 else [])
        for activity, duration in phases:
            meter.enter(policy.state_for(activity), now)
            now += duration
        meter.enter(policy.state_for(Activity.SLEEP), now)
    return meter.report(hours * 3600).average_ma


def test_power_managed_draws_far_less_than_always_on() -> None:
    always_on = _run_duty_cycle(ALWAYS_ON, hours=1)
    managed = _run_duty_cycle(POWER_MANAGED, hours=1)
    assert managed < always_on
    # Always-on listens all the time; it cannot average below the RX current.
    assert always_on >= PowerState.WIFI_RX.milliamps
    # Managed: per 2 s, 2 ms at 68 + 5 ms at 240 + 40 ms at 100 mA, light sleep otherwise.
    per_poll = (0.002 * 68 + 0.005 * 240 + 0.040 * 100 + (2 - 0.047) * 0.8) / 2
    assert managed == pytest.approx(per_poll, rel=0.02)
