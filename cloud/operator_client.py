"""A small client of the cloud's operator API (what `ecowatt command|config|fault|telemetry` use).

The service URL and bearer token come from the caller, else the environment (`ECOWATT_CLOUD_URL`,
`ECOWATT_TOKEN`), else the defaults: the firmware's port on this machine and the token that
`ecowatt keys generate` left in the keys directory. Every failure is an `OperatorError` whose text is
one line: the server's own error message and status, or why it could not be reached.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import quote

import aiohttp

from cloud.key_registry import KeyFiles

URL_VARIABLE = "ECOWATT_CLOUD_URL"
TOKEN_VARIABLE = "ECOWATT_TOKEN"
DEFAULT_URL = "http://127.0.0.1:5001"
DEFAULT_KEYS_DIR = Path("keys")
REQUEST_TIMEOUT_S = 30.0


class OperatorError(Exception):
    """A request the service refused or could not answer; `str()` is one line for a person."""

    def __init__(self, message: str, status: int | None = None) -> None:
        self.status = status
        one_line = " ".join(message.split())
        super().__init__(one_line if status is None else f"{one_line} (HTTP {status})")


def resolve_url(url: str | None = None, environ: Mapping[str, str] = os.environ) -> str:
    return (url or environ.get(URL_VARIABLE) or DEFAULT_URL).rstrip("/")


def resolve_token(token: str | None = None, environ: Mapping[str, str] = os.environ,
                  keys_dir: Path = DEFAULT_KEYS_DIR) -> str | None:
    return token or environ.get(TOKEN_VARIABLE) or KeyFiles(keys_dir).read_operator_token()


def _refusal(text: str, status: int) -> OperatorError:
    """The server's one-line reason for a 4xx/5xx: its JSON `error`, else the start of the body."""
    try:
        data = json.loads(text) if text else None
    except ValueError:
        data = None
    message = data.get("error") if isinstance(data, dict) else None
    return OperatorError(str(message) if message else text.strip()[:200] or "request refused", status)


def _segment(value: str) -> str:
    return quote(value, safe="")


@dataclass(frozen=True)
class SseEvent:
    kind: str | None
    data: Any


def _dispatch(kind: str | None, lines: list[str]) -> SseEvent | None:
    if not lines:
        return None
    text = "\n".join(lines)
    try:
        data = json.loads(text)
    except ValueError:
        data = text
    return SseEvent(kind, data)


async def read_sse(content: aiohttp.StreamReader) -> AsyncIterator[SseEvent]:
    """Server-sent events off a response body (comments and pings skipped)."""
    kind: str | None = None
    lines: list[str] = []
    async for raw in content:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        if not line:
            event = _dispatch(kind, lines)
            kind, lines = None, []
            if event is not None:
                yield event
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            kind = value
        elif name == "data":
            lines.append(value)


class OperatorClient:
    """`async with OperatorClient(url, token) as client: await client.queue_command(...)`."""

    def __init__(self, url: str | None = None, token: str | None = None, *,
                 keys_dir: Path = DEFAULT_KEYS_DIR, timeout_s: float = REQUEST_TIMEOUT_S) -> None:
        self.url = resolve_url(url)
        self.token = resolve_token(token, keys_dir=keys_dir)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> OperatorClient:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        self._session = aiohttp.ClientSession(headers=headers)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._session is not None:
            await self._session.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("use OperatorClient in `async with`")
        return self._session

    async def request(self, method: str, path: str, body: Any = None, *,
                      params: Mapping[str, str] | None = None) -> Any:
        """One JSON request; the decoded JSON answer, or OperatorError."""
        try:
            async with self.session.request(method, self.url + path, json=body, params=params,
                                            timeout=self._timeout) as response:
                text = await response.text(errors="replace")
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as error:
            reason = str(error) or type(error).__name__
            raise OperatorError(f"cannot reach the cloud at {self.url}: {reason}") from None
        if status >= 400:
            raise _refusal(text, status)
        try:
            data = json.loads(text) if text else None
        except ValueError:
            data = None
        if data is None:
            raise OperatorError(f"the cloud answered {method} {path} with no JSON", status)
        return data

    # --- commands ---

    async def queue_command(self, device_id: str, command_type: str, parameters: dict[str, Any]) -> Any:
        return await self.request("POST", f"/commands/{_segment(device_id)}",
                                  {"command": command_type, "parameters": parameters})

    async def command_status(self, command_id: str) -> Any:
        return await self.request("GET", f"/commands/status/{_segment(command_id)}")

    async def command_history(self, device_id: str, limit: int = 20) -> Any:
        return await self.request("GET", f"/api/v1/devices/{_segment(device_id)}/commands",
                                  params={"limit": str(limit)})

    # --- configuration ---

    async def set_config(self, device_id: str, *, poll_s: int | None = None, upload_s: int | None = None,
                         registers: list[str] | None = None) -> Any:
        body: dict[str, Any] = {}
        if poll_s is not None:
            body["poll_interval"] = poll_s
        if upload_s is not None:
            body["upload_interval"] = upload_s
        if registers is not None:
            body["registers"] = registers
        return await self.request("PUT", f"/api/v1/devices/{_segment(device_id)}/config", body)

    async def config_history(self, device_id: str, limit: int = 20) -> Any:
        return await self.request("GET", f"/api/v1/devices/{_segment(device_id)}/config/history",
                                  params={"limit": str(limit)})

    # --- faults ---

    async def inject_fault(self, fault_type: str, *, probability: float | None = None,
                           duration_s: float | None = None, device_id: str | None = None,
                           parameters: dict[str, Any] | None = None) -> Any:
        body: dict[str, Any] = {"fault_type": fault_type, "parameters": parameters or {}}
        if probability is not None:
            body["probability"] = probability
        if duration_s is not None:
            body["duration_seconds"] = duration_s
        if device_id is not None:
            body["device_id"] = device_id
        return await self.request("POST", "/fault/enable", body)

    async def clear_faults(self, device_id: str | None = None) -> Any:
        return await self.request("POST", "/fault/disable", {} if device_id is None else {"device_id": device_id})

    async def fault_status(self) -> Any:
        return await self.request("GET", "/fault/status")

    # --- events ---

    async def events(self, *, device_id: str | None = None) -> AsyncIterator[SseEvent]:
        """Follow `/api/v1/events` (server-sent events) until the server ends the stream."""
        params = {"device_id": device_id} if device_id else None
        try:
            async with self.session.get(self.url + "/api/v1/events", params=params,
                                        headers={"Accept": "text/event-stream"},
                                        timeout=aiohttp.ClientTimeout(total=None, sock_connect=10)) as response:
                if response.status >= 400:
                    raise _refusal(await response.text(errors="replace"), response.status)
                async for event in read_sse(response.content):
                    yield event
        except (aiohttp.ClientError, OSError) as error:
            reason = str(error) or type(error).__name__
            raise OperatorError(f"event stream from {self.url} failed: {reason}") from None
