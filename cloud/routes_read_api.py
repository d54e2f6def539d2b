"""The read API for people and scenarios: devices, the live event stream, metrics, the OpenAPI document.

`GET /api/v1/devices`, `GET /api/v1/devices/<id>` (firmware version as last reported, last seen,
configuration, state, OTA session), `GET /api/v1/events` (server-sent events from the event bus),
`GET /metrics` (Prometheus), `GET /api/v1/openapi.json` (every route of the service).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import asdict
from typing import Any

from aiohttp import web
from aiohttp_sse import sse_response

from cloud.app_keys import EVENTS, IN_FLIGHT, STORAGE
from cloud.http_json import json_reply
from cloud.metrics import ServiceMetrics
from cloud.openapi import build_document
from cloud.storage import Device, Storage

METRICS: web.AppKey[ServiceMetrics] = web.AppKey("metrics", ServiceMetrics)
SSE_PING_SECONDS = 15.0
DRAIN_CHECK_SECONDS = 0.5
MAX_KINDS = 32


def device_summary(device: Device) -> dict[str, Any]:
    """A device as listed: never its key, only whether it has one of its own."""
    return {"device_id": device.device_id, "state": device.state, "firmware_version": device.firmware_version,
            "registered": device.key_hex is not None, "created_at": device.created_at,
            "first_seen": device.first_seen, "last_seen": device.last_seen}


async def _reported_version(storage: Storage, device: Device) -> tuple[str | None, str | None]:
    """The firmware version and who reported it: OTA check or boot report first, else diagnostics."""
    if device.firmware_version is not None:
        return device.firmware_version, "ota"
    for diagnostic in await storage.list_diagnostics(device.device_id, limit=1):
        version = diagnostic.document.get("firmware_version")
        if isinstance(version, str):
            return version, "diagnostics"
    return None, None


async def list_devices(request: web.Request) -> web.Response:
    """Every device the service knows, with its reported firmware version and last contact."""
    storage = request.app[STORAGE]
    devices = []
    for device in await storage.list_devices():
        summary = device_summary(device)
        summary["firmware_version"], _ = await _reported_version(storage, device)
        devices.append(summary)
    return json_reply({"devices": devices})


async def get_device(request: web.Request) -> web.Response:
    """One device: firmware version as last reported, last seen, configuration, state, OTA session."""
    storage = request.app[STORAGE]
    device_id = request.match_info["device_id"]
    device = await storage.get_device(device_id)
    if device is None:
        raise web.HTTPNotFound(reason="no such device")
    view = device_summary(device)
    view["firmware_version"], view["firmware_version_reported_by"] = await _reported_version(storage, device)
    config = await storage.current_config(device_id)
    view["config"] = None if config is None else {**asdict(config), "status": str(config.status)}
    session = await storage.active_ota_session(device_id)
    view["ota_session"] = None if session is None else {**asdict(session), "status": str(session.status)}
    nonce = await storage.nonce_state(device_id)
    view["last_nonce"] = None if nonce is None else nonce.last_nonce
    return json_reply(view)


async def events(request: web.Request) -> web.StreamResponse:
    """Server-sent events of everything happening (telemetry, uploads, commands, config, OTA, faults)."""
    kinds_text = request.query.get("kinds", "")
    kinds = {k for k in kinds_text.split(",") if k} or None
    if kinds is not None and len(kinds) > MAX_KINDS:
        raise web.HTTPBadRequest(reason=f"at most {MAX_KINDS} kinds")
    # Subscribed before the headers go out: a client that saw the response misses nothing after it.
    subscription = request.app[EVENTS].subscribe(kinds, request.query.get("device_id") or None)
    in_flight = request.app.get(IN_FLIGHT)
    async with subscription, sse_response(request, ping_interval=SSE_PING_SECONDS) as stream:
        # A stream never finishes by itself: it ends when the bus closes or the server starts draining
        # its requests (looked at every DRAIN_CHECK_SECONDS), so it never holds a shutdown up.
        while in_flight is None or not in_flight.draining:
            try:
                event = await asyncio.wait_for(anext(subscription), DRAIN_CHECK_SECONDS)
            except TimeoutError:
                continue
            except StopAsyncIteration:
                break
            await stream.send(json.dumps(event.to_dict(), separators=(",", ":")), id=str(event.id), event=event.kind)
    return stream


async def metrics(request: web.Request) -> web.Response:
    """Prometheus metrics: responses per route, and the database's totals."""
    body, content_type = await request.app[METRICS].render(request.app[STORAGE], request.app.get(EVENTS),
                                                            request.headers.get("Accept"))
    response = web.Response(body=body)
    response.headers["Content-Type"] = content_type
    return response


async def openapi(request: web.Request) -> web.Response:
    """The OpenAPI 3 document of every route of this service."""
    return json_reply(build_document(request.app))


def add_routes(app: web.Application) -> None:
    service_metrics = ServiceMetrics()
    app[METRICS] = service_metrics
    app.on_response_prepare.append(service_metrics.count_response)
    app.router.add_get("/api/v1/devices", list_devices)
    app.router.add_get("/api/v1/devices/{device_id}", get_device)
    app.router.add_get("/api/v1/events", events)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/api/v1/openapi.json", openapi)
