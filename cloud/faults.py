"""Fault injection into the cloud's own answers (the seed's `/fault/*`, applied for real).

A rule (stored, so it survives restarts and is seen by every process on one database) names a fault
kind, a probability per request, optionally one device and a duration. The generic kinds are applied
by `FaultService.middleware` to the requests whose path starts with one of the rule's `paths`
(default: the device-facing routes):

* `delay`     answer `seconds` late (default 5 s, the firmware's HTTP timeout);
* `http_500`, `http_503`  answer that status instead (with `after: true` the request is handled first,
  so its effect is stored and only the acknowledgement is lost);
* `drop`      close the connection without an answer (`after` as above);
* `truncate`  send the headers with the full Content-Length but only `keep_bytes` of the body, then close.

The OTA kinds are applied by the OTA routes, which ask `decide(device_id, kind)` and use the returned
`FaultAction` (`corrupt_chunk`: flip a byte of the chunk; `wrong_hash`: announce a wrong hash).

Every injected fault is logged (Python logging and the storage's fault log) with what it hit. The
`/fault/*` routes themselves are never faulted, so a fault can always be cleared. These injected
answers are the only 5xx the service sends.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from cloud.events import EventBus
from cloud.storage import FaultRule, Storage
from protocol.envelope import parse_envelope
from protocol.errors import DocumentError, EcoWattError
from protocol.json_wire import is_integer, load_object

log = logging.getLogger(__name__)

DELAY = "delay"
HTTP_500 = "http_500"
HTTP_503 = "http_503"
DROP = "drop"
TRUNCATE = "truncate"
CORRUPT_CHUNK = "corrupt_chunk"
WRONG_HASH = "wrong_hash"

KINDS: dict[str, str] = {
    DELAY: "answer late: parameters.seconds (default 5)",
    HTTP_500: "answer HTTP 500 instead (parameters.after: handle the request first, lose only the answer)",
    HTTP_503: "answer HTTP 503 instead, with Retry-After (parameters.after, parameters.retry_after)",
    DROP: "close the connection without an answer (parameters.after as for http_500)",
    TRUNCATE: "send the full Content-Length but only parameters.keep_bytes of the body (default half), then close",
    CORRUPT_CHUNK: "OTA: flip one byte of a served firmware chunk",
    WRONG_HASH: "OTA: announce a wrong firmware hash",
}
# Applied to requests by the middleware; the others are asked for by the OTA routes.
GENERIC_KINDS = frozenset({DELAY, HTTP_500, HTTP_503, DROP, TRUNCATE})
# The seed's only cloud-meaningful fault type, kept as an alias.
ALIASES = {"timeout": DELAY}
DEFAULT_DELAY_S = 5.0
MAX_DELAY_S = 600.0
DEFAULT_PATHS = ("/process", "/aggregated/", "/changes", "/command/", "/commands/", "/config/ack/",
                 "/diagnostics/", "/ota/")
EXEMPT_PATH = "/fault/"
FAULT_CODE = "injected_fault"


@dataclass(frozen=True)
class FaultSpec:
    """A validated `/fault/enable` request."""

    kind: str
    probability: float = 1.0
    device_id: str | None = None
    duration_s: float | None = None
    params: dict[str, Any] = field(default_factory=dict)


def _number(value: Any, name: str, low: float, high: float, problems: list[str], *, low_open: bool = False
            ) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        problems.append(f"{name} must be a number")
        return None
    if value < low or value > high or (low_open and value == low):
        problems.append(f"{name} must be in {'(' if low_open else '['}{low}, {high}]")
        return None
    return float(value)


def _checked_params(kind: str, raw: dict[str, Any], problems: list[str]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    allowed = {"paths"}
    if "paths" in raw:
        paths = raw["paths"]
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) and p.startswith("/")
                                                               for p in paths):
            problems.append("parameters.paths must be a non-empty list of paths starting with /")
        elif any(p.startswith(EXEMPT_PATH) for p in paths):
            problems.append("the /fault/ routes cannot be faulted")
        else:
            params["paths"] = paths
    if kind == DELAY:
        allowed.add("seconds")
        seconds = _number(raw.get("seconds", DEFAULT_DELAY_S), "parameters.seconds", 0, MAX_DELAY_S, problems)
        params["seconds"] = seconds
    if kind in (HTTP_500, HTTP_503, DROP):
        allowed.add("after")
        after = raw.get("after", False)
        if not isinstance(after, bool):
            problems.append("parameters.after must be true or false")
        params["after"] = after is True
    if kind == HTTP_503:
        allowed.add("retry_after")
        retry = raw.get("retry_after", 5)
        if not is_integer(retry) or not 0 <= retry <= 86_400:
            problems.append("parameters.retry_after must be whole seconds in 0..86400")
        params["retry_after"] = retry
    if kind == TRUNCATE:
        allowed.add("keep_bytes")
        if "keep_bytes" in raw:
            keep = raw["keep_bytes"]
            if not is_integer(keep) or keep < 0:
                problems.append("parameters.keep_bytes must be a non-negative integer")
            params["keep_bytes"] = keep
    # the seed's shape puts these in `parameters` too
    allowed |= {"probability", "duration_seconds", "device_id"}
    unknown = sorted(set(raw) - allowed)
    if unknown:
        problems.append(f"{kind} takes no parameter {unknown[0]!r}")
    return params


def parse_fault_request(body: bytes) -> FaultSpec:
    """`{"fault_type", "probability"?, "duration_seconds"?, "device_id"?, "parameters"?}`.

    `probability`, `duration_seconds` and `device_id` may also sit in `parameters` (the seed's shape).
    DocumentError("Validation failed: <every reason>").
    """
    fields = load_object(body, DocumentError, "fault request").data
    problems: list[str] = []
    raw_kind = fields.get("fault_type")
    kind = ALIASES.get(raw_kind, raw_kind) if isinstance(raw_kind, str) else None
    if kind not in KINDS:
        raise DocumentError(f"fault_type must be one of {', '.join(KINDS)}", raw_kind)
    raw_params = fields.get("parameters", {})
    if not isinstance(raw_params, dict):
        raise DocumentError("parameters must be an object", raw_params)
    unknown = sorted(set(fields) - {"fault_type", "parameters", "probability", "duration_seconds", "device_id"})
    if unknown:
        problems.append(f"unknown field {unknown[0]!r}")

    def pick(name: str, default: Any) -> Any:
        return fields[name] if name in fields else raw_params.get(name, default)

    probability = _number(pick("probability", 1.0), "probability", 0.0, 1.0, problems, low_open=True)
    duration = pick("duration_seconds", None)
    duration_s = None if duration is None else _number(duration, "duration_seconds", 0.0, 7 * 86_400.0,
                                                       problems, low_open=True)
    device_id = pick("device_id", None)
    if device_id is not None and (not isinstance(device_id, str) or not device_id):
        problems.append("device_id must be a non-empty string or null (every device)")
    params = _checked_params(kind, raw_params, problems)
    if problems:
        raise DocumentError(f"Validation failed: {'; '.join(problems)}")
    return FaultSpec(kind, probability if probability is not None else 1.0, device_id, duration_s, params)


@dataclass(frozen=True)
class FaultAction:
    """A fault that has just fired (and been logged); the caller applies it."""

    kind: str
    rule_id: int
    params: dict[str, Any]
    rng: random.Random

    def corrupt(self, data: bytes) -> bytes:
        """`data` with one byte flipped (what a corrupted chunk is); empty data stays empty."""
        if not data:
            return data
        index = self.rng.randrange(len(data))
        return data[:index] + bytes([data[index] ^ 0xFF]) + data[index + 1:]

    def wrong_hash(self, hex_digest: str) -> str:
        """A hash of the same shape that is not `hex_digest`."""
        if not hex_digest:
            return "0"
        first = "1" if hex_digest[0] == "0" else "0"
        return first + hex_digest[1:]


def _paths(rule: FaultRule) -> tuple[str, ...]:
    paths = rule.params.get("paths")
    return tuple(paths) if isinstance(paths, list) else DEFAULT_PATHS


def rule_view(rule: FaultRule, now: float) -> dict[str, Any]:
    return {
        "rule_id": rule.id,
        "fault_type": rule.kind,
        "device_id": rule.device_id,
        "probability": float(rule.probability),
        "parameters": rule.params,
        "paths": list(_paths(rule)) if rule.kind in GENERIC_KINDS else None,
        "created_at": rule.created_at,
        "expires_at": rule.expires_at,
        "time_remaining": None if rule.expires_at is None else max(0.0, rule.expires_at - now),
    }


async def request_device_id(request: web.Request) -> str | None:
    """The device a request is about: path, query, JSON body, or the inner document of an envelope.

    Only for choosing per-device faults, so an unauthenticated guess is good enough.
    """
    for source in (request.match_info, request.query):
        value = source.get("device_id")
        if value:
            return value
    if not request.can_read_body:
        return None
    try:
        body = await request.read()  # cached: the handler reads the same bytes
        fields = load_object(body, DocumentError, "body").data
        if isinstance(fields.get("device_id"), str):
            device_id: str = fields["device_id"]
            return device_id
        if "payload" in fields:
            inner = load_object(parse_envelope(body).payload, DocumentError, "document").data
            return inner["device_id"] if isinstance(inner.get("device_id"), str) else None
    except EcoWattError:
        return None
    return None


class FaultService:
    """The rules in force (cached from the storage), the decisions, the log and the middleware."""

    def __init__(self, storage: Storage, *, wall_clock: Callable[[], float] = time.time,
                 rng: random.Random | None = None, refresh_seconds: float = 1.0,
                 refresh_clock: Callable[[], float] = time.monotonic, events: EventBus | None = None) -> None:
        self.storage = storage
        self.events = events
        self.wall_clock = wall_clock
        self.rng = rng or random.Random()
        # How soon rules another process set are seen: other processes live in real time, so this is
        # real time (on device time a virtual day would reload the rules at nearly every request).
        self.refresh_seconds = refresh_seconds
        self.refresh_clock = refresh_clock
        self.requests_processed = 0
        self._rules: list[FaultRule] = []
        self._loaded_at: float | None = None  # refresh_clock at the last load
        self._pending_logs: set[asyncio.Task[Any]] = set()

    # --- rules ---

    async def refresh(self) -> list[FaultRule]:
        self._rules = await self.storage.active_fault_rules()
        self._loaded_at = self.refresh_clock()
        return self._rules

    async def _fresh_rules(self) -> list[FaultRule]:
        loaded = self._loaded_at
        if loaded is None or self.refresh_clock() - loaded >= self.refresh_seconds:
            await self.refresh()
        return self._in_force(self._rules)

    def _in_force(self, rules: Iterable[FaultRule]) -> list[FaultRule]:
        now = self.wall_clock()
        return [r for r in rules if r.cleared_at is None and (r.expires_at is None or r.expires_at > now)]

    async def enable(self, spec: FaultSpec) -> FaultRule:
        rule = await self.storage.add_fault_rule(spec.kind, probability=spec.probability, device_id=spec.device_id,
                                                 duration=spec.duration_s, params=spec.params)
        log.warning("fault rule %d enabled: %s p=%s device=%s duration=%s params=%s", rule.id, rule.kind,
                    rule.probability, rule.device_id or "*", spec.duration_s, rule.params)
        await self.refresh()
        return rule

    async def disable(self, device_id: str | None = None) -> int:
        cleared = await self.storage.clear_fault_rules(device_id)
        log.warning("fault rules cleared: %d (device %s)", cleared, device_id or "*")
        await self.refresh()
        return cleared

    async def rules(self) -> list[FaultRule]:
        return self._in_force(await self.refresh())

    # --- decisions ---

    def _fire(self, rules: Iterable[FaultRule], device_id: str | None) -> FaultRule | None:
        for rule in rules:
            if rule.device_id is not None and rule.device_id != device_id:
                continue
            if self.rng.random() < rule.probability:
                return rule
        return None

    def decide(self, device_id: str | None, kind: str, *, target: str = "") -> FaultAction | None:
        """Whether fault `kind` hits `device_id` now (OTA routes ask for corrupt_chunk / wrong_hash).

        Synchronous, from the cached rules; a fault that fires is logged (the storage write completes in
        the background; `flush()` waits for it).
        """
        rule = self._fire((r for r in self._in_force(self._rules) if r.kind == kind), device_id)
        if rule is None:
            return None
        task = asyncio.get_running_loop().create_task(self._log(rule, device_id, target or kind, {}))
        self._pending_logs.add(task)
        task.add_done_callback(self._pending_logs.discard)
        return FaultAction(rule.kind, rule.id, dict(rule.params), self.rng)

    async def _log(self, rule: FaultRule, device_id: str | None, target: str, detail: dict[str, Any]) -> None:
        log.warning("fault injected: %s on %s (device %s, rule %d) %s", rule.kind, target, device_id or "-",
                    rule.id, detail or "")
        event = await self.storage.log_fault(rule.kind, target, device_id=device_id, rule_id=rule.id, detail=detail)
        if self.events is not None:
            self.events.publish("fault", device_id, {"fault_type": rule.kind, "rule_id": rule.id, "target": target,
                                                     "detail": detail, "event_id": event.id})

    async def flush(self) -> None:
        """Wait until every fault decided so far is in the storage's log."""
        while self._pending_logs:
            await asyncio.gather(*list(self._pending_logs), return_exceptions=True)

    # --- the middleware ---

    @web.middleware
    async def middleware(self, request: web.Request,
                         handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        path = request.path
        if path.startswith(EXEMPT_PATH):
            return await handler(request)
        self.requests_processed += 1
        rules = [r for r in await self._fresh_rules()
                 if r.kind in GENERIC_KINDS and path.startswith(_paths(r))]
        if not rules:
            return await handler(request)
        device_id = await request_device_id(request) if any(r.device_id for r in rules) else None
        rule = self._fire(rules, device_id)
        if rule is None:
            return await handler(request)
        if device_id is None:  # for the log: which device it hit
            device_id = await request_device_id(request)
        target = f"{request.method} {path}"
        params = rule.params
        if rule.kind == DELAY:
            seconds = float(params.get("seconds", DEFAULT_DELAY_S))
            await self._log(rule, device_id, target, {"seconds": seconds})
            await asyncio.sleep(seconds)
            return await handler(request)
        if rule.kind == TRUNCATE:
            return await self._truncated(request, await handler(request), rule, device_id, target)
        handled = None
        if params.get("after"):
            handled = (await handler(request)).status
        detail = {} if handled is None else {"handled_status": handled}
        await self._log(rule, device_id, target, detail)
        if rule.kind == DROP:
            return _dropped(request)
        status = 500 if rule.kind == HTTP_500 else 503
        headers = {"Retry-After": str(params.get("retry_after", 5))} if status == 503 else None
        return web.json_response({"success": False, "error": f"injected fault: HTTP {status}", "code": FAULT_CODE},
                                 status=status, headers=headers)

    async def _truncated(self, request: web.Request, response: web.StreamResponse, rule: FaultRule,
                         device_id: str | None, target: str) -> web.StreamResponse:
        body = response.body if isinstance(response, web.Response) else None
        if not isinstance(body, bytes) or response.prepared:  # a stream: nothing to cut
            return response
        keep = rule.params.get("keep_bytes")
        keep = min(len(body) // 2 if keep is None else int(keep), max(len(body) - 1, 0))
        await self._log(rule, device_id, target, {"status": response.status, "body_bytes": len(body),
                                                  "sent_bytes": keep})
        cut = web.StreamResponse(status=response.status, headers=response.headers)
        cut.content_length = len(body)
        await cut.prepare(request)
        await cut.write(body[:keep])
        transport = request.transport
        if transport is not None:
            transport.close()  # flushes what was written, then ends the connection short
        return cut


def _dropped(request: web.Request) -> web.StreamResponse:
    transport = request.transport
    if transport is not None:
        transport.abort()
    # aiohttp cannot write this to the closed connection and drops it as a client disconnect.
    return web.Response(status=204)


def fault_available() -> list[dict[str, Any]]:
    return [{"fault_type": kind, "description": text, "applied_by": "middleware" if kind in GENERIC_KINDS else "ota"}
            for kind, text in KINDS.items()]


def status_view(rules: list[FaultRule], counts: dict[str, int], requests_processed: int,
                now: float, recent: list[dict[str, Any]]) -> dict[str, Any]:
    """`/fault/status`: the seed's fields (for its first rule) plus every rule and the counters."""
    first = rules[0] if rules else None
    return {
        "enabled": bool(rules),
        "fault_type": None if first is None else first.kind,
        "probability": None if first is None else first.probability,
        "duration_seconds": None if first is None or first.expires_at is None else first.expires_at - first.created_at,
        "time_remaining": None if first is None or first.expires_at is None else max(0.0, first.expires_at - now),
        "faults_injected": sum(counts.values()),
        "requests_processed": requests_processed,
        "detailed_stats": counts,
        "rules": [rule_view(r, now) for r in rules],
        "recent_faults": recent,
    }
