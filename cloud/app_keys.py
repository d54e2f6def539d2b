"""Typed keys of the objects the cloud application shares between its route modules.

Every route module reads its collaborators from the `web.Application` through these keys, so one
module owns each object and the others only look it up.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

if TYPE_CHECKING:
    from cloud.app import InFlight
    from cloud.events import EventBus
    from cloud.ingest import Ingestor
    from cloud.key_registry import KeyRegistry
    from cloud.settings import CloudSettings
    from cloud.storage import Storage

STORAGE: web.AppKey[Storage] = web.AppKey("storage")
SETTINGS: web.AppKey[CloudSettings] = web.AppKey("settings")
KEYS: web.AppKey[KeyRegistry] = web.AppKey("keys")
EVENTS: web.AppKey[EventBus] = web.AppKey("events")
# C2's FaultService (cloud.faults); typed loosely so this module does not depend on it.
FAULTS: web.AppKey[Any] = web.AppKey("faults")
# Monotonic scheduling clock (the running loop's time()); the harness may substitute a virtual one.
CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("clock")
# Wall-clock seconds for timestamps (time.time in production, the harness's clock in tests).
WALL_CLOCK: web.AppKey[Callable[[], float]] = web.AppKey("wall_clock")
# C1's ingest service (secured uploads: /process, /aggregated, /security/validate).
INGEST: web.AppKey[Ingestor] = web.AppKey("ingest")
# Requests being handled, for a graceful stop (see cloud.server).
IN_FLIGHT: web.AppKey[InFlight] = web.AppKey("in_flight")
