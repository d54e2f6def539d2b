"""Two OS processes on one PostgreSQL database race on one nonce: exactly one upload is stored."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import Counter
from pathlib import Path

import pytest

from cloud.storage import open_storage
from tests.cloud.storage_backends import StorageFactory
from tests.cloud.storage_uploads import FakePacket, upload

HERE = Path(__file__).parent
CHILD = HERE / "storage_child.py"
COPIES = 25

pytestmark = pytest.mark.postgres


async def test_two_processes_ingesting_one_nonce_store_it_once(postgres_factory: StorageFactory) -> None:
    url = await postgres_factory.new_url()
    async with open_storage(url) as storage:
        # a known device: its nonce row exists, so nothing but the nonce check serialises the racers
        await storage.ingest(upload("dev", 10000, [FakePacket(0, 999, b"before")]))
    env = {**os.environ, "PYTHONPATH": str(HERE.parents[1])}
    children = [
        await asyncio.create_subprocess_exec(
            sys.executable, str(CHILD), "race", url, "dev", "10001", tag, str(COPIES),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env,
        )
        for tag in ("A", "B")
    ]
    try:
        async with asyncio.timeout(30):
            for child in children:  # both connected and waiting
                assert (await child.stdout.readline()).strip() == b"ready", (await child.stderr.read()).decode()
            for child in children:
                child.stdin.write(b"go\n")
                await child.stdin.drain()
            outputs = [await child.communicate() for child in children]
    finally:
        for child in children:
            if child.returncode is None:
                child.kill()
                await child.wait()

    verdicts = Counter[str]()
    for child, (out, err) in zip(children, outputs, strict=True):
        assert child.returncode == 0, err.decode()
        verdicts.update(json.loads(out))
    assert verdicts == {"accepted": 1, "replay": 2 * COPIES - 1}

    async with open_storage(url) as storage:
        [_, packet] = await storage.list_packets("dev")
        accepted = [u for u in await storage.list_uploads("dev", limit=1000) if u.verdict == "accepted"]
        assert [u.id for u in accepted[1:]] == [packet.upload_id]
        assert (await storage.nonce_state("dev")).last_upload_id == packet.upload_id
