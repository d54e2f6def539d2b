"""HTTP routes of the fault injection (firmware-protocol.md §8.2, applied for real; issue 3 "Faults").

Operator side only: `POST /fault/enable`, `POST /fault/disable`, `GET /fault/status`,
`GET /fault/available` and `GET /fault/events` (the log of injected faults). `add_routes` also puts
the `FaultService` in `app[FAULTS]` and its middleware innermost, after the operator check.
"""

from __future__ import annotations

from aiohttp import web

from cloud import faults
from cloud.app_keys import EVENTS, FAULTS, STORAGE, WALL_CLOCK
from cloud.faults import FaultService
from cloud.http_json import json_reply, query_int
from cloud.key_registry import check_device_id
from cloud.storage import FaultEvent
from protocol.errors import DocumentError
from protocol.json_wire import load_object

MAX_EVENTS = 1000
RECENT_IN_STATUS = 10


def _event_view(event: FaultEvent) -> dict[str, object]:
    return {"id": event.id, "rule_id": event.rule_id, "fault_type": event.kind, "device_id": event.device_id,
            "target": event.target, "detail": event.detail, "injected_at": event.injected_at}


async def enable(request: web.Request) -> web.Response:
    spec = faults.parse_fault_request(await request.read())
    if spec.device_id is not None:
        check_device_id(spec.device_id)
    rule = await request.app[FAULTS].enable(spec)
    now = request.app[WALL_CLOCK]()
    return json_reply({"success": True, "message": f"fault {rule.kind} enabled", "rule": faults.rule_view(rule, now)})


async def disable(request: web.Request) -> web.Response:
    body = await request.read()
    device_id = None
    if body.strip():
        fields = load_object(body, DocumentError, "fault disable request")
        unknown = sorted(set(fields.data) - {"device_id"})
        if unknown:
            raise DocumentError("fault disable takes only device_id", unknown[0])
        if fields.data.get("device_id") is not None:
            device_id = check_device_id(fields.text("device_id"))
    cleared = await request.app[FAULTS].disable(device_id)
    return json_reply({"success": True, "message": f"{cleared} fault rule(s) cleared", "cleared": cleared})


async def status(request: web.Request) -> web.Response:
    service: FaultService = request.app[FAULTS]
    storage = request.app[STORAGE]
    rules = await service.rules()
    recent = [_event_view(e) for e in await storage.fault_events(limit=RECENT_IN_STATUS)]
    view = faults.status_view(rules, await storage.fault_counts(), service.requests_processed,
                              request.app[WALL_CLOCK](), recent)
    return json_reply({"success": True, "status": view})


async def available(request: web.Request) -> web.Response:
    return json_reply({"success": True, "faults": faults.fault_available()})


async def events(request: web.Request) -> web.Response:
    limit = query_int(request, "limit", 100, 1, MAX_EVENTS)
    device_id = request.query.get("device_id") or None
    logged = await request.app[STORAGE].fault_events(device_id=device_id, limit=limit)
    return json_reply({"success": True, "events": [_event_view(e) for e in logged]})


def add_routes(app: web.Application) -> None:
    service = FaultService(app[STORAGE], wall_clock=app[WALL_CLOCK], events=app[EVENTS])
    app[FAULTS] = service
    app.middlewares.append(service.middleware)

    async def flush_fault_log(app: web.Application) -> None:
        await service.flush()

    app.on_cleanup.append(flush_fault_log)
    app.router.add_post("/fault/enable", enable)
    app.router.add_post("/fault/disable", disable)
    app.router.add_get("/fault/status", status)
    app.router.add_get("/fault/available", available)
    app.router.add_get("/fault/events", events)
