"""The cloud's aiohttp application: shared objects, middlewares, and the route modules.

`create_app(settings, storage)` wires one service: the key registry, the event bus and the ingest
service under the keys of `cloud.app_keys`, then every route module's `add_routes(app)`. A route module
that does not exist yet is skipped, so each part of the service can land on its own.

Middlewares, outermost first:
  * in-flight count: lets a stopping server wait for requests being handled, bodies still arriving
    included (aiohttp's own shutdown stops reading from connections at once); while stopping, answers
    close their connection;
  * errors: every failure becomes the one JSON error shape; typed input errors (`protocol.errors`) get
    `http_status()`, aiohttp's own (404, 405, 413...) keep their status, anything unexpected is a 500
    that says nothing about internals (it is a bug: bad input never gets there);
  * body limit: a declared Content-Length over the limit is refused before reading (413); a body
    without one is cut off by aiohttp's `client_max_size` (also 413);
  * operator access: every route except those devices call and `PUBLIC_ROUTES` needs
    `Authorization: Bearer <token>` (tokens from `ecowatt keys generate`), unless the service runs
    with `open_operator_api`.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import re
import time
from collections.abc import Awaitable, Callable
from types import ModuleType

from aiohttp import web

from cloud.app_keys import CLOCK, EVENTS, IN_FLIGHT, INGEST, KEYS, SETTINGS, STORAGE, WALL_CLOCK
from cloud.events import EventBus
from cloud.http_json import error_reply
from cloud.ingest import Ingestor
from cloud.key_registry import KeyRegistry
from cloud.settings import CloudSettings
from cloud.storage import Storage
from protocol.errors import EcoWattError, http_status

log = logging.getLogger("ecowatt.cloud")

ROUTE_MODULES = (
    "cloud.routes_device",
    "cloud.routes_security",
    "cloud.routes_seed",
    "cloud.routes_telemetry",
    "cloud.routes_commands",
    "cloud.routes_config",
    "cloud.routes_diagnostics",
    "cloud.routes_faults",
    "cloud.routes_ota",
    "cloud.routes_read_api",
)

_ID = r"[^/]+"
# Routes that devices call: they authenticate with their envelope (or carry nothing a device could not
# send), never with an operator token. Methods and paths as firmware 1.0.4 and the seed's devices use them.
DEVICE_ROUTES: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (method, re.compile(path))
    for method, path in (
        ("POST", "/process"),
        ("POST", "/changes"),
        ("POST", "/command/poll"),
        ("POST", "/command/result"),
        ("GET", f"/ota/check/{_ID}"),
        ("POST", f"/ota/initiate/{_ID}"),
        ("GET", f"/ota/chunk/{_ID}"),
        ("POST", f"/ota/complete/{_ID}"),
        ("POST", f"/ota/report/{_ID}"),
        ("POST", f"/config/ack/{_ID}"),
        ("GET", "/config"),
        ("POST", f"/aggregated/{_ID}"),
        ("POST", f"/security/validate/{_ID}"),
        ("GET", f"/commands/{_ID}/poll"),
        ("POST", f"/commands/{_ID}/result"),
        ("POST", f"/diagnostics/{_ID}"),
        ("POST", "/integration/test/sync"),
    )
)
PUBLIC_ROUTES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("GET", re.compile("/health")),
    ("GET", re.compile("/metrics")),
)

_STATUS_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    411: "length_required",
    413: "body_too_large",
    415: "unsupported_media_type",
    429: "too_many_requests",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class InFlight:
    """How many requests are being handled; `drain()` waits until none is."""

    def __init__(self) -> None:
        self.count = 0
        self.draining = False
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def drain(self, timeout: float) -> bool:
        """Stop keeping connections alive and wait for the requests in hand; False on timeout."""
        self.draining = True
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True


def _open_paths_by_method() -> dict[str, re.Pattern[str]]:
    """One pattern per method for every route open without a token: checked on every request."""
    routes = (*DEVICE_ROUTES, *PUBLIC_ROUTES)
    return {method: re.compile("|".join(f"(?:{p.pattern})" for m, p in routes if m == method))
            for method in {m for m, _ in routes}}


_OPEN_PATHS = _open_paths_by_method()


def is_operator_route(request: web.Request) -> bool:
    pattern = _OPEN_PATHS.get("GET" if request.method == "HEAD" else request.method)
    return pattern is None or pattern.fullmatch(request.path) is None


@web.middleware
async def in_flight_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    in_flight = request.app[IN_FLIGHT]
    in_flight.enter()
    try:
        response = await handler(request)
        if in_flight.draining:
            response.force_close()
        return response
    finally:
        in_flight.leave()


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except EcoWattError as error:
        return error_reply(http_status(error), str(error), error.code)
    except web.HTTPException as error:
        if error.status < 400 or error.content_type == "application/json":
            raise
        headers = {k: v for k, v in error.headers.items() if k.lower() in ("allow", "www-authenticate")}
        return error_reply(error.status, error.reason, _STATUS_CODES.get(error.status, "error"), headers)
    except asyncio.CancelledError:
        raise
    except ConnectionResetError:
        # The client went away before its request arrived whole: its failure, not ours. Re-raised, aiohttp
        # would log it and answer (and count) a 500 nobody receives.
        if request.transport is None or request.transport.is_closing():
            return error_reply(400, "the connection was lost before the request arrived", "incomplete_request")
        raise
    except Exception:
        log.exception("unexpected error in %s %s", request.method, request.path)
        return error_reply(500, "internal error", "internal")


@web.middleware
async def body_limit_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    limit = request.app[SETTINGS].limits.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        # Answer without reading; the connection is closed so the unread body is not parsed as a request.
        response = error_reply(413, f"request body exceeds {limit} bytes", "body_too_large")
        response.force_close()
        return response
    return await handler(request)


@web.middleware
async def operator_auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.app[SETTINGS].open_operator_api or not is_operator_route(request):
        return await handler(request)
    if request.match_info.http_exception is not None:  # no such route: 404/405 say more than 401
        return await handler(request)
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not await request.app[KEYS].is_operator_token(token.strip()):
        return error_reply(401, "operator route: Authorization: Bearer <token> required", "unauthorized",
                           {"WWW-Authenticate": 'Bearer realm="ecowatt"'})
    return await handler(request)


def _route_module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as error:
        if error.name != name:  # a real missing dependency, not a part that has not landed yet
            raise
        return None


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


def create_app(settings: CloudSettings, storage: Storage, *, wall_clock: Callable[[], float] = time.time,
               clock: Callable[[], float] | None = None, keys: KeyRegistry | None = None,
               events: EventBus | None = None) -> web.Application:
    """The service on `storage` (opened and closed by the caller)."""
    clock = clock or _loop_time
    app = web.Application(
        client_max_size=settings.limits.max_body_bytes,
        middlewares=[in_flight_middleware, error_middleware, body_limit_middleware, operator_auth_middleware],
    )
    app[SETTINGS] = settings
    app[IN_FLIGHT] = InFlight()
    app[STORAGE] = storage
    app[WALL_CLOCK] = wall_clock
    app[CLOCK] = clock
    app[KEYS] = keys or KeyRegistry(settings.keys_dir, storage, clock)
    app[EVENTS] = events or EventBus(wall_clock)
    app[INGEST] = Ingestor(storage, app[KEYS], app[EVENTS], wall_clock, outbox=settings.mqtt_url is not None)
    if settings.open_operator_api:
        log.warning("operator API is OPEN: operator routes accept requests without a bearer token (lab use only)")

    async def sync_keys(app: web.Application) -> None:
        await app[KEYS].sync_to_storage()

    async def end_streams(app: web.Application) -> None:
        app[EVENTS].close()

    app.on_startup.append(sync_keys)
    app.on_shutdown.append(end_streams)
    for name in ROUTE_MODULES:
        module = _route_module(name)
        if module is not None:
            module.add_routes(app)
    return app
