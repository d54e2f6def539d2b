"""A real cloud service for the command/config/diagnostics/fault tests: create_app on SQLite, served
on 127.0.0.1 (a free port), with a registered device, an operator token and a settable wall clock."""

from __future__ import annotations

import contextlib
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp.test_utils import TestServer

from cloud.app import create_app
from cloud.app_keys import FAULTS
from cloud.key_registry import KeyFiles
from cloud.settings import CloudSettings, Limits
from cloud.storage import Storage, open_storage
from tests.cloud.storage_backends import FakeClock

DEVICE = "ESP32_EcoWatt_Smart"  # the firmware's id (its fleet key is always registered)
OTHER_DEVICE = "bench-2"  # registered in the keys directory


@dataclass
class Service:
    server: TestServer
    http: aiohttp.ClientSession
    storage: Storage
    clock: FakeClock
    token: str
    keys_dir: Path

    @property
    def url(self) -> str:
        return str(self.server.make_url("")).rstrip("/")

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def call(self, method: str, path: str, *, operator: bool = False, **kwargs: Any
                   ) -> tuple[int, Any]:
        """One request; the status and the JSON body (None when the body is not JSON)."""
        headers = dict(kwargs.pop("headers", {}))
        if operator:
            headers.update(self.auth)
        async with self.http.request(method, self.url + path, headers=headers, **kwargs) as response:
            body = await response.read()
            try:
                return response.status, await response.json(content_type=None)
            except ValueError:
                return response.status, body or None

    @property
    def faults(self) -> Any:
        return self.server.app[FAULTS]


@contextlib.asynccontextmanager
async def running_service(tmp_path: Path, *, limits: Limits | None = None,
                          storage_url: str | None = None, seed: int = 7) -> AsyncIterator[Service]:
    clock = FakeClock()
    keys_dir = tmp_path / "keys"
    files = KeyFiles(keys_dir)
    files.add_device(OTHER_DEVICE)
    token = files.generate_operator_token()
    settings = CloudSettings(port=0, data_dir=tmp_path / "data", keys_dir=keys_dir,
                             firmware_dir=tmp_path / "firmware", limits=limits or Limits())
    storage = await open_storage(storage_url or f"sqlite:///{tmp_path / 'cloud.db'}", wall_clock=clock)
    app = create_app(settings, storage, wall_clock=clock)
    app[FAULTS].rng = random.Random(seed)
    server = TestServer(app, host="127.0.0.1", port=0)
    await server.start_server()
    http = aiohttp.ClientSession()
    try:
        yield Service(server, http, storage, clock, token, keys_dir)
    finally:
        await http.close()
        await server.close()
        await storage.close()


def short_lease(lease_seconds: float = 10.0, max_deliveries: int = 2) -> Limits:
    return replace(Limits(), command_lease_seconds=lease_seconds, command_max_deliveries=max_deliveries)
