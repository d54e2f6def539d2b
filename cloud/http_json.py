"""JSON in and out of the service's HTTP handlers, with the service's one error shape.

Every error reply is `{"success": false, "error": "<what was wrong>", "code": "<machine word>"}`;
request bodies are read strictly (`protocol.json_wire`), so bad input always becomes a typed error
and therefore a 4xx, never a 500.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from protocol.errors import DocumentError
from protocol.json_wire import JsonObject, load_object


def json_reply(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    """A JSON response with a Content-Length (never chunked: firmware 1.0.4 needs the length)."""
    return web.json_response(data, status=status, headers=headers)


def error_reply(status: int, error: str, code: str, headers: dict[str, str] | None = None) -> web.Response:
    return json_reply({"success": False, "error": error, "code": code}, status, headers)


async def json_object(request: web.Request, what: str = "request body") -> JsonObject:
    """The body as one JSON object; DocumentError (400) for anything else, 413 beyond the size limit."""
    body = await request.read()
    if not body:
        raise DocumentError(f"{what} is empty: a JSON object is required")
    return load_object(body, DocumentError, what)


def require_json_content_type(request: web.Request) -> None:
    if request.content_type != "application/json":
        raise DocumentError("Content-Type must be application/json", request.content_type)


def query_int(request: web.Request, name: str, default: int, minimum: int, maximum: int) -> int:
    text = request.query.get(name)
    if text is None or text == "":
        return default
    try:
        value = int(text)
    except ValueError:
        raise DocumentError(f"query parameter {name} must be an integer", text) from None
    if not minimum <= value <= maximum:
        raise DocumentError(f"query parameter {name} must be in {minimum}..{maximum}", value)
    return value
