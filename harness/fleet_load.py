"""Locust users that are emulated EcoWatt boards: the locustfile `ecowatt fleet load` runs.

Design. Locust is gevent; the device emulator's `Device` is asyncio. Instead of bridging two event
loops (and carrying every request's statistics across threads), each Locust user runs the
firmware's `loop()` schedule in its own greenlet: the profile's auto-reload timers (poll, upload,
config check with a command poll on every n-th, OTA check; phases jittered per board), worked in
the firmware's order, with the emulator's own acquisition (its quirks, its adaptive codec state)
and packet queue, and protocol/ builders for every body (upload document, HMAC envelope with a
fresh nonce per attempt, `/changes`, `/command/poll`, `/command/result`, `/ota/check`). Every HTTP
exchange goes through Locust's FastHttpSession and so lands in Locust's live statistics, CSV files
and web UI as it happens. The acquisition's coroutines never suspend here (the inverter link
answers synchronously, blocking only its greenlet), so they are run to completion in place.

A timer expiry that finds the previous one of the same timer still unserved is a missed deadline,
as on the board; each is reported to Locust as a failure of type DEADLINE named after the timer, so
"at firmware cadence" is visible in the same statistics.

Under load the boards do not apply remote configuration, install offered updates, write registers
(a command is answered with the result the profile's firmware would report) or truncate a long
document as 1.0.4 does (an upload carries what fits); the emulator's `Device` is the place for
those behaviours. Timeouts are the firmware's, unscaled: time scaling
compresses the schedule, not the network. Without `--inverter` each worker process reads one
in-process inverter model (sim_inverter.model), each board at its own time of day.
"""

from __future__ import annotations

import functools
import heapq
import json
import logging
import random
import sys
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING, Any
from urllib.parse import quote, urlencode

import gevent
from locust import FastHttpUser, argument_parser, constant, events, task
from locust.env import Environment
from locust.runners import MasterRunner

from cloud.ingest import VERDICT_HEADER
from device_emulator.acquisition import Acquisition
from device_emulator.config import FACTORY_VERSIONS
from device_emulator.console import Console
from device_emulator.context import FirmwareContext
from device_emulator.event_log import EventLog
from device_emulator.inverter_link import OK, ReadResult, read_reply
from device_emulator.nvs import NONCE
from device_emulator.packet_queue import PacketQueue
from device_emulator.profiles import PROFILES, Profile
from device_emulator.uploader import DOCUMENT_LIMIT, ESP32_HEADERS
from harness.fleet_cli import FleetPlan, split_clouds
from protocol import modbus
from protocol.command_message import (
    FIRMWARE_POLL_REPLY_LIMIT,
    CommandResult,
    Refused,
    firmware_action,
    parse_poll_reply,
    poll_request,
)
from protocol.config_message import config_request
from protocol.envelope import build_envelope
from protocol.errors import EcoWattError
from protocol.registers import DEFAULT_SELECTION, SLAVE_ADDRESS
from protocol.upload_document import CompressedPacket, firmware_document

if TYPE_CHECKING:
    from sim_inverter.model import InverterModel

log = logging.getLogger("ecowatt.fleet")
JSON_HEADERS = {"Content-Type": "application/json"}
DAYLIGHT_START_S = 9 * 3600  # boards read the model between 09:00 and 15:00, spread by index
DAYLIGHT_SPAN_S = 6 * 3600


def _inverter_model() -> InverterModel | None:
    """One inverter model per process, built (its first day computed) at import: pvlib takes seconds,
    which must not block a worker's gevent loop (its master drops it after 3 s without a heartbeat);
    workers forked by `--processes` inherit it. Boards differ by the time of day they read. A master
    started with `--master` runs no boards and needs none."""
    if "--master" in sys.argv:
        return None
    from sim_inverter.model import InverterModel

    model = InverterModel(seed=1)
    model.registers(DAYLIGHT_START_S)
    return model


MODEL = _inverter_model()


# Locust 2.47's worker rebuilds its whole argument parser once per option of every spawn message
# (`WorkerRunner.handle_message`): seconds of blocked gevent loop per ramp step, enough to miss
# heartbeats (the master then drops the worker) and board deadlines. Those defaults never change.
argument_parser.default_args_dict = functools.cache(argument_parser.default_args_dict)


