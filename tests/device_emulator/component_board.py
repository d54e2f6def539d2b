"""Test support for the firmware components: a stand-in board and a stand-in cloud.

`Board` is the least of a device that the components need: a flash file and an NVS file that survive
"power cuts", the real bootloader (boot.py), and one FirmwareContext per boot whose profile and version
come from the booted image. Device time runs 20x faster than the loop (`SCALE`) so the firmware's 2 s
reboot delay and 5-30 s timeouts cost little.

`StandInCloud` is NOT the project's cloud (being built elsewhere): a small aiohttp app serving the
device-facing routes the components call, checking every request with protocol/ parsers (anything
that does not parse is a 400 and is kept in `errors`), recording what arrived, and serving what a
test queued. Its OTA routes serve one release and can fail chosen chunks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from device_emulator.boot import BootDecision, boot_device
from device_emulator.console import Console
from device_emulator.context import FirmwareContext, PowerCut
from device_emulator.event_log import EventLog
from device_emulator.flash import Flash, factory_program
from device_emulator.nvs import NvsStore
from device_emulator.power import PowerMeter
from device_emulator.profiles import PROFILES
from protocol.command_message import (
    NO_PENDING_COMMANDS,
    Command,
    CommandResult,
    parse_command_result,
    parse_poll_request,
    poll_reply,
)
from protocol.config_message import (
    ConfigAck,
    ConfigReply,
    ConfigRequest,
    parse_config_ack,
    parse_config_request,
)
from protocol.errors import EcoWattError
from protocol.esp_image import build_firmware_image
from protocol.firmware_release import Release
from protocol.json_wire import dumps
from protocol.ota_messages import (
    OtaReport,
    check_reply,
    chunk_reply,
    error_reply,
    initiate_reply,
    parse_complete_request,
    parse_initiate_request,
    parse_ota_report,
)

SCALE = 20.0  # device seconds per loop second


class StandInCloud:
    """Stand-in for the cloud's device-facing API (see the module docstring)."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        # remote configuration
        self.config_replies: list[ConfigReply | bytes] = []  # served once each, then "no change"
        self.config_requests: list[ConfigRequest] = []
        self.acks: list[ConfigAck] = []
        self.ack_status = 200
        # commands
        self.commands: list[Command] = []
        self.results: list[CommandResult] = []
        # OTA
        self.release: Release | None = None
        self.initiations: list[str] = []
        self.chunk_requests: list[int] = []
        self.fail_chunks: set[int] = set()  # answered 500 once each
        self.chunk_body: Callable[[int, bytes], Any] | None = None  # replaces the chunk reply
        self.reports: list[OtaReport] = []
        self.completions: list[bool] = []
        self.url = ""
        self._runner: web.AppRunner | None = None

    # --- server -------------------------------------------------------------------------------------

    async def __aenter__(self) -> StandInCloud:
        app = web.Application()
        app.router.add_post("/changes", self._changes)
        app.router.add_post("/config/ack/{device}", self._ack)
        app.router.add_post("/command/poll", self._command_poll)
        app.router.add_post("/command/result", self._command_result)
        app.router.add_get("/ota/check/{device}", self._ota_check)
        app.router.add_post("/ota/initiate/{device}", self._ota_initiate)
        app.router.add_get("/ota/chunk/{device}", self._ota_chunk)
        app.router.add_post("/ota/report/{device}", self._ota_report)
        app.router.add_post("/ota/complete/{device}", self._ota_complete)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"http://{host}:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def _refuse(self, error: EcoWattError) -> web.Response:
        self.errors.append(str(error))
        return _json(error_reply(str(error)), 400)

    # --- routes -------------------------------------------------------------------------------------

    async def _changes(self, request: web.Request) -> web.Response:
        try:
            self.config_requests.append(parse_config_request(await request.read()))
        except EcoWattError as error:
            return self._refuse(error)
        reply = self.config_replies.pop(0) if self.config_replies else ConfigReply()
        return web.Response(body=reply if isinstance(reply, bytes) else reply.to_json())

    async def _ack(self, request: web.Request) -> web.Response:
        try:
            ack = parse_config_ack(await request.read())
        except EcoWattError as error:
            return self._refuse(error)
        if self.ack_status == 200:
            self.acks.append(ack)
        return _json({"success": self.ack_status == 200}, self.ack_status)

    async def _command_poll(self, request: web.Request) -> web.Response:
        try:
            parse_poll_request(await request.read())
        except EcoWattError as error:
            return self._refuse(error)
        return _json(poll_reply(self.commands.pop(0)) if self.commands else dict(NO_PENDING_COMMANDS))

    async def _command_result(self, request: web.Request) -> web.Response:
        try:
            self.results.append(parse_command_result(await request.read()))
        except EcoWattError as error:
            return self._refuse(error)
        return _json({"status": "success"})

    async def _ota_check(self, request: web.Request) -> web.Response:
        version = request.query.get("version", "1.0.0")
        release = self.release
        offer = release.manifest if release is not None and release.manifest.version != version else None
        return _json(check_reply(request.match_info["device"], version, offer))

    async def _ota_initiate(self, request: web.Request) -> web.Response:
        try:
            version = parse_initiate_request(await request.read())
        except EcoWattError as error:
            return self._refuse(error)
        self.initiations.append(version)
        device = request.match_info["device"]
        return _json(initiate_reply(device, f"{device}_{version}"), 201)

    async def _ota_chunk(self, request: web.Request) -> web.Response:
        assert self.release is not None
        index = int(request.query["chunk"])
        self.chunk_requests.append(index)
        if index in self.fail_chunks:
            self.fail_chunks.discard(index)
            return _json(error_reply("injected failure"), 500)
        try:
            data = self.release.chunk(index)
        except EcoWattError as error:
            return self._refuse(error)
        if self.chunk_body is not None:
            return _json(self.chunk_body(index, data))
        return _json(chunk_reply(request.match_info["device"], index, data))

    async def _ota_report(self, request: web.Request) -> web.Response:
        try:
            self.reports.append(parse_ota_report(await request.read()))
        except EcoWattError as error:
            return self._refuse(error)
        return _json({"success": True})

    async def _ota_complete(self, request: web.Request) -> web.Response:
        try:
            self.completions.append(parse_complete_request(await request.read()))
        except EcoWattError as error:
            return self._refuse(error)
        return _json({"success": True})

    def report_statuses(self) -> list[tuple[str, str]]:
        return [(r.phase, r.status) for r in self.reports]


