"""protocol.compression against every case of fixtures/vectors/compression_methods.json (real firmware bytes)."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from protocol.compression import (
    BUILTIN_PATTERNS,
    Batch,
    CodecState,
    DecodeStatus,
    Encoder,
    PacketFormat,
    compress_batch,
    decode_as,
    decode_compressed_binary,
    decode_packet,
    encode_compressed_binary,
    method_label,
)

VECTORS = json.loads((Path(__file__).parents[2] / "fixtures/vectors/compression_methods.json").read_text())
CASES = VECTORS["cases"]
ENCODER_OF = {
    "0xD0": Encoder.DICTIONARY,
    "0x50": Encoder.SEMANTIC,
    "0x70": Encoder.TEMPORAL,
    "0x71": Encoder.TEMPORAL,
}


def _cases(predicate=lambda c: True):
    chosen = [c for c in CASES if predicate(c)]
    assert chosen, "the vector file no longer has cases of this kind"
    return pytest.mark.parametrize("case", chosen, ids=[c["name"] for c in chosen])


def _flat(samples: list[list[int]]) -> tuple[int, ...]:
    return tuple(v for sample in samples for v in sample)


def _state(case: dict) -> CodecState:
    """A device state as the case needs it, built through the public transitions."""
    state = CodecState()
    required = case["decoder_state_required"] or {}
    for pattern in required.get("dictionary_patterns", [])[len(BUILTIN_PATTERNS) :]:
        layout = list(range(10))
        assert state.learn(Batch.from_samples([pattern] * 7, layout))  # learns the last sample
    if "prev1_last_value_of_previous_batch" in required:
        batches = required["batches_compressed_since_boot_before_this_one"]
        for reg, prev1 in required["prev1_last_value_of_previous_batch"].items():
            prev2 = required["prev2_last_value_of_batch_before"][reg]
            for k in range(batches):
                value = prev1 if k == batches - 1 else prev2
                compress_batch(Batch.from_samples([[value]] * 7, [int(reg)]), state)
    if "dictionary_patterns" in required:
        assert state.patterns == [tuple(p) for p in required["dictionary_patterns"]]
    return state


def _encoder(case: dict) -> Encoder:
    return ENCODER_OF.get(case["method_id"], Encoder.BITPACK)


def test_builtin_dictionary_is_the_vectors() -> None:
    assert [list(p) for p in BUILTIN_PATTERNS] == VECTORS["initial_dictionary"]
    assert VECTORS["batch_samples"] == 7


@_cases()
def test_encoder_emits_the_firmware_bytes(case: dict) -> None:
    batch = Batch.from_samples(case["input_samples"], case["register_layout"])
    selection = compress_batch(batch, _state(case))
    encoded = selection.candidates[_encoder(case)]
    assert encoded.packet.hex() == case["encoded_hex"]
    assert len(encoded.packet) == case["encoded_len"]
    assert method_label(encoded.packet) == case["label_in_metadata"]
    if case["method_id"] is None:
        assert encoded.format in (PacketFormat.HEADERLESS_RAW, PacketFormat.HEADERLESS_BITPACK)
    else:
        assert encoded.format.value == case["method_id"]


@_cases()
def test_smart_selection_picks_what_the_firmware_picked(case: dict) -> None:
    expected = case["selected_by_smart_selection"]
    batch = Batch.from_samples(case["input_samples"], case["register_layout"])
    selection = compress_batch(batch, _state(case))
    assert {str(k): v for k, v in selection.sizes.items()} == expected["sizes"]
    assert selection.encoder == expected["method"]
    assert f"0x{selection.packet[0]:02X}" == expected["first_byte"]


@_cases()
def test_decoder_recovers_the_expected_samples(case: dict) -> None:
    packet = bytes.fromhex(case["encoded_hex"])
    state = _state(case)
    fmt = (
        compress_batch(Batch.from_samples(case["input_samples"], case["register_layout"]), state.copy())
        .candidates[_encoder(case)]
        .format
    )
    decoded = decode_as(fmt, packet, case["register_layout"], state)
    assert decoded.decodable is case["decodable"]
    assert decoded.samples(len(case["register_layout"])) == case["expected_decoded_samples"]
    recovered = decoded.values == _flat(case["input_samples"])
    assert recovered is case["lossless"]
    if not case["lossless"]:
        assert decoded.status is DecodeStatus.LOSSY
        wrong = [
            i
            for i, (a, b) in enumerate(zip(decoded.values, _flat(case["input_samples"]), strict=True))
            if a != b
        ]
        assert set(wrong) <= set(decoded.uncertain)  # every wrong value is flagged
    if decoded.status is DecodeStatus.EXACT:
        assert recovered


@_cases(lambda c: c["method_id"] == "0xD0")
def test_dictionary_packet_names_the_pattern_used(case: dict) -> None:
    packet = bytes.fromhex(case["encoded_hex"])
    assert packet[1] == case["decoder_state_required"]["pattern_index_used"]


def _needs_learned_state(case: dict) -> bool:
    required = case["decoder_state_required"] or {}
    return (
        required.get("pattern_index_used", 0) >= len(BUILTIN_PATTERNS)
        or "prev1_last_value_of_previous_batch" in required
    )


@_cases(_needs_learned_state)
def test_packet_is_undecodable_without_the_state_it_needs(case: dict) -> None:
    packet = bytes.fromhex(case["encoded_hex"])
    fmt = PacketFormat(case["method_id"])
    decoded = decode_as(fmt, packet, case["register_layout"], CodecState())
    assert decoded.status is DecodeStatus.UNDECODABLE
    assert decoded.reason


@_cases(
    lambda c: (
        c["encoded_hex"][:2] == c["selected_by_smart_selection"]["first_byte"][2:].lower()
        and c["selected_by_smart_selection"]["sizes"][c["selected_by_smart_selection"]["method"]]
        == c["encoded_len"]
    )
)
def test_cloud_identifies_packets_the_firmware_sends(case: dict) -> None:
    """A receiver knows only the layout and its mirrored state: it must find the format itself."""
    decoded = decode_packet(bytes.fromhex(case["encoded_hex"]), case["register_layout"], _state(case))
    assert decoded.samples(len(case["register_layout"])) == case["expected_decoded_samples"]


@_cases()
def test_firmware_base64_never_pads_and_is_cut_to_size(case: dict) -> None:
    packet = bytes.fromhex(case["encoded_hex"])
    text = encode_compressed_binary(packet)
    assert "=" not in text and len(text) % 4 == 0
    extra = len(base64.b64decode(text)) - len(packet)
    assert extra == {0: 0, 1: 2, 2: 1}[len(packet) % 3]
    assert decode_compressed_binary(text, len(packet)) == packet
    assert decode_compressed_binary(base64.b64encode(packet).decode(), len(packet)) == packet
