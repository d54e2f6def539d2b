"""`HilFaults`: one fault API for scenarios, whatever runs underneath (emulator or board, one process or many).

    await faults.bus("CRC_ERROR")                              # the next inverter read of the device
    faults.bus_profile({"CORRUPT": 0.05, "DELAY": 0.02})       # seeded random faults on every read
    faults.network("cloud", "ack_loss", toxicity=0.3)          # fault proxy DUT <-> cloud (or "sim")
    faults.network("cloud", "partition", after=60, duration=300)
    faults.power_cut(point="upload.sent")                      # or at=SECONDS from now, or now
    await faults.cloud("http_503", probability=0.5)            # the cloud's own /fault API
    await faults.kill_cloud(); await faults.restart_cloud()

Families:

* bus: the simulator's one-shot flags (armed for the device's API key) and seeded fault profiles;
* network: toxics on the fault proxies the stack always puts between each DUT and the cloud and
  between each DUT and its simulator (harness.toxics: latency, bandwidth, slicer, timeout,
  reset_peer, limit_data, partition, ack_loss, duplicate_request, corrupt_byte), scheduled in device time;
* power: a cut (or reset) now, at a device time, or at a tagged point of the firmware (emulator only);
* cloud: its `/fault` API, and a crash (SIGKILL of its process; in-process, an abrupt stop) and restart.

Calls that act at once in this process return an already-done awaitable, so `faults.bus_profile(...)` and
`await faults.bus_profile(...)` both work; those that need a request to another process return the
running task. Everything injected is appended to `log` (device time, family, what, detail), the evidence
reports and invariant checkers read.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Generator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from harness.dut import TAGGED_POWER_CUT, EmulatedDut
from harness.toxics import TOXIC_TYPES, Toxic, toxic_from_spec
from protocol.errors import DocumentError

if TYPE_CHECKING:
    from harness.clocks import Clock
    from harness.dut import Dut
    from harness.fault_proxy import FaultProxy
    from harness.hil_cloud import HilCloud

LINKS = ("cloud", "sim")


@dataclass(frozen=True)
class InjectedFault:
    time: float  # device seconds (the stack's clock)
    family: str  # bus, network, power, cloud
    what: str  # the fault's kind or toxic type
    device_id: str | None
    detail: str = ""


class SimControl(Protocol):
    """What the faults need of one simulator (in this process or behind its HTTP API)."""

    def arm(self, fault: dict[str, Any], key: str) -> Awaitable[None]: ...

    def set_profile(self, profile: dict[str, Any] | None) -> Awaitable[None]: ...


class CloudControl(Protocol):
    async def crash(self) -> None: ...

    async def restart(self) -> None: ...


class Done:
    """An awaitable of something already done (so callers may await it or not)."""

    def __init__(self, value: Any = None) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, Any]:
        return self.value
        yield  # a generator, so __await__ returns an iterator


class HilFaults:
    def __init__(
        self,
        clock: Clock,
        duts: Mapping[str, Dut],
        sims: Mapping[str, SimControl],
        api_keys: Mapping[str, str],
        proxies: Mapping[tuple[str, str], FaultProxy],
        cloud: HilCloud,
        cloud_control: CloudControl,
    ) -> None:
        self.clock = clock
        self.duts = duts
        self.sims = sims
        self.api_keys = api_keys
        self.proxies = proxies
        self.hil_cloud = cloud
        self.cloud_control = cloud_control
        self.log: list[InjectedFault] = []
        self.before_crash: Callable[[], Awaitable[None]] | None = None  # e.g. keep the cloud's counters
        self._timers: list[asyncio.TimerHandle] = []
        self._tasks: set[asyncio.Task[Any]] = set()

    def _record(self, family: str, what: str, device_id: str | None, detail: str = "") -> None:
        self.log.append(InjectedFault(self.clock.now(), family, what, device_id, detail))

    def _devices(self, device_id: str | None) -> list[str]:
        if device_id is None:
            return list(self.duts)
        if device_id not in self.duts:
            raise KeyError(f"no device {device_id!r} in this stack (devices: {', '.join(self.duts)})")
        return [device_id]

    # --- bus ----------------------------------------------------------------------------------------

    def bus(self, error_type: str, *, device_id: str | None = None, exception_code: int | None = None,
            delay_ms: int | None = None, count: int = 1) -> Awaitable[None]:
        """Spoil the next `count` inverter requests of the device(s) with `error_type` (EXCEPTION,
        CRC_ERROR, CORRUPT, PACKET_DROP, DELAY; `exception_code`, `delay_ms` as the SIM API takes them)."""
        fault: dict[str, Any] = {"errorType": error_type.upper()}
        if exception_code is not None:
            fault["exceptionCode"] = exception_code
        if delay_ms is not None:
            fault["delayMs"] = delay_ms
        waits = []
        for device in self._devices(device_id):
            for _ in range(count):
                waits.append(self.sims[device].arm(fault, self.api_keys.get(device, "")))
            self._record("bus", fault["errorType"], device, f"{count} request(s) {fault}")
        return _gather(waits)

    def bus_profile(self, probabilities: Mapping[str, float] | None, *, seed: int | None = None,
                    exception_code: int | None = None, delay_ms: int | None = None,
                    device_id: str | None = None) -> Awaitable[None]:
        """Give every inverter request a seeded chance of each fault (None: stop)."""
        profile: dict[str, Any] | None = None
        if probabilities is not None:
            profile = {"probabilities": {k.upper(): v for k, v in probabilities.items()}}
            if seed is not None:
                profile["seed"] = seed
            if exception_code is not None:
                profile["exceptionCode"] = exception_code
            if delay_ms is not None:
                profile["delayMs"] = delay_ms
        waits = []
        for device in self._devices(device_id):
            waits.append(self.sims[device].set_profile(profile))
            self._record("bus", "profile", device, str(profile))
        return _gather(waits)

    # --- network ------------------------------------------------------------------------------------

    def network(self, link: str, toxic: Toxic | Mapping[str, Any] | str, *, device_id: str | None = None,
                after: float = 0.0, duration: float | None = None, **attributes: Any) -> list[str]:
        """Put a toxic on the DUT's link to the cloud or to the simulator, `after` device seconds from
        now, for `duration` device seconds (until cleared by default). `toxic` is a Toxic, a Toxiproxy
        spec, or a type name with its attributes (`"latency", latency=800, jitter=200`; `stream`,
        `toxicity`, `name` too). Returns the names the toxics got on each proxy."""
        if link not in LINKS:
            raise ValueError(f"link is one of {LINKS}, not {link!r}")
        names = []
        for device in self._devices(device_id):
            instance = _toxic(toxic, attributes)
            proxy = self.proxies[(link, device)]
            names.append(proxy.add(instance, after=after, duration=duration))
            self._record("network", instance.type, device,
                         f"{link} link: {instance.to_toxiproxy()} after {after:g} s"
                         + (f" for {duration:g} s" if duration is not None else ""))
        return names

    def partition(self, link: str, *, mode: str = "blackhole", device_id: str | None = None,
                  after: float = 0.0, duration: float | None = None) -> list[str]:
        """Cut the link both ways (`blackhole`: nothing flows; `refuse`: connections reset)."""
        return self.network(link, "partition", device_id=device_id, after=after, duration=duration, mode=mode)

    def heal(self, link: str | None = None, *, device_id: str | None = None) -> None:
        """Remove every toxic (active or scheduled) from the link(s)."""
        for device in self._devices(device_id):
            for name in (link,) if link else LINKS:
                self.proxies[(name, device)].clear()
        self._record("network", "heal", device_id, link or "all links")

    def proxy(self, link: str, device_id: str | None = None) -> FaultProxy:
        return self.proxies[(link, self._devices(device_id)[0])]

    # --- power --------------------------------------------------------------------------------------

    def power_cut(self, *, at: float | None = None, point: str | None = None, off_s: float = 0.0,
                  skip: int = 0, device_id: str | None = None) -> Awaitable[None]:
        """Cut the power now, `at` device seconds from now, or when the firmware reaches tagged point
        `point` (after `skip` earlier hits; emulator only). Power returns after `off_s` device seconds."""
        if at is not None and point is not None:
            raise ValueError("a power cut is at a time or at a point, not both")
        devices = self._devices(device_id)
        if point is not None:
            for device in devices:
                dut = self.duts[device]
                if TAGGED_POWER_CUT not in dut.capabilities or not isinstance(dut, EmulatedDut):
                    raise NotImplementedError(f"{device}: this DUT cannot be cut at a tagged point")
                dut.cut_power_at(point, skip=skip, off_s=off_s)
                self._record("power", "cut", device, f"at point {point} (skip {skip}), off {off_s:g} s")
            return Done()
        return self._at(at, "cut", devices, lambda dut: dut.power_cut(off_s), f"off {off_s:g} s")

    def reset(self, *, at: float | None = None, device_id: str | None = None) -> Awaitable[None]:
        """Pull the reset line now or `at` device seconds from now."""
        return self._at(at, "reset", self._devices(device_id), lambda dut: dut.reset(), "")

    def _at(self, at: float | None, what: str, devices: list[str],
            act: Callable[[Dut], Awaitable[None]], detail: str) -> Awaitable[None]:
        async def run() -> None:
            for device in devices:
                self._record("power", what, device, detail)
                await act(self.duts[device])

        if at is None:
            return self._spawn(run())
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def finish(task: asyncio.Task[None]) -> None:
            if done.done():
                return
            if task.cancelled():
                done.cancel()
            elif task.exception() is not None:
                done.set_exception(task.exception())  # type: ignore[arg-type]
            else:
                done.set_result(None)

        def fire() -> None:
            self._spawn(run()).add_done_callback(finish)

        self._timers.append(asyncio.get_running_loop().call_later(self.clock.loop_delay(at), fire))
        return done

    def _spawn(self, coroutine: Awaitable[Any]) -> asyncio.Task[Any]:
        task = asyncio.ensure_future(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- the cloud ----------------------------------------------------------------------------------

    async def cloud(self, fault_type: str, *, probability: float | None = None, duration_s: float | None = None,
                    device_id: str | None = None, **parameters: Any) -> dict[str, Any]:
        """Enable one of the cloud's own faults (`delay`, `http_500`, `http_503`, `drop`, `truncate`,
        `corrupt_chunk`, `wrong_hash`) through its `/fault/enable`."""
        answer = await self.hil_cloud.fault_enable(fault_type, probability=probability, duration_s=duration_s,
                                                   device_id=device_id, **parameters)
        self._record("cloud", fault_type, device_id, f"probability {probability}, {parameters}")
        return answer

    async def cloud_clear(self, device_id: str | None = None) -> None:
        await self.hil_cloud.fault_clear(device_id)
        self._record("cloud", "clear", device_id)

    async def kill_cloud(self) -> None:
        """Kill the cloud at once (SIGKILL of its process; in-process, an abrupt stop without draining)."""
        if self.before_crash is not None:
            await self.before_crash()
        self._record("cloud", "kill", None)
        await self.cloud_control.crash()

    async def restart_cloud(self) -> None:
        """Start the cloud again on the same port and database."""
        await self.cloud_control.restart()
        self._record("cloud", "restart", None)

    # --- all of them ----------------------------------------------------------------------------------

    async def clear(self) -> None:
        """End every fault this API started: toxics, bus flags and profiles, pending power cuts, cloud rules."""
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        for proxy in self.proxies.values():
            proxy.clear()
        with contextlib.suppress(Exception):
            await self.bus_profile(None)
        with contextlib.suppress(Exception):
            await self.hil_cloud.fault_clear()

    async def close(self) -> None:
        for timer in self._timers:
            timer.cancel()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)


def _toxic(toxic: Toxic | Mapping[str, Any] | str, attributes: Mapping[str, Any]) -> Toxic:
    if isinstance(toxic, Toxic):
        if attributes:
            raise ValueError("attributes go into the Toxic itself")
        return toxic
    if isinstance(toxic, str):
        if toxic not in TOXIC_TYPES:
            raise DocumentError(f"a toxic type is one of {sorted(TOXIC_TYPES)}", toxic)
        common = {k: attributes[k] for k in ("stream", "toxicity", "name") if k in attributes}
        rest = {k: v for k, v in attributes.items() if k not in common}
        return toxic_from_spec({"type": toxic, **common, "attributes": rest})
    return toxic_from_spec(dict(toxic))


def _gather(waits: list[Awaitable[None]]) -> Awaitable[None]:
    """Done when every wait is; already done if all were."""
    pending = [w for w in waits if not isinstance(w, Done)]
    if not pending:
        return Done()
    return asyncio.gather(*pending)  # runs whether or not the caller awaits it
