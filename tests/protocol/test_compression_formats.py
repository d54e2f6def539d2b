"""Behaviour of the firmware's codecs that the vectors do not pin down: the 0xD0 mask and token limits,
the temporal history, dictionary learning, packet identification and the cloud-side mirror."""

from __future__ import annotations

import random

import pytest

from protocol.compression import (
    BUILTIN_PATTERNS,
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
    method_label,
)
from protocol.errors import CodecError, DocumentError
from protocol.registers import DEFAULT_SELECTION

PATTERN3 = BUILTIN_PATTERNS[3]


def _near_pattern3(layout: tuple[int, ...], delta: int = 1) -> list[int]:
    return [PATTERN3[reg] + delta for reg in layout] * 7


def _dictionary(values: list[int], layout: tuple[int, ...], state: CodecState | None = None):
    state = state or CodecState()
    encoded = compress_batch(Batch(tuple(values), layout), state.copy()).candidates[Encoder.DICTIONARY]
    assert encoded.format is PacketFormat.DICTIONARY
    return encoded.packet, decode_as(PacketFormat.DICTIONARY, encoded.packet, layout, state)


def test_dictionary_with_every_delta_nonzero_decodes_exactly_beyond_16_values() -> None:
    layout = DEFAULT_SELECTION  # 42 values
    values = _near_pattern3(layout)
    _, decoded = _dictionary(values, layout)
    assert decoded.status is DecodeStatus.EXACT and list(decoded.values) == values


def test_dictionary_zero_delta_at_position_16_to_31_is_undecodable() -> None:
    layout = DEFAULT_SELECTION
    values = _near_pattern3(layout)
    values[20] = PATTERN3[layout[20 % 6]]  # equals the pattern: no token, and no mask bit to say so
    _, decoded = _dictionary(values, layout)
    assert decoded.status is DecodeStatus.UNDECODABLE
    assert "16" in decoded.reason and decoded.values == ()


def test_dictionary_mask_bits_alias_mod_32() -> None:
    layout = DEFAULT_SELECTION
    values = _near_pattern3(layout)
    values[3] = PATTERN3[layout[3]]  # position 35 still sets bit 3, so position 3 is in doubt
    packet, decoded = _dictionary(values, layout)
    assert packet[3] & 0b1000 and decoded.status is DecodeStatus.UNDECODABLE
    values[35] = PATTERN3[layout[35 % 6]]  # now bit 3 is clear: both positions are known zero
    packet, decoded = _dictionary(values, layout)
    assert not packet[3] & 0b1000
    assert decoded.status is DecodeStatus.EXACT and list(decoded.values) == values


def test_dictionary_one_byte_deltas_of_64_and_more_are_ambiguous() -> None:
    layout = (9,)  # Pac, pattern 0 holds 4200
    values = [4300, 4201, 4199, 4200, 4202, 4200, 4203]
    packet, decoded = _dictionary(values, layout)
    assert packet[1] == 0 and packet[5] == 0x80 | (100 & 0x7F)  # +100 folds onto the byte of -28
    assert decoded.status is DecodeStatus.AMBIGUOUS
    assert decoded.values[0] == 4200 - 28  # the firmware's reading
    assert 4300 in decoded.readings[0] and 0 in decoded.uncertain
    assert decoded.values[1] == 4201  # positive small deltas are exact
    assert 2 in decoded.uncertain  # but -1 could have been +127
    assert 4199 + 128 in decoded.readings[2]


def test_temporal_delta_frames_start_with_the_ninth_single_register_batch() -> None:
    state = CodecState()
    formats = []
    for k in range(12):
        batch = Batch(tuple(3000 + 3 * (7 * k + j) for j in range(7)), (9,))
        selection = compress_batch(batch, state)
        formats.append(selection.candidates[Encoder.TEMPORAL].format)
        if k >= 8:
            assert selection.encoder is Encoder.TEMPORAL
    assert formats == [PacketFormat.TEMPORAL_BASE] * 8 + [PacketFormat.TEMPORAL_DELTA] * 4


def test_multi_register_batches_never_get_a_temporal_delta_frame() -> None:
    state = CodecState()
    for _ in range(20):
        selection = compress_batch(Batch(tuple(_near_pattern3((0, 9))), (0, 9)), state)
        assert selection.candidates[Encoder.TEMPORAL].format is PacketFormat.TEMPORAL_BASE


def test_learning_appends_last_values_only_for_unmatched_batches_up_to_15() -> None:
    state = CodecState()
    far = Batch.from_samples([[100 * k, 9000 + k] for k in range(7)], (1, 3))
    assert state.learn(far)
    assert state.patterns[4] == (0, 600, 0, 9006, 0, 0, 0, 0, 0, 0)
    assert not state.learn(far)  # it matches its own entry now
    assert not state.learn(Batch(tuple(_near_pattern3((0, 9))), (0, 9)))
    for k in range(20):
        state.learn(Batch((20000 + 1000 * k,) * 7, (7,)))
    assert len(state.patterns) == 15


def test_headerless_packet_whose_first_byte_is_a_marker_is_identified() -> None:
    layout = (0,)
    values = (3330, 3340, 3350, 3345, 3335, 3331, 3339)  # 12-bit values: the first byte is 0xD0
    state = CodecState()
    selection = compress_batch(Batch(values, layout), state.copy())
    assert selection.packet[0] == 0xD0 and selection.encoded.format is PacketFormat.HEADERLESS_BITPACK
    assert method_label(selection.packet) == "BATCH_DICTIONARY"  # the firmware's label is wrong
    decoded = decode_packet(selection.packet, layout, state)
    assert decoded.format is PacketFormat.HEADERLESS_BITPACK and decoded.values == values


