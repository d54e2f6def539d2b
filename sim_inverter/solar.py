"""The PV plant's physics, computed with pvlib one simulated day at a time.

pvlib, pandas and scipy run only here, when a day is first needed: sun position, Ineichen clear-sky
irradiance, seeded clouds, Erbs decomposition, plane-of-array irradiance per string, Faiman cell
temperature, and each string's I-V curve from the De Soto single-diode model fitted to a module
datasheet. The result is a per-minute table in flat `array('d')` buffers that the inverter model
(sim_inverter/model.py) interpolates in plain Python, so a register read costs microseconds.

A day's table depends only on (seed, site, day index): never on which days were built before.
"""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd
import pvlib
from scipy.signal import lfilter

SECONDS_PER_DAY = 86400
MINUTES_PER_DAY = 1440
# Points per I-V curve, from the MPP (index 0) to open circuit (last index), evenly spaced in current.
CURVE_POINTS = 17

# Independent random streams drawn from the seed.
_CLOUD_STREAM = 1
_AMBIENT_STREAM = 2


@dataclass(frozen=True)
class PvModule:
    """One module's datasheet values at STC (defaults: a common 60-cell 270 W poly-Si module)."""

    v_mp: float = 31.0
    i_mp: float = 8.71
    v_oc: float = 38.3
    i_sc: float = 9.43
    alpha_sc: float = 0.005658  # A/K
    beta_voc: float = -0.13788  # V/K
    cells_in_series: int = 60


@dataclass(frozen=True)
class PvString:
    """Modules in series on one MPPT input, and how they face the sky (degrees; azimuth from north)."""

    modules: int
    tilt: float = 10.0
    azimuth: float = 180.0


@dataclass(frozen=True)
class Site:
    """Where the plant is, what it is made of, and the grid it feeds.

    Defaults: a 6.2 kWp rooftop in Moratuwa, Sri Lanka, on an east/west roof, two strings into a 5 kW
    single-phase inverter on a 230 V / 50 Hz feeder.
    """

    latitude: float = 6.79
    longitude: float = 79.90
    timezone: str = "Asia/Colombo"
    start: str = "2026-03-20T06:00:00"  # local time that sim time t=0 maps to
    altitude: float = 10.0
    strings: tuple[PvString, PvString] = (PvString(12, 10.0, 90.0), PvString(11, 10.0, 270.0))
    module: PvModule = PvModule()
    soiling: float = 0.03  # fraction of plane-of-array irradiance lost before the cells
    albedo: float = 0.2
    linke_turbidity: float = 4.0  # humid tropics; passed explicitly so pvlib needs no lookup file
    cloudiness: float = 0.35  # 0 = clear sky every day, 1 = mostly overcast
    ambient_mean_c: float = 28.5
    ambient_swing_c: float = 3.5  # half the daily range, warmest mid-afternoon
    wind_speed: float = 1.5  # m/s, for cell temperature
    inverter_rated_w: float = 5000.0  # AC rating; the export limit is a percentage of it
    inverter_efficiency: float = 0.96  # PVWatts nominal efficiency
    thermal_resistance: float = 0.12  # K per W of conversion loss, inverter internal temperature
    thermal_time_constant: float = 600.0  # s
    grid_voltage: float = 231.0
    grid_frequency: float = 50.0
    feeder_resistance: float = 0.35  # ohm: own export raises the local voltage
    power_factor: float = 1.0

    def __post_init__(self) -> None:
        checks = {
            "latitude": -90.0 <= self.latitude <= 90.0,
            "longitude": -180.0 <= self.longitude <= 180.0,
            "strings": len(self.strings) == 2 and all(s.modules >= 1 for s in self.strings),
            "soiling": 0.0 <= self.soiling < 1.0,
            "cloudiness": 0.0 <= self.cloudiness <= 1.0,
            "inverter_rated_w": self.inverter_rated_w > 0.0,
            "inverter_efficiency": 0.0 < self.inverter_efficiency <= 1.0,
            "thermal_time_constant": self.thermal_time_constant > 0.0,
            "grid_voltage": self.grid_voltage >= 50.0,
            "power_factor": 0.0 < self.power_factor <= 1.0,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"site parameters out of range: {', '.join(bad)}")

    @property
    def dc_capacity_w(self) -> float:
        """The inverter's DC input at rated AC output (PVWatts `pdc0`)."""
        return self.inverter_rated_w / self.inverter_efficiency