@events.init_command_line_parser.add_listener
def _fleet_options(parser: Any) -> None:
    """The fleet's options; a master hands them to its workers with every spawn."""
    add = parser.add_argument
    add("--fleet-devices", type=int, default=1, help="boards in the whole run", include_in_web_ui=False)
    add("--fleet-clouds", default="", help="cloud URLs, comma separated", include_in_web_ui=False)
    add("--fleet-workers", type=int, default=1, help="worker processes sharing the fleet", include_in_web_ui=False)
    add("--fleet-seed", type=int, default=1, help="seed of keys and timer phases", include_in_web_ui=False)
    add("--fleet-id-prefix", default="load-", help="device id prefix", include_in_web_ui=False)
    add("--fleet-time-scale", type=float, default=1.0, help="device seconds per real second",
        include_in_web_ui=False)
    add("--fleet-profile", default="reference-1.0.4", help="firmware profile", include_in_web_ui=False)
    add("--fleet-inverter", default="", help="the SIM's frame API URL", include_in_web_ui=False)
    add("--fleet-api-key", default="", help="Authorization for the frame API", include_in_web_ui=False)
    add("--fleet-ledger", default="", help="append one JSON line per upload here", include_in_web_ui=False)


class MissedDeadline(Exception):
    """A timer expired again before the work of its previous expiry started."""


