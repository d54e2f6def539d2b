"""OTA routes: the device's (exactly as firmware 1.0.4 calls them, §7.2/§12), the seed's, the operators'.

Device: `GET /ota/check/<id>?version=`, `POST /ota/initiate/<id>`, `GET /ota/chunk/<id>?version=&chunk=`,
`POST /ota/complete/<id>`, `POST /ota/report/<id>`. Seed: `GET /ota/status[/<id>]`, `POST /ota/cancel/<id>`,
`GET /ota/stats`. Operators: the firmware repository under `/api/v1/firmware` (images arrive in parts,
since no request body may exceed the service's limit), rollouts under `/api/v1/rollouts`, and a
device's OTA history at `/api/v1/devices/<id>/ota`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

from aiohttp import web

from cloud.app_keys import EVENTS, FAULTS, KEYS, SETTINGS, STORAGE, WALL_CLOCK
from cloud.http_json import json_object, json_reply
from cloud.ota import OtaService, rollout_view, session_view
from cloud.ota_repository import DEFAULT_DEVICE_TYPE, SIGNATURE_SCHEMES, FirmwareRepository
from cloud.storage import Firmware
from protocol.errors import DocumentError
from protocol.ota_messages import (
    chunk_reply,
    initiate_reply,
    parse_complete_request,
    parse_initiate_request,
    parse_ota_report,
)

OTA: web.AppKey[OtaService] = web.AppKey("ota", OtaService)


def _service(request: web.Request) -> OtaService:
    return request.app[OTA]


def _device_id(request: web.Request) -> str:
    return request.match_info["device_id"]


async def _ota_service(app: web.Application) -> AsyncIterator[None]:
    settings, storage, wall_clock = app[SETTINGS], app[STORAGE], app[WALL_CLOCK]
    repository = FirmwareRepository(storage, settings.firmware_dir, settings.keys_dir, wall_clock=wall_clock)
    service = OtaService(storage, repository, wall_clock=wall_clock,
                         idle_timeout=settings.limits.ota_session_timeout_seconds,
                         notify=app[EVENTS].publish, faults=app.get(FAULTS), keys=app.get(KEYS))
    app[OTA] = service
    yield
    await service.close()


# --- device routes --------------------------------------------------------------------------------


async def check(request: web.Request) -> web.Response:
    """Is there an update for this device? (firmware shape: the offer nested in `update_info`)"""
    return json_reply(await _service(request).check(_device_id(request), request.query.get("version")))


async def initiate(request: web.Request) -> web.Response:
    """Open a download session for the offered release; always allowed, it replaces any open one."""
    version = parse_initiate_request(await request.read())
    session = await _service(request).initiate(_device_id(request), version)
    return json_reply(initiate_reply(session.device_id, session.session_id), status=201)


async def chunk(request: web.Request) -> web.Response:
    """One chunk of the encrypted image, standard base64, `chunk_size` = decoded length (any order)."""
    version, index_text = request.query.get("version"), request.query.get("chunk")
    if not version or index_text is None:
        raise DocumentError("version and chunk parameters are required")
    if not index_text.isdecimal() or len(index_text) > 9:
        raise DocumentError(f"Invalid chunk index: {index_text[:20]}", index_text)
    device_id, index = _device_id(request), int(index_text)
    data = await _service(request).chunk(device_id, version, index)
    return json_reply(chunk_reply(device_id, index, data))


async def complete(request: web.Request) -> web.Response:
    """The device ends its session: `{"success": true}` after a verified download, false otherwise."""
    success = parse_complete_request(await request.read())
    session = await _service(request).complete(_device_id(request), success)
    return json_reply({"success": True, "device_id": session.device_id, "message": "OTA session completed",
                       "session": session_view(session)})


async def report(request: web.Request) -> web.Response:
    """Store a progress, verification, reboot or boot-confirmation report."""
    parsed = parse_ota_report(await request.read())
    stored = await _service(request).report(_device_id(request), parsed)
    return json_reply({"success": True, "device_id": _device_id(request), "report": stored})


# --- seed routes ------------------------------------------------------------------------------------


async def status(request: web.Request) -> web.Response:
    """The device's open session with its progress (or an error inside `status`)."""
    return json_reply({"success": True, "device_id": _device_id(request),
                       "status": await _service(request).status(_device_id(request))})


async def all_sessions(request: web.Request) -> web.Response:
    """The newest OTA sessions of every device."""
    return json_reply({"success": True, "sessions": await _service(request).sessions()})


async def cancel(request: web.Request) -> web.Response:
    """Cancel the device's open session."""
    session = await _service(request).cancel(_device_id(request))
    return json_reply({"success": True, "device_id": session.device_id, "message": "OTA session cancelled",
                       "session": session_view(session)})


async def stats(request: web.Request) -> web.Response:
    """OTA counters: sessions initiated, completed, failed, active; bytes served; success rate."""
    return json_reply({"success": True, **await _service(request).stats()})


async def device_ota(request: web.Request) -> web.Response:
    """A device's OTA history: reported version, place in its rollout, sessions, reports."""
    return json_reply(await _service(request).history(_device_id(request)))


# --- firmware repository (operators) ----------------------------------------------------------------


def firmware_view(firmware: Firmware) -> dict[str, Any]:
    view = asdict(firmware)
    view.pop("path")  # where the server keeps its files is nobody's business
    return view


async def list_firmware(request: web.Request) -> web.Response:
    """Every published release, by security counter."""
    releases = await request.app[STORAGE].list_firmware()
    return json_reply({"firmware": [firmware_view(f) for f in releases]})


