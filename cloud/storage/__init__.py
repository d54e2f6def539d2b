"""The cloud's durable storage: one interface (`Storage`), SQLite (default) or PostgreSQL underneath.

    storage = await open_storage("data")               # a data directory: data/ecowatt.db
    storage = await open_storage("sqlite:///cloud.db")  # relative; sqlite:////abs/cloud.db absolute
    async with open_storage("postgresql://user@host/db") as storage: ...

The schema is migrated at open. See `Storage` for the operations and `records` for what they take
and return.
"""

from __future__ import annotations

import os
import time
from collections.abc import Awaitable, Callable, Generator
from pathlib import Path
from types import TracebackType
from typing import Any

from cloud.storage.postgres import PostgresBackend
from cloud.storage.records import (
    SAMPLE_ID_STRIDE,
    BatchSamples,
    Command,
    CommandStatus,
    ConfigStatus,
    ConfigVersion,
    DecodedUpload,
    Device,
    Diagnostic,
    DiagnosticsSummary,
    FaultEvent,
    FaultRule,
    Firmware,
    IngestRequest,
    IngestResult,
    NonceState,
    OperatorToken,
    OtaReport,
    OtaSession,
    OutboxEntry,
    OutboxMessage,
    Packet,
    PacketIn,
    PacketStats,
    PacketStatus,
    Rollout,
    RolloutState,
    RolloutTarget,
    SampleIn,
    SessionStatus,
    StoredPacket,
    TelemetrySample,
    Upload,
    Verdict,
)
from cloud.storage.sqlite import SqliteBackend
from cloud.storage.store import Storage

__all__ = [
    "Command",
    "CommandStatus",
    "ConfigStatus",
    "ConfigVersion",
    "DecodedUpload",
    "Device",
    "Diagnostic",
    "DiagnosticsSummary",
    "FaultEvent",
    "FaultRule",
    "Firmware",
    "IngestRequest",
    "IngestResult",
    "NonceState",
    "OperatorToken",
    "OtaReport",
    "OtaSession",
    "OutboxEntry",
    "OutboxMessage",
    "Packet",
    "PacketIn",
    "PacketStats",
    "PacketStatus",
    "SAMPLE_ID_STRIDE",
    "Rollout",
    "RolloutState",
    "RolloutTarget",
    "BatchSamples",
    "SampleIn",
    "SessionStatus",
    "Storage",
    "StoredPacket",
    "TelemetrySample",
    "Upload",
    "Verdict",
    "open_storage",
    "sqlite_path",
]

DEFAULT_DB_NAME = "ecowatt.db"
SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def sqlite_path(target: str | os.PathLike[str]) -> Path:
    """The database file for "sqlite:///path", a file path, or a data directory (holding ecowatt.db)."""
    text = os.fspath(target)
    if text.startswith("sqlite://"):
        rest = text.removeprefix("sqlite://")
        # sqlite:///relative.db and sqlite:////absolute.db, as SQLAlchemy spells them
        return Path(rest[1:] if rest.startswith("/") else rest)
    path = Path(text)
    if path.suffix in SQLITE_SUFFIXES and not path.is_dir():
        return path
    return path / DEFAULT_DB_NAME


async def _open(target: str | os.PathLike[str], wall_clock: Callable[[], float], options: dict[str, Any]) -> Storage:
    text = os.fspath(target)
    if text.startswith(("postgresql://", "postgres://")):
        backend: PostgresBackend | SqliteBackend = await PostgresBackend.open(text, **options)
    else:
        backend = await SqliteBackend.open(sqlite_path(text), **options)
    storage = Storage(backend, wall_clock, text)
    try:
        await storage.migrate()
    except BaseException:
        await storage.close()
        raise
    return storage


class _Opening:
    """`await open_storage(...)` gives a Storage; `async with open_storage(...)` also closes it."""

    def __init__(self, opening: Awaitable[Storage]) -> None:
        self._opening = opening
        self._storage: Storage | None = None

    def __await__(self) -> Generator[Any, None, Storage]:
        return self._opening.__await__()

    async def __aenter__(self) -> Storage:
        self._storage = await self._opening
        return self._storage

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        if self._storage is not None:
            await self._storage.close()


def open_storage(target: str | os.PathLike[str], *, wall_clock: Callable[[], float] = time.time,
                 **options: Any) -> _Opening:
    """Open (creating and migrating as needed) the storage at `target`.

    `target`: "postgresql://..." for PostgreSQL; "sqlite:///path.db", a path to a .db file, or a data
    directory for SQLite. `wall_clock` stamps every stored time (the harness passes its own clock).
    `options` go to the backend: SQLite `group_commit`, `max_batch`, `readers`; PostgreSQL `min_size`,
    `max_size` (pool).
    """
    return _Opening(_open(target, wall_clock, options))
