"""Property tests: every encoder round-trips where its format is lossless, decoders say which values
they cannot vouch for, arbitrary bytes never crash a decoder, and the codec state survives JSON."""

from __future__ import annotations

import contextlib
import json

from hypothesis import example, given
from hypothesis import strategies as st

from protocol.compression import (
    Batch,
    CodecState,
    Decoded,
    DecodeStatus,
    Encoder,
    PacketFormat,
    compress_batch,
    decode_as,
    decode_compressed_binary,
    decode_packet,
    encode_compressed_binary,
)
from protocol.errors import CodecError, DocumentError

uint16 = st.integers(0, 0xFFFF)
layouts = st.lists(st.integers(0, 9), min_size=1, max_size=10, unique=True).map(tuple)


@st.composite
def batches(draw, layout=None, values=uint16, samples=None) -> Batch:
    layout = layout or draw(layouts)
    n = (7 if samples is None else draw(samples)) * len(layout)
    return Batch(tuple(draw(st.lists(values, min_size=n, max_size=n))), layout)


@st.composite
def smooth_streams(draw) -> tuple[tuple[int, ...], list[Batch]]:
    """Batches of a random walk, the kind of data every encoder gets to win on."""
    layout = draw(layouts)
    level = draw(st.lists(st.integers(0, 6000), min_size=len(layout), max_size=len(layout)))
    step = draw(st.sampled_from([0, 2, 40, 300]))
    out = []
    for _ in range(draw(st.integers(1, 14))):
        values = []
        for _ in range(7):
            level = [min(0xFFFF, max(0, v + draw(st.integers(-step, step)))) for v in level]
            values += level
        out.append(Batch(tuple(values), layout))
    return layout, out


def _check_honest(decoded: Decoded, truth: tuple[int, ...]) -> None:
    """Decoded values differ from the truth only where flagged, and within the stated bound."""
    if decoded.status is DecodeStatus.UNDECODABLE:
        assert decoded.values == () and decoded.reason
        return
    assert len(decoded.values) == len(truth)
    for position, (got, want) in enumerate(zip(decoded.values, truth, strict=True)):
        if got != want:
            assert position in decoded.uncertain
            bound = decoded.error(position)
            assert bound is None or abs(got - want) <= bound
            if position in decoded.readings:
                assert want in decoded.readings[position]
    if decoded.status is DecodeStatus.EXACT:
        assert decoded.values == truth


@given(batches(samples=st.integers(1, 25)))
def test_binary_and_temporal_base_round_trip(batch: Batch) -> None:
    if batch.count > 255:
        return
    selection = compress_batch(batch, CodecState())
    for encoder in (Encoder.BITPACK, Encoder.TEMPORAL):
        encoded = selection.candidates[encoder]
        decoded = decode_as(encoded.format, encoded.packet, batch.layout, CodecState(), batch.samples)
        if encoded.format is PacketFormat.HEADERLESS_BITPACK and batch.count not in (7, 8):
            # Without a header the width is implied by the length, which some short counts share.
            assert decoded.status is DecodeStatus.EXACT or "width" in decoded.reason
            continue
        assert decoded.status is DecodeStatus.EXACT and decoded.values == batch.values


@given(st.lists(batches(layout=(9,)), min_size=9, max_size=12))
def test_temporal_delta_round_trips_with_the_same_history(stream: list[Batch]) -> None:
    state = CodecState()
    for batch in stream:
        before = state.copy()
        encoded = compress_batch(batch, state).candidates[Encoder.TEMPORAL]
        decoded = decode_as(encoded.format, encoded.packet, (9,), before)
        assert decoded.status is DecodeStatus.EXACT and decoded.values == batch.values
    assert encoded.format is PacketFormat.TEMPORAL_DELTA


@given(st.data())
def test_dictionary_and_semantic_decoders_flag_what_they_change(data: st.DataObject) -> None:
    layout = data.draw(layouts)
    pattern = CodecState().patterns[data.draw(st.integers(0, 3))]
    n = 7 * len(layout)
    deltas = data.draw(st.lists(st.integers(-300, 300), min_size=n, max_size=n))
    values = tuple(max(0, pattern[layout[i % len(layout)]] + d) for i, d in enumerate(deltas))
    batch = Batch(values, layout)
    selection = compress_batch(batch, CodecState())
    for encoder in (Encoder.DICTIONARY, Encoder.SEMANTIC):
        encoded = selection.candidates[encoder]
        _check_honest(decode_as(encoded.format, encoded.packet, layout, CodecState()), values)


@given(smooth_streams())
# A lossy 0x50 batch teaches the mirror an approximate entry; a later 0xD0 delta on it has no exact readings.
@example(((0, 1), [Batch((0,) * 13 + (1,), (0, 1)), Batch((0, 1) * 6 + (0, 0), (0, 1))]))
def test_cloud_mirror_decodes_what_the_device_sends_honestly(stream) -> None:
    layout, batch_list = stream
    device, mirror = CodecState(), CodecState()
    for batch in batch_list:
        packet = compress_batch(batch, device).packet
        decoded = decode_packet(packet, layout, mirror)
        _check_honest(decoded, batch.values)
        mirror.advance(decoded, layout, 7)
    assert CodecState.from_json(device.to_json()) == device
    assert CodecState.from_json(mirror.to_json()) == mirror


@given(st.binary(max_size=160), layouts, st.integers(1, 8), smooth_streams())
def test_arbitrary_bytes_decode_to_a_value_or_codec_error(packet, layout, samples, stream) -> None:
    state = CodecState()
    for batch in stream[1]:  # some learned entries and history
        compress_batch(batch, state)
    for attempt in (
        lambda: decode_packet(packet, layout, state, samples),
        *(lambda fmt=fmt: decode_as(fmt, packet, layout, state, samples) for fmt in PacketFormat),
    ):
        try:
            result = attempt()
        except CodecError:
            continue
        assert isinstance(result, Decoded)
        assert result.decodable == (len(result.values) == samples * len(layout))


@given(st.text(max_size=60), st.one_of(st.integers(-5, 300), st.none(), st.text(max_size=3)))
def test_arbitrary_compressed_binary_text_is_bytes_or_codec_error(text, size) -> None:
    try:
        data = decode_compressed_binary(text, size)
    except CodecError:
        return
    assert len(data) == size


@given(st.binary(min_size=1, max_size=189))
def test_firmware_base64_round_trips(packet: bytes) -> None:
    assert decode_compressed_binary(encode_compressed_binary(packet), len(packet)) == packet


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 70000) | st.text(max_size=4),
    lambda inner: st.lists(inner, max_size=11) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=30,
)


@given(
    st.sampled_from(["patterns", "pattern_errors", "doubtful_from", "temporal", "version"]),
    st.sampled_from([None, "rows", "errors", "next_row", "batches", "previous_count", "previous_layout"]),
    json_values,
)
def test_corrupted_state_documents_load_or_raise_document_error(key, inner, value) -> None:
    doc = json.loads(CodecState().to_json())
    if inner and key == "temporal":
        doc["temporal"][inner] = value
    else:
        doc[key] = value
    try:
        state = CodecState.from_json(json.dumps(doc))
    except DocumentError:
        return
    assert CodecState.from_json(state.to_json()) == state


@given(st.binary(max_size=80))
def test_arbitrary_state_bytes_load_or_raise_document_error(data: bytes) -> None:
    with contextlib.suppress(DocumentError):
        CodecState.from_json(data)
