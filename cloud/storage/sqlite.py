"""SQLite backend: WAL, synchronous=FULL, one writer task with group commit, reads on reader threads.

Every write is a unit of work queued to a single writer task. The writer takes all units waiting,
runs them in one `BEGIN IMMEDIATE` transaction (if one fails, the batch is run again with each unit
in its own SAVEPOINT, so that one is rolled back alone and gets its own error), then issues ONE
`COMMIT`, and only then resolves the callers' futures. So a caller hears "done" only once its data is
on disk, and a burst of concurrent writers pays for one fsync instead of one each.

The whole batch runs in one hop to the writer's own thread: a unit's statements only touch the
connection and never suspend, so the thread drives each unit's coroutine to its end by itself.
Reads run the same way, a whole read (one snapshot: BEGIN ... COMMIT) in one hop to one of a few
reader threads, each with its own read-only connection; WAL lets them run while the writer works.
(aiosqlite costs one thread hop per statement: three or more for a one-query read, and on virtual
time every hop is real time the clock waits for.)
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cloud.storage.backend import Row, T, Work
from cloud.storage.dialect import SQLITE

BUSY_TIMEOUT_MS = 10_000
QUEUE_LIMIT = 10_000  # units waiting; beyond it writers wait (backpressure)


class ThreadTransaction:
    """Statements run synchronously on a connection's own thread (the coroutines never suspend)."""

    dialect = SQLITE

    def __init__(self, connection: sqlite3.Connection) -> None:
        self._connection = connection

    async def execute(self, sql: str, *args: Any) -> int:
        return self._connection.execute(sql, args).rowcount

    async def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self._connection.executemany(sql, rows)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        return list(self._connection.execute(sql, args).fetchall())

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        row: Row | None = self._connection.execute(sql, args).fetchone()
        return row

    async def fetchval(self, sql: str, *args: Any) -> Any:
        row = self._connection.execute(sql, args).fetchone()
        return None if row is None else row[0]


