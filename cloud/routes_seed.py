"""The seed's general routes: health, config read-out, integration-test sync, `/aggregated/<id>`
uploads and compression statistics (firmware-protocol.md §9.1, fixed where the seed was broken)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from aiohttp import web

from cloud.app_keys import EVENTS, INGEST, STORAGE, WALL_CLOCK
from cloud.http_json import json_object, json_reply, require_json_content_type
from cloud.key_registry import check_device_id
from cloud.routes_device import ingest_response
from cloud.storage import PacketStatus
from protocol.errors import DocumentError
from protocol.registers import DEFAULT_SELECTION, by_address

SERVICE = "EcoWatt cloud"
# What firmware 1.0.4 runs with until told otherwise (firmware-protocol.md §2.1, §2.2).
FIRMWARE_DEFAULTS = {"poll_frequency": 2, "upload_frequency": 15}


def iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


async def health(request: web.Request) -> web.Response:
    storage = request.app[STORAGE]
    return json_reply({"status": "healthy", "success": True, "service": SERVICE,
                       "timestamp": iso(request.app[WALL_CLOCK]()), "storage": storage.backend_name,
                       "schema_versions": await storage.schema_versions()})


async def config(request: web.Request) -> web.Response:
    device_id = request.query.get("device_id")
    if not device_id:
        raise DocumentError("query parameter device_id is required")
    check_device_id(device_id)
    current = await request.app[STORAGE].current_config(device_id)
    return json_reply({
        "success": True,
        "device_id": device_id,
        "config": {**FIRMWARE_DEFAULTS,
                   "register_list": [by_address(a).name for a in DEFAULT_SELECTION],
                   "registers": list(DEFAULT_SELECTION),
                   "compression_enabled": True, "security_enabled": True},
        "configured": None if current is None else {"version": current.version, "status": str(current.status),
                                                    "config": current.config},
        "timestamp": iso(request.app[WALL_CLOCK]()),
    })


async def integration_sync(request: web.Request) -> web.Response:
    fields = await json_object(request, "test sync")
    data = fields.data
    for key in ("test_number", "test_name", "status"):
        value = data.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, str | int)):
            raise DocumentError(f"{key} must be text or a number", value)
    received: dict[str, Any] = {k: data.get(k) for k in ("test_number", "test_name", "status", "result")}
    request.app[EVENTS].publish("integration_test", None, received)
    return json_reply({"success": True, "message": "Test sync received", "test_number": received["test_number"],
                       "test_name": received["test_name"], "timestamp": iso(request.app[WALL_CLOCK]())})


async def aggregated(request: web.Request) -> web.Response:
    require_json_content_type(request)
    device_id = check_device_id(request.match_info["device_id"])
    body = await request.read()
    return ingest_response(await request.app[INGEST].aggregated(body, device_id))


async def compression_stats(request: web.Request) -> web.Response:
    device_id = request.query.get("device_id")
    if device_id is not None:
        check_device_id(device_id)
    rows = await request.app[STORAGE].packet_stats(device_id)
    total = sum(r.packets for r in rows)
    failed = sum(r.packets for r in rows if r.status is PacketStatus.UNDECODABLE)
    ambiguous = sum(r.packets for r in rows if r.status is PacketStatus.AMBIGUOUS)
    methods: dict[str, int] = {}
    for r in rows:
        methods[r.codec] = methods.get(r.codec, 0) + r.packets
    return json_reply({"success": True, "device_id": device_id, "stats": {
        "total_decompressions": total,
        "successful_decompressions": total - failed,
        "failed_decompressions": failed,
        "ambiguous_decompressions": ambiguous,
        "total_samples": sum(r.samples or 0 for r in rows),
        "methods_used": methods,
        "success_rate": round((total - failed) / total, 4) if total else None,
        "by_codec_and_status": [{"codec": r.codec, "status": str(r.status), "packets": r.packets,
                                 "samples": r.samples} for r in rows],
    }})


def add_routes(app: web.Application) -> None:
    app.router.add_get("/health", health)
    app.router.add_get("/config", config)
    app.router.add_post("/integration/test/sync", integration_sync)
    app.router.add_post("/aggregated/{device_id}", aggregated)
    app.router.add_get("/compression/stats", compression_stats)
