"""Schema migrations and crash durability, on both backends."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from cloud.storage import Verdict, open_storage
from cloud.storage.schema import LATEST_VERSION, MIGRATIONS
from tests.cloud.storage_backends import StorageFactory
from tests.cloud.storage_uploads import upload

HERE = Path(__file__).parent
CHILD = HERE / "storage_child.py"
ACKS_BEFORE_KILL = 40


async def test_migrations_are_applied_once_and_reopening_keeps_the_data(storage_factory: StorageFactory) -> None:
    url = await storage_factory.new_url()
    async with open_storage(url) as first:
        assert await first.schema_versions() == [m.version for m in MIGRATIONS]
        await first.ingest(upload("dev", 1))
        assert await first.migrate() == []  # already up to date
    async with open_storage(url) as again:
        assert await again.schema_versions() == list(range(1, LATEST_VERSION + 1))
        assert (await again.ingest(upload("dev", 1))).verdict is Verdict.RESEND  # the nonce state survived


async def test_storages_opening_one_new_database_together_migrate_it_once(storage_factory: StorageFactory) -> None:
    url = await storage_factory.new_url()
    storages = await asyncio.gather(*(open_storage(url) for _ in range(4)))
    try:
        versions = [await s.schema_versions() for s in storages]
        assert versions == [[m.version for m in MIGRATIONS]] * 4
    finally:
        for s in storages:
            await s.close()


async def test_a_database_from_a_newer_program_is_refused(storage_factory: StorageFactory) -> None:
    url = await storage_factory.new_url()
    async with open_storage(url):
        pass
    # a newer program migrated this database further
    await storage_factory.execute(url, "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                                  LATEST_VERSION + 1, "from the future", 0.0)
    with pytest.raises(RuntimeError, match="newer than this program"):
        await open_storage(url)


def child_env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(HERE.parents[1])}


async def test_committed_ingests_survive_sigkill(storage_factory: StorageFactory) -> None:
    """A process acknowledged uploads (ingest returned) and was killed mid-stream: all of them are there."""
    url = await storage_factory.new_url()
    devices = [f"dev{n}" for n in range(4)]
    child = await asyncio.create_subprocess_exec(
        sys.executable, str(CHILD), "stream", url, ",".join(devices),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=child_env(),
    )
    acked: list[tuple[str, int]] = []
    try:
        async with asyncio.timeout(30):
            while len(acked) < ACKS_BEFORE_KILL:
                line = await child.stdout.readline()
                if not line:
                    pytest.fail(f"child ended early: {(await child.stderr.read()).decode()[-2000:]}")
                device, nonce = line.decode().split()
                acked.append((device, int(nonce)))
    finally:
        child.send_signal(signal.SIGKILL)  # no clean shutdown: writes may be in flight
        await child.wait()
    # lines the child wrote before dying are acknowledged too
    acked += [(d, int(n)) for d, n in (line.split() for line in (await child.stdout.read()).decode().splitlines())]

    async with open_storage(url) as storage:
        for device in devices:
            accepted = [u.nonce for u in await storage.list_uploads(device, limit=100_000) if u.verdict == "accepted"]
            assert len(accepted) == len(set(accepted))
            assert {n for d, n in acked if d == device} <= set(accepted)
            packets = {p.packet_ts for p in await storage.list_packets(device, limit=100_000)}
            assert packets == set(accepted)  # each accepted upload's packet, once, and nothing else
        counts = await storage.counts()
        assert counts["samples"] == counts["packets"] * 42
