"""The cloud served on 127.0.0.1 (a free port) over SQLite in a temporary directory, with a real
aiohttp client and an operator token, for the ingest and security tests."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from cloud.key_registry import KeyFiles
from cloud.server import CloudServer
from cloud.settings import CloudSettings

JSON = {"Content-Type": "application/json"}


@dataclass
class Reply:
    status: int
    body: bytes
    headers: dict[str, str]

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def verdict(self) -> str | None:
        return self.headers.get("X-EcoWatt-Verdict")

    @property
    def code(self) -> str | None:
        data = self.json()
        return data.get("code") if isinstance(data, dict) else None


@dataclass
class Cloud:
    server: CloudServer
    http: aiohttp.ClientSession
    token: str
    keys: KeyFiles

    @property
    def url(self) -> str:
        return self.server.url

    async def request(self, method: str, path: str, *, operator: bool = False, **kwargs: Any) -> Reply:
        headers = dict(kwargs.pop("headers", {}))
        if operator:
            headers["Authorization"] = f"Bearer {self.token}"
        async with self.http.request(method, self.url + path, headers=headers, **kwargs) as response:
            return Reply(response.status, await response.read(), dict(response.headers))

    async def process(self, body: bytes) -> Reply:
        return await self.request("POST", "/process", data=body, headers=JSON)

    async def telemetry(self, device_id: str, **query: Any) -> list[dict[str, Any]]:
        reply = await self.request("GET", f"/api/v1/devices/{device_id}/telemetry", operator=True,
                                   params={"limit": "10000", **query})
        assert reply.status == 200, reply.body
        samples: list[dict[str, Any]] = reply.json()["samples"]
        return samples

    async def uploads(self, device_id: str) -> list[dict[str, Any]]:
        reply = await self.request("GET", f"/api/v1/devices/{device_id}/uploads", operator=True,
                                   params={"limit": "10000"})
        assert reply.status == 200, reply.body
        uploads: list[dict[str, Any]] = reply.json()["uploads"]
        return uploads


def cloud_settings(directory: Path, **overrides: Any) -> CloudSettings:
    return CloudSettings(host="127.0.0.1", port=0, data_dir=directory / "data", keys_dir=directory / "keys",
                         firmware_dir=directory / "firmware", **overrides)


@asynccontextmanager
async def running_cloud(directory: Path, **overrides: Any) -> AsyncIterator[Cloud]:
    settings = cloud_settings(directory, **overrides)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    keys = KeyFiles(settings.keys_dir)
    token = keys.generate_operator_token()
    async with CloudServer(settings) as server, aiohttp.ClientSession() as http:
        yield Cloud(server, http, token, keys)