@dataclass(frozen=True)
class SimCalendar:
    """Maps sim time to (day index, seconds into that day); day 0 starts at local midnight before t=0."""

    midnight: pd.Timestamp
    offset: float  # seconds from that midnight to t=0

    @classmethod
    def of(cls, site: Site) -> SimCalendar:
        try:
            start = pd.Timestamp(site.start)
            start = start.tz_localize(site.timezone) if start.tzinfo is None else start
            midnight = start.normalize()
        except (ValueError, TypeError, KeyError) as exc:
            raise ValueError(f"bad site start {site.start!r} or timezone {site.timezone!r}") from exc
        return cls(midnight, (start - midnight).total_seconds())

    def day_times(self, day: int) -> pd.DatetimeIndex:
        """The instants of minutes 0..1440 of `day` (1441: the last one closes the interpolation)."""
        first = self.midnight + pd.Timedelta(days=day)
        return pd.date_range(first, periods=MINUTES_PER_DAY + 1, freq="60s")


@dataclass(frozen=True)
class InverterCurve:
    """AC output against DC input (pvlib's PVWatts inverter model) as a uniform table, for fast lookups."""

    step: float  # W of DC between table points
    pac: array[float]  # AC output at k * step W of DC, non-decreasing, ending at the rating

    @classmethod
    def of(cls, site: Site, points: int = 512) -> InverterCurve:
        pdc0 = site.dc_capacity_w
        pdc = np.linspace(0.0, pdc0, points)
        with np.errstate(divide="ignore", invalid="ignore"):
            pac = pvlib.inverter.pvwatts(pdc, pdc0, eta_inv_nom=site.inverter_efficiency)
        pac = np.maximum.accumulate(np.nan_to_num(np.asarray(pac, dtype=float), nan=0.0))
        return cls(pdc0 / (points - 1), array("d", pac.tolist()))

    def ac(self, pdc: float) -> float:
        """AC output for `pdc` W of DC input, clipped at the rating; 0 below the wake-up threshold."""
        x = pdc / self.step
        k = int(x)
        if k >= len(self.pac) - 1:
            return self.pac[-1]
        if k < 0:
            return 0.0
        return self.pac[k] + (self.pac[k + 1] - self.pac[k]) * (x - k)

    def dc_for(self, pac: float) -> float:
        """The least DC input that yields `pac` W of AC (the rating's DC input if `pac` exceeds it)."""
        if pac <= 0.0:
            return 0.0
        k = bisect_left(self.pac, pac)
        if k >= len(self.pac):
            return self.step * (len(self.pac) - 1)
        lo, hi = self.pac[k - 1], self.pac[k]
        return self.step * (k - 1 + (pac - lo) / (hi - lo))


@dataclass(frozen=True)
class StringDay:
    """One string over one day. Row m (minute m) of `volts`/`amps` starts at m * CURVE_POINTS."""

    volts: array[float]
    amps: array[float]
    poa: array[float]  # plane-of-array irradiance, W/m2, per minute


@dataclass(frozen=True)
class SolarDay:
    """One simulated day of the plant, per minute 0..1440 (the last one is the next midnight)."""

    strings: tuple[StringDay, StringDay]
    ghi: array[float]  # W/m2, with clouds
    ambient: array[float]  # degC
    heating: array[float]  # K above ambient of the inverter at its unlimited operating point (lagged)


@lru_cache(maxsize=16)
def module_parameters(module: PvModule) -> dict[str, float]:
    """De Soto reference parameters fitted to the datasheet (the fit takes milliseconds; cached)."""
    try:
        fitted, _ = pvlib.ivtools.sdm.fit_desoto(
            v_mp=module.v_mp,
            i_mp=module.i_mp,
            v_oc=module.v_oc,
            i_sc=module.i_sc,
            alpha_sc=module.alpha_sc,
            beta_voc=module.beta_voc,
            cells_in_series=module.cells_in_series,
        )
    except RuntimeError as exc:
        raise ValueError(f"module datasheet values cannot be fitted: {module}") from exc
    names = ("alpha_sc", "a_ref", "I_L_ref", "I_o_ref", "R_sh_ref", "R_s")
    return {name: float(fitted[name]) for name in names}


