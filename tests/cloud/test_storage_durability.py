"""Schema migrations and crash durability, on both backends."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from cloud.storage import Verdict, open_storage
from cloud.storage.dialect import POSTGRES, SQLITE
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


async def test_sample_rows_of_an_older_database_move_into_their_packets(storage_factory: StorageFactory) -> None:
    """A database written before migration 5 (one row per sample) keeps every sample, values and order."""
    url = await storage_factory.new_url()
    dialect = SQLITE if storage_factory.backend == "sqlite" else POSTGRES
    older = [m for m in MIGRATIONS if m.version <= 4]
    for migration in older:
        for statement in ("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, name TEXT "
                          "NOT NULL, applied_at ${REAL} NOT NULL)", *migration.statements):
            await storage_factory.execute(url, dialect.ddl(statement))
        await storage_factory.execute(url, "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                                      migration.version, migration.name, 0.0)
    await storage_factory.execute(url, "INSERT INTO devices (device_id, created_at) VALUES ('old', 0)")
    await storage_factory.execute(url, "INSERT INTO uploads (id, device_id, verdict, received_at) "
                                  "VALUES (1, 'old', 'accepted', 5.0)")
    for packet_id, packet_ts in ((1, 100), (2, 200)):
        await storage_factory.execute(
            url, "INSERT INTO packets (id, device_id, boot_id, packet_ts, content_sha256, codec, status, sample_count, "
            "upload_id, received_at) VALUES (?, 'old', 0, ?, ?, 'DELTA', 'decoded', 3, 1, 5.0)",
            packet_id, packet_ts, f"sha{packet_id}")
        for index in range(3):  # stored out of address order: the order kept is the rows' order
            await storage_factory.execute(
                url, "INSERT INTO samples (device_id, packet_id, sample_index, address, raw, device_ms, sampled_at, "
                "received_at) VALUES ('old', ?, ?, ?, ?, NULL, ?, 5.0)",
                packet_id, index, 9 - index, 1000 * packet_id + index, 4.0 + packet_id)

    async with open_storage(url) as storage:
        assert await storage.schema_versions() == list(range(1, LATEST_VERSION + 1))
        samples = await storage.telemetry("old")
        assert [(s.packet_ts, s.sample_index, s.address, s.raw, s.sampled_at) for s in samples] == [
            (100 * p, i, 9 - i, 1000 * p + i, 4.0 + p) for p in (1, 2) for i in range(3)]
        assert [s.id for s in samples] == sorted({s.id for s in samples})
        assert [s.packet_ts for s in await storage.telemetry("old", since=5.5)] == [200] * 3
        assert (await storage.counts())["samples"] == 6


async def test_decoder_states_of_an_older_database_move_beside_their_nonces(storage_factory: StorageFactory) -> None:
    """Before migration 7 a device's decoder state had a table of its own; a device whose nonce was reset
    (its nonce row deleted, then) kept its state there, and keeps it now."""
    url = await storage_factory.new_url()
    dialect = SQLITE if storage_factory.backend == "sqlite" else POSTGRES
    for migration in [m for m in MIGRATIONS if m.version <= 6]:
        for statement in ("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER PRIMARY KEY, name TEXT "
                          "NOT NULL, applied_at ${REAL} NOT NULL)", *migration.statements):
            await storage_factory.execute(url, dialect.ddl(statement))
        await storage_factory.execute(url, "INSERT INTO schema_version (version, name, applied_at) VALUES (?, ?, ?)",
                                      migration.version, migration.name, 0.0)
    states = {"with-nonce": '{"packets": 3}', "reset": '{"packets": 5}'}
    for device, state in states.items():
        await storage_factory.execute(url, "INSERT INTO devices (device_id, created_at) VALUES (?, 0)", device)
        await storage_factory.execute(url, "INSERT INTO codec_states (device_id, state, updated_at) VALUES (?, ?, 1)",
                                      device, state)
    await storage_factory.execute(url, "INSERT INTO nonces (device_id, last_nonce, updated_at) VALUES "
                                  "('with-nonce', 7, 1)")

    async with open_storage(url) as storage:
        assert await storage.schema_versions() == list(range(1, LATEST_VERSION + 1))
        assert {d: await storage.codec_state(d) for d in states} == states
        assert [n.device_id for n in await storage.list_nonce_states()] == ["with-nonce"]
        assert (await storage.ingest(upload("with-nonce", 7))).verdict is Verdict.REPLAY
        decoded_from: list[str | None] = []
        assert (await storage.ingest(upload("reset", 1, calls=decoded_from))).verdict is Verdict.ACCEPTED
        assert decoded_from == [states["reset"]]


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
