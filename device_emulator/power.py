"""The device's power model: a current for each operating state, integrated over loop time.

Currents are whole-chip figures at 3.3 V from the ESP32 Series Datasheet (v3.x/v4.x, "Power
Consumption by Power Modes" and "RF Power-Consumption Specifications"):

* Modem-sleep (CPU on, radio off): 240 MHz 30-68 mA, 160 MHz 27-44 mA, 80 MHz 20-31 mA (dual-core;
  the low end with the CPU idle, the high end busy). A busy CPU takes the high end; MODEM_SLEEP is
  the idle CPU at 80 MHz, where DVFS parks it.
* Light-sleep: 0.8 mA.
* Wi-Fi TX: 802.11b 1 Mbps at +19.5 dBm, 240 mA (the worst case: a gateway far from its access point
  transmits at full power). Wi-Fi RX and listening: 95-100 mA, taken as 100 mA.

The meter is a pure accumulator: the firmware model calls `enter(state, now)` at each transition
with loop time, and `report(now)` whenever it wants totals. Two reports give any window:
`later.since(earlier)`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

SUPPLY_VOLTS = 3.3


class PowerState(Enum):
    """An operating state and its current in mA."""

    CPU_240 = ("cpu_240mhz", 68.0)
    CPU_160 = ("cpu_160mhz", 44.0)
    CPU_80 = ("cpu_80mhz", 31.0)
    MODEM_SLEEP = ("modem_sleep", 20.0)
    LIGHT_SLEEP = ("light_sleep", 0.8)
    WIFI_TX = ("wifi_tx", 240.0)
    WIFI_RX = ("wifi_rx", 100.0)
    OFF = ("off", 0.0)  # no supply: between a power cut and the power coming back

    def __init__(self, label: str, milliamps: float) -> None:
        self.label = label
        self.milliamps = milliamps


class Activity(Enum):
    """What the firmware is doing; a policy decides which state that costs."""

    SLEEP = "sleep"  # nothing due before the next timer
    WAIT = "wait"  # awake, waiting briefly (a UART reply, a retry backoff)
    COMPUTE = "compute"  # compression, HMAC, AES, hashing an image
    TRANSMIT = "transmit"  # sending over Wi-Fi
    RECEIVE = "receive"  # receiving over Wi-Fi, including waiting for an HTTP reply
    OFF = "off"


@dataclass(frozen=True)
class PowerPolicy:
    name: str
    states: Mapping[Activity, PowerState]

    def state_for(self, activity: Activity) -> PowerState:
        return self.states[activity]


# No power management, Wi-Fi power save off: the CPU stays at 240 MHz and the receiver never sleeps,
# so even an idle device draws the RX-listening current (the datasheet's RX figure is the whole chip
# with the radio on; CPU load is within its margin).
ALWAYS_ON = PowerPolicy(
    "always-on",
    {
        Activity.SLEEP: PowerState.WIFI_RX,
        Activity.WAIT: PowerState.WIFI_RX,
        Activity.COMPUTE: PowerState.WIFI_RX,
        Activity.TRANSMIT: PowerState.WIFI_TX,
        Activity.RECEIVE: PowerState.WIFI_RX,
        Activity.OFF: PowerState.OFF,
    },
)

# ESP-IDF power management: DVFS between 240 MHz (held while computing) and 80 MHz, automatic light
# sleep between timers, the radio powered only while a transfer is in flight.
POWER_MANAGED = PowerPolicy(
    "power-managed",
    {
        Activity.SLEEP: PowerState.LIGHT_SLEEP,
        Activity.WAIT: PowerState.MODEM_SLEEP,
        Activity.COMPUTE: PowerState.CPU_240,
        Activity.TRANSMIT: PowerState.WIFI_TX,
        Activity.RECEIVE: PowerState.WIFI_RX,
        Activity.OFF: PowerState.OFF,
    },
)

POLICIES: dict[str, PowerPolicy] = {p.name: p for p in (ALWAYS_ON, POWER_MANAGED)}


@dataclass(frozen=True)
class PowerReport:
    """Totals from the meter's start (or, after `since`, over a window)."""

    elapsed_s: float
    seconds: Mapping[PowerState, float]
    transitions: int
    volts: float = SUPPLY_VOLTS

    @property
    def charge_mah(self) -> float:
        return sum(s * state.milliamps for state, s in self.seconds.items()) / 3600.0

    @property
    def energy_mwh(self) -> float:
        return self.charge_mah * self.volts

    @property
    def average_ma(self) -> float:
        return self.charge_mah * 3600.0 / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def since(self, earlier: PowerReport) -> PowerReport:
        """The window between an earlier report of the same meter and this one."""
        return PowerReport(
            self.elapsed_s - earlier.elapsed_s,
            {state: s - earlier.seconds.get(state, 0.0) for state, s in self.seconds.items()},
            self.transitions - earlier.transitions,
            self.volts,
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "elapsed_s": self.elapsed_s,
            "average_ma": self.average_ma,
            "charge_mah": self.charge_mah,
            "energy_mwh": self.energy_mwh,
            "transitions": self.transitions,
            "seconds": {state.label: s for state, s in self.seconds.items() if s},
        }


class PowerMeter:
    """Accumulates time per state. Times are loop time in seconds, passed in or read from `clock`."""

    def __init__(
        self,
        state: PowerState = PowerState.OFF,
        now: float | None = None,
        *,
        clock: Callable[[], float] | None = None,
        volts: float = SUPPLY_VOLTS,
    ) -> None:
        self._clock = clock
        self.volts = volts
        self.state = state
        self.started = self._now(now)
        self._since = self.started
        self._seconds = dict.fromkeys(PowerState, 0.0)
        self._transitions = 0

    def _now(self, now: float | None) -> float:
        if now is not None:
            return now
        if self._clock is None:
            raise TypeError("PowerMeter needs `now` when it has no clock")
        return self._clock()

    def enter(self, state: PowerState, now: float | None = None) -> None:
        now = self._close(now)
        if state is not self.state:
            self.state = state
            self._transitions += 1

    def report(self, now: float | None = None) -> PowerReport:
        now = self._close(now)
        return PowerReport(now - self.started, dict(self._seconds), self._transitions, self.volts)

    def _close(self, now: float | None) -> float:
        """Account the time spent in the current state up to `now`."""
        now = self._now(now)
        if now < self._since:
            raise ValueError(f"time went backwards: {now} < {self._since}")
        self._seconds[self.state] += now - self._since
        self._since = now
        return now
