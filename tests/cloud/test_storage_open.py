"""Opening and closing storages: the targets open_storage understands, and use after close."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from cloud.storage import Verdict, open_storage
from tests.cloud.storage_backends import StorageFactory
from tests.cloud.storage_uploads import upload


@pytest.mark.parametrize("target, database", [
    ("data", "data/ecowatt.db"),  # a data directory (--data-dir), created if missing
    ("cloud.db", "cloud.db"),
    ("sqlite:///{tmp}/by-url.db", "by-url.db"),
])
async def test_sqlite_targets(tmp_path: Path, target: str, database: str) -> None:
    text = target.format(tmp=tmp_path) if target.startswith("sqlite:") else str(tmp_path / target)
    async with open_storage(text) as storage:
        assert storage.backend_name == "sqlite"
        await storage.ingest(upload("dev", 1))
    assert (tmp_path / database).is_file()
    async with open_storage(tmp_path / database) as again:  # the same data, by its file path
        assert (await again.ingest(upload("dev", 1))).verdict is Verdict.RESEND


async def test_an_existing_directory_holds_the_database(tmp_path: Path) -> None:
    (tmp_path / "dir.db").mkdir()  # a directory, whatever its name: the database goes inside
    async with open_storage(tmp_path / "dir.db"):
        pass
    assert (tmp_path / "dir.db" / "ecowatt.db").is_file()


async def test_a_closed_storage_refuses_work(storage_factory: StorageFactory) -> None:
    storage = await storage_factory.open()
    await storage.close()
    with pytest.raises(RuntimeError):
        await storage.ingest(upload("dev", 1))
    await storage.close()  # closing twice is harmless


async def test_close_waits_for_writes_already_queued(storage_factory: StorageFactory) -> None:
    url = await storage_factory.new_url()
    storage = await storage_factory.open(url)
    pending = [asyncio.ensure_future(storage.ingest(upload(f"dev{n}", 1))) for n in range(20)]
    await asyncio.sleep(0)  # let them reach the storage
    await storage.close()
    assert all(p.result().verdict is Verdict.ACCEPTED for p in pending)
    async with open_storage(url) as again:
        assert (await again.counts())["uploads"] == 20
