"""Fixtures of the cloud tests: fresh storages on SQLite and on PostgreSQL, and a settable clock.

The PostgreSQL leg uses ECOWATT_TEST_PG_DSN when set, else starts a throwaway cluster
(harness/pg_cluster.py) when the server is installed, else is skipped. Each test's storage starts
empty: a new SQLite file, or an emptied PostgreSQL schema (selected by the DSN's search_path).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator

import pytest

from cloud.storage import Storage
from harness import pg_cluster
from tests.cloud.storage_backends import FakeClock, StorageFactory

PG_DSN_VARIABLE = "ECOWATT_TEST_PG_DSN"


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    dsn = os.environ.get(PG_DSN_VARIABLE)
    if dsn:
        yield dsn
        return
    if not pg_cluster.is_installed():
        pytest.skip("PostgreSQL server not installed")
    # fsync off: these tests kill clients, never the server, so its own crash safety is not tested.
    with pg_cluster.PgCluster(fsync=False) as cluster:
        yield cluster.dsn


@pytest.fixture(scope="session")
def postgres_factory(postgres_dsn: str) -> Iterator[StorageFactory]:
    factory = StorageFactory("postgresql", postgres_dsn)
    yield factory
    if os.environ.get(PG_DSN_VARIABLE):  # a shared server: leave it as we found it
        factory.drop_schemas()


@pytest.fixture(scope="session", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def storage_factory(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> StorageFactory:
    if request.param == "sqlite":
        return StorageFactory("sqlite", str(tmp_path_factory.mktemp("sqlite")))
    factory: StorageFactory = request.getfixturevalue("postgres_factory")
    return factory


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def storage(storage_factory: StorageFactory, clock: FakeClock) -> AsyncIterator[Storage]:
    opened = await storage_factory.open(await storage_factory.empty_url(), wall_clock=clock)
    try:
        yield opened
    finally:
        await opened.close()
