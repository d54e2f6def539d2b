"""The two storage backends as the tests see them: empty databases on demand, and a settable clock."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import sqlite3
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import asyncpg

from cloud.storage import Storage, open_storage, sqlite_path
from cloud.storage.dialect import POSTGRES
from cloud.storage.schema import MIGRATIONS


@dataclass
class FakeClock:
    """A wall clock the test moves by hand."""

    now: float = 1_800_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class StorageFactory:
    """Makes empty databases (`new_url`) and opens storages on them (`open`).

    A new SQLite database is a new file; a new PostgreSQL database is a new schema, selected by the
    DSN's `search_path`.
    """

    backend: str
    base: str  # a directory (SQLite) or a server DSN (PostgreSQL)
    schemas: list[str] = field(default_factory=list)
    _counter: Iterator[int] = field(default_factory=itertools.count)
    _scratch: str | None = None

    async def empty_url(self) -> str:
        """A migrated, empty database. On PostgreSQL, one scratch schema emptied again each time: a
        DELETE per table is much cheaper than creating the tables of a new schema."""
        if self.backend == "sqlite":
            return await self.new_url()
        if self._scratch is None:
            self._scratch = await self.new_url()
            await (await open_storage(self._scratch)).close()
            return self._scratch
        # children before parents: tables were created parents first
        tables = [re.match(r"\s*CREATE TABLE (\w+)", statement) for m in MIGRATIONS for statement in m.statements]
        dropped = {m.group(1) for m in (re.match(r"\s*DROP TABLE (\w+)", statement)
                                        for migration in MIGRATIONS for statement in migration.statements) if m}
        names = [t.group(1) for t in tables if t is not None and t.group(1) not in dropped]
        connection = await asyncpg.connect(self._scratch)
        try:
            await connection.execute("; ".join(f"DELETE FROM {name}" for name in reversed(names)))
        finally:
            await connection.close()
        return self._scratch

    async def new_url(self) -> str:
        if self.backend == "sqlite":
            return f"sqlite:///{Path(self.base) / f'cloud-{next(self._counter)}.db'}"
        schema = f"test_{uuid.uuid4().hex[:12]}"
        connection = await asyncpg.connect(self.base)
        try:
            await connection.execute(f"CREATE SCHEMA {schema}")
        finally:
            await connection.close()
        self.schemas.append(schema)
        return f"{self.base}{'&' if '?' in self.base else '?'}search_path={schema}"

    async def open(self, url: str | None = None, *, wall_clock: Callable[[], float] = time.time,
                   **options: Any) -> Storage:
        return await open_storage(url or await self.new_url(), wall_clock=wall_clock, **options)

    async def execute(self, url: str, sql: str, *args: Any) -> None:
        """Run one statement on the database behind the storage's back (to fake another program)."""
        if self.backend == "sqlite":
            with contextlib.closing(sqlite3.connect(sqlite_path(url))) as connection, connection:
                connection.execute(sql, args)
            return
        connection = await asyncpg.connect(url)
        try:
            await connection.execute(POSTGRES.query(sql), *args)
        finally:
            await connection.close()

    def drop_schemas(self) -> None:
        async def drop() -> None:
            connection = await asyncpg.connect(self.base)
            try:
                for schema in self.schemas:
                    await connection.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            finally:
                await connection.close()

        if self.schemas:
            asyncio.run(drop())
