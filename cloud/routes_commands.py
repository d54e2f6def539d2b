"""HTTP routes of the commands (firmware-protocol.md §6, issue 3 "Commands").

Device side: `POST /command/poll` and `POST /command/result` as firmware 1.0.4 calls them, and the
seed's `GET /commands/<device_id>/poll` / `POST /commands/<device_id>/result`. Operator side:
`POST /commands/<device_id>` (queue), `GET /commands/status/<command_id>`, `GET /commands/stats`
and `GET /api/v1/devices/<device_id>/commands` (history).
"""

from __future__ import annotations

from aiohttp import web

from cloud import commands
from cloud.app_keys import EVENTS, SETTINGS, STORAGE
from cloud.commands import DeliveryPolicy, ResultOutcome, ResultRecord
from cloud.http_json import error_reply, json_object, json_reply, query_int
from cloud.key_registry import check_device_id
from cloud.known_devices import is_known_device
from cloud.storage import Command, CommandStatus
from protocol.command_message import parse_command_result, parse_poll_request, parse_seed_result

MAX_HISTORY = 1000


def _policy(app: web.Application) -> DeliveryPolicy:
    limits = app[SETTINGS].limits
    return DeliveryPolicy(limits.command_lease_seconds, limits.command_max_deliveries)


def _publish(app: web.Application, action: str, command: Command) -> None:
    app[EVENTS].publish("command", command.device_id, {"action": action, "command": commands.command_view(command)})


async def _lease(request: web.Request, device_id: str) -> Command | None:
    app = request.app
    if not await is_known_device(app, device_id):
        return None
    command = await commands.deliver_next(app[STORAGE], device_id, _policy(app))
    if command is not None:
        _publish(app, "delivered", command)
    return command


def _result_reply(record: ResultRecord, command_id: str) -> web.Response:
    outcome = record.outcome
    if outcome is ResultOutcome.UNKNOWN:
        return error_reply(404, "no such command for this device", "unknown_command")
    if outcome is ResultOutcome.NOT_DELIVERED:
        return error_reply(409, "this command has not been delivered yet", "not_delivered")
    if outcome is ResultOutcome.CONFLICT:
        assert record.command is not None
        return error_reply(409, f"this command already ended as {record.command.status}", "already_finished")
    assert record.command is not None
    return json_reply({"success": True, "status": "success", "command_id": command_id,
                       "device_id": record.command.device_id, "recorded": outcome is ResultOutcome.RECORDED,
                       "command_status": str(record.command.status)})


# --- device side ---


async def firmware_poll(request: web.Request) -> web.Response:
    device_id = parse_poll_request(await request.read())
    return json_reply(commands.firmware_reply(await _lease(request, device_id)))


async def firmware_result(request: web.Request) -> web.Response:
    result = parse_command_result(await request.read())
    record = await commands.record_result(request.app[STORAGE], result.command_id, CommandStatus(result.status),
                                          result.result)
    if record.outcome is ResultOutcome.RECORDED and record.command is not None:
        _publish(request.app, "result", record.command)
    return _result_reply(record, result.command_id)


async def seed_poll(request: web.Request) -> web.Response:
    device_id = check_device_id(request.match_info["device_id"])
    command = await _lease(request, device_id)
    listed = [] if command is None else [commands.seed_view(command)]
    return json_reply({"success": True, "device_id": device_id, "commands": listed})


async def seed_result(request: web.Request) -> web.Response:
    device_id = check_device_id(request.match_info["device_id"])
    result = parse_seed_result(await request.read())
    storage = request.app[STORAGE]
    known = await storage.get_command(result.command_id)
    command_type = known.type if known is not None else ""
    record = await commands.record_result(
        storage, result.command_id, CommandStatus.COMPLETED if result.success else CommandStatus.FAILED,
        commands.seed_result_text(result, command_type), device_id=device_id,
    )
    if record.outcome is ResultOutcome.RECORDED and record.command is not None:
        _publish(request.app, "result", record.command)
    return _result_reply(record, result.command_id)


# --- operator side ---


async def queue(request: web.Request) -> web.Response:
    device_id = check_device_id(request.match_info["device_id"])
    fields = await json_object(request, "command request")
    kind, parameters = commands.parse_queue_body(fields.data)
    command = await commands.queue_command(request.app[STORAGE], device_id, kind, parameters)
    _publish(request.app, "queued", command)
    return json_reply({"success": True, "device_id": device_id, "command_id": command.command_id,
                       "command": commands.command_view(command)}, status=201)


async def status(request: web.Request) -> web.Response:
    command_id = request.match_info["command_id"]
    command = await commands.command_status(request.app[STORAGE], command_id, _policy(request.app))
    if command is None:
        return error_reply(404, "no such command", "unknown_command")
    return json_reply({"success": True, "command_id": command_id, "status": commands.command_view(command)})


async def stats(request: web.Request) -> web.Response:
    storage = request.app[STORAGE]
    await storage.expire_commands(_policy(request.app).max_deliveries)
    counts = await storage.command_counts()
    finished = counts[CommandStatus.COMPLETED] + counts[CommandStatus.FAILED] + counts[CommandStatus.TIMED_OUT]
    return json_reply({"success": True, "stats": {
        "total_commands": sum(counts.values()),
        **{f"{status}_commands": n for status, n in counts.items()},
        "success_rate": None if not finished else counts[CommandStatus.COMPLETED] / finished,
    }})


async def history(request: web.Request) -> web.Response:
    device_id = check_device_id(request.match_info["device_id"])
    limit = query_int(request, "limit", 100, 1, MAX_HISTORY)
    listed = await commands.command_history(request.app[STORAGE], device_id, _policy(request.app), limit=limit)
    return json_reply({"success": True, "device_id": device_id,
                       "commands": [commands.command_view(c) for c in listed]})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/command/poll", firmware_poll)
    app.router.add_post("/command/result", firmware_result)
    app.router.add_get("/commands/stats", stats)
    app.router.add_get("/commands/status/{command_id}", status)
    app.router.add_get("/commands/{device_id}/poll", seed_poll)
    app.router.add_post("/commands/{device_id}/result", seed_result)
    app.router.add_post("/commands/{device_id}", queue)
    app.router.add_get("/api/v1/devices/{device_id}/commands", history)
