"""The upload cycle: byte-exact envelope, nonce discipline, success rule, re-queueing, truncation."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import aiohttp
import pytest

from device_emulator.acquisition import Acquisition
from device_emulator.context import PowerCut
from device_emulator.nvs import current_nonce
from device_emulator.packet_queue import PacketQueue
from device_emulator.profiles import REFERENCE, SPEC
from device_emulator.uploader import DOCUMENT_LIMIT, POINT_NONCE_SAVED, Uploader
from protocol.compression.firmware_base64 import decode_compressed_binary
from protocol.compression.packet import decode_packet
from protocol.compression.state import CodecState
from protocol.envelope import REFERENCE_PSK, open_envelope
from protocol.errors import DocumentError
from protocol.upload_document import firmware_packet, parse_upload_document
from tests.device_emulator.core_support import ManualClock, ScriptedLink, make_context, vectors
from tests.device_emulator.standin_cloud import StandInCloud

FIRST_UPLOAD = vectors("secured_upload.json")["cases"][0]
assert FIRST_UPLOAD["name"] == "valid_first_upload"


@pytest.fixture
async def cloud() -> AsyncIterator[StandInCloud]:
    stand_in = StandInCloud()
    await stand_in.start()
    yield stand_in
    await stand_in.stop()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as client:
        yield client


def uploader(tmp_path, cloud, session, profile=REFERENCE, **kw):
    ctx = make_context(tmp_path, profile, http=session, cloud_url=cloud.url, **kw)
    queue = PacketQueue()
    return Uploader(ctx, queue, REFERENCE_PSK), queue


def packet(i: int = 0):
    return firmware_packet(
        "0AMq//+vi4W3hISuiIWbg4W0i4akg4SvioakhYOwjIanhIOzioWchYSujIWihYQA",
        method="BATCH_DICTIONARY",
        register_layout=(0, 1, 5, 9, 6, 7),
        compressed_size=47,
        timestamp=1000 + i,
        compression_time_us=3412,
    )


async def test_first_upload_of_a_fresh_device_is_the_reference_envelope(tmp_path, cloud, session) -> None:
    # The vector's packet, decoded, gives the seven samples the board polled; the device compresses
    # them at millis 29877 (3412 µs) and uploads at millis 30512 with a fresh NVS.
    document = json.loads(FIRST_UPLOAD["payload"])
    meta = document["compressed_data"][0]["decompression_metadata"]
    data = decode_compressed_binary(
        document["compressed_data"][0]["compressed_binary"], meta["compressed_size_bytes"]
    )
    samples = decode_packet(data, meta["register_layout"], CodecState()).samples(meta["register_count"])

    clock = ManualClock(29.877)
    ctx = make_context(tmp_path, REFERENCE, http=session, cloud_url=cloud.url, clock=clock)
    queue = PacketQueue()
    link = ScriptedLink(ctx.profile, [tuple(s) for s in samples], list(meta["register_layout"]))
    acquisition = Acquisition(
        ctx, link, queue, list(meta["register_layout"]), compression_time=lambda b: 3412
    )
    for _ in samples:
        await acquisition.poll()
    clock.now = 30.512
    result = await Uploader(ctx, queue, REFERENCE_PSK).upload()

    assert result.ok and result.nonce == FIRST_UPLOAD["nonce"] == 10001
    assert cloud.uploads[0].body == FIRST_UPLOAD["envelope_body"].encode()
    _, path, _ = cloud.requests[0]
    assert path == "/process"


async def test_headers_are_the_esp32_http_clients(tmp_path, cloud, session) -> None:
    up, queue = uploader(tmp_path, cloud, session)
    queue.put(packet())
    seen: dict[str, str] = {}

    async def capture(session_, context, params) -> None:  # aiohttp trace: the headers as sent
        seen.update(params.headers)

    trace = aiohttp.TraceConfig()
    trace.on_request_headers_sent.append(capture)
    async with aiohttp.ClientSession(trace_configs=[trace]) as traced:
        up.ctx.http = traced
        await up.upload()
    assert seen["User-Agent"] == "ESP32HTTPClient"
    assert seen["Content-Type"] == "application/json"
    assert "Authorization" not in seen


async def test_empty_queue_sends_nothing_and_uses_no_nonce(tmp_path, cloud, session) -> None:
    up, _ = uploader(tmp_path, cloud, session)
    assert await up.upload() is None
    assert cloud.requests == [] and current_nonce(up.ctx.nvs) == 10_000


async def test_nonce_is_saved_before_the_envelope_leaves(tmp_path, cloud, session) -> None:
    def cut(tag: str) -> None:
        if tag == POINT_NONCE_SAVED:
            raise PowerCut(tag)

    up, queue = uploader(tmp_path, cloud, session, point=cut)
    queue.put(packet())
    with pytest.raises(PowerCut):
        await up.upload()
    assert current_nonce(up.ctx.nvs) == 10_001  # durable although nothing was sent
    assert cloud.uploads == []


async def test_the_whole_queue_goes_in_one_document(tmp_path, cloud, session) -> None:
    up, queue = uploader(tmp_path, cloud, session)
    for i in range(3):
        queue.put(packet(i))
    result = await up.upload()
    assert result.ok and result.packets == 3 and len(queue) == 0
    assert [p.metadata.timestamp for p in cloud.uploads[0].document.packets] == [1000, 1001, 1002]
    assert cloud.uploads[0].document.total_samples == 3  # the firmware counts packets here


async def test_failed_upload_puts_packets_back_in_order_and_the_retry_has_a_new_nonce(
    tmp_path, cloud, session
) -> None:
    up, queue = uploader(tmp_path, cloud, session)
    for i in range(2):
        queue.put(packet(i))
    cloud.process_status = 500
    first = await up.upload()
    assert not first.ok and first.status == 500
    assert [p.metadata.timestamp for p in queue.snapshot()] == [1000, 1001]
    cloud.process_status = None
    second = await up.upload()
    assert second.ok and second.nonce == first.nonce + 1
    assert len(queue) == 0


async def test_unreachable_cloud_requeues(tmp_path, session) -> None:
    ctx = make_context(tmp_path, REFERENCE, http=session, cloud_url="http://127.0.0.1:9")
    queue = PacketQueue()
    queue.put(packet())
    result = await Uploader(ctx, queue, REFERENCE_PSK).upload()
    assert result.status is None and not result.ok and len(queue) == 1
    assert ctx.events.counters["uploads_failed"] == 1


@pytest.mark.parametrize(("profile", "requeued"), [(REFERENCE, 1), (SPEC, 0)])
async def test_only_200_is_success(profile, requeued, tmp_path, cloud, session) -> None:
    up, queue = uploader(tmp_path, cloud, session, profile)
    queue.put(packet())
    cloud.process_status = 201
    result = await up.upload()
    assert result.status == 201 and len(queue) == requeued


async def test_document_truncated_2048(tmp_path, cloud, session) -> None:
    reference, queue = uploader(tmp_path / "ref", cloud, session, REFERENCE)
    for i in range(8):
        queue.put(packet(i))
    result = await reference.upload()
    # 1.0.4 signs and sends the first 2047 bytes: authentic, but not JSON.
    assert len(result.document) == DOCUMENT_LIMIT
    opened = open_envelope(cloud.uploads[0].body, REFERENCE_PSK)
    assert opened.document == result.document
    with pytest.raises(DocumentError):
        parse_upload_document(opened.document)

    cloud.last_nonce = None  # another device, with its own fresh NVS
    fixed, queue = uploader(tmp_path / "spec", cloud, session, SPEC)
    for i in range(8):
        queue.put(packet(i))
    results = await fixed.tick()  # one tick: as many documents as it takes, each one whole
    assert len(results) >= 2 and all(r.ok and len(r.document) <= DOCUMENT_LIMIT for r in results)
    assert len(queue) == 0 and [r.nonce for r in results] == sorted({r.nonce for r in results})
    stamps = [p.metadata.timestamp for u in cloud.uploads[1:] for p in u.document.packets]
    assert stamps == [1000 + i for i in range(8)]


async def test_a_tick_stops_at_the_first_failed_document_and_keeps_the_rest(tmp_path, cloud, session) -> None:
    fixed, queue = uploader(tmp_path, cloud, session, SPEC)
    for i in range(8):
        queue.put(packet(i))
    cloud.process_status = 503
    [failed] = await fixed.tick()
    assert not failed.ok and len(queue) == 8  # put back, in order, for the next tick
    reference, queue = uploader(tmp_path / "ref", cloud, session, REFERENCE)
    queue.put(packet(0))
    queue.put(packet(1))
    cloud.process_status = 200
    assert len(await reference.tick()) == 1  # 1.0.4: one document a tick
