"""Invariant checkers, run after every scenario: what must hold whatever the scenario did.

* `conservation`: every sample a simulator served and its device accepted is in the cloud exactly once,
  or accounted for with a reason (a full queue, a failed compression, a packet the cloud could not
  decode, RAM lost at a reboot or power cut, still on the device...: harness.conservation). Evidence
  names every missing sample: ledger sequence number, device time, sim time and register values.
* `nonces`: the nonces the device used, and those the cloud accepted, strictly increase.
* `no_5xx`: the cloud answered no 5xx other than the ones it was told to inject.
* `ota`: a device that took part in an OTA runs a verified image: the offered one or the one before.
* `config`: a configuration the device acknowledged as accepted is what it runs (once an upload cycle
  has passed, when the firmware applies it), and a rejected one is not.

Checkers need what the stack can observe: the full conservation and config checks need a DUT whose events
and RAM are visible (the emulator in this process); elsewhere they check what they can and say so.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from harness.conservation import (
    LINK_FAULT_ACTIONS,
    Accepted,
    Accounting,
    DeviceEvent,
    describe,
    reconcile,
    stored_packets,
)

if TYPE_CHECKING:
    from harness.stack import Stack

SHOWN = 25  # samples listed per violation, the rest counted
SETTLE_TIMEOUT = 120.0  # device seconds to wait for uploads in flight before checking


@dataclass(frozen=True)
class Violation:
    checker: str
    device_id: str | None
    message: str
    evidence: tuple[str, ...] = ()

    def __str__(self) -> str:
        head = f"[{self.checker}]{' ' + self.device_id if self.device_id else ''}: {self.message}"
        return "\n".join([head, *(f"    {line}" for line in self.evidence)])


class InvariantViolation(AssertionError):
    def __init__(self, violations: Sequence[Violation]) -> None:
        self.violations = list(violations)
        super().__init__("invariants violated:\n" + "\n".join(str(v) for v in self.violations))


# --- the checkers ------------------------------------------------------------------------------------


Checker = Callable[["Stack"], Awaitable[list[Violation]]]


class Invariants:
    """The stack's invariant checkers. `await check()` runs every enabled one; `skip(name, reason)`
    turns one off for a scenario that breaks it on purpose; `accounting` keeps the last conservation
    result per device (for reports)."""

    NAMES = ("conservation", "nonces", "no_5xx", "ota", "config")

    def __init__(self, stack: Stack) -> None:
        self.stack = stack
        self.skipped: dict[str, str] = {}
        self.accounting: dict[str, Accounting] = {}
        self.checked_5xx = 0  # 5xx answers counted before a cloud restart reset its metrics

    def skip(self, name: str, reason: str) -> None:
        if name not in self.NAMES:
            raise KeyError(f"no invariant {name!r} (known: {', '.join(self.NAMES)})")
        self.skipped[name] = reason

    async def check(self) -> list[Violation]:
        await self.settle()
        checkers: dict[str, Callable[[], Awaitable[list[Violation]]]] = {
            "conservation": self.conservation,
            "nonces": self.nonces,
            "no_5xx": self.no_5xx,
            "ota": self.ota,
            "config": self.config,
        }
        violations: list[Violation] = []
        for name, run in checkers.items():
            if name not in self.skipped:
                violations += await run()
        return violations

    async def assert_ok(self) -> None:
        violations = await self.check()
        if violations:
            raise InvariantViolation(violations)

    async def settle(self) -> None:
        """Let uploads in flight finish (device time, bounded) so their packets are counted once, and
        on virtual time stop at an instant where nothing is in flight (no read half-way to the device)."""
        clock = self.stack.clock
        duts = [d for d in self.stack.duts.values() if hasattr(d, "busy_uploading")]
        if duts:
            with contextlib.suppress(TimeoutError):
                await clock.until(lambda: not any(d.busy_uploading for d in duts), timeout=SETTLE_TIMEOUT)
        idle = getattr(clock, "idle", None)
        if idle is not None:
            await idle()

    # --- conservation ----------------------------------------------------------------------------------

    async def conservation(self) -> list[Violation]:
        violations = []
        for device_id in self.stack.duts:
            account = await self.account(device_id)
            self.accounting[device_id] = account
            violations += self._conservation_violations(account)
        return violations

    async def account(self, device_id: str) -> Accounting:
        """Reconcile one device's simulator ledger, its accepted samples and the cloud."""
        stack = self.stack
        dut = stack.duts[device_id]
        # One instant for the device's side: the ledger, its RAM and its events agree with each other.
        reads = [r for r in await stack.sims[device_id].ledger() if r.operation == "read"]
        in_ram = dut.in_ram() if hasattr(dut, "in_ram") else None
        events = self._events(dut)
        accepted = None
        if hasattr(dut, "accepted"):
            accepted = [Accepted(a.time, a.boot - 1, a.selection, a.start, a.values, marker=a.marker)
                        for a in dut.accepted]
        known = await self._known(device_id)
        rows = await stack.cloud.telemetry(device_id) if known else []
        packets = stored_packets(rows, await stack.cloud.packets(device_id) if known else [])
        uploads = await stack.cloud.uploads(device_id) if known else []
        link_faults = [r.time for r in stack.proxies[("sim", device_id)].log if r.action in LINK_FAULT_ACTIONS]
        return reconcile(device_id, reads, accepted, events, packets, uploads, link_faults, in_ram)

    async def _known(self, device_id: str) -> bool:
        return any(d["device_id"] == device_id for d in await self.stack.cloud.devices())

    def _events(self, dut: Any) -> list[DeviceEvent] | None:
        if "events" not in dut.capabilities:
            return None
        clock = self.stack.clock
        return [DeviceEvent(clock.device_time_at(e.wall), e.kind.label, dict(e.details)) for e in dut.events()]

    @staticmethod
    def _conservation_violations(account: Accounting) -> list[Violation]:
        violations = []
        if account.missing:
            shown = [describe(r) for r in account.missing[:SHOWN]]
            if len(account.missing) > SHOWN:
                shown.append(f"... and {len(account.missing) - SHOWN} more")
            violations.append(Violation(
                "conservation", account.device_id,
                f"{len(account.missing)} of {account.accepted} samples the device accepted are not in the "
                "cloud, with no reason (no full queue, failed compression, undecodable packet, reboot or "
                f"RAM to explain them); accounted: {account.matched} in the cloud, "
                f"{account.explained or 'nothing else'}",
                tuple(shown)))
        if account.duplicates:
            violations.append(Violation("conservation", account.device_id,
                                        f"{len(account.duplicates)} samples stored more than once",
                                        tuple(account.duplicates[:SHOWN])))
        if account.unexpected:
            violations.append(Violation("conservation", account.device_id,
                                        f"{len(account.unexpected)} samples in the cloud were never served "
                                        "with those values (altered or invented)",
                                        tuple(account.unexpected[:SHOWN])))
        return violations

    # --- nonces ----------------------------------------------------------------------------------------

    async def nonces(self) -> list[Violation]:
        violations = []
        for device_id, dut in self.stack.duts.items():
            used = [(e.details.get("nonce"), e.time) for e in self._events(dut) or []
                    if e.kind in ("upload_ok", "upload_failed")]
            bad = [f"nonce {b} at t={tb:.1f} s after nonce {a} at t={ta:.1f} s"
                   for (a, ta), (b, tb) in zip(used, used[1:], strict=False)
                   if isinstance(a, int) and isinstance(b, int) and b <= a]
            if bad:
                violations.append(Violation("nonces", device_id, "the device used a nonce again or went back",
                                            tuple(bad[:SHOWN])))
            if not await self._known(device_id):
                continue
            accepted = [u for u in await self.stack.cloud.uploads(device_id) if u.get("verdict") == "accepted"]
            back = [f"upload {b['id']} nonce {b['nonce']} accepted after upload {a['id']} nonce {a['nonce']}"
                    for a, b in zip(accepted, accepted[1:], strict=False) if b["nonce"] <= a["nonce"]]
            if back:
                violations.append(Violation("nonces", device_id, "the cloud accepted a nonce that does not increase",
                                            tuple(back[:SHOWN])))
        return violations

    # --- no 5xx ----------------------------------------------------------------------------------------

    async def count_5xx(self) -> int:
        """5xx answers the running cloud has given (its /metrics)."""
        text = await self.stack.cloud.metrics()
        total = 0.0
        for match in re.finditer(r'^ecowatt_http_responses_total\{([^}]*)\} ([0-9.e+]+)$', text, re.MULTILINE):
            if re.search(r'status="5\d\d"', match.group(1)):
                total += float(match.group(2))
        return int(total)

    async def before_cloud_restart(self) -> None:
        """Keep the 5xx count of a cloud about to be killed (its metrics die with it)."""
        with contextlib.suppress(Exception):  # already unreachable: nothing more to count
            self.checked_5xx += await self.count_5xx()

    async def no_5xx(self) -> list[Violation]:
        answered = self.checked_5xx + await self.count_5xx()
        injected = [e for e in await self.stack.cloud.fault_events() if e.get("fault_type") in ("http_500", "http_503")]
        if answered <= len(injected):
            return []
        return [Violation("no_5xx", None, f"the cloud answered {answered} times with a 5xx, "
                          f"{len(injected)} of them injected", ("see the cloud's /metrics and log",))]

    # --- OTA ---------------------------------------------------------------------------------------------

    async def ota(self) -> list[Violation]:
        violations = []
        for device_id, dut in self.stack.duts.items():
            device = dut.device
            if device is None or not await self._known(device_id):
                continue
            history = await self.stack.cloud.ota(device_id)
            sessions = history.get("sessions") or []
            if not sessions:
                continue
            factory = device.config.factory_version
            allowed = {factory} | {str(s.get("version")) for s in sessions}
            booted = device.boot_decision
            problems = []
            if not device.powered and device.crash is None and booted is None:
                problems.append("the device does not run any image")
            if device.version not in allowed:
                problems.append(f"it runs {device.version}, neither an offered version nor {factory}")
            if booted is not None:
                check = next((c for c in booted.checks if c.slot == booted.slot), None)
                if check is not None and check.reason:
                    problems.append(f"its booted slot {booted.slot} did not verify: {check.reason}")
            if problems:
                offered = ", ".join(sorted(allowed - {factory}))
                violations.append(Violation("ota", device_id, "after OTA " + "; ".join(problems),
                                            (f"offered {offered}; sessions {[s.get('status') for s in sessions]}",
                                             f"slots {device.state().get('slots')}")))
        return violations

    # --- configuration -----------------------------------------------------------------------------------

    async def config(self) -> list[Violation]:
        violations = []
        clock = self.stack.clock
        for device_id, dut in self.stack.duts.items():
            device = dut.device
            if device is None or device.firmware is None or not await self._known(device_id):
                continue
            history = await self.stack.cloud.config_history(device_id)
            acked = [v for v in history if v.get("status") == "acknowledged"]
            if not acked:
                continue
            newest = acked[0]  # newest first
            firmware = device.firmware
            running = {"poll_interval": firmware.timers["poll"].period,
                       "upload_interval": firmware.timers["upload"].period,
                       "registers": sorted(firmware.acquisition.selection)}
            ack = newest.get("ack") or {}
            accepted = set(ack.get("accepted") or [])
            acked_at = clock.device_time_at(float(newest.get("acked_at") or 0.0))
            uploads_since = [e for e in self._events(dut) or []
                             if e.kind in ("upload_ok", "upload_failed") and e.time > acked_at]
            wanted = newest["config"]
            if newest.get("outcome") in ("accepted", "partial") and uploads_since:
                wrong = [f"{name}: cloud has {_norm(wanted.get(name))}, device runs {_norm(running[name])}"
                         for name in sorted(accepted) if name in running
                         and _norm(wanted.get(name)) != _norm(running[name])]
                if wrong:
                    violations.append(Violation(
                        "config", device_id,
                        f"configuration v{newest['version']} was acknowledged as {newest.get('outcome')} "
                        "and an upload cycle has passed, but the device does not run it", tuple(wrong)))
            rejected = {r.get("field") for r in ack.get("rejected") or []}
            clash = [f"{name}: rejected {_norm(wanted.get(name))}, yet the device runs it"
                     for name in sorted(rejected) if name in running and name in (newest.get("changes") or [])
                     and _norm(wanted.get(name)) == _norm(running[name])]
            if clash:
                violations.append(Violation("config", device_id,
                                            f"configuration v{newest['version']} was rejected but is in force",
                                            tuple(clash)))
        return violations


def _norm(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return sorted(int(v) for v in value)
    if isinstance(value, int | float):
        return round(float(value), 3)
    return value
