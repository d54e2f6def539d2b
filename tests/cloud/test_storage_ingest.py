"""Ingest on both backends: exactly once, anti-replay, resend, dedup of re-sent packets, atomicity."""

from __future__ import annotations

import asyncio
import json
from collections import Counter

import pytest

from cloud.storage import IngestRequest, PacketStatus, Storage, Verdict
from tests.cloud.storage_uploads import LAYOUT, SAMPLES_PER_PACKET, FakePacket, decoder_count, upload

DEVICE = "ESP32_EcoWatt_Smart"
PER_PACKET = SAMPLES_PER_PACKET * len(LAYOUT)


async def test_accepted_upload_is_stored_with_its_samples(storage: Storage, clock) -> None:
    packet = FakePacket(boot_id=0, packet_ts=29877, content=b"\xd0first")
    result = await storage.ingest(upload(DEVICE, 10001, [packet]))

    assert result.verdict is Verdict.ACCEPTED
    assert (result.new_packets, result.samples_stored) == (1, PER_PACKET)
    assert json.loads(result.reply) == {"nonce": 10001, "new_packets": 1, "samples": PER_PACKET}

    samples = await storage.telemetry(DEVICE)
    assert [(s.sample_index, s.address, s.raw) for s in samples] == [
        (i, a, packet.raw(i, a)) for i in range(SAMPLES_PER_PACKET) for a in LAYOUT
    ]
    first = samples[0]
    assert (first.boot_id, first.packet_ts, first.codec, first.status) == (
        0, 29877, "BATCH_DICTIONARY", PacketStatus.DECODED)
    assert first.received_at == first.sampled_at == clock.now  # no estimate given: time of receipt
    assert first.device_ms == 29877 - 6000

    [row] = await storage.list_uploads(DEVICE)
    assert (row.id, row.nonce, row.verdict, row.packets, row.new_packets, row.samples) == (
        result.upload_id, 10001, "accepted", 1, 1, PER_PACKET)
    device = await storage.get_device(DEVICE)
    assert device is not None and device.first_seen == device.last_seen == clock.now
    nonce = await storage.nonce_state(DEVICE)
    assert nonce is not None and (nonce.last_nonce, nonce.last_upload_id) == (10001, result.upload_id)


async def test_nonce_must_be_strictly_greater_than_the_last_accepted(storage: Storage) -> None:
    verdicts = [
        (await storage.ingest(upload(DEVICE, nonce, [FakePacket(0, ts, bytes([ts % 256]))]))).verdict
        for nonce, ts in [(10001, 1), (10000, 2), (10001, 3), (50000, 4), (10002, 5)]
    ]
    assert verdicts == [Verdict.ACCEPTED, Verdict.REPLAY, Verdict.REPLAY, Verdict.ACCEPTED, Verdict.REPLAY]
    # replays store nothing but are logged
    assert [p.packet_ts for p in await storage.list_packets(DEVICE)] == [1, 4]
    assert [(u.nonce, u.verdict) for u in await storage.list_uploads(DEVICE)] == [
        (10001, "accepted"), (10000, "replay"), (10001, "replay"), (50000, "accepted"), (10002, "replay")]


async def test_nonces_are_per_device(storage: Storage) -> None:
    first = await storage.ingest(upload("A", 500))
    second = await storage.ingest(upload("B", 500))
    assert (first.verdict, second.verdict) == (Verdict.ACCEPTED, Verdict.ACCEPTED)


async def test_resend_of_the_last_envelope_gets_the_original_reply_and_stores_nothing(storage: Storage) -> None:
    calls: list[str | None] = []
    original = await storage.ingest(upload(DEVICE, 7, body=b"envelope-7", calls=calls))
    again = await storage.ingest(upload(DEVICE, 7, body=b"envelope-7", calls=calls))

    assert again.verdict is Verdict.RESEND
    assert again.reply == original.reply
    assert len(calls) == 1  # the resend was not decoded again
    assert (await storage.counts())["samples"] == PER_PACKET
    assert await storage.codec_state(DEVICE) == json.dumps({"packets": 1})

    # only the LAST accepted envelope is answered again; an older one is a replay
    await storage.ingest(upload(DEVICE, 8, body=b"envelope-8"))
    older = await storage.ingest(upload(DEVICE, 7, body=b"envelope-7"))
    assert (older.verdict, older.reply) == (Verdict.REPLAY, None)


