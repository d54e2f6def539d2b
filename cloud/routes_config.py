"""HTTP routes of the remote configuration (firmware-protocol.md §5, issue 3 "Config").

Device side: `POST /changes` (the firmware's poll, answered with the flat §5.2 object, a change
delivered once) and `POST /config/ack/<device_id>` (the spec firmware's `config_ack`).
Operator side: `PUT|POST /api/v1/devices/<device_id>/config` (intervals in seconds, registers by name
or address), `GET` of the same path (the desired configuration), `GET .../config/history`, and the
M4 management shape `POST /config/update` (§5.4, intervals in microseconds).
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from cloud import remote_config
from cloud.app_keys import EVENTS, STORAGE
from cloud.http_json import error_reply, json_object, json_reply, query_int
from cloud.key_registry import check_device_id
from cloud.remote_config import ConfigChange
from cloud.storage import ConfigVersion
from protocol.config_message import parse_config_ack, parse_config_request, parse_config_update
from protocol.errors import DocumentError

MAX_HISTORY = 1000


def _publish(app: web.Application, action: str, version: ConfigVersion) -> None:
    app[EVENTS].publish("config", version.device_id, {"action": action, **remote_config.version_view(version)})


async def changes(request: web.Request) -> web.Response:
    poll = parse_config_request(await request.read())
    reply, delivered = await remote_config.changes_reply(request.app[STORAGE], poll.device_id)
    if delivered is not None:
        _publish(request.app, "delivered", delivered)
    return json_reply(reply.to_dict())


async def ack(request: web.Request) -> web.Response:
    device_id = check_device_id(request.match_info["device_id"])
    answer = parse_config_ack(await request.read())
    version = await remote_config.record_ack(request.app[STORAGE], device_id, answer)
    if version is None:
        # Nothing delivered to acknowledge (e.g. the database was reset): take it anyway, or the device
        # would retry for ever.
        return json_reply({"success": True, "device_id": device_id, "recorded": False,
                           "outcome": remote_config.ack_outcome(answer)})
    _publish(request.app, "acknowledged", version)
    return json_reply({"success": True, "device_id": device_id, "recorded": True, "version": version.version,
                       "outcome": version.ack_outcome})


async def _apply(request: web.Request, device_id: str, change: ConfigChange) -> dict[str, Any]:
    version = await remote_config.set_config(request.app[STORAGE], device_id, change)
    _publish(request.app, "set", version)
    return remote_config.version_view(version)


async def set_config(request: web.Request) -> web.Response:
    device_id = check_device_id(request.match_info["device_id"])
    fields = await json_object(request, "config request")
    view = await _apply(request, device_id, remote_config.parse_change(fields.data))
    return json_reply({"success": True, "device_id": device_id, "version": view})


async def config_update(request: web.Request) -> web.Response:
    """§5.4's management shape: `{"device_id","poll_frequency","upload_frequency"}` in µs, `registers`."""
    try:
        update = parse_config_update(await request.read())
    except DocumentError as error:
        if isinstance(error.value, list):  # every reason, untrimmed
            raise DocumentError(f"{error.message}: {'; '.join(map(str, error.value))}") from None
        raise
    device_id = check_device_id(update.device_id)
    change = ConfigChange(update.poll_interval_s, update.upload_interval_s,
                          None if update.registers is None else tuple(sorted(update.registers)))
    view = await _apply(request, device_id, change)
    return json_reply({"success": True, "device_id": device_id, "updated_fields": view["changes"],
                       "config": view["config"], "version": view["version"]})


async def current(request: web.Request) -> web.Response:
    device_id = check_device_id(request.match_info["device_id"])
    version = await request.app[STORAGE].current_config(device_id)
    if version is None:
        return error_reply(404, "no configuration was ever set for this device", "no_config")
    return json_reply({"success": True, "device_id": device_id, "version": remote_config.version_view(version)})


async def history(request: web.Request) -> web.Response:
    device_id = check_device_id(request.match_info["device_id"])
    limit = query_int(request, "limit", 100, 1, MAX_HISTORY)
    versions = await request.app[STORAGE].config_history(device_id, limit=limit)
    return json_reply({"success": True, "device_id": device_id,
                       "history": [remote_config.version_view(v) for v in versions]})


def add_routes(app: web.Application) -> None:
    app.router.add_post("/changes", changes)
    app.router.add_post("/config/ack/{device_id}", ack)
    app.router.add_post("/config/update", config_update)
    app.router.add_put("/api/v1/devices/{device_id}/config", set_config)
    app.router.add_post("/api/v1/devices/{device_id}/config", set_config)
    app.router.add_get("/api/v1/devices/{device_id}/config", current)
    app.router.add_get("/api/v1/devices/{device_id}/config/history", history)
