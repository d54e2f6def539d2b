"""The whole system on loopback: simulator(s), cloud, fault proxies and the DUT(s), wired and watched.

    async with Stack(StackOptions(profile="spec", upload_s=60), clock, tmp_path) as stack:
        await stack.clock.until(lambda: ..., timeout=600)
        samples = await stack.cloud.telemetry(stack.dut.device_id)

Two ways to run it, chosen by the clock and the DUT:

* in-process (virtual time, the default; also real or scaled time): every simulator, the cloud (SQLite in
  the stack's directory, or `cloud_db`) and every emulated device run on the running event loop, all on
  127.0.0.1 with port 0. Only this mode runs on virtual time; the device's event stream and RAM are
  observable, so the invariant checkers see everything.
* processes (`processes=True`: real or scaled time): `ecowatt sim serve`, `ecowatt cloud serve` and
  `ecowatt device run` as subprocesses, their ports read from their `listening on` lines. The cloud can
  then be killed with SIGKILL and restarted. With `dut="board"` the device is the board on `port`.

A board is provisioned for the run when the stack starts (harness.provisioning, through esptool, as
`ecowatt provision` does): its NVS gets the URLs of its two fault proxies, the device id and key the
stack registered in the cloud, and the scenario's poll and upload periods; then it is reset and the
stack waits for its firmware's banner. So the proxies listen on any free port (or `cloud_port` /
`inverter_port`), and several board stacks run side by side.

Each device gets its own simulator (each with its own inverter model; fleets larger than
`SHARED_MODEL_ABOVE` share one model, so an export-limit write then reaches the whole fleet), and two
fault proxies: DUT <-> cloud and DUT <-> simulator. The DUT only ever talks to the proxies.

Device timings: the `spec` profile uploads every 15 minutes and polls every 2 s, as the course asks.
`upload_s` / `poll_s` (the `@pytest.mark.hil(upload=60, poll=5)` marker) shorten them for scenarios: in
this process as the profile's timing defaults, in processes by provisioning them into the device's NVS
before it starts (the firmware reads its periods from NVS), so in both cases a remote configuration
still overrides them as on a real board. A single device is the firmware's own `ESP32_EcoWatt_Smart`
with the compiled-in fleet key; fleets are `ecowatt-0000`, ... with keys of their own.

The simulated day starts at `sim_offset_s` (default mid-morning: 4 h after the model's start), so the
first hours of a scenario see the sun.

Cost on virtual time: every poll, upload, configuration check and command poll is real HTTP through a
proxy, so a device-hour of the spec firmware takes seconds of real time and a device-day a few minutes
(bench/virtual_day.py measures it); scenarios run minutes or hours of device time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp

from cloud.key_registry import FIRMWARE_DEVICE_ID, KeyFiles
from cloud.ota_repository import AES_KEY_FILE, PRIVATE_KEY_FILE, PUBLIC_KEY_FILE, ReleaseKeys
from harness.clocks import Clock
from harness.conservation import LedgerRead
from harness.dut import DutConsole, EmulatedDut, ProcessDut, SerialBoardDut
from harness.fault_proxy import FaultProxy
from harness.hil_cloud import HilCloud
from harness.hil_faults import Done, HilFaults

if TYPE_CHECKING:
    from harness.invariants import Invariants

DEFAULT_SIM_OFFSET = 4 * 3600.0  # mid-morning of the simulated day
SHARED_MODEL_ABOVE = 8  # fleets larger than this share one inverter model
STARTUP_TIMEOUT = 60.0  # real seconds a subprocess may take to print its `listening on` line
CONSOLE_POLL_S = 0.1  # real seconds between looks at a console fed from outside the loop
PROFILES = ("spec", "reference-1.0.4")
# On virtual time the clock waits for every thread hop (SQLite's threads); Python hands the GIL back to
# the loop only every switch interval (5 ms by default), so a shorter one makes a device-day 2x faster.
VIRTUAL_SWITCH_INTERVAL = 0.0002


@dataclass(frozen=True)
class StackOptions:
    profile: str = "spec"
    devices: int = 1
    upload_s: float | None = None  # None: the profile's default (spec: 900 s, reference: 15 s)
    poll_s: float | None = None
    timings: Mapping[str, Any] = field(default_factory=dict)  # more Timings overrides (in-process only)
    seed: int = 1
    dut: str = "emu"  # emu | board
    port: str | None = None  # the board's serial port
    # The address a board reaches this machine at (its Wi-Fi): the proxies listen there and the board is
    # provisioned with it. Loopback suits the emulator's serial endpoint on this machine.
    board_host: str = "127.0.0.1"
    processes: bool = False
    cloud_db: str | None = None  # None: SQLite in the stack's directory
    transport: str = "http"  # how devices reach their simulator: http (the firmware's) or modbus-tcp
    sim_offset_s: float = DEFAULT_SIM_OFFSET
    firmware_version: str | None = None  # factory-flashed version (None: the profile's)
    device_ids: tuple[str, ...] | None = None
    cloud_port: int = 0  # where the DUT finds the cloud (its proxy); 0: any free port
    inverter_port: int = 0  # where the DUT finds its simulator (its proxy)
    durable: bool = False  # fsync every NVS write (only a real power loss needs it)
    open_operator_api: bool = False
    quirks: Mapping[str, bool] = field(default_factory=dict)  # emulator quirk switches over the profile's

    def __post_init__(self) -> None:
        if self.profile not in PROFILES:
            raise ValueError(f"profile is one of {PROFILES}, not {self.profile!r}")
        if self.dut not in ("emu", "board"):
            raise ValueError(f"dut is emu or board, not {self.dut!r}")
        if self.dut == "board" and not self.port:
            raise ValueError("--dut board needs --port (the board's serial port)")
        if self.dut == "board" and self.devices != 1:
            raise ValueError("a board stack has exactly one device")
        if self.devices < 1:
            raise ValueError("a stack has at least one device")
        if self.transport not in ("http", "modbus-tcp"):
            raise ValueError(f"transport is http or modbus-tcp, not {self.transport!r}")
        if self.device_ids is not None and len(self.device_ids) != self.devices:
            raise ValueError("give one device id per device")

    def replace(self, **changes: Any) -> StackOptions:
        return dataclasses.replace(self, **changes)

    def ids(self) -> list[str]:
        if self.device_ids is not None:
            return list(self.device_ids)
        if self.devices == 1:
            return [FIRMWARE_DEVICE_ID]
        return [f"ecowatt-{index:04d}" for index in range(self.devices)]

    def key_for(self, device_id: str) -> bytes:
        """The device's upload PSK: the fleet key for the firmware's own id, else one of its own."""
        from device_emulator.cli import fleet_key
        from device_emulator.config import FLEET_KEY

        return FLEET_KEY if device_id == FIRMWARE_DEVICE_ID else fleet_key(self.seed, device_id)

    def timing_overrides(self) -> dict[str, Any]:
        overrides = dict(self.timings)
        if self.upload_s is not None:
            overrides["upload_s"] = float(self.upload_s)
        if self.poll_s is not None:
            overrides["poll_s"] = float(self.poll_s)
        return overrides


# --- release keys, made once per process (an RSA key takes a while) -------------------------------------

_RELEASE_KEYS: dict[str, bytes] = {}


def install_release_keys(keys_dir: Path) -> None:
    """Put the OTA release keys (the cloud signs and encrypts with them, the firmware has the public key
    and the AES key compiled in) into `keys_dir`."""
    if not _RELEASE_KEYS:
        scratch = keys_dir / ".release"
        ReleaseKeys.load_or_create(scratch)
        for name in (PRIVATE_KEY_FILE, AES_KEY_FILE, PUBLIC_KEY_FILE):
            _RELEASE_KEYS[name] = (scratch / name).read_bytes()
        shutil.rmtree(scratch)
    keys_dir.mkdir(parents=True, exist_ok=True)
    for name, data in _RELEASE_KEYS.items():
        path = keys_dir / name
        path.write_bytes(data)
        os.chmod(path, 0o600)


# --- the simulators -------------------------------------------------------------------------------------


class LocalSim:
    """A simulator in this process."""

    def __init__(self, service: Any, origin: float, offset: float) -> None:
        self.service = service
        self.origin = origin  # stack device time at sim time `offset`
        self.offset = offset

    @property
    def url(self) -> str:
        return str(self.service.http_url if self.service.http_url else self.service.modbus_url)

    def arm(self, fault: dict[str, Any], key: str) -> Done:
        from sim_inverter.faults import Fault

        self.service.faults.arm(Fault.from_json(fault), key)
        return Done()

    def set_profile(self, profile: dict[str, Any] | None) -> Done:
        from sim_inverter.faults import FaultProfile

        self.service.faults.set_profile(None if profile is None else FaultProfile.from_json(profile))
        return Done()

    async def ledger(self) -> list[LedgerRead]:
        return [self._read(e.to_json()) for e in self.service.ledger.since(0)]

    def _read(self, doc: Mapping[str, Any]) -> LedgerRead:
        t = float(doc["t"])
        return LedgerRead(int(doc["seq"]), self.origin + (t - self.offset), t, str(doc["operation"]),
                          int(doc["start"]), int(doc["count"]), tuple(doc["values"]), str(doc["outcome"]))

    async def stop(self) -> None:
        await self.service.stop()


class RemoteSim(LocalSim):
    """A simulator in another process, behind its HTTP API (`ecowatt sim serve`)."""

    def __init__(self, process: asyncio.subprocess.Process, http_url: str, modbus_url: str | None,
                 origin: float, offset: float, http: aiohttp.ClientSession) -> None:
        super().__init__(None, origin, offset)
        self.process = process
        self.http_url = http_url
        self.modbus_url = modbus_url
        self.http = http

    @property
    def url(self) -> str:
        return self.http_url

    async def _call(self, method: str, path: str, key: str = "", body: Any = None) -> Any:
        async with self.http.request(method, self.http_url + path, json=body,
                                     headers={"Authorization": key}) as response:
            response.raise_for_status()
            return await response.json()

    def arm(self, fault: dict[str, Any], key: str) -> Any:  # type: ignore[override]
        return self._call("POST", "/api/user/error-flag/add", key, fault)

    def set_profile(self, profile: dict[str, Any] | None) -> Any:  # type: ignore[override]
        if profile is None:
            return self._call("DELETE", "/api/inverter/fault-profile")
        return self._call("POST", "/api/inverter/fault-profile", body=profile)

    async def ledger(self) -> list[LedgerRead]:
        reads: list[LedgerRead] = []
        since = 0
        while True:
            page = await self._call("GET", f"/api/inverter/ledger?since={since}&limit=10000")
            reads += [self._read(doc) for doc in page["entries"]]
            if not page["entries"]:
                return reads
            since = page["entries"][-1]["seq"]

    async def stop(self) -> None:
        await _end_process(self.process)


# --- the cloud ------------------------------------------------------------------------------------------


class LocalCloud:
    """The cloud service in this process. `crash()` stops it abruptly: no draining, open connections
    cut (what was committed stays, as after a kill -9); `restart()` serves the same database again."""

    def __init__(self, settings: Any, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self.server: Any = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        from cloud.server import CloudServer

        settings = dataclasses.replace(self.settings, port=self.port)
        self.server = CloudServer(settings, wall_clock=self.clock.wall)
        await self.server.start()
        self.port = int(self.server.port)

    async def crash(self) -> None:
        server, self.server = self.server, None
        if server is None:
            return
        runner = server._runner
        if runner is not None:
            for site in list(runner.sites):
                await site.stop()
            for transport in list(runner.server._connections.values()):
                transport.abort()  # connections cut, as when the process dies
            runner._shutdown_timeout = 0.0  # no grace for requests in hand
        await server.stop()

    async def restart(self) -> None:
        if self.server is None:
            await self.start()

    async def stop(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None


class ProcessCloud:
    """`ecowatt cloud serve` in a subprocess: `crash()` is SIGKILL, `restart()` a new one on the same port."""

    def __init__(self, argv: list[str], log_path: Path) -> None:
        self.argv = argv
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None
        self.port = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def start(self) -> None:
        argv = [*self.argv, "--port", str(self.port)]
        self.process, url = await _spawn(argv, "listening on http://", self.log_path)
        self.port = int(url.rsplit(":", 1)[1])

    async def crash(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()

    async def restart(self) -> None:
        if self.process is None:
            await self.start()

    async def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            await _end_process(process)


# --- subprocesses ---------------------------------------------------------------------------------------


def ecowatt_command(*args: str) -> list[str]:
    """`ecowatt ARGS` run by this interpreter (so with this venv)."""
    return [sys.executable, "-m", "harness.cli", *args]


async def _spawn(argv: list[str], prefix: str, log_path: Path) -> tuple[asyncio.subprocess.Process, str]:
    """Start `argv`; wait for its `listening on` line starting with `prefix`; return the process and URL.
    Its stderr goes to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=log,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert process.stdout is not None
    try:
        async with asyncio.timeout(STARTUP_TIMEOUT):
            while raw := await process.stdout.readline():
                line = raw.decode("utf-8", "replace").strip()
                if line.startswith(prefix):
                    return process, line.removeprefix("listening on ").strip()
    except TimeoutError:
        pass
    await _end_process(process)
    raise RuntimeError(f"{' '.join(argv[2:5])} did not print {prefix!r}; see {log_path}")