def _drive(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run to its end a coroutine that never suspends; refuse one that does."""
    try:
        coroutine.send(None)
    except StopIteration as finished:
        result: T = finished.value
        return result
    coroutine.close()
    raise RuntimeError("a storage operation awaited something other than its transaction")


class _UnitFailed(Exception):
    """A unit of a batch run without savepoints failed: the batch is run again with them."""


@dataclass
class _Unit:
    work: Work[Any]
    future: asyncio.Future[Any]


def _settle(future: asyncio.Future[Any], value: Any = None, error: BaseException | None = None) -> None:
    if future.done():  # the caller gave up waiting
        return
    if error is None:
        future.set_result(value)
    else:
        future.set_exception(error)


def _connect_writer(path: Path) -> sqlite3.Connection:
    # isolation_level=None: the sqlite3 module opens no transactions behind our back.
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.row_factory = sqlite3.Row
    connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    connection.execute("PRAGMA journal_mode = WAL")
    connection.execute("PRAGMA synchronous = FULL")  # a COMMIT is on disk when it returns
    connection.execute("PRAGMA foreign_keys = ON")
    return connection


def _connect_reader(path: Path) -> sqlite3.Connection:
    connection = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    connection.row_factory = sqlite3.Row
    connection.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    connection.execute("PRAGMA query_only = ON")
    return connection


@dataclass
class _Reader:
    thread: ThreadPoolExecutor  # one thread: the connection is only ever used there
    connection: sqlite3.Connection


async def _close_readers(readers: list[_Reader]) -> None:
    loop = asyncio.get_running_loop()
    for reader in readers:
        await loop.run_in_executor(reader.thread, reader.connection.close)
        reader.thread.shutdown()


def _query(connection: sqlite3.Connection, sql: str, args: tuple[Any, ...]) -> list[Row]:
    return list(connection.execute(sql, args).fetchall())


def _read_snapshot(connection: sqlite3.Connection, work: Work[T]) -> T:
    """On a reader thread: the whole read in one snapshot."""
    connection.execute("BEGIN")
    try:
        return _drive(work(ThreadTransaction(connection)))  # type: ignore[arg-type]  # operations are coroutines
    finally:
        connection.execute("COMMIT")


class SqliteBackend:
    dialect = SQLITE

    def __init__(self, path: Path, thread: ThreadPoolExecutor, writer: sqlite3.Connection,
                 readers: list[_Reader], max_batch: int) -> None:
        self.path = path
        self._thread = thread
        self._writer = writer
        self._writer_tx = ThreadTransaction(writer)
        self._readers: asyncio.Queue[_Reader] = asyncio.Queue()
        self._all_readers = readers
        for reader in readers:
            self._readers.put_nowait(reader)
        self._max_batch = max_batch
        self._queue: asyncio.Queue[_Unit | None] = asyncio.Queue(QUEUE_LIMIT)
        self._closed = False
        self._task = asyncio.create_task(self._write_loop(), name=f"sqlite-writer {path.name}")

    @classmethod
    async def open(cls, path: Path, *, group_commit: bool = True, max_batch: int = 512,
                   readers: int = 2) -> SqliteBackend:
        """`group_commit=False` commits every unit on its own (the baseline it is measured against)."""
        path.parent.mkdir(parents=True, exist_ok=True)
        loop = asyncio.get_running_loop()
        thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-writer")
        writer = await loop.run_in_executor(thread, _connect_writer, path)  # creates the file, sets WAL
        reader_threads: list[_Reader] = []
        try:
            for n in range(readers):
                reader = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"sqlite-reader-{n}")
                reader_threads.append(_Reader(reader, await loop.run_in_executor(reader, _connect_reader, path)))
        except BaseException:
            await _close_readers(reader_threads)
            await loop.run_in_executor(thread, writer.close)
            thread.shutdown()
            raise
        return cls(path, thread, writer, reader_threads, max_batch if group_commit else 1)

    async def write(self, work: Work[T]) -> T:
        if self._closed or self._task.done():
            raise RuntimeError("storage is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Unit(work, future))
        return await future

    async def read(self, work: Work[T]) -> T:
        return await self._on_reader(_read_snapshot, work)

    async def query(self, sql: str, *args: Any) -> list[Row]:
        return await self._on_reader(_query, sql, args)

    async def _on_reader(self, job: Callable[..., T], *args: Any) -> T:
        """`job(connection, *args)` on a free reader's own thread: one hop."""
        if self._closed:
            raise RuntimeError("storage is closed")
        reader = await self._readers.get()
        try:
            return await asyncio.get_running_loop().run_in_executor(reader.thread, job, reader.connection, *args)
        finally:
            self._readers.put_nowait(reader)

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        await self._queue.put(None)  # after every unit already queued
        await self._task
        await _close_readers(self._all_readers)  # after any read in flight: each thread runs one job at a time
        await asyncio.get_running_loop().run_in_executor(self._thread, self._writer.close)
        self._thread.shutdown()

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            unit = await self._queue.get()
            if unit is None:
                return
            batch = [unit]
            stop = False
            while len(batch) < self._max_batch and not self._queue.empty():
                more = self._queue.get_nowait()
                if more is None:
                    stop = True
                    break
                batch.append(more)
            units = [u for u in batch if not u.future.done()]
            if units:
                try:
                    outcomes = await loop.run_in_executor(self._thread, self._commit, [u.work for u in units])
                except Exception as lost:  # the batch is lost as a whole: nobody may hear "done"
                    for u in units:
                        _settle(u.future, error=lost)
                else:
                    for u, (value, failure) in zip(units, outcomes, strict=True):
                        _settle(u.future, value, failure)
            if stop:
                return

    def _commit(self, works: list[Work[Any]]) -> list[tuple[Any, Exception | None]]:
        """On the writer thread: one transaction, one COMMIT.

        The units run back to back. Only if one fails is the batch rolled back and run again with a
        savepoint around each unit, so that the failing one is undone alone (a unit may be run again:
        see backend.py). That spares two statements a unit when none fails, as under load.
        """
        try:
            return self._run_batch(works, isolated=False)
        except _UnitFailed:
            return self._run_batch(works, isolated=True)

    def _run_batch(self, works: list[Work[Any]], *, isolated: bool) -> list[tuple[Any, Exception | None]]:
        connection = self._writer
        outcomes: list[tuple[Any, Exception | None]] = []
        try:
            connection.execute("BEGIN IMMEDIATE")
            for work in works:
                if isolated:
                    outcomes.append(self._run_isolated(work))
                    continue
                try:
                    outcomes.append((_drive(work(self._writer_tx)), None))  # type: ignore[arg-type]  # coroutines
                except Exception as error:
                    raise _UnitFailed from error
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
            raise
        return outcomes

    def _run_isolated(self, work: Work[Any]) -> tuple[Any, Exception | None]:
        """One unit inside a savepoint: its value, or its error with its statements undone."""
        connection = self._writer
        connection.execute("SAVEPOINT unit")
        try:
            value: Any = _drive(work(self._writer_tx))  # type: ignore[arg-type]  # operations are coroutines
        except Exception as error:
            connection.execute("ROLLBACK TO unit")
            connection.execute("RELEASE unit")
            return None, error
        connection.execute("RELEASE unit")
        return value, None
