"""The inverter model: register values at any simulated time.

`InverterModel.registers(t)` is a pure function of (seed, site, t, export limit): the plant's physics
comes from per-day pvlib tables (sim_inverter/solar.py), built on first use and cached; grid noise comes
from seeded per-day series indexed by time. Nothing depends on call order, so every transport serving
the same model at the same time sees the same values.

The inverter has one MPP tracker per string. When the available AC power exceeds its cap (the rating
times the export limit), it moves each string's operating point along its I-V curve towards open
circuit (voltage up, current down) until the AC output equals the cap.
"""

from __future__ import annotations

import math
from array import array
from collections import OrderedDict
from dataclasses import dataclass
from operator import attrgetter

import numpy as np

from protocol.errors import RegisterError
from protocol.registers import EXPORT_LIMIT_ADDRESS, REGISTERS, by_address
from sim_inverter.solar import (
    CURVE_POINTS,
    SECONDS_PER_DAY,
    InverterCurve,
    PvModule,
    PvString,
    SimCalendar,
    Site,
    SolarDay,
    StringDay,
    as_buffer,
    ornstein_uhlenbeck,
    solar_day,
    stream_rng,
)

__all__ = ["InverterModel", "InverterState", "PvModule", "PvString", "Site"]

_GRID_STREAM = 3
_DAYS_CACHED = 4
# Sim time is bounded so that every day maps to a calendar date pandas can represent.
MAX_SIM_SECONDS = 100 * 365 * SECONDS_PER_DAY
_UINT16_MAX = 0xFFFF


@dataclass(slots=True)
class InverterState:
    """The inverter's physical state at one instant. Register fields are named like the register map
    (lower case) and hold physical units; the rest are for reports and tests."""

    vac1: float  # V
    iac1: float  # A
    fac1: float  # Hz
    vpv1: float  # V
    vpv2: float  # V
    ipv1: float  # A
    ipv2: float  # A
    temp: float  # degC, inside the inverter
    pow: int  # export limit, % of the rating
    pac: float  # W
    pdc: float  # W drawn from the strings
    ghi: float  # W/m2, global horizontal irradiance with clouds
    poa1: float  # W/m2 on string 1's plane
    poa2: float  # W/m2 on string 2's plane
    ambient: float  # degC

    def registers(self) -> list[int]:
        """Raw uint16 register values, addresses 0..9 (value x gain, rounded, clamped)."""
        out = []
        for value, gain in zip(_register_values(self), _GAINS, strict=True):
            raw = math.floor(value * gain + 0.5)
            out.append(0 if raw < 0 else _UINT16_MAX if raw > _UINT16_MAX else raw)
        return out


# The register fields of InverterState, in address order, and their gains (protocol/registers.py).
_register_values = attrgetter(*(reg.name.lower() for reg in REGISTERS))
_GAINS = tuple(reg.gain for reg in REGISTERS)


@dataclass(frozen=True)
class _GridDay:
    """Per-second grid voltage (V) and frequency (Hz) at the point of connection, before own export."""

    volts: array[float]
    hertz: array[float]


@dataclass(frozen=True)
class _Day:
    solar: SolarDay
    grid: _GridDay