def stream_rng(seed: int, stream: int, day: int = 0) -> np.random.Generator:
    """A generator for one random stream and day, independent of every other (seed, stream, day)."""
    return np.random.default_rng([stream, seed % 2**64, day % 2**64])


def clear_sky_index(rng: np.random.Generator, minutes: int, cloudiness: float) -> np.ndarray:
    """Per-minute ratio of actual to clear-sky irradiance.

    The day's weather sets a mean; passing clouds are a two-state Markov chain (clear, shaded) whose
    shade depth varies per cloud; a mean-reverting jitter rides on top. Slightly above 1 is allowed
    (cloud-edge enhancement). Cloudiness 0 gives exactly 1.
    """
    if cloudiness <= 0.0:
        return np.ones(minutes)
    day_mean = 1.0 - 0.6 * cloudiness * rng.beta(2.0, 2.0)
    p_cover, p_clear = 0.08 * cloudiness, 0.2  # per minute: clouds come every ~30 min, stay ~5 min
    switches = rng.random(minutes)
    depths = rng.uniform(0.3, 0.7, minutes)
    shade = np.ones(minutes)
    shaded, depth = False, 1.0
    for m in range(minutes):
        if switches[m] < (p_clear if shaded else p_cover):
            shaded = not shaded
            depth = depths[m]
        shade[m] = depth if shaded else 1.0
    jitter = ornstein_uhlenbeck(rng.normal(size=minutes), tau=15.0, sigma=0.08 * cloudiness)
    return np.asarray(np.clip(day_mean * shade * (1.0 + jitter), 0.05, 1.15), dtype=float)


def ornstein_uhlenbeck(normals: np.ndarray, tau: float, sigma: float) -> np.ndarray:
    """A stationary Ornstein-Uhlenbeck series, one value per step of the standard normal `normals`;
    `tau` (the correlation time) is in steps, `sigma` is the spread."""
    keep = math.exp(-1.0 / tau)
    first = sigma * normals[0]
    rest = lfilter([sigma * math.sqrt(1.0 - keep * keep)], [1.0, -keep], normals[1:], zi=[keep * first])[0]
    return np.concatenate([[first], rest])


def ambient_temperature(site: Site, seed: int, solar_hour: np.ndarray, t_days: np.ndarray) -> np.ndarray:
    """Daily cycle peaking mid-afternoon, plus a seeded weather drift over days (continuous in time)."""
    phases = stream_rng(seed, _AMBIENT_STREAM).uniform(0.0, 2.0 * math.pi, 2)
    drift = 0.8 * np.sin(2.0 * math.pi * t_days / 4.3 + phases[0]) + 0.5 * np.sin(
        2.0 * math.pi * t_days / 2.1 + phases[1]
    )
    daily = site.ambient_swing_c * np.cos(2.0 * math.pi * (solar_hour - 14.5) / 24.0)
    return np.asarray(site.ambient_mean_c + daily + drift, dtype=float)


