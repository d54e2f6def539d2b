"""Read API of what devices uploaded: decoded samples and the upload log.

    GET /api/v1/devices/<id>/telemetry?since=&until=&limit=&after_id=
    GET /api/v1/devices/<id>/uploads?limit=&after_id=&newest_first=
    GET /api/v1/devices/<id>/packets?limit=&after_id=     every packet with its decode status and reason

`since`/`until` bound the (estimated) sampling time, as Unix seconds or ISO 8601; pages continue with
`after_id` = the previous page's `next_after_id`.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime

from aiohttp import web

from cloud.app_keys import SETTINGS, STORAGE
from cloud.http_json import error_reply, json_reply, query_int
from cloud.key_registry import check_device_id
from cloud.storage import Packet, TelemetrySample, Upload
from cloud.upload_decoder import register_of
from protocol.errors import DocumentError

MAX_ID = 2**63 - 1


def parse_time(name: str, text: str | None) -> float | None:
    """Unix seconds ("1718000000.5") or ISO 8601 ("2024-06-10T06:13:20Z"; naive means UTC)."""
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except ValueError:
        try:
            moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise DocumentError(f"{name} must be Unix seconds or an ISO 8601 time", text) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        return moment.timestamp()
    if not math.isfinite(value):
        raise DocumentError(f"{name} must be a finite number", text)
    return value


def sample_json(s: TelemetrySample) -> dict[str, object]:
    register = register_of(s.address)
    return {
        "id": s.id,
        "register": register.name if register else None,
        "address": s.address,
        "raw": s.raw,
        "value": register.scaled(s.raw) if register else None,
        "unit": register.unit if register else None,
        "boot_id": s.boot_id,
        "packet_ts": s.packet_ts,
        "sample_index": s.sample_index,
        "device_ms": s.device_ms,
        "sampled_at": s.sampled_at,
        "received_at": s.received_at,
        "codec": s.codec,
        "status": str(s.status),
    }


def upload_json(u: Upload) -> dict[str, object]:
    return {"id": u.id, "nonce": u.nonce, "verdict": u.verdict, "reason": u.reason, "packets": u.packets,
            "new_packets": u.new_packets, "samples": u.samples, "bytes": u.body_bytes, "received_at": u.received_at}


def packet_json(p: Packet) -> dict[str, object]:
    return {"id": p.id, "upload_id": p.upload_id, "boot_id": p.boot_id, "packet_ts": p.packet_ts,
            "codec": p.codec, "status": str(p.status), "reason": p.reason, "samples": p.sample_count,
            "content_sha256": p.content_sha256, "raw_hex": p.raw_hex, "received_at": p.received_at}


def _unknown(device_id: str) -> web.Response:
    return error_reply(404, f"no such device: {device_id!r}", "unknown_device")


async def telemetry(request: web.Request) -> web.Response:
    device_id = check_device_id(request.match_info["device_id"])
    limits = request.app[SETTINGS].limits
    since = parse_time("since", request.query.get("since"))
    until = parse_time("until", request.query.get("until"))
    limit = query_int(request, "limit", limits.telemetry_page, 1, limits.telemetry_page_max)
    after_id = query_int(request, "after_id", 0, 0, MAX_ID)
    storage = request.app[STORAGE]
    if await storage.get_device(device_id) is None:
        return _unknown(device_id)
    samples = await storage.telemetry(device_id, since=since, until=until, after_id=after_id, limit=limit)
    return json_reply({
        "success": True, "device_id": device_id, "count": len(samples),
        "samples": [sample_json(s) for s in samples],
        "next_after_id": samples[-1].id if len(samples) == limit else None,
    })


async def uploads(request: web.Request) -> web.Response:
    device_id = check_device_id(request.match_info["device_id"])
    limits = request.app[SETTINGS].limits
    limit = query_int(request, "limit", limits.telemetry_page, 1, limits.telemetry_page_max)
    after_id = query_int(request, "after_id", 0, 0, MAX_ID)
    newest_first = request.query.get("newest_first", "").lower() in ("1", "true", "yes")
    storage = request.app[STORAGE]
    rows = await storage.list_uploads(device_id, after_id=after_id, limit=limit, newest_first=newest_first)
    if not rows and await storage.get_device(device_id) is None:
        return _unknown(device_id)
    return json_reply({
        "success": True, "device_id": device_id, "count": len(rows), "uploads": [upload_json(u) for u in rows],
        "next_after_id": rows[-1].id if len(rows) == limit and not newest_first else None,
    })


async def packets(request: web.Request) -> web.Response:
    device_id = check_device_id(request.match_info["device_id"])
    limits = request.app[SETTINGS].limits
    limit = query_int(request, "limit", limits.telemetry_page, 1, limits.telemetry_page_max)
    after_id = query_int(request, "after_id", 0, 0, MAX_ID)
    storage = request.app[STORAGE]
    if await storage.get_device(device_id) is None:
        return _unknown(device_id)
    rows = await storage.list_packets(device_id, after_id=after_id, limit=limit)
    return json_reply({
        "success": True, "device_id": device_id, "count": len(rows), "packets": [packet_json(p) for p in rows],
        "next_after_id": rows[-1].id if len(rows) == limit else None,
    })


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/devices/{device_id}/telemetry", telemetry)
    app.router.add_get("/api/v1/devices/{device_id}/uploads", uploads)
    app.router.add_get("/api/v1/devices/{device_id}/packets", packets)
