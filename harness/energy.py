"""Power figures scenarios compare: the emulator's measured activity, priced as if always on."""

from __future__ import annotations

from typing import Any

from device_emulator.power import ALWAYS_ON, Activity


def always_on_average_ma(report: Any, policy: Any) -> float:
    """`report`'s activity priced with always-on currents (each power state back to the activity that
    cost it under `policy`): the same work with the CPU at full speed and the radio always listening."""
    activity_of = {policy.state_for(a): a for a in Activity}
    if len(activity_of) < len(Activity):  # the policy spends several activities alike: already always-on
        return float(report.average_ma)
    charge = sum(seconds * ALWAYS_ON.state_for(activity_of.get(state, Activity.COMPUTE)).milliamps
                 for state, seconds in report.seconds.items() if seconds)
    return charge / report.elapsed_s
