"""PostgreSQL backend (asyncpg): one pooled connection per unit of work, one transaction each.

Concurrency between units, and between cloud processes sharing the database, is handled by the
database: conditional UPDATEs and row locks (`Dialect.row_lock`) in the operations. A unit that
loses a deadlock or serialisation race is run again (operations are pure functions of the database).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import asyncpg

from cloud.storage.backend import Row, T, Work
from cloud.storage.dialect import POSTGRES

RETRIES = 5


class PostgresTransaction:
    dialect = POSTGRES

    def __init__(self, connection: asyncpg.Connection) -> None:
        self._connection = connection

    async def execute(self, sql: str, *args: Any) -> int:
        status: str = await self._connection.execute(self.dialect.query(sql), *args)
        count = status.rsplit(" ", 1)[-1]  # "UPDATE 3", "INSERT 0 1", "CREATE TABLE"
        return int(count) if count.isdigit() else 0

    async def executemany(self, sql: str, rows: Any) -> None:
        await self._connection.executemany(self.dialect.query(sql), rows)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return list(await self._connection.fetch(self.dialect.query(sql), *args))

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        row: Row | None = await self._connection.fetchrow(self.dialect.query(sql), *args)
        return row

    async def fetchval(self, sql: str, *args: Any) -> Any:
        return await self._connection.fetchval(self.dialect.query(sql), *args)


class PostgresBackend:
    dialect = POSTGRES

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self._active = 0  # operations under way; close() lets them finish
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False

    @classmethod
    async def open(cls, dsn: str, *, min_size: int = 1, max_size: int = 10) -> PostgresBackend:
        pool = await asyncpg.create_pool(dsn, min_size=min_size, max_size=max_size)
        return cls(pool)

    @contextlib.asynccontextmanager
    async def _operation(self) -> AsyncIterator[None]:
        if self._closed:
            raise RuntimeError("storage is closed")
        self._active += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._active -= 1
            if not self._active:
                self._idle.set()

    async def write(self, work: Work[T]) -> T:
        async with self._operation():
            for attempt in range(RETRIES):
                try:
                    async with self._pool.acquire() as connection, connection.transaction():
                        return await work(PostgresTransaction(connection))
                except (asyncpg.DeadlockDetectedError, asyncpg.SerializationError):
                    if attempt == RETRIES - 1:
                        raise
            raise AssertionError("unreachable")

    async def read(self, work: Work[T]) -> T:
        async with self._operation(), self._pool.acquire() as connection, connection.transaction(
            isolation="repeatable_read", readonly=True
        ):
            return await work(PostgresTransaction(connection))

    async def query(self, sql: str, *args: Any) -> list[Row]:
        async with self._operation():
            return list(await self._pool.fetch(self.dialect.query(sql), *args))

    async def close(self) -> None:
        """Let the operations under way finish, then close the pool."""
        if self._closed:
            return
        self._closed = True
        await self._idle.wait()
        await self._pool.close()