async def test_fifty_concurrent_copies_of_one_envelope_are_stored_once(storage: Storage) -> None:
    await storage.ingest(upload(DEVICE, 10000, [FakePacket(0, 0, b"before")]))  # a device already known
    copies = [upload(DEVICE, 10001, [FakePacket(0, 1), FakePacket(0, 2, b"other")], body=b"same")
              for _ in range(50)]
    results = await asyncio.gather(*(storage.ingest(c) for c in copies))

    assert Counter(r.verdict for r in results) == {Verdict.ACCEPTED: 1, Verdict.RESEND: 49}
    assert {r.reply for r in results} == {next(r.reply for r in results if r.verdict is Verdict.ACCEPTED)}
    counts = await storage.counts()
    assert (counts["packets"], counts["samples"], counts["uploads"]) == (3, 3 * PER_PACKET, 51)


@pytest.mark.parametrize("known_device", [False, True])
async def test_fifty_concurrent_different_envelopes_with_one_nonce_store_one(storage: Storage,
                                                                              known_device: bool) -> None:
    if known_device:
        await storage.ingest(upload(DEVICE, 10000, [FakePacket(1, 0, b"before")]))
    requests = [upload(DEVICE, 10001, [FakePacket(0, i, bytes([i]))]) for i in range(50)]
    results = await asyncio.gather(*(storage.ingest(r) for r in requests))

    assert Counter(r.verdict for r in results) == {Verdict.ACCEPTED: 1, Verdict.REPLAY: 49}
    winner = next(i for i, r in enumerate(results) if r.verdict is Verdict.ACCEPTED)
    assert [p.packet_ts for p in await storage.list_packets(DEVICE) if p.boot_id == 0] == [winner]
    assert decoder_count(await storage.codec_state(DEVICE)) == 1 + known_device


async def test_a_packet_resent_under_a_new_nonce_is_stored_once(storage: Storage) -> None:
    p1, p2, p3 = FakePacket(0, 1000, b"a"), FakePacket(0, 2000, b"b"), FakePacket(0, 3000, b"c")
    first = await storage.ingest(upload(DEVICE, 1, [p1, p2]))
    second = await storage.ingest(upload(DEVICE, 2, [p2, p3]))  # ack of the first was lost, p2 re-queued

    assert [p.new for p in second.packets] == [False, True]
    assert second.packets[0].packet_id == first.packets[1].packet_id
    assert (second.new_packets, second.samples_stored) == (1, PER_PACKET)
    assert [p.packet_ts for p in await storage.list_packets(DEVICE)] == [1000, 2000, 3000]
    assert len(await storage.telemetry(DEVICE, limit=10_000)) == 3 * PER_PACKET


async def test_same_content_after_a_reboot_or_at_another_time_is_a_new_packet(storage: Storage) -> None:
    await storage.ingest(upload(DEVICE, 1, [FakePacket(0, 1000, b"x")]))
    result = await storage.ingest(upload(DEVICE, 2, [FakePacket(1, 1000, b"x"), FakePacket(1, 1500, b"x")]))
    assert [p.new for p in result.packets] == [True, True]


async def test_undecodable_packets_are_recorded_with_their_reason(storage: Storage) -> None:
    bad = FakePacket(0, 5000, b"\x71delta", decodable=False)
    result = await storage.ingest(upload(DEVICE, 1, [FakePacket(0, 4000), bad]))

    assert [p.status for p in result.packets] == [PacketStatus.DECODED, PacketStatus.UNDECODABLE]
    stored = (await storage.list_packets(DEVICE))[1]
    assert (stored.status, stored.reason, stored.sample_count, stored.raw_hex) == (
        PacketStatus.UNDECODABLE, "no temporal base for this delta", 0, bad.content.hex())
    stats = {(s.codec, s.status): (s.packets, s.samples) for s in await storage.packet_stats(DEVICE)}
    assert stats == {("BATCH_DICTIONARY", PacketStatus.DECODED): (1, PER_PACKET),
                     ("TEMPORAL_DELTA", PacketStatus.UNDECODABLE): (1, 0)}


async def test_decoder_state_is_threaded_through_uploads(storage: Storage) -> None:
    calls: list[str | None] = []
    for nonce in range(1, 4):
        await storage.ingest(upload(DEVICE, nonce, [FakePacket(0, nonce * 10, bytes([nonce]))] * 2, calls=calls))
    assert [decoder_count(s) for s in calls] == [0, 2, 4]
    assert decoder_count(await storage.codec_state(DEVICE)) == 6


async def test_a_failing_ingest_is_rolled_back_alone(storage: Storage) -> None:
    def broken(state: str | None) -> None:
        raise RuntimeError("decoder bug")

    good = [upload(f"dev{i}", 1) for i in range(10)]
    bad = IngestRequest("victim", 1, "ab" * 32, 10, broken)  # type: ignore[arg-type]
    results = await asyncio.gather(*(storage.ingest(r) for r in [*good[:5], bad, *good[5:]]),
                                   return_exceptions=True)

    assert isinstance(results[5], RuntimeError)
    assert all(r.verdict is Verdict.ACCEPTED for i, r in enumerate(results) if i != 5)
    # nothing of the failed unit remains: its nonce did not advance and no upload was logged
    assert await storage.list_uploads("victim") == []
    assert (await storage.ingest(upload("victim", 1))).verdict is Verdict.ACCEPTED
    assert (await storage.counts())["packets"] == 11


