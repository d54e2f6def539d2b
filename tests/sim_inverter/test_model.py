"""The inverter model: determinism, daily shape, export limit, plausible ranges, site geometry."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import RegisterError
from protocol.registers import by_name
from sim_inverter.model import InverterModel, Site

HOUR = 3600.0
CLEAR = Site(cloudiness=0.0)
VAC, IAC, FAC, VPV1, VPV2, IPV1, IPV2, TEMP, POW, PAC = range(10)


def local(hour: float) -> float:
    """Sim time of a local clock hour on the first day (the default site starts at 06:00)."""
    return (hour - 6.0) * HOUR


@pytest.fixture(scope="module")
def clear_model() -> InverterModel:
    return InverterModel(seed=1, site=CLEAR)


@pytest.fixture(scope="module")
def cloudy_model() -> InverterModel:
    return InverterModel(seed=1)


# --- determinism -------------------------------------------------------------------------------


def test_same_seed_gives_identical_values_whatever_the_call_order() -> None:
    times = [random.Random(5).uniform(local(0), local(0) + 3 * 24 * HOUR) for _ in range(400)]
    first, second = InverterModel(seed=9), InverterModel(seed=9)
    forward = [first.registers(t) for t in times]
    # The second model builds its days in another order and reads each time twice.
    backward = {t: second.registers(t) for t in reversed(times)}
    assert forward == [backward[t] for t in times]
    assert forward == [second.registers(t) for t in times]


def test_export_limit_history_does_not_leak_into_values(clear_model: InverterModel) -> None:
    t = local(12.5)
    before = clear_model.registers(t)
    clear_model.set_export_limit(30)
    clear_model.registers(t)
    clear_model.set_export_limit(100)
    assert clear_model.registers(t) == before


def test_different_seeds_give_different_weather_and_grid_noise() -> None:
    one, two = InverterModel(seed=1), InverterModel(seed=2)
    days = [local(6) + k * 10 * 60.0 for k in range(3 * 24 * 6)]
    pac_one = [one.registers(t)[PAC] for t in days]
    pac_two = [two.registers(t)[PAC] for t in days]
    differing = sum(a != b for a, b in zip(pac_one, pac_two, strict=True) if a or b)
    assert differing > 0.8 * sum(1 for a, b in zip(pac_one, pac_two, strict=True) if a or b)
    nights = [local(2) + k * 60.0 for k in range(60)]
    assert [one.registers(t)[FAC] for t in nights] != [two.registers(t)[FAC] for t in nights]


# --- daily shape -------------------------------------------------------------------------------


def test_night_is_idle_with_a_live_grid(cloudy_model: InverterModel) -> None:
    night = [local(h) + m * 60.0 for h in (0, 1, 2, 3, 4, 20, 21, 22, 23) for m in range(0, 60, 6)]
    for t in night:
        regs = cloudy_model.registers(t)
        assert regs[PAC] == regs[IAC] == regs[IPV1] == regs[IPV2] == 0
        assert 2200 <= regs[VAC] <= 2450
        assert 4950 <= regs[FAC] <= 5050
        assert 200 <= regs[TEMP] <= 400  # near ambient, around 25 degC at night
        assert regs[VPV1] <= 50 and regs[VPV2] <= 50  # dark strings: no voltage to speak of


def test_clear_day_peaks_near_solar_noon(clear_model: InverterModel) -> None:
    samples = [(m / 60, clear_model.registers(local(m / 60))[PAC]) for m in range(5 * 60, 20 * 60, 5)]
    peak_hour, peak = max(samples, key=lambda s: s[1])
    # Moratuwa (79.9 E, UTC+5:30) on the March equinox: solar noon is about 12:18 local time.
    assert 11.75 <= peak_hour <= 12.85
    assert 4000 <= peak <= 5000
    pac = dict(samples)
    # Monotonic enough: rising through the morning, falling through the afternoon.
    assert pac[8.0] < pac[10.0] < peak and peak > pac[14.5] > pac[16.5]
    energy_kwh = sum(p for _, p in samples) * (5 / 60) / 1000
    assert 25 <= energy_kwh <= 45  # a 6.2 kWp roof on a clear tropical day


def test_pac_tracks_irradiance_under_clouds(cloudy_model: InverterModel) -> None:
    states = [cloudy_model.state(local(7) + k * 60.0) for k in range(11 * 60)]
    pac = np.array([s.pac for s in states])
    poa = np.array([(s.poa1 + s.poa2) / 2 for s in states])
    assert np.corrcoef(pac, poa)[0, 1] > 0.95
    # Clouds make it a different curve from the clear-sky one.
    assert np.ptp(np.diff(pac)) > 1000


def test_internal_temperature_follows_ambient_and_rises_with_power() -> None:
    cool = InverterModel(site=Site(cloudiness=0.0, ambient_mean_c=20.0))
    warm = InverterModel(site=Site(cloudiness=0.0, ambient_mean_c=30.0))
    night, noon = local(3), local(12.5)
    assert warm.registers(night)[TEMP] - cool.registers(night)[TEMP] == pytest.approx(100, abs=2)
    idle = warm.state(night)
    assert abs(idle.temp - idle.ambient) < 0.5
    busy = warm.state(noon)
    assert busy.temp - busy.ambient > 15  # ~200 W of conversion loss at ~4.9 kW


def test_clouds_lower_the_yield_of_the_same_site() -> None:
    minutes = [k * 60.0 for k in range(3 * 24 * 60)]
    clear, cloudy = InverterModel(seed=4, site=CLEAR), InverterModel(seed=4)
    clear_energy = sum(clear.state(t).pac for t in minutes)
    cloudy_energy = sum(cloudy.state(t).pac for t in minutes)
    assert 0.5 * clear_energy < cloudy_energy < 0.97 * clear_energy


# --- export limit ------------------------------------------------------------------------------


def test_export_limit_caps_pac_and_moves_the_strings_off_mpp() -> None:
    model = InverterModel(site=CLEAR)
    noon = local(12.25)
    free = model.registers(noon)
    model.set_export_limit(50)
    capped = model.registers(noon)

    assert capped[POW] == 50 and model.export_limit == 50
    assert abs(capped[PAC] - 2500) <= 2
    assert capped[IAC] < free[IAC]
    for v, i in ((VPV1, IPV1), (VPV2, IPV2)):
        assert capped[v] > free[v] + 200  # at least 20 V towards open circuit
        assert capped[i] < free[i] - 20  # at least 2 A less
    assert capped[TEMP] < free[TEMP]  # less loss, less heat


def test_export_limit_above_available_power_changes_nothing_but_register_8() -> None:
    model = InverterModel(site=CLEAR)
    morning = local(7.5)
    free = model.registers(morning)
    assert 0 < free[PAC] < 2500
    model.set_export_limit(60)
    capped = model.registers(morning)
    assert capped[:POW] == free[:POW] and capped[PAC] == free[PAC]
    assert capped[POW] == 60


def test_export_limit_zero_idles_the_inverter_at_open_circuit() -> None:
    model = InverterModel(site=CLEAR)
    noon = local(12.25)
    free = model.registers(noon)
    model.set_export_limit(0)
    idle = model.registers(noon)
    assert idle[PAC] == idle[IAC] == idle[IPV1] == idle[IPV2] == 0
    assert idle[VPV1] > free[VPV1] and idle[VPV2] > free[VPV2]


def test_lower_limits_move_monotonically_along_the_iv_curve() -> None:
    model = InverterModel(site=CLEAR)
    noon = local(12.25)
    readings = []
    for limit in range(100, -1, -10):
        model.set_export_limit(limit)
        readings.append(model.state(noon))
    for hi, lo in zip(readings, readings[1:], strict=False):
        assert lo.pac <= hi.pac
        assert lo.vpv1 >= hi.vpv1 and lo.vpv2 >= hi.vpv2
        assert lo.ipv1 <= hi.ipv1 and lo.ipv2 <= hi.ipv2


@pytest.mark.parametrize("bad", [-1, 101, 1000, 50.0, True, "50", None])
def test_set_export_limit_rejects_anything_but_0_to_100(bad: object) -> None:
    model = InverterModel(site=CLEAR)
    model.set_export_limit(70)
    with pytest.raises(RegisterError) as caught:
        model.set_export_limit(bad)  # type: ignore[arg-type]
    assert caught.value.value == bad
    assert model.export_limit == 70
    assert model.registers(local(12))[POW] == 70


# --- plausible ranges --------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2])
def test_values_stay_plausible_around_the_clock(seed: int) -> None:
    model = InverterModel(seed=seed)
    rated = model.site.inverter_rated_w
    for k in range(3 * 24 * 60 // 7):
        t = k * 7 * 60.0 + 13.0
        regs = model.registers(t)
        state = model.state(t)
        assert 2200 <= regs[VAC] <= 2500
        assert 4950 <= regs[FAC] <= 5050
        assert 0 <= regs[VPV1] <= 5000 and 0 <= regs[VPV2] <= 5000
        assert 0 <= regs[IPV1] <= 95 and 0 <= regs[IPV2] <= 95
        assert 200 <= regs[TEMP] <= 700
        assert regs[POW] == 100
        assert 0 <= regs[PAC] <= rated
        # AC never exceeds DC; a running inverter converts at least 85 % of it.
        assert state.pac <= state.pdc + 1e-9
        if state.pac > 500:
            assert state.pac >= 0.85 * state.pdc
        # The phase current is the power over the voltage, to register resolution.
        assert abs(regs[IAC] - regs[PAC] * 100 / regs[VAC]) <= 1


def test_days_join_without_a_step_at_local_midnight() -> None:
    midnight = local(24)
    # Read the later day first: a day's values must not depend on when its neighbour was built.
    model = InverterModel(seed=3)
    after = model.state(midnight + 0.5)
    before = model.state(midnight - 0.5)
    assert abs(after.vac1 - before.vac1) < 0.6
    assert abs(after.fac1 - before.fac1) < 0.02
    assert abs(after.temp - before.temp) < 0.05


@settings(max_examples=60, deadline=None)
@given(
    t=st.floats(min_value=local(0), max_value=local(0) + 3 * 24 * HOUR, allow_nan=False),
    limit=st.integers(min_value=0, max_value=100),
)
def test_any_time_and_limit_give_ten_uint16_within_the_cap(t: float, limit: int) -> None:
    model = _shared_model()
    model.set_export_limit(limit)
    regs = model.registers(t)
    assert len(regs) == 10 and all(isinstance(v, int) and 0 <= v <= 0xFFFF for v in regs)
    assert regs[POW] == limit
    assert regs[PAC] <= math.ceil(model.site.inverter_rated_w * limit / 100) + 1


_SHARED: list[InverterModel] = []


def _shared_model() -> InverterModel:
    # One model for every hypothesis example: its three days get built once.
    if not _SHARED:
        _SHARED.append(InverterModel(seed=11))
    return _SHARED[0]


@pytest.mark.parametrize("t", [math.nan, math.inf, -math.inf, 1e12])
def test_time_outside_the_simulation_is_refused(t: float) -> None:
    with pytest.raises(ValueError):
        InverterModel(site=CLEAR).registers(t)


# --- site --------------------------------------------------------------------------------------


def _daylight_hours(latitude: float) -> float:
    site = Site(latitude=latitude, longitude=0.0, timezone="UTC", start="2026-06-21T00:00:00", cloudiness=0.0)
    model = InverterModel(site=site)
    return sum(model.registers(k * 60.0)[PAC] > 0 for k in range(24 * 60)) / 60


def test_latitude_changes_day_length() -> None:
    north, equator, south = _daylight_hours(50.0), _daylight_hours(0.0), _daylight_hours(-50.0)
    assert north > equator + 2 > south + 4
    assert north >= 14 and south <= 9


def test_registers_scale_to_physical_units_with_the_register_map(clear_model: InverterModel) -> None:
    t = local(12)
    state, regs = clear_model.state(t), clear_model.registers(t)
    for name, value in (("Vac1", state.vac1), ("Fac1", state.fac1), ("Vpv1", state.vpv1), ("Pac", state.pac)):
        register = by_name(name)
        assert register.scaled(regs[register.address]) == pytest.approx(value, abs=1 / register.gain)


@pytest.mark.parametrize(
    "bad",
    [{"latitude": 91.0}, {"cloudiness": 1.5}, {"inverter_rated_w": 0.0}, {"timezone": "Mars/Olympus"}],
)
def test_impossible_sites_are_refused(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        InverterModel(site=Site(**bad))  # type: ignore[arg-type]
