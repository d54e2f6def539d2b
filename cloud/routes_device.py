"""`POST /process`: the firmware's secured upload (firmware-protocol.md §4, §12)."""

from __future__ import annotations

from aiohttp import web

from cloud.app_keys import INGEST
from cloud.ingest import VERDICT_HEADER, IngestReply


def ingest_response(reply: IngestReply) -> web.Response:
    """The stored reply as it was rendered (a resend gets the very same bytes), with its verdict."""
    return web.Response(text=reply.body, status=reply.status, content_type="application/json",
                        headers={VERDICT_HEADER: reply.verdict})


async def process(request: web.Request) -> web.Response:
    body = await request.read()
    return ingest_response(await request.app[INGEST].process(body))


def add_routes(app: web.Application) -> None:
    app.router.add_post("/process", process)
