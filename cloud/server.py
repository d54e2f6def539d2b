"""Running the service on a socket: open the storage, serve, and on stop drain in-flight requests.

    server = CloudServer(settings)
    await server.start()            # server.url is "http://127.0.0.1:<port>" (port 0 -> a free one)
    ...
    await server.stop()             # stop accepting, let in-flight requests finish, close the storage

Used by `ecowatt cloud serve` and by anything that runs the cloud in-process (the harness, tests).
With `settings.mqtt_url` and `cloud.mqtt_publisher` present, the outbox publisher runs alongside.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import time
from collections.abc import Callable

from aiohttp import web

from cloud.app import create_app
from cloud.app_keys import EVENTS, IN_FLIGHT
from cloud.settings import CloudSettings
from cloud.storage import Storage, open_storage

log = logging.getLogger("ecowatt.cloud")


class CloudServer:
    def __init__(self, settings: CloudSettings, *, wall_clock: Callable[[], float] = time.time,
                 storage: Storage | None = None) -> None:
        self.settings = settings
        self.wall_clock = wall_clock
        self.storage = storage
        self._owns_storage = storage is None
        self.app: web.Application | None = None
        self._runner: web.AppRunner | None = None
        self._publisher: asyncio.Task[None] | None = None
        self.port: int | None = None

    @property
    def url(self) -> str:
        host = self.settings.host
        return f"http://{f'[{host}]' if ':' in host else host}:{self.port}"

    async def start(self) -> None:
        if self.storage is None:
            self.storage = await open_storage(self.settings.storage_target, wall_clock=self.wall_clock)
        try:
            self.app = create_app(self.settings, self.storage, wall_clock=self.wall_clock)
            self._runner = web.AppRunner(self.app, shutdown_timeout=self.settings.limits.shutdown_seconds,
                                         access_log=None)
            await self._runner.setup()
            site = web.TCPSite(self._runner, self.settings.host, self.settings.port)
            await site.start()
            sockets = self._runner.addresses
            self.port = int(sockets[0][1]) if sockets else self.settings.port
            self._start_publisher()
        except BaseException:
            await self.stop()
            raise

    def _start_publisher(self) -> None:
        if not self.settings.mqtt_url:
            return
        try:
            module = importlib.import_module("cloud.mqtt_publisher")
        except ModuleNotFoundError as error:
            if error.name != "cloud.mqtt_publisher":
                raise
            log.warning("--mqtt given but the MQTT publisher is not available: telemetry stays in the outbox")
            return
        assert self.storage is not None
        self._publisher = asyncio.create_task(module.run_publisher(self.storage, self.settings.mqtt_url))

    async def stop(self) -> None:
        """Stop listening, finish in-flight requests (bounded by the shutdown time), close the storage."""
        if self._runner is not None:
            for site in list(self._runner.sites):
                await site.stop()  # no new connections
            if self.app is not None:
                self.app[EVENTS].close()  # end event streams first: they would hold the drain to its limit
                # aiohttp's shutdown stops reading at once; requests whose body is still arriving are
                # in flight too, so wait for every handler first (keep-alive ends with each answer).
                drained = await self.app[IN_FLIGHT].drain(self.settings.limits.shutdown_seconds)
                if not drained:
                    log.warning("stopping with requests still in flight after %.0f s",
                                self.settings.limits.shutdown_seconds)
            await self._runner.cleanup()
            self._runner = None
        if self._publisher is not None:
            self._publisher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._publisher
            self._publisher = None
        if self.storage is not None and self._owns_storage:
            await self.storage.close()
            self.storage = None

    async def __aenter__(self) -> CloudServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