def test_semantic_decoding_flags_every_value_it_may_have_changed() -> None:
    layout = (0, 1)  # Vac1 (wide, tolerance 10) and Iac1 (narrow)
    batch = Batch.from_samples([[2300 + k, 300] for k in range(7)], layout)
    packet = compress_batch(batch, CodecState()).candidates[Encoder.SEMANTIC].packet
    decoded = decode_as(PacketFormat.SEMANTIC, packet, layout, CodecState())
    assert decoded.status is DecodeStatus.LOSSY
    assert decoded.samples(2) == [[2300, 300 & 0xFF]] * 7
    assert 0 not in decoded.uncertain  # a run's first wide value is exact
    assert all(decoded.bounds[p] == 10 for p in range(2, 14, 2))
    assert all(p in decoded.uncertain and p not in decoded.bounds for p in range(1, 14, 2))


def _day(layout: tuple[int, ...], batches: int, seed: int) -> list[Batch]:
    rng = random.Random(seed)
    level = [rng.randrange(0, 5000) for _ in layout]
    out = []
    for _ in range(batches):
        rows = []
        for _ in range(7):
            level = [min(0xFFFF, max(0, v + rng.randrange(-30, 31))) for v in level]
            rows.append(level)
        out.append(Batch.from_samples(rows, layout))
    return out


@pytest.mark.parametrize("layout", [(9,), (0,), (7,), (0, 7), DEFAULT_SELECTION, tuple(range(10))])
def test_cloud_mirror_follows_the_device(layout: tuple[int, ...]) -> None:
    device, mirror = CodecState(), CodecState()
    exact = 0
    for batch in _day(layout, 150, seed=sum(layout)):
        packet = compress_batch(batch, device).packet
        decoded = decode_packet(packet, layout, mirror)
        mirror.advance(decoded, layout, 7)
        if decoded.status is DecodeStatus.EXACT:
            exact += 1
            assert decoded.values == batch.values
        if decoded.decodable:
            wrong = [p for p, (a, b) in enumerate(zip(decoded.values, batch.values, strict=True)) if a != b]
            assert set(wrong) <= set(decoded.uncertain)
            for p in wrong:
                bound = decoded.error(p)
                assert bound is None or abs(decoded.values[p] - batch.values[p]) <= bound
    assert exact > 0
    if mirror.exact and mirror.temporal.certain_for(7 * len(layout), layout):
        assert mirror.patterns == device.patterns


def test_mirror_of_an_all_exact_stream_equals_the_device_state() -> None:
    layout = (9,)
    device, mirror = CodecState(), CodecState()
    for k in range(40):
        batch = Batch(tuple(20000 + 40 * (7 * k + j) + (j % 2) for j in range(7)), layout)
        decoded = decode_packet(compress_batch(batch, device).packet, layout, mirror)
        assert decoded.status is DecodeStatus.EXACT
        mirror.advance(decoded, layout, 7)
    assert mirror.to_json() == device.to_json()


def test_mirror_that_missed_a_learning_packet_flags_the_entry() -> None:
    layout = (9,)
    device, mirror = CodecState(), CodecState()
    far = Batch((20000, 20010, 20005, 20000, 20007, 20003, 20001), layout)
    compress_batch(far, device)  # the device learns entry 4 from it
    assert len(device.patterns) == 5
    mirror.advance(Decoded.undecodable(None, "packet fits several formats"), layout, 7)
    near = Batch((20020, 20030, 20040, 20020, 20010, 20011, 20012), layout)
    packet = compress_batch(near, device).packet
    assert packet[:2] == b"\xd0\x04"
    decoded = decode_packet(packet, layout, mirror)
    assert decoded.status is DecodeStatus.UNDECODABLE and "learned" in decoded.reason


def test_mirror_that_lost_a_packet_detects_an_unknown_entry() -> None:
    layout = (0, 9)
    device = CodecState()
    compress_batch(Batch.from_samples([[20000, 30000]] * 7, layout), device)  # lost in transit
    packet = compress_batch(Batch.from_samples([[20001, 30002]] * 7, layout), device).packet
    decoded = decode_packet(packet, layout, CodecState())
    assert decoded.status is DecodeStatus.UNDECODABLE and "lost" in decoded.reason


def test_state_json_round_trips_and_rejects_bad_documents() -> None:
    device = CodecState()
    for batch in _day((9,), 30, seed=3):
        compress_batch(batch, device)
    assert CodecState.from_json(device.to_json()) == device
    for bad in ("", "[]", '{"version": 2}', device.to_json().replace('"next_row":', '"next_row":-1,"x":')):
        with pytest.raises(DocumentError):
            CodecState.from_json(bad)


@pytest.mark.parametrize(
    ("text", "size"),
    [("0AMq", 4), ("0AMq", 0), ("0A=q", 2), ("0AM", 2), ("ü", 1), ("0AMr", 2), ("AAAA", "3")],
)
def test_compressed_binary_that_disagrees_with_its_size_is_rejected(text: str, size) -> None:
    with pytest.raises(CodecError):
        decode_compressed_binary(text, size)


def test_decode_rejects_unknown_markers_and_bad_layouts() -> None:
    with pytest.raises(CodecError):
        decode_packet(b"\x42\x0e", (0, 1), CodecState())
    with pytest.raises(CodecError):
        decode_packet(b"\x00\x0e", (0, 11), CodecState())
    with pytest.raises(CodecError):
        decode_packet(b"", (0,), CodecState())