def run_in_place(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """The result of a coroutine that completes without suspending (the acquisition over a link that
    answers synchronously)."""
    try:
        coroutine.send(None)
    except StopIteration as done:
        return done.value
    coroutine.close()
    raise RuntimeError("the coroutine suspended: only synchronous links can run in a Locust user")


@dataclass
class Timer:
    """An auto-reload timer in device seconds (the firmware's hardware timers raise flags only)."""

    name: str
    period: float
    due: float

    def take(self, now: float) -> tuple[float, int] | None:
        """None if not due; else (lateness, expiries missed meanwhile), and the timer re-armed."""
        if now < self.due:
            return None
        lateness = now - self.due
        missed = int(lateness // self.period)
        self.due += (missed + 1) * self.period
        return lateness, missed


class Board:
    """One emulated board's identity and its NVS (the nonce), kept across the Locust users that drive
    it; everything else is RAM and starts anew at each boot."""

    def __init__(self, fleet: Fleet, index: int) -> None:
        plan = fleet.plan
        self.fleet = fleet
        self.index = index
        self.device_id = plan.device_id(index)
        self.key = plan.key(self.device_id)
        self.cloud = plan.cloud_for(index)
        self.profile = fleet.profile
        self.version = FACTORY_VERSIONS[self.profile.name]
        self.nonce = int(NONCE.default)  # factory-fresh NVS
        self.boots = 0
        # The model's time of day this board sees, so boards do not all send the same values.
        self.day_offset = DAYLIGHT_START_S + (index * 613) % DAYLIGHT_SPAN_S


class Boot:
    """One power-on of a board: its clock, queue, acquisition and timers."""

    def __init__(self, board: Board, user: EmulatedBoard) -> None:
        fleet = board.fleet
        board.boots += 1
        self.board = board
        self.user = user
        self.scale = fleet.time_scale
        self._t0 = time.monotonic()
        self.queue = PacketQueue()
        events_log = EventLog(clock=self.clock, wall_clock=time.time, capacity=8)
        console = Console(self.millis, capacity=8)
        # The acquisition reaches only the profile, the event log, the console and millis().
        ctx = FirmwareContext(
            device_id=board.device_id, version=board.version, profile=board.profile, nvs=None,
            flash=None, events=events_log, power=None, console=console, http=None,
            cloud_url=board.cloud, inverter=None, clock=self.clock, wall_clock=time.time,
            millis=self.millis, sleep=None, request_reboot=None, point=None,
            time_scale=self.scale,
        )
        link = ModelLink(fleet.model, self) if fleet.model is not None else FrameLink(fleet, user, board.profile)
        self.acquisition = Acquisition(ctx, link, self.queue, list(DEFAULT_SELECTION))
        timings = board.profile.timings
        phases = random.Random(f"{fleet.plan.seed}/{board.index}/{board.boots}")
        self.timers = [
            Timer(name, period, phases.uniform(0.0, period) + period)
            for name, period in (
                ("poll", timings.poll_s),
                ("upload", timings.upload_s),
                ("config", timings.config_check_s),
                ("ota", timings.ota_check_s),
            )
        ]
        self.config_checks = 0

    def clock(self) -> float:
        """Device seconds since this boot."""
        return (time.monotonic() - self._t0) * self.scale

    def millis(self) -> int:
        return int(self.clock() * 1000) & 0xFFFF_FFFF

    def seconds_to_next(self) -> float:
        """Real seconds until the earliest timer expires."""
        return max(0.0, (min(t.due for t in self.timers) - self.clock()) / self.scale)


class ModelLink:
    """The inverter as an in-process model: a read always succeeds, at the board's time of day."""

    def __init__(self, model: InverterModel, boot: Boot) -> None:
        self.model = model
        self.boot = boot

    async def read_registers(self, start: int, count: int) -> ReadResult:
        values = self.model.registers(self.boot.board.day_offset + self.boot.clock())
        return ReadResult(tuple(values[start : start + count]))


class FrameLink:
    """The SIM's HTTP frame API through the user's Locust client (one attempt per poll)."""

    def __init__(self, fleet: Fleet, user: EmulatedBoard, profile: Profile) -> None:
        self.url = fleet.inverter.rstrip("/") + "/api/inverter/read"
        self.headers = {"Content-Type": "application/json", "accept": "*/*", "Authorization": fleet.api_key}
        self.user = user
        self.quirks = profile.quirks

    async def read_registers(self, start: int, count: int) -> ReadResult:
        request = modbus.build_read_request(SLAVE_ADDRESS, start, count)
        body = modbus.http_body(modbus.to_hex(request)).encode("ascii")
        response = self.user.client.post(self.url, data=body, headers=self.headers, name="inverter read")
        if not response.status_code or not response.content:
            return ReadResult(None, "no response")
        reply = read_reply(response.content, count, SLAVE_ADDRESS, self.quirks)
        return ReadResult(reply.values if reply.verdict == OK else None, None if reply.verdict == OK else reply.verdict)


class Fleet:
    """This process's share of the fleet: which boards it drives, and what they have done."""

    def __init__(self, options: Any, worker_index: int) -> None:
        self.plan = FleetPlan(
            devices=options.fleet_devices,
            clouds=split_clouds(options.fleet_clouds),
            workers=max(1, options.fleet_workers),
            seed=options.fleet_seed,
            id_prefix=options.fleet_id_prefix,
        )
        self.worker_index = worker_index
        self.profile = PROFILES[options.fleet_profile]
        self.time_scale = float(options.fleet_time_scale)
        self.inverter = options.fleet_inverter
        self.api_key = options.fleet_api_key
        self.model = None if self.inverter else MODEL
        if not self.inverter and MODEL is None:
            raise RuntimeError("a master has no inverter model: boards run on workers")
        self.boards: dict[int, Board] = {}
        self._free: list[int] = []  # local slots given back by stopped users (heap)
        self._next_slot = 0
        self.counts: Counter[str] = Counter()
        self.worst_lateness: dict[str, float] = {}  # timer -> device seconds
        self._ledger: IO[str] | None = open(options.fleet_ledger, "a", buffering=1) if options.fleet_ledger else None  # noqa: SIM115

    def claim(self) -> Board:
        slot = heapq.heappop(self._free) if self._free else self._take_slot()
        index = self.worker_index + self.plan.workers * slot
        if index >= self.plan.slots:
            log.warning("board index %d is beyond the %d registered ids: its uploads will be refused",
                        index, self.plan.slots)
        board = self.boards.get(index)
        if board is None:
            board = self.boards[index] = Board(self, index)
        return board

    def release(self, board: Board) -> None:
        heapq.heappush(self._free, (board.index - self.worker_index) // self.plan.workers)

    def _take_slot(self) -> int:
        slot, self._next_slot = self._next_slot, self._next_slot + 1
        return slot

    def record_upload(self, board: Board, boot: int, nonce: int, status: int, verdict: str | None,
                      packets: list[CompressedPacket]) -> None:
        self.counts["uploads_ok" if status == 200 else "uploads_not_acknowledged"] += 1
        if self._ledger is not None:
            line = {"device_id": board.device_id, "boot": boot, "nonce": nonce, "status": status,
                    "verdict": verdict, "packets": [p.metadata.timestamp for p in packets]}
            self._ledger.write(json.dumps(line) + "\n")  # one write per line: appends do not interleave

    def summary(self) -> str:
        worst = ", ".join(f"{name} {late:.2f} s" for name, late in sorted(self.worst_lateness.items()))
        return (f"{len(self.boards)} boards, {self.counts['uploads_ok']} uploads acknowledged, "
                f"{self.counts['uploads_not_acknowledged']} not, {self.counts['missed_deadlines']} missed deadlines"
                f" (worst lateness in device seconds: {worst or 'none'})")


_fleet: Fleet | None = None


def fleet_of(environment: Environment) -> Fleet:
    """This process's fleet, made when its test starts: a worker has its master's options by then."""
    global _fleet
    if _fleet is None:
        runner = environment.runner
        _fleet = Fleet(environment.parsed_options, getattr(runner, "worker_index", 0) if runner else 0)
    return _fleet


@events.test_start.add_listener
def _prepare(environment: Environment, **_: Any) -> None:
    """Build the fleet before the first board starts (a master runs no boards)."""
    if not isinstance(environment.runner, MasterRunner):
        fleet_of(environment)


@events.test_stop.add_listener
def _report(environment: Environment, **_: Any) -> None:
    if _fleet is not None:
        log.info("fleet worker %d: %s", _fleet.worker_index, _fleet.summary())


class EmulatedBoard(FastHttpUser):
    """One emulated EcoWatt board at firmware cadence."""

    wait_time = constant(0)  # the single task is the firmware's endless loop
    concurrency = 1  # a board has one connection
    max_retries = 0

    def __init__(self, environment: Environment) -> None:
        fleet = fleet_of(environment)
        self.fleet = fleet
        self.board = fleet.claim()
        self.host = self.board.cloud
        timeout = fleet.profile.timings.cloud_timeout_s
        self.network_timeout = self.connection_timeout = timeout
        super().__init__(environment)

    def on_stop(self) -> None:
        self.fleet.release(self.board)

    @task
    def firmware_loop(self) -> None:
        boot = Boot(self.board, self)
        work = {"poll": self._poll, "upload": self._upload, "config": self._config_check, "ota": self._ota_check}
        while True:
            gevent.sleep(boot.seconds_to_next())
            for timer in boot.timers:  # the firmware's order; each flag looked at when reached
                taken = timer.take(boot.clock())
                if taken is None:
                    continue
                lateness, missed = taken
                self._account(timer, lateness, missed)
                work[timer.name](boot)

    def _account(self, timer: Timer, lateness: float, missed: int) -> None:
        fleet = self.fleet
        fleet.worst_lateness[timer.name] = max(fleet.worst_lateness.get(timer.name, 0.0), lateness)
        fleet.counts["missed_deadlines"] += missed
        for _ in range(missed):  # one failure per expiry lost; the time is how late the work started
            self.environment.events.request.fire(
                request_type="DEADLINE", name=timer.name, response_time=lateness * 1000 / fleet.time_scale,
                response_length=0, context={},
                exception=MissedDeadline(f"the {timer.name} timer expired again before its work started"),
            )

    # --- the firmware's work ----------------------------------------------------------------------

    def _poll(self, boot: Boot) -> None:
        run_in_place(boot.acquisition.poll())

    def _upload(self, boot: Boot) -> None:
        """Drain what fits one document, take a fresh nonce, sign, POST /process; re-queue on failure."""
        board = self.board
        if not len(boot.queue):
            return  # nothing queued: nothing sent, no nonce used
        packets = boot.queue.drain(self._fitting(boot))
        document = firmware_document(board.device_id, boot.millis(), packets).to_json()
        board.nonce += 1  # saved before sending: no nonce is ever used twice
        body = build_envelope(board.key, board.nonce, document)
        status, verdict = 0, None  # 0: no answer (also when the run stops while it is in flight)
        try:
            with self.client.post("/process", data=body, headers=ESP32_HEADERS, name="/process",
                                  catch_response=True) as response:
                status = response.status_code or 0
                verdict = response.headers.get(VERDICT_HEADER) if response.headers else None
                if status != 200 and 200 <= status < 300 and board.profile.quirks.only_200_is_success:
                    response.failure(f"HTTP {status} is not 200")
        finally:
            self.fleet.record_upload(board, board.boots, board.nonce, status, verdict, packets)
        ok = status == 200 if board.profile.quirks.only_200_is_success else 200 <= status < 300
        if not ok:
            boot.queue.put_back(packets)

    def _fitting(self, boot: Boot) -> int:
        """How many queued packets fit one document the firmware does not truncate (at least one)."""
        queued = boot.queue.snapshot()
        count = 1
        while count < len(queued) and len(
            firmware_document(self.board.device_id, boot.millis(), queued[: count + 1]).to_json()
        ) <= DOCUMENT_LIMIT:
            count += 1
        return count

    def _config_check(self, boot: Boot) -> None:
        board = self.board
        self.client.post("/changes", data=config_request(board.device_id, boot.millis()), headers=JSON_HEADERS,
                         name="/changes")
        boot.config_checks += 1
        if boot.config_checks % board.profile.timings.command_every == 0:
            self._command_poll()

    def _command_poll(self) -> None:
        board = self.board
        reply = self.client.post("/command/poll", data=poll_request(board.device_id), headers=JSON_HEADERS,
                                 name="/command/poll")
        if reply.status_code != 200 or not reply.content:
            return
        try:
            command = parse_poll_reply(reply.content[:FIRMWARE_POLL_REPLY_LIMIT])
        except EcoWattError:
            return  # not JSON, or cut by the firmware's buffer: no command
        if command is None:
            return
        quirks = board.profile.quirks
        action = firmware_action(command, write_register=not quirks.write_register_unimplemented,
                                 strict_parameters=not quirks.command_non_integer_as_zero)
        result = CommandResult.of(command, not isinstance(action, Refused))
        self.client.post("/command/result", data=result.to_json(), headers=JSON_HEADERS, name="/command/result")

    def _ota_check(self, boot: Boot) -> None:
        board = self.board
        query = urlencode({"version": board.version})
        self.client.get(f"/ota/check/{quote(board.device_id, safe='')}?{query}", name="/ota/check")
