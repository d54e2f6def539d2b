"""Properties of ingest against a model, for arbitrary sequences of uploads, on both backends."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud.storage import Storage, Verdict
from tests.cloud.storage_backends import StorageFactory
from tests.cloud.storage_uploads import LAYOUT, SAMPLES_PER_PACKET, FakePacket, decoder_count, upload

PACKET_POOL = [FakePacket(boot, ts, content) for boot in (0, 1) for ts in (100, 200) for content in (b"a", b"b")]


@dataclass
class LoopStorage:
    """One storage kept open across hypothesis examples, on a loop of its own; a device per example."""

    loop: asyncio.AbstractEventLoop
    storage: Storage
    devices: Iterator[int]

    def run(self, coroutine):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(coroutine)

    def new_device(self) -> str:
        return f"device-{next(self.devices)}"


@pytest.fixture(scope="module")
def shared(storage_factory: StorageFactory) -> Iterator[LoopStorage]:
    loop = asyncio.new_event_loop()
    storage = loop.run_until_complete(storage_factory.open())
    try:
        yield LoopStorage(loop, storage, itertools.count())
    finally:
        loop.run_until_complete(storage.close())
        loop.close()


@settings(max_examples=30, deadline=None)
@given(nonces=st.lists(st.integers(0, 20), max_size=12))
def test_a_nonce_is_accepted_only_above_the_last_accepted_one(shared: LoopStorage, nonces: list[int]) -> None:
    device = shared.new_device()

    async def scenario() -> list[Verdict]:
        results = [await shared.storage.ingest(upload(device, n, [FakePacket(0, n, bytes([n]))])) for n in nonces]
        return [r.verdict for r in results]

    expected, last = [], None
    for n in nonces:
        if last is None or n > last:
            expected.append(Verdict.ACCEPTED)
            last = n
        else:  # the same nonce with the same packets is the same envelope: a resend of the last one
            expected.append(Verdict.RESEND if n == last else Verdict.REPLAY)
    assert shared.run(scenario()) == expected

    accepted = [n for n, v in zip(nonces, expected, strict=True) if v is Verdict.ACCEPTED]
    packets = shared.run(shared.storage.list_packets(device))
    assert [p.packet_ts for p in packets] == accepted
    assert decoder_count(shared.run(shared.storage.codec_state(device))) == len(accepted)


@settings(max_examples=30, deadline=None)
@given(uploads=st.lists(st.lists(st.sampled_from(range(len(PACKET_POOL))), max_size=5), min_size=1, max_size=6))
def test_every_distinct_packet_is_stored_exactly_once(shared: LoopStorage, uploads: list[list[int]]) -> None:
    device = shared.new_device()

    async def scenario() -> list[list[bool]]:
        flags = []
        for nonce, indices in enumerate(uploads, start=1):
            result = await shared.storage.ingest(upload(device, nonce, [PACKET_POOL[i] for i in indices]))
            flags.append([p.new for p in result.packets])
        return flags

    seen: set[int] = set()
    expected = []
    for indices in uploads:
        flags = []
        for i in indices:
            flags.append(i not in seen)
            seen.add(i)
        expected.append(flags)
    assert shared.run(scenario()) == expected

    distinct = {i for indices in uploads for i in indices}
    samples = shared.run(shared.storage.telemetry(device, limit=100_000))
    assert len(samples) == len(distinct) * SAMPLES_PER_PACKET * len(LAYOUT)
    stored = {(p.boot_id, p.packet_ts, p.content_sha256) for p in shared.run(shared.storage.list_packets(device))}
    assert stored == {(PACKET_POOL[i].boot_id, PACKET_POOL[i].packet_ts, PACKET_POOL[i].sha256) for i in distinct}
