"""Power management: the device's average current over an hour of its normal work, against what the
same work costs with the CPU at full speed and the radio always listening (always-on).

The always-on figure is the same activity timeline priced with the always-on policy's currents, so the
two differ only by power management. A build without power management is its own always-on figure.

Course: power-managed vs always-on average current (firmware-protocol.md §8.1; issue 4, power model).
"""

from __future__ import annotations

import pytest

from harness.energy import always_on_average_ma

UPLOAD_S = 60
POLL_S = 5
WINDOW_H = 0.5


@pytest.mark.hil(upload=UPLOAD_S, poll=POLL_S)
@pytest.mark.requires("events")  # the emulator's power meter; a board needs an ammeter
async def test_power_management_cuts_the_average_current(hil_stack, hil_clock, hil_measure):
    device = hil_stack.dut.device
    await hil_clock.advance(minutes=2)  # past the boot
    start = device.energy()
    await hil_clock.advance(hours=WINDOW_H)
    window = device.energy().since(start)

    managed = window.average_ma
    always_on = always_on_average_ma(window, device.profile.power_policy)
    hil_measure("average_current", managed, "mA")
    hil_measure("always_on_average_current", always_on, "mA")
    hil_measure("charge_per_day", managed * 24, "mAh")
    hil_measure("current_saved_by_power_management", 1 - managed / always_on, "fraction", low=0.5)
    assert managed < always_on, (managed, always_on)
