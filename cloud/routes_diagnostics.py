"""HTTP routes of the diagnostics (firmware-protocol.md §8.1, issue 3 "Diagnostics").

Device side: `POST /diagnostics/<device_id>` (any JSON object up to the size limit, from a known
device). Operator side: `GET /diagnostics/<device_id>?limit=`, `GET /diagnostics?limit=`,
`GET /diagnostics/summary[?device_id=]`, `DELETE /diagnostics/<device_id>`, `DELETE /diagnostics`.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from aiohttp import web

from cloud import diagnostics
from cloud.app_keys import EVENTS, SETTINGS, STORAGE
from cloud.diagnostics import MAX_LIST_LIMIT, DiagnosticsPolicy
from cloud.http_json import error_reply, json_reply, query_int
from cloud.key_registry import check_device_id
from cloud.known_devices import is_known_device


def _policy(app: web.Application) -> DiagnosticsPolicy:
    limits = app[SETTINGS].limits
    return DiagnosticsPolicy(limits.diagnostics_max_bytes, limits.diagnostics_per_device)


async def post(request: web.Request) -> web.Response:
    device_id = check_device_id(request.match_info["device_id"])
    policy = _policy(request.app)
    if request.content_length is not None and request.content_length > policy.max_document_bytes:
        return error_reply(413, f"a diagnostics document is at most {policy.max_document_bytes} bytes",
                           "body_too_large")
    body = await request.read()
    if len(body) > policy.max_document_bytes:
        return error_reply(413, f"a diagnostics document is at most {policy.max_document_bytes} bytes",
                           "body_too_large")
    document = diagnostics.parse_document(body)
    if not await is_known_device(request.app, device_id):
        return error_reply(404, "unknown device: register its key first", "unknown_device")
    entry = await diagnostics.store(request.app[STORAGE], device_id, document, policy)
    request.app[EVENTS].publish("diagnostics", device_id, {"id": entry.id, "bytes": len(body)})
    return json_reply({"success": True, "message": f"Diagnostics stored for {device_id}", "device_id": device_id,
                       "id": entry.id}, status=201)


async def for_device(request: web.Request) -> web.Response:
    device_id = check_device_id(request.match_info["device_id"])
    limit = query_int(request, "limit", 10, 1, MAX_LIST_LIMIT)
    entries = await request.app[STORAGE].list_diagnostics(device_id, limit=limit)
    return json_reply({"success": True, "device_id": device_id,
                       "diagnostics": [diagnostics.diagnostic_view(e) for e in entries]})


async def every_device(request: web.Request) -> web.Response:
    limit = query_int(request, "limit", 10, 1, MAX_LIST_LIMIT)
    storage = request.app[STORAGE]
    grouped: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in await storage.diagnostics_summary():
        entries = await storage.list_diagnostics(row.device_id, limit=limit)
        grouped[row.device_id] = [diagnostics.diagnostic_view(e) for e in entries]
    return json_reply({"success": True, "diagnostics": grouped})


async def summary(request: web.Request) -> web.Response:
    rows = await request.app[STORAGE].diagnostics_summary()
    device_id = request.query.get("device_id")
    if device_id is None:
        return json_reply({"success": True, "summary": diagnostics.summary_view(rows)})
    row = next((r for r in rows if r.device_id == device_id), None)
    if row is None:
        return error_reply(404, "no diagnostics from this device", "no_diagnostics")
    return json_reply({"success": True, "summary": {"device_id": device_id, "total_entries": row.entries,
                                                    "first_seen": row.first_at, "last_seen": row.last_at}})


async def delete_device(request: web.Request) -> web.Response:
    device_id = check_device_id(request.match_info["device_id"])
    deleted = await request.app[STORAGE].delete_diagnostics(device_id)
    return json_reply({"success": True, "device_id": device_id, "deleted": deleted})


async def delete_all(request: web.Request) -> web.Response:
    return json_reply({"success": True, "deleted": await request.app[STORAGE].delete_diagnostics()})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/diagnostics/summary", summary)
    app.router.add_get("/diagnostics", every_device)
    app.router.add_delete("/diagnostics", delete_all)
    app.router.add_post("/diagnostics/{device_id}", post)
    app.router.add_get("/diagnostics/{device_id}", for_device)
    app.router.add_delete("/diagnostics/{device_id}", delete_device)
