"""The contract between the storage's operations and a database backend (SQLite or PostgreSQL).

An operation is an async function of one `Transaction`; the backend runs it atomically with `write`
(all of it commits or none of it) or on a consistent snapshot with `read`. Operations use only the
transaction they are given and never await anything else, so a backend may batch them (SQLite group
commit) or run them again after a PostgreSQL deadlock.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, TypeVar

from cloud.storage.dialect import Dialect

T = TypeVar("T")
R = TypeVar("R")


class Row(Protocol):
    """A result row (sqlite3.Row, asyncpg.Record): by column name, or by position."""

    def __getitem__(self, key: str | int) -> Any: ...


class Transaction(Protocol):
    dialect: Dialect

    async def execute(self, sql: str, *args: Any) -> int:
        """Run one statement; the number of rows it changed."""

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None: ...

    async def fetch(self, sql: str, *args: Any) -> list[Row]: ...

    async def fetchrow(self, sql: str, *args: Any) -> Row | None: ...

    async def fetchval(self, sql: str, *args: Any) -> Any: ...


Work = Callable[[Transaction], Awaitable[T]]


class Backend(Protocol):
    dialect: Dialect

    async def write(self, work: Work[T]) -> T: ...

    async def read(self, work: Work[T]) -> T: ...

    async def query(self, sql: str, *args: Any) -> list[Row]:
        """One read statement, its own snapshot: no transaction around it (a device's routine poll is
        one, and BEGIN/COMMIT would double its round trips)."""

    async def close(self) -> None: ...


class StorePart:
    """What every part of the storage (one mixin per domain) shares: the backend and the clock."""

    def __init__(self, backend: Backend, wall_clock: Callable[[], float]) -> None:
        self._backend = backend
        self._clock = wall_clock

    # Shorthands for operations that are a single statement.

    async def _one(self, convert: Callable[[Row], R], sql: str, *args: Any, write: bool = False) -> R | None:
        if not write:
            rows = await self._backend.query(sql, *args)
            return convert(rows[0]) if rows else None

        async def work(tx: Transaction) -> R | None:
            row = await tx.fetchrow(sql, *args)
            return None if row is None else convert(row)

        return await self._backend.write(work)

    async def _all(self, convert: Callable[[Row], R], sql: str, *args: Any) -> list[R]:
        return [convert(row) for row in await self._backend.query(sql, *args)]

    async def _change(self, sql: str, *args: Any) -> int:
        async def work(tx: Transaction) -> int:
            return await tx.execute(sql, *args)

        return await self._backend.write(work)


def placeholders(count: int) -> str:
    """`?, ?, ?` for an IN list of `count` values."""
    return ", ".join("?" * count)


def to_json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def from_json(text: str | None) -> Any:
    return None if text is None else json.loads(text)