def _json(value: Any, status: int = 200) -> web.Response:
    return web.Response(body=dumps(value), status=status, content_type="application/json")


class Unreachable:
    """An inverter link for tests that must not touch the inverter."""

    async def write_register(self, address: int, value: int) -> bool:
        raise AssertionError("the inverter was not expected to be used")


@dataclass
class Board:
    """A device's durable state in `directory`, booted with the real bootloader (see module docstring)."""

    directory: Path
    session: aiohttp.ClientSession
    cloud_url: str
    device_id: str = "ESP32_EcoWatt_Smart"
    inverter: Any = field(default_factory=Unreachable)
    timings: dict[str, float] = field(default_factory=dict)
    cuts: dict[str, int] = field(default_factory=dict)  # tagged point -> passes left before the power goes
    reboots: list[str] = field(default_factory=list)
    points: list[str] = field(default_factory=list)  # every tagged point reached
    ctx: FirmwareContext | None = None
    decision: BootDecision | None = None

    def factory(self, profile: str, version: str) -> Board:
        """Flash a blank chip with one image in ota_0."""
        factory_program(self.flash(), build_firmware_image(profile, version))
        return self

    def flash(self) -> Flash:
        return Flash(self.directory / "flash.bin", on_point=self._point)

    def cut(self, tag: str, *, after: int = 0) -> None:
        """Cut the power at tagged point `tag` once it has been passed `after` times."""
        self.cuts[tag] = after

    def _point(self, tag: str) -> None:
        self.points.append(tag)
        if tag in self.cuts:
            if self.cuts[tag] == 0:
                del self.cuts[tag]  # the power comes back for the next boot
                raise PowerCut(tag)
            self.cuts[tag] -= 1

    def boot(self) -> FirmwareContext:
        """Reset: the bootloader runs and a fresh context (RAM) is built for what it booted."""
        loop = asyncio.get_running_loop()
        flash = self.flash()
        self.decision = decision = boot_device(flash)
        profile = PROFILES[decision.identity.profile]
        if self.timings:
            profile = profile.with_timings(**self.timings)
        started = loop.time()

        def clock() -> float:
            return (loop.time() - started) * SCALE

        async def sleep(seconds: float) -> None:
            await asyncio.sleep(seconds / SCALE)

        self.ctx = FirmwareContext(
            device_id=self.device_id,
            version=decision.identity.version,
            profile=profile,
            nvs=NvsStore(self.directory / "nvs.bin", on_point=self._point, durable=False),
            flash=flash,
            events=EventLog(clock=clock, wall_clock=time.time),
            power=PowerMeter(clock=clock),
            console=Console(lambda: int(clock() * 1000) & 0xFFFFFFFF),
            http=self.session,
            cloud_url=self.cloud_url,
            inverter=self.inverter,
            clock=clock,
            wall_clock=time.time,
            millis=lambda: int(clock() * 1000) & 0xFFFFFFFF,
            sleep=sleep,
            request_reboot=self.reboots.append,
            point=self._point,
        )
        return self.ctx


async def run_until_cut(work: Callable[[], Awaitable[Any]]) -> str | None:
    """Run `work`; the tagged point where the power was cut, or None if it ran to the end."""
    try:
        await work()
    except PowerCut as cut:
        return cut.point
    return None