def _string_day(
    site: Site, pv: PvString, solpos: pd.DataFrame, irradiance: pd.DataFrame, ambient: np.ndarray
) -> StringDay:
    poa = pvlib.irradiance.get_total_irradiance(
        pv.tilt,
        pv.azimuth,
        solpos["apparent_zenith"],
        solpos["azimuth"],
        irradiance["dni"],
        irradiance["ghi"],
        irradiance["dhi"],
        albedo=site.albedo,
    )["poa_global"]
    poa = np.clip(np.nan_to_num(poa.to_numpy(dtype=float)), 0.0, None)
    cell = np.asarray(pvlib.temperature.faiman(poa, ambient, site.wind_speed), dtype=float)
    effective = poa * (1.0 - site.soiling)
    lit = effective > 0.0  # in the dark the curve is a point at the origin: skip the solver there
    volts = np.zeros((len(poa), CURVE_POINTS))
    amps = np.zeros((len(poa), CURVE_POINTS))
    if lit.any():
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            il, i0, rs, rsh, nnsvth = (
                np.broadcast_to(np.asarray(p, dtype=float), effective[lit].shape).copy()
                for p in pvlib.pvsystem.calcparams_desoto(
                    effective[lit], cell[lit], **module_parameters(site.module)
                )
            )
            # A string is `modules` identical modules in series: voltages and resistances add up.
            n = pv.modules
            rs, rsh, nnsvth = rs * n, rsh * n, nnsvth * n
            i_mp = pvlib.pvsystem.max_power_point(il, i0, rs, rsh, nnsvth, method="newton")["i_mp"]
            amps[lit] = np.nan_to_num(np.asarray(i_mp, dtype=float))[:, None] * np.linspace(
                1.0, 0.0, CURVE_POINTS
            )
            curve = pvlib.pvsystem.v_from_i(amps[lit], *(p[:, None] for p in (il, i0, rs, rsh, nnsvth)))
        volts[lit] = np.clip(np.nan_to_num(curve), 0.0, None)
    return StringDay(as_buffer(volts), as_buffer(amps), as_buffer(poa))


def solar_day(site: Site, seed: int, calendar: SimCalendar, day: int, curve: InverterCurve) -> SolarDay:
    """Build one day's per-minute table (tens of milliseconds)."""
    times = calendar.day_times(day)
    location = pvlib.location.Location(site.latitude, site.longitude, site.timezone, site.altitude)
    solpos = location.get_solarposition(times)
    # Day-of-year as numbers: pvlib's own conversion of a DatetimeIndex warns under pandas 3.
    doy = np.asarray(times.day_of_year, dtype=float)
    clear = location.get_clearsky(
        times,
        solar_position=solpos,
        dni_extra=pvlib.irradiance.get_extra_radiation(doy),
        linke_turbidity=site.linke_turbidity,
    )
    index = clear_sky_index(stream_rng(seed, _CLOUD_STREAM, day), len(times), site.cloudiness)
    ghi = clear["ghi"].to_numpy(dtype=float) * index
    split = pvlib.irradiance.erbs(ghi, solpos["zenith"].to_numpy(), doy)
    irradiance = pd.DataFrame({"ghi": ghi, "dni": split["dni"], "dhi": split["dhi"]}, index=times)

    solar_hour = (
        np.asarray(pvlib.solarposition.hour_angle(times, site.longitude, solpos["equation_of_time"])) / 15.0
        + 12.0
    )
    t_days = day + (np.arange(len(times)) * 60.0 - calendar.offset) / SECONDS_PER_DAY
    ambient = ambient_temperature(site, seed, solar_hour, t_days)
    strings = (
        _string_day(site, site.strings[0], solpos, irradiance, ambient),
        _string_day(site, site.strings[1], solpos, irradiance, ambient),
    )
    return SolarDay(strings, as_buffer(ghi), as_buffer(ambient), as_buffer(_heating(site, strings, curve)))


def _heating(site: Site, strings: tuple[StringDay, StringDay], curve: InverterCurve) -> np.ndarray:
    """Internal temperature rise when running unlimited: conversion loss through a first-order lag."""
    mpp = slice(0, None, CURVE_POINTS)
    pdc = sum(np.asarray(s.volts[mpp]) * np.asarray(s.amps[mpp]) for s in strings)
    pdc = np.minimum(pdc, site.dc_capacity_w)  # above that the inverter clips
    pac = np.array([curve.ac(p) for p in pdc])
    loss = np.where(pac > 0.0, pdc - pac, 0.0)
    keep = math.exp(-60.0 / site.thermal_time_constant)
    # A table starts at local midnight, long after the last sunset (except near the poles in summer),
    # so the lag can start from zero.
    return np.asarray(site.thermal_resistance * lfilter([1.0 - keep], [1.0, -keep], loss), dtype=float)


def as_buffer(values: np.ndarray) -> array[float]:
    """Flatten to a compact array of doubles: indexing it yields plain floats, fast in pure Python."""
    return array("d", np.ascontiguousarray(values, dtype=float).ravel().tobytes())
