"""One HTTP exchange between the firmware and its cloud, as the ESP32 HTTP client makes it.

Shared by the configuration, command and OTA components: the timeout is in *device* seconds and is
raced against `ctx.sleep`, so it scales with the device's time scale and runs on virtual time without
knowing either; the reply body is cut to what the firmware keeps (it reads a fixed-size buffer); a
POST carries `Content-Type: application/json`, a GET no extra header. Any status counts as a reply;
no reply at all (connection refused, reset, timeout) is None.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

import aiohttp

from device_emulator.context import FirmwareContext

T = TypeVar("T")


@dataclass(frozen=True)
class CloudReply:
    status: int
    body: bytes

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


async def within(ctx: FirmwareContext, seconds: float, work: Awaitable[T]) -> T:
    """`await work`, or TimeoutError once `seconds` device seconds have passed."""
    task = asyncio.ensure_future(work)
    timer = asyncio.ensure_future(ctx.sleep(seconds))
    try:
        await asyncio.wait({task, timer}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        raise TimeoutError(f"no reply within {seconds} s")
    finally:
        pending = {t for t in (task, timer) if not t.done()}
        for t in pending:
            t.cancel()
        if pending:
            # asyncio.wait never raises the inner tasks' CancelledError, so a cancellation aimed at
            # the caller still propagates instead of being swallowed here.
            await asyncio.wait(pending)
        if task.done() and not task.cancelled():
            task.exception()  # retrieved: a late failure of abandoned work is not worth a warning


async def exchange(
    ctx: FirmwareContext,
    method: str,
    path: str,
    *,
    body: bytes | None = None,
    timeout: float,
    limit: int | None = None,
) -> CloudReply | None:
    """Send one request to `ctx.cloud_url + path`; the reply (body cut to `limit` bytes) or None."""
    headers = {"Content-Type": "application/json"} if method == "POST" else {}

    async def send() -> CloudReply:
        async with ctx.http.request(method, ctx.url(path), data=body, headers=headers) as response:
            data = await response.read()
            return CloudReply(response.status, data if limit is None else data[:limit])

    try:
        return await within(ctx, timeout, send())
    except (aiohttp.ClientError, TimeoutError, OSError):
        return None