async def get_firmware(request: web.Request) -> web.Response:
    """One published release with its signed manifest."""
    firmware = await request.app[STORAGE].get_firmware(request.match_info["version"])
    if firmware is None:
        raise web.HTTPNotFound(reason="no such firmware version")
    return json_reply(firmware_view(firmware))


async def start_upload(request: web.Request) -> web.Response:
    """Start uploading an image; send it with PUT .../uploads/<upload_id>?offset=N in parts."""
    upload_id = _service(request).repository.start_upload()
    return json_reply({"upload_id": upload_id, "size": 0}, status=201)


async def append_upload(request: web.Request) -> web.Response:
    """Write one part of an image at `offset` (the bytes received so far, or less to send a part again)."""
    text = request.query.get("offset", "")
    if not text.isdecimal() or len(text) > 9:
        raise DocumentError("query parameter offset must be a non-negative integer", text[:20])
    data = await request.read()
    size = _service(request).repository.append_upload(request.match_info["upload_id"], int(text), data)
    return json_reply({"upload_id": request.match_info["upload_id"], "size": size})


async def publish_firmware(request: web.Request) -> web.Response:
    """Encrypt, sign and publish an uploaded image: `{"version","upload_id","sha256"}` and optionally
    `device_type`, `security_counter`, `scheme` ("pkcs1v15", what firmware 1.0.4 verifies, or "pss")."""
    body = await json_object(request)
    options: dict[str, Any] = {
        "device_type": body.text("device_type", allow_empty=False) if "device_type" in body else DEFAULT_DEVICE_TYPE,
        "security_counter": body.integer("security_counter", 1, 2**31 - 1) if "security_counter" in body else None,
    }
    scheme = body.text("scheme") if "scheme" in body else "pkcs1v15"
    if scheme not in SIGNATURE_SCHEMES:
        raise body.fail("scheme", f"one of {', '.join(SIGNATURE_SCHEMES)}", scheme)
    options["scheme"] = SIGNATURE_SCHEMES[scheme]
    firmware = await _service(request).repository.publish_upload(
        body.text("upload_id"), body.text("sha256"), body.text("version", allow_empty=False), **options)
    return json_reply(firmware_view(firmware), status=201)


# --- rollouts (operators) ----------------------------------------------------------------------------


async def create_rollout(request: web.Request) -> web.Response:
    """Offer a published release to a named set of devices: `{"version","devices":[...],"name"?}`."""
    body = await json_object(request)
    devices = body.array("devices")
    if not all(isinstance(d, str) for d in devices):
        raise body.fail("devices", "an array of device ids", devices)
    name = body.text("name", allow_empty=False) if "name" in body else None
    rollout = await _service(request).create_rollout(body.text("version", allow_empty=False), devices, name)
    return json_reply(rollout_view(rollout), status=201)


async def list_rollouts(request: web.Request) -> web.Response:
    """Every rollout, newest first (targets in each rollout's own document)."""
    rollouts = await request.app[STORAGE].list_rollouts()
    return json_reply({"rollouts": [rollout_view(r) for r in rollouts]})


def _rollout_id(request: web.Request) -> int:
    text = request.match_info["rollout_id"]
    if not text.isdecimal() or len(text) > 18:
        raise web.HTTPNotFound(reason="no such rollout")
    return int(text)


async def get_rollout(request: web.Request) -> web.Response:
    """One rollout with the state of each device it targets."""
    rollout = await request.app[STORAGE].get_rollout(_rollout_id(request))
    if rollout is None:
        raise web.HTTPNotFound(reason="no such rollout")
    return json_reply(rollout_view(rollout))


async def update_rollout(request: web.Request) -> web.Response:
    """Pause, resume, cancel or complete a rollout: `{"state": "paused" | "active" | "cancelled" | "completed"}`."""
    rollout_id = _rollout_id(request)
    if await request.app[STORAGE].get_rollout(rollout_id) is None:
        raise web.HTTPNotFound(reason="no such rollout")
    body = await json_object(request)
    rollout = await _service(request).set_rollout_state(rollout_id, body.text("state"))
    return json_reply(rollout_view(rollout))


def add_routes(app: web.Application) -> None:
    app.cleanup_ctx.append(_ota_service)
    router = app.router
    router.add_get("/ota/check/{device_id}", check)
    router.add_post("/ota/initiate/{device_id}", initiate)
    router.add_get("/ota/chunk/{device_id}", chunk)
    router.add_post("/ota/complete/{device_id}", complete)
    router.add_post("/ota/report/{device_id}", report)
    router.add_get("/ota/status", all_sessions)
    router.add_get("/ota/status/{device_id}", status)
    router.add_post("/ota/cancel/{device_id}", cancel)
    router.add_get("/ota/stats", stats)
    router.add_get("/api/v1/devices/{device_id}/ota", device_ota)
    router.add_get("/api/v1/firmware", list_firmware)
    router.add_post("/api/v1/firmware", publish_firmware)
    router.add_post("/api/v1/firmware/uploads", start_upload)
    router.add_put("/api/v1/firmware/uploads/{upload_id}", append_upload)
    router.add_get("/api/v1/firmware/{version}", get_firmware)
    router.add_get("/api/v1/rollouts", list_rollouts)
    router.add_post("/api/v1/rollouts", create_rollout)
    router.add_get("/api/v1/rollouts/{rollout_id}", get_rollout)
    router.add_patch("/api/v1/rollouts/{rollout_id}", update_rollout)
