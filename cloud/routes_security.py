"""The seed's security routes: statistics, nonce resets (operator only), envelope validation."""

from __future__ import annotations

from aiohttp import web

from cloud.app_keys import EVENTS, INGEST, KEYS, STORAGE
from cloud.http_json import json_reply, require_json_content_type
from cloud.key_registry import check_device_id
from cloud.routes_device import ingest_response


async def stats(request: web.Request) -> web.Response:
    return json_reply({"success": True, "stats": await request.app[INGEST].security_stats()})


async def device_info(request: web.Request) -> web.Response:
    device_id = check_device_id(request.match_info["device_id"])
    storage = request.app[STORAGE]
    nonce = await storage.nonce_state(device_id)
    return json_reply({"success": True, "device_info": {
        "device_id": device_id,
        "key_registered": await request.app[KEYS].key_for(device_id) is not None,
        "last_nonce": None if nonce is None else nonce.last_nonce,
        "last_upload_id": None if nonce is None else nonce.last_upload_id,
        "verdicts": await storage.upload_verdicts(device_id),
    }})


async def reset_nonces(request: web.Request) -> web.Response:
    """Forget last-accepted nonces: every captured envelope of those devices replays afterwards, hence
    operator only (§11.3.3) and announced on the event bus."""
    device_id = request.match_info.get("device_id")
    if device_id is not None:
        check_device_id(device_id)
    cleared = await request.app[STORAGE].reset_nonces(device_id)
    request.app[EVENTS].publish("security", device_id, {"action": "nonces_reset", "cleared": cleared})
    return json_reply({"success": True, "device_id": device_id, "cleared": cleared})


async def validate(request: web.Request) -> web.Response:
    require_json_content_type(request)
    device_id = check_device_id(request.match_info["device_id"])
    body = await request.read()
    return ingest_response(await request.app[INGEST].validate(body, device_id))


def add_routes(app: web.Application) -> None:
    app.router.add_get("/security/stats", stats)
    app.router.add_get("/security/device/{device_id}", device_info)
    app.router.add_delete("/security/nonces", reset_nonces)
    app.router.add_delete("/security/nonces/{device_id}", reset_nonces)
    app.router.add_post("/security/validate/{device_id}", validate)
