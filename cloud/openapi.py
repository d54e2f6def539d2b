"""The OpenAPI 3 document of the service (`GET /api/v1/openapi.json`), built from the live router.

Every route the application serves is in it, whichever module added it: the paths and methods come
from the router, the summary and description from the handler's docstring, the path parameters from
the pattern, the query parameters from `QUERY_PARAMETERS`, and the bearer-token requirement from the
same rule the operator-access middleware applies. The bodies are described by media type; the error
shape, the one every route answers with, is a shared component.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from aiohttp import web

from cloud.app import DEVICE_ROUTES, PUBLIC_ROUTES

OPENAPI_VERSION = "3.0.3"
_PATH_PARAMETER = re.compile(r"\{([^}:]+)(?::[^}]*)?\}")
_METHODS = ("get", "put", "post", "delete", "patch", "options")

# Query parameters of the routes that take some: (method, path pattern) -> {name: description}.
QUERY_PARAMETERS: dict[tuple[str, str], dict[str, str]] = {
    ("GET", "/ota/check/{device_id}"): {"version": "the firmware version the device runs (default: as last "
                                                   "reported, else 1.0.0)"},
    ("GET", "/ota/chunk/{device_id}"): {"version": "the release being downloaded (required)",
                                        "chunk": "chunk index, 0-based (required)"},
    ("PUT", "/api/v1/firmware/uploads/{upload_id}"): {"offset": "where this part starts (required)"},
    ("GET", "/api/v1/events"): {"kinds": "comma-separated event kinds to receive (default: all)",
                                "device_id": "only this device's events"},
    ("GET", "/config"): {"device_id": "the device whose configuration is asked for"},
}
# Media types of bodies that are not JSON.
REQUEST_MEDIA = {("PUT", "/api/v1/firmware/uploads/{upload_id}"): "application/octet-stream"}
RESPONSE_MEDIA = {("GET", "/metrics"): "text/plain", ("GET", "/api/v1/events"): "text/event-stream"}


def _pattern(resource: web.AbstractResource) -> str | None:
    info = resource.get_info()
    path = info.get("path") or info.get("formatter")
    return path if isinstance(path, str) else None


def _concrete(pattern: str) -> str:
    """A path the pattern matches (each parameter replaced by a sample value)."""
    return _PATH_PARAMETER.sub("x", pattern)


def needs_operator_token(method: str, pattern: str) -> bool:
    """The operator-access rule of `cloud.app`, applied to a route pattern."""
    path = _concrete(pattern)
    return not any(method == m and regex.fullmatch(path) for m, regex in (*DEVICE_ROUTES, *PUBLIC_ROUTES))


def _operation(method: str, pattern: str, handler: Any) -> dict[str, Any]:
    doc = inspect.getdoc(handler) or ""
    summary, _, description = doc.partition("\n")
    name = getattr(handler, "__name__", "handler")
    module = getattr(handler, "__module__", "cloud").rsplit(".", 1)[-1]
    segments = [s for s in pattern.split("/") if s and not s.startswith("{")]
    tag = "/".join(segments[:3]) if segments[:1] == ["api"] else (segments[0] if segments else "root")
    parameters = [{"name": param, "in": "path", "required": True, "schema": {"type": "string"}}
                  for param in _PATH_PARAMETER.findall(pattern)]
    parameters += [{"name": param, "in": "query", "required": False, "description": text,
                    "schema": {"type": "string"}}
                   for param, text in QUERY_PARAMETERS.get((method, pattern), {}).items()]
    media = RESPONSE_MEDIA.get((method, pattern), "application/json")
    operation: dict[str, Any] = {
        "operationId": f"{module}.{name}",
        "summary": summary.strip() or f"{method} {pattern}",
        "tags": [tag],
        "responses": {
            "2XX": {"description": "success", "content": {media: {"schema": {} if media != "application/json"
                                                                         else {"type": "object"}}}},
            "4XX": {"$ref": "#/components/responses/Error"},
        },
    }
    if description.strip():
        operation["description"] = description.strip()
    if parameters:
        operation["parameters"] = parameters
    if method in ("POST", "PUT", "PATCH"):
        body_media = REQUEST_MEDIA.get((method, pattern), "application/json")
        schema = {"type": "string", "format": "binary"} if body_media != "application/json" else {"type": "object"}
        operation["requestBody"] = {"required": False, "content": {body_media: {"schema": schema}}}
    operation["security"] = [{"operatorToken": []}] if needs_operator_token(method, pattern) else []
    return operation


def build_document(app: web.Application, *, title: str = "EcoWatt cloud", version: str = "1") -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    used: set[str] = set()
    for resource in app.router.resources():
        pattern = _pattern(resource)
        if pattern is None:
            continue
        for route in resource:
            method = route.method.upper()
            if method.lower() not in _METHODS:
                continue  # HEAD (added with every GET) and "*"
            operation = _operation(method, pattern, route.handler)
            base, n = operation["operationId"], 1
            while operation["operationId"] in used:  # one handler may serve several routes
                n += 1
                operation["operationId"] = f"{base}_{n}"
            used.add(operation["operationId"])
            paths.setdefault(pattern, {})[method.lower()] = operation
    return {
        "openapi": OPENAPI_VERSION,
        "info": {"title": title, "version": version,
                 "description": "Device routes (as firmware 1.0.4 calls them), the seed's routes, and the "
                                "operator and read API. Operator routes need `Authorization: Bearer <token>`."},
        "paths": dict(sorted(paths.items())),
        "components": {
            "securitySchemes": {"operatorToken": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {
                "type": "object", "required": ["success", "error"],
                "properties": {"success": {"type": "boolean", "enum": [False]}, "error": {"type": "string"},
                               "code": {"type": "string"}},
            }},
            "responses": {"Error": {"description": "bad input, unknown resource, or not allowed",
                                    "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}},
        },
    }