async def _end_process(process: asyncio.subprocess.Process) -> None:
    if process.returncode is None:
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), 15.0)
        except TimeoutError:
            process.kill()
            await process.wait()


async def _listening_urls(process: asyncio.subprocess.Process, count: int) -> list[str]:
    assert process.stdout is not None
    urls: list[str] = []
    async with asyncio.timeout(STARTUP_TIMEOUT):
        while len(urls) < count and (raw := await process.stdout.readline()):
            line = raw.decode("utf-8", "replace").strip()
            if line.startswith("listening on "):
                urls.append(line.removeprefix("listening on "))
    return urls


# --- the stack ------------------------------------------------------------------------------------------


class Stack:
    """Everything a scenario touches (see the module docstring). Attributes once started:

    `sim` (the first device's simulator: a SimService in this process), `sims` (per device id, with
    `ledger()`), `cloud` (HilCloud), `dut` / `duts`, `clock`, `faults` (HilFaults), `invariants`
    (harness.invariants.Invariants), `proxies` ((link, device id) -> FaultProxy), `directory`.
    """

    def __init__(self, options: StackOptions, clock: Clock, directory: Path) -> None:
        self.options = options
        self.clock = clock
        self.directory = Path(directory)
        self.keys_dir = self.directory / "keys"
        self.logs_dir = self.directory / "logs"
        self.token = ""
        self.sims: dict[str, LocalSim] = {}
        self.duts: dict[str, EmulatedDut | ProcessDut | SerialBoardDut] = {}
        self.proxies: dict[tuple[str, str], FaultProxy] = {}
        self.api_keys: dict[str, str] = {}  # the Authorization each device sends its simulator
        self.cloud_control: LocalCloud | ProcessCloud | None = None
        # Set by start():
        self.cloud: HilCloud = None  # type: ignore[assignment]
        self.faults: HilFaults = None  # type: ignore[assignment]
        self.invariants: Invariants = None  # type: ignore[assignment]
        self._http: aiohttp.ClientSession | None = None
        self._started = False
        self._switch_interval: float | None = None

    # --- what scenarios use --------------------------------------------------------------------------

    @property
    def sim(self) -> Any:
        """The first device's simulator: the SimService in this process (its `.ledger`, `.faults`)."""
        first = next(iter(self.sims.values()))
        return first.service if first.service is not None else first

    @property
    def dut(self) -> Any:
        return next(iter(self.duts.values()))

    @property
    def device_ids(self) -> list[str]:
        return list(self.duts)

    @property
    def in_process(self) -> bool:
        return isinstance(self.cloud_control, LocalCloud)

    @property
    def cloud_url(self) -> str:
        """The cloud itself (not through the DUT's proxy)."""
        assert self.cloud_control is not None
        return self.cloud_control.url

    # --- lifecycle ---------------------------------------------------------------------------------------

    async def __aenter__(self) -> Stack:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        from harness.invariants import Invariants  # it reads the stack: imported when one starts

        options = self.options
        self.directory.mkdir(parents=True, exist_ok=True)
        self._started = True
        if self.clock.mode == "virtual":
            self._switch_interval = sys.getswitchinterval()
            sys.setswitchinterval(VIRTUAL_SWITCH_INTERVAL)
        try:
            self._prepare_keys()
            self._http = aiohttp.ClientSession()
            await self._start_cloud()
            assert self.cloud_control is not None
            self.cloud = await HilCloud(self.cloud_control.url, self.token).open()
            ids = options.ids()
            shared_model = None
            if options.devices > SHARED_MODEL_ABOVE and not options.processes:
                from sim_inverter.model import InverterModel

                shared_model = InverterModel(seed=options.seed)
            for index, device_id in enumerate(ids):
                self.api_keys[device_id] = f"hil-{device_id}"
                sim = await self._start_sim(device_id, index, shared_model)
                self.sims[device_id] = sim
                await self._start_proxies(device_id, index, sim)
                self.duts[device_id] = self._make_dut(device_id, index)
            self.faults = HilFaults(self.clock, self.duts, self.sims, self.api_keys, self.proxies, self.cloud,
                                    self.cloud_control)
            self.invariants = Invariants(self)
            self.faults.before_crash = self.invariants.before_cloud_restart
            for dut in self.duts.values():
                await dut.start()
        except BaseException:
            await self.stop()
            raise

    def _prepare_keys(self) -> None:
        files = KeyFiles(self.keys_dir)
        self.token = files.generate_operator_token("hil")
        for device_id in self.options.ids():
            files.add_device(device_id, self.options.key_for(device_id))
        install_release_keys(self.keys_dir)

    async def _start_cloud(self) -> None:
        options = self.options
        data_dir = self.directory / "cloud"
        data_dir.mkdir(parents=True, exist_ok=True)
        if options.processes:
            argv = [sys.executable, "-m", "cloud.cli", "cloud", "serve", "--host", "127.0.0.1",
                    "--data-dir", str(data_dir), "--keys-dir", str(self.keys_dir),
                    "--firmware-dir", str(self.directory / "firmware"), "--log-level", "WARNING"]
            if options.cloud_db:
                argv += ["--db", options.cloud_db]
            if options.open_operator_api:
                argv.append("--open-operator-api")
            self.cloud_control = ProcessCloud(argv, self.logs_dir / "cloud.log")
        else:
            from cloud.settings import CloudSettings

            settings = CloudSettings(host="127.0.0.1", port=0, data_dir=data_dir, db_url=options.cloud_db,
                                     keys_dir=self.keys_dir, firmware_dir=self.directory / "firmware",
                                     open_operator_api=options.open_operator_api)
            self.cloud_control = LocalCloud(settings, self.clock)
        await self.cloud_control.start()

    async def _start_sim(self, device_id: str, index: int, model: Any) -> LocalSim:
        options = self.options
        seed = options.seed + index
        modbus = options.transport == "modbus-tcp"
        if options.processes:
            argv = ecowatt_command("sim", "serve", "--http-port", "0", "--modbus-port", "0",
                                   "--seed", str(seed), "--time-scale", f"{self.clock.time_scale:g}",
                                   "--time-offset", f"{options.sim_offset_s:g}")
            log = self.logs_dir / f"sim-{device_id}.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            with log.open("ab") as stderr:
                process = await asyncio.create_subprocess_exec(
                    *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=stderr,
                    env={**os.environ, "PYTHONUNBUFFERED": "1"})
            try:
                urls = await _listening_urls(process, 2)
            except BaseException:
                await _end_process(process)
                raise
            origin = self.clock.now()
            http_url = next(u for u in urls if u.startswith("http://"))
            modbus_url = next((u for u in urls if u.startswith("modbus-tcp://")), None)
            assert self._http is not None
            return RemoteSim(process, http_url, modbus_url, origin, options.sim_offset_s, self._http)
        from sim_inverter.service import SimConfig, SimService

        config = SimConfig(host="127.0.0.1", http_port=0, modbus_port=0 if modbus else None, seed=seed,
                           time_scale=self.clock.time_scale, time_offset=options.sim_offset_s)
        service = SimService(config, model=model)
        origin = self.clock.now()
        await service.start()
        return LocalSim(service, origin, options.sim_offset_s)

    async def _start_proxies(self, device_id: str, index: int, sim: LocalSim) -> None:
        options = self.options
        targets = {
            "cloud": (self.cloud_control.port if self.cloud_control else 0, True,  # type: ignore[union-attr]
                      options.cloud_port),
            "sim": (_port_of(sim.url if options.transport == "http" else _modbus_url(sim)),
                    options.transport == "http", options.inverter_port),
        }
        for link, (upstream, http, listen) in targets.items():
            proxy = FaultProxy("127.0.0.1", upstream, listen_port=listen, listen_host=self._listen_host,
                               seed=options.seed * 1000 + index,
                               http=http, time_scale=self.clock.time_scale, clock=self.clock.now)
            await proxy.start()
            self.proxies[(link, device_id)] = proxy

    @property
    def _listen_host(self) -> str:
        return self.options.board_host if self.options.dut == "board" else "127.0.0.1"

    def _urls_for(self, device_id: str) -> tuple[str, str]:
        cloud = self.proxies[("cloud", device_id)]
        sim = self.proxies[("sim", device_id)]
        scheme = "http" if self.options.transport == "http" else "modbus-tcp"
        host = self._listen_host
        return f"http://{host}:{cloud.port}", f"{scheme}://{host}:{sim.port}"

    def _console(self, device_id: str, fed_from_outside: bool) -> DutConsole:
        """A DUT's console; one fed by a thread or a process is looked at every tenth of a real second."""
        poll = CONSOLE_POLL_S * self.clock.time_scale if fed_from_outside else None
        return DutConsole(device_id, self.logs_dir / f"{device_id}.console.log", self.clock, poll=poll)

    def _make_dut(self, device_id: str, index: int) -> Any:
        options = self.options
        cloud_url, inverter_url = self._urls_for(device_id)
        state_dir = self.directory / "devices" / device_id
        key = options.key_for(device_id)
        if options.dut == "board":
            from harness.provisioning import BoardSettings

            assert options.port is not None
            settings = BoardSettings(cloud_url, inverter_url, device_id, key, poll_s=options.poll_s,
                                     upload_s=options.upload_s)
            return SerialBoardDut(options.port, self._console(device_id, True), device_id=device_id,
                                  profile=options.profile, settings=settings)
        if options.processes:
            self._provision(state_dir)
            argv = ecowatt_command("device", "run", "--cloud", cloud_url, "--inverter", inverter_url,
                                   "--transport", options.transport, "--profile", options.profile,
                                   "--time-scale", f"{self.clock.time_scale:g}", "--api-key",
                                   self.api_keys[device_id], "--firmware-keys", str(self.keys_dir),
                                   "--device-id", device_id, "--key", key.hex(), "--state-dir", str(state_dir))
            if options.firmware_version:
                argv += ["--version", options.firmware_version]
            return ProcessDut(device_id, options.profile, argv, self._console(device_id, True), state_dir)
        from device_emulator.config import DeviceConfig
        from device_emulator.device import Device

        config = DeviceConfig(
            cloud_url=cloud_url, inverter_url=inverter_url, state_dir=state_dir, transport=options.transport,
            device_id=device_id, key=key, profile=options.profile, version=options.firmware_version,
            time_scale=self.clock.time_scale, api_key=self.api_keys[device_id],
            timings=options.timing_overrides(), seed=None if options.devices == 1 else options.seed * 7919 + index,
            durable=options.durable, firmware_keys=self.keys_dir, quirks=dict(options.quirks),
        )
        device = Device(config, wall_clock=self.clock.wall)
        return EmulatedDut(device, self._console(device_id, False), self.clock)

    def _provision(self, state_dir: Path) -> None:
        """Write the scenario's periods into a new device's NVS, as provisioning a board would."""
        from device_emulator.device import NVS_FILE
        from device_emulator.nvs import POLL_FREQ, UPLOAD_FREQ, NvsStore

        state_dir.mkdir(parents=True, exist_ok=True)
        nvs = NvsStore(state_dir / NVS_FILE)
        if self.options.upload_s is not None:
            nvs.put(UPLOAD_FREQ, int(self.options.upload_s * 1_000_000))
        if self.options.poll_s is not None:
            nvs.put(POLL_FREQ, int(self.options.poll_s * 1_000_000))

    async def stop(self) -> None:
        """Stop everything that started, in reverse order; never raises for a part that did not start."""
        if not self._started:
            return
        self._started = False
        if self.faults is not None:
            await self.faults.close()
        for dut in self.duts.values():
            with contextlib.suppress(Exception):
                await dut.stop()
            dut.console.close()
        for proxy in self.proxies.values():
            with contextlib.suppress(Exception):
                await proxy.stop()
        for sim in self.sims.values():
            with contextlib.suppress(Exception):
                await sim.stop()
        if self.cloud is not None:
            await self.cloud.close()
        if self.cloud_control is not None:
            with contextlib.suppress(Exception):
                await self.cloud_control.stop()
        if self._http is not None:
            await self._http.close()
        if self._switch_interval is not None:
            sys.setswitchinterval(self._switch_interval)
            self._switch_interval = None

    def describe(self) -> dict[str, Any]:
        """Where everything is, for reports and `ecowatt stack up`."""
        return {
            "mode": "in-process" if self.in_process else "processes",
            "time": self.clock.mode,
            "profile": self.options.profile,
            "seed": self.options.seed,
            "cloud": self.cloud_url,
            "devices": {
                device_id: {
                    "cloud_proxy": self._urls_for(device_id)[0],
                    "inverter_proxy": self._urls_for(device_id)[1],
                    "simulator": self.sims[device_id].url,
                    "console_log": str(self.duts[device_id].console.log_path),
                }
                for device_id in self.duts
            },
            "directory": str(self.directory),
        }


def _port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1].split("/", 1)[0])


def _modbus_url(sim: LocalSim) -> str:
    url = sim.service.modbus_url if sim.service is not None else getattr(sim, "modbus_url", None)
    if not url:
        raise RuntimeError("the simulator serves no Modbus TCP")
    return str(url)