async def test_ingest_enqueues_outbox_messages_in_the_same_transaction(storage: Storage) -> None:
    await storage.ingest(upload(DEVICE, 1, [FakePacket(0, 1), FakePacket(0, 2, b"z")]))
    await storage.ingest(upload(DEVICE, 1))  # replay: no messages
    await storage.ingest(upload(DEVICE, 2, [FakePacket(0, 2, b"z")]))  # only a duplicate packet: none either
    messages = await storage.list_outbox()
    assert [m.topic for m in messages] == [f"ecowatt/{DEVICE}/telemetry"] * 2
    assert await storage.pending_outbox() == 2


async def test_rejected_uploads_are_logged(storage: Storage) -> None:
    upload_id = await storage.record_rejected_upload(DEVICE, "bad_mac", nonce=10002, reason="MAC mismatch",
                                                     body_bytes=512)
    [row] = await storage.list_uploads(DEVICE)
    assert (row.id, row.verdict, row.reason, row.nonce, row.body_bytes) == (
        upload_id, "bad_mac", "MAC mismatch", 10002, 512)
    # a rejected upload does not consume the nonce
    assert (await storage.ingest(upload(DEVICE, 10002))).verdict is Verdict.ACCEPTED


async def test_reset_nonces_lets_a_lower_nonce_in(storage: Storage) -> None:
    await storage.ingest(upload("A", 100))
    await storage.ingest(upload("B", 100))
    assert await storage.reset_nonces("A") == 1
    assert await storage.nonce_state("A") is None
    assert await storage.reset_nonces("A") == 0
    decoded_from: list[str | None] = []
    assert (await storage.ingest(upload("A", 1, calls=decoded_from))).verdict is Verdict.ACCEPTED
    assert decoder_count(decoded_from[0]) == 1  # the decoder state outlives the nonce: the device did not reboot
    assert (await storage.ingest(upload("B", 1))).verdict is Verdict.REPLAY
    assert [n.device_id for n in await storage.list_nonce_states()] == ["A", "B"]


async def test_telemetry_filters_by_time_and_pages_by_id(storage: Storage, clock) -> None:
    for nonce in range(1, 4):
        await storage.ingest(upload(DEVICE, nonce, [FakePacket(0, nonce, bytes([nonce]))]))
        clock.advance(60)
    start = clock.now - 180
    middle = await storage.telemetry(DEVICE, since=start + 60, until=start + 120, limit=10_000)
    assert {s.packet_ts for s in middle} == {2}
    page = await storage.telemetry(DEVICE, limit=10)
    rest = await storage.telemetry(DEVICE, after_id=page[-1].id, limit=10_000)
    assert len(page) + len(rest) == 3 * PER_PACKET
    assert [s.id for s in page + rest] == sorted(s.id for s in page + rest)


@pytest.mark.parametrize("newest_first", [False, True])
async def test_upload_log_order(storage: Storage, newest_first: bool) -> None:
    for nonce in (1, 2, 3):
        await storage.ingest(upload(DEVICE, nonce))
    nonces = [u.nonce for u in await storage.list_uploads(DEVICE, newest_first=newest_first)]
    assert nonces == ([3, 2, 1] if newest_first else [1, 2, 3])


async def test_telemetry_pages_cross_many_packets_and_skip_those_outside_the_window(
        storage: Storage, clock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("cloud.storage.ingest._TELEMETRY_BATCH", 2)  # the packet-batch loop, on few packets
    for nonce in range(1, 8):
        await storage.ingest(upload(DEVICE, nonce, [FakePacket(0, nonce, bytes([nonce]))]))
        clock.advance(60)
    everything = await storage.telemetry(DEVICE, limit=10_000)
    assert len(everything) == 7 * PER_PACKET
    pages, after = [], 0
    while page := await storage.telemetry(DEVICE, after_id=after, limit=PER_PACKET + 5):  # pages end mid-packet
        pages += page
        after = page[-1].id
    assert pages == everything
    start = clock.now - 7 * 60
    window = await storage.telemetry(DEVICE, since=start + 2 * 60, until=start + 5 * 60, limit=10_000)
    assert sorted({s.packet_ts for s in window}) == [3, 4, 5]
    assert await storage.telemetry(DEVICE, since=start + 2 * 60, limit=PER_PACKET // 2) == window[:PER_PACKET // 2]
