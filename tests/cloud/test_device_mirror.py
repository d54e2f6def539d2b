"""The decoder mirror survives being stored: what is loaded decodes the device's next packets exactly as
the mirror that was dumped would have, and states written by older versions still load."""

from __future__ import annotations

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cloud.device_mirror import DeviceMirror
from cloud.storage import BatchSamples, SampleIn
from cloud.upload_decoder import decode_with_mirror
from protocol.compression import Batch, CodecState, compress_batch, encode_compressed_binary, method_label
from protocol.upload_document import UploadDocument, firmware_document, firmware_packet

LAYOUT = (0, 1, 5, 9, 6, 7)


def uploads(seed: int, count: int) -> list[UploadDocument]:
    """A device's uploads: batches that wander (the dictionary learns), now and then a damaged packet."""
    rng = random.Random(seed)
    state = CodecState()
    documents = []
    for n in range(count):
        level = rng.choice((0, 3000, 9000, 30000))
        values = tuple(min(0xFFFF, level + rng.randrange(0, 400)) for _ in range(7 * len(LAYOUT)))
        packet = compress_batch(Batch(values, LAYOUT), state).packet
        if rng.random() < 0.15:
            packet = packet[:1] + bytes(rng.randrange(256) for _ in range(len(packet) - 1))
        ts = 15_000 * (n + 1)
        entry = firmware_packet(encode_compressed_binary(packet), method=method_label(packet), register_layout=LAYOUT,
                                compressed_size=len(packet), timestamp=ts - 500, compression_time_us=3000)
        documents.append(firmware_document("dev", ts, [entry]))
    return documents


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32), split=st.integers(1, 29))
def test_a_stored_mirror_decodes_on_exactly_as_the_one_in_memory(seed: int, split: int) -> None:
    documents = uploads(seed, 30)
    kept = DeviceMirror()
    for document in documents[:split]:
        decode_with_mirror(document, kept, 1000.0)
    loaded = DeviceMirror.load(kept.dump())
    assert loaded == kept
    for document in documents[split:]:
        assert decode_with_mirror(document, loaded, 1000.0) == decode_with_mirror(document, kept, 1000.0)


def test_a_version_1_json_state_still_loads() -> None:
    mirror = DeviceMirror()
    for document in uploads(7, 12):
        decode_with_mirror(document, mirror, 1000.0)
    sha = "ab" * 32
    legacy = json.dumps({"version": 1, "boot": mirror.boot, "document_ts": mirror.document_ts,
                         "packet_ts": mirror.packet_ts, "recent": [[123, sha]], "codec": mirror.codec.to_json()})
    loaded = DeviceMirror.load(legacy)
    assert loaded.note is None and loaded.codec == mirror.codec and loaded.seen(123, sha)
    assert (loaded.boot, loaded.document_ts, loaded.packet_ts) == (mirror.boot, mirror.document_ts, mirror.packet_ts)


def test_an_unreadable_state_restarts_the_mirror_in_a_new_boot() -> None:
    mirror = DeviceMirror(boot=4)
    damaged = mirror.dump()[:-8]
    restarted = DeviceMirror.load(damaged)
    assert restarted.boot == 5 and restarted.note is not None and restarted.codec == CodecState()


def test_a_decoded_packet_s_samples_read_as_the_batch_they_are() -> None:
    """Samples are held as the batch (layout, raw values, one time) and read as one SampleIn each."""
    document = uploads(3, 1)[0]
    [packet] = decode_with_mirror(document, DeviceMirror(), 1000.0).packets
    samples = packet.samples
    assert isinstance(samples, BatchSamples) and len(samples) == 7 * len(LAYOUT)
    as_list = [SampleIn(k // len(LAYOUT), LAYOUT[k % len(LAYOUT)], raw, None, samples.sampled_at)
               for k, raw in enumerate(samples.raw)]
    assert list(samples) == as_list and samples == as_list
    assert samples[-1] == as_list[-1] and samples[2:9] == as_list[2:9]
    with pytest.raises(IndexError):
        samples[len(as_list)]