class InverterModel:
    """A seeded single-phase PV inverter with two strings (see module docstring)."""

    def __init__(self, seed: int = 1, site: Site = Site()) -> None:  # noqa: B008 - Site is frozen
        self.seed = seed
        self.site = site
        self._calendar = SimCalendar.of(site)
        self._curve = InverterCurve.of(site)
        self._days: OrderedDict[int, _Day] = OrderedDict()
        self._export_limit = 100
        self._dc_cap = self._curve.dc_for(site.inverter_rated_w)
        self._day(self._locate(0.0)[0])  # the first reads need no table build

    @property
    def export_limit(self) -> int:
        """Register 8: the AC output cap as a percentage of the rating."""
        return self._export_limit

    def set_export_limit(self, percent: int) -> None:
        """Write register 8; RegisterError unless an integer 0..100."""
        if isinstance(percent, bool) or not isinstance(percent, int):
            raise RegisterError("export limit must be an integer percentage", percent)
        by_address(EXPORT_LIMIT_ADDRESS).check_write(percent)
        self._export_limit = percent
        self._dc_cap = self._curve.dc_for(self.site.inverter_rated_w * percent / 100.0)

    def registers(self, t: float) -> list[int]:
        """The 10 raw register values (addresses 0..9) at sim time `t` seconds after the site's start."""
        return self.state(t).registers()

    def state(self, t: float) -> InverterState:
        """The physical state at sim time `t` (ValueError if `t` is not finite or beyond 100 years)."""
        day_index, second = self._locate(t)
        day = self._day(day_index)
        solar = day.solar
        m = min(int(second // 60.0), 1439)
        f = second / 60.0 - m
        row, nxt = m * CURVE_POINTS, (m + 1) * CURVE_POINTS

        s1, s2 = solar.strings
        v1, i1 = _point(s1, row, nxt, f, 0)
        v2, i2 = _point(s2, row, nxt, f, 0)
        p1, p2 = v1 * i1, v2 * i2
        mpp = p1 + p2
        if mpp > self._dc_cap:
            # Curtailed: both trackers back off by the same ratio, towards open circuit.
            ratio = self._dc_cap / mpp
            v1, i1 = _at_power(s1, row, nxt, f, p1 * ratio)
            v2, i2 = _at_power(s2, row, nxt, f, p2 * ratio)
        pdc = v1 * i1 + v2 * i2
        pac = self._curve.ac(pdc)
        if pac <= 0.0:
            # Below the wake-up threshold (or limited to 0 %): idle, strings at open circuit.
            last = CURVE_POINTS - 1
            v1, i1 = _point(s1, row, nxt, f, last)
            v2, i2 = _point(s2, row, nxt, f, last)
            pdc = pac = 0.0

        ambient = _lerp(solar.ambient, m, f)
        temp = ambient + _lerp(solar.heating, m, f) * self._heating_share(mpp, pdc, pac)

        s = min(int(second), SECONDS_PER_DAY - 1)
        fs = second - s
        site = self.site
        v_grid = _lerp(day.grid.volts, s, fs)
        vac = v_grid + site.feeder_resistance * pac / (v_grid * site.power_factor)
        iac = pac / (vac * site.power_factor)
        return InverterState(
            vac1=vac,
            iac1=iac,
            fac1=_lerp(day.grid.hertz, s, fs),
            vpv1=v1,
            vpv2=v2,
            ipv1=i1,
            ipv2=i2,
            temp=temp,
            pow=self._export_limit,
            pac=pac,
            pdc=pdc,
            ghi=_lerp(solar.ghi, m, f),
            poa1=_lerp(s1.poa, m, f),
            poa2=_lerp(s2.poa, m, f),
            ambient=ambient,
        )

    def _heating_share(self, mpp: float, pdc: float, pac: float) -> float:
        """How much of the unlimited run's heating applies now: curtailment cuts the loss at once,
        while the lag keeps following the unlimited history (a simplification that keeps reads pure)."""
        unlimited_dc = min(mpp, self.site.dc_capacity_w)
        unlimited_ac = self._curve.ac(unlimited_dc)
        unlimited_loss = unlimited_dc - unlimited_ac if unlimited_ac > 0.0 else 0.0
        return (pdc - pac) / unlimited_loss if unlimited_loss > 1.0 else 1.0

    def _locate(self, t: float) -> tuple[int, float]:
        if not math.isfinite(t) or abs(t) > MAX_SIM_SECONDS:
            raise ValueError(f"sim time must be finite and within {MAX_SIM_SECONDS} s: {t!r}")
        day, second = divmod(t + self._calendar.offset, float(SECONDS_PER_DAY))
        if second >= SECONDS_PER_DAY:  # float rounding of a tiny negative remainder
            return int(day) + 1, 0.0
        return int(day), second

    def _day(self, index: int) -> _Day:
        day = self._days.get(index)
        if day is None:
            day = _Day(
                solar_day(self.site, self.seed, self._calendar, index, self._curve),
                _grid_day(self.site, self.seed, index),
            )
            self._days[index] = day
            if len(self._days) > _DAYS_CACHED:
                self._days.popitem(last=False)
        else:
            self._days.move_to_end(index)
        return day


def _lerp(values: array[float], k: int, f: float) -> float:
    a = values[k]
    return a + (values[k + 1] - a) * f


def _point(string: StringDay, row: int, nxt: int, f: float, k: int) -> tuple[float, float]:
    """Point k of the string's I-V curve, interpolated between two minutes."""
    v, i = string.volts, string.amps
    return v[row + k] + (v[nxt + k] - v[row + k]) * f, i[row + k] + (i[nxt + k] - i[row + k]) * f


def _at_power(string: StringDay, row: int, nxt: int, f: float, power: float) -> tuple[float, float]:
    """The point on the voltage side of the MPP where the string delivers `power` W.

    Power falls from the MPP (point 0) to open circuit (the last point), so a bisection finds the
    two neighbouring points around `power`; between them the voltage is interpolated by power and the
    current is the one that makes the power exact.
    """
    volts, amps = string.volts, string.amps
    lo, hi = 0, CURVE_POINTS - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        a, b = row + mid, nxt + mid
        v = volts[a] + (volts[b] - volts[a]) * f
        if v * (amps[a] + (amps[b] - amps[a]) * f) > power:
            lo = mid
        else:
            hi = mid
    v_lo, i_lo = _point(string, row, nxt, f, lo)
    v_hi, i_hi = _point(string, row, nxt, f, hi)
    p_lo, p_hi = v_lo * i_lo, v_hi * i_hi
    v = v_lo + (v_hi - v_lo) * (p_lo - power) / (p_lo - p_hi) if p_lo > p_hi else v_hi
    return v, (power / v if v > 0.0 else 0.0)


def _grid_day(site: Site, seed: int, day: int) -> _GridDay:
    """Grid voltage and frequency for each second of `day` (86401 values: the last is next midnight).

    Both deviations are Ornstein-Uhlenbeck processes driven by one normal draw per second of each
    day. A day's series is run in from the previous day's last hour of draws and closed with the next
    day's first, so consecutive days join without a step and no day depends on when it was built.
    Voltage also sags with the evening load peak and rises a little at night.
    """
    lead = 3600
    draws = [
        stream_rng(seed, _GRID_STREAM, d).normal(size=(2, SECONDS_PER_DAY)) for d in (day - 1, day, day + 1)
    ]
    noise = np.concatenate([draws[0][:, -lead:], draws[1], draws[2][:, :1]], axis=1)
    hours = np.arange(SECONDS_PER_DAY + 1) / 3600.0
    from_peak = (hours - 19.5 + 12.0) % 24.0 - 12.0  # hours from the evening peak, wrapped to one day
    load = -4.0 * np.exp(-((from_peak / 1.8) ** 2)) + 1.5 * np.cos(2.0 * math.pi * (hours - 3.0) / 24.0)
    volts = site.grid_voltage + load + ornstein_uhlenbeck(noise[0], tau=120.0, sigma=1.2)[lead:]
    hertz = site.grid_frequency + ornstein_uhlenbeck(noise[1], tau=30.0, sigma=0.02)[lead:]
    return _GridDay(as_buffer(volts), as_buffer(hertz))
