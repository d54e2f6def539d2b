"""The firmware's smart selection (`compressBatchWithSmartSelection`, §3.1).

Four encoders run in a fixed order on every batch and the shortest output wins, the earlier encoder
on ties. The temporal encoder records the batch in its history whatever wins; the dictionary learns
after the choice. `compress_batch` is the device side of the state machine that
`CodecState.advance` mirrors in the cloud.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from protocol.compression.batch import Batch
from protocol.compression.binary import encode_binary
from protocol.compression.decoded import Encoded
from protocol.compression.dictionary import encode_dictionary
from protocol.compression.rle import encode_semantic
from protocol.compression.state import CodecState
from protocol.compression.temporal import encode_temporal


class Encoder(StrEnum):
    """The four candidates, in the firmware's order."""

    DICTIONARY = "DICTIONARY"
    TEMPORAL = "TEMPORAL"
    SEMANTIC = "SEMANTIC"
    BITPACK = "BITPACK"


def dictionary_candidate(batch: Batch, state: CodecState) -> Encoded:
    """0xD0 when an entry matches, else the binary encoding."""
    return encode_dictionary(batch, state.patterns) or encode_binary(batch.values)


def temporal_candidate(batch: Batch, state: CodecState) -> Encoded:
    return encode_temporal(batch, state.temporal)


def semantic_candidate(batch: Batch, state: CodecState) -> Encoded:
    return encode_semantic(batch)


def bitpack_candidate(batch: Batch, state: CodecState) -> Encoded:
    return encode_binary(batch.values)


# Each candidate reads the state as it was before the batch; none of them changes it.
CANDIDATES = {
    Encoder.DICTIONARY: dictionary_candidate,
    Encoder.TEMPORAL: temporal_candidate,
    Encoder.SEMANTIC: semantic_candidate,
    Encoder.BITPACK: bitpack_candidate,
}


@dataclass(frozen=True)
class Selection:
    encoder: Encoder
    encoded: Encoded
    candidates: dict[Encoder, Encoded]

    @property
    def packet(self) -> bytes:
        return self.encoded.packet

    @property
    def sizes(self) -> dict[Encoder, int]:
        return {encoder: len(c.packet) for encoder, c in self.candidates.items()}


def compress_batch(batch: Batch, state: CodecState) -> Selection:
    """Compress one batch as the firmware does and move `state` past it."""
    candidates = {encoder: encode(batch, state) for encoder, encode in CANDIDATES.items()}
    state.temporal.record(batch.layout, batch.values)
    winner = min(candidates, key=lambda encoder: len(candidates[encoder].packet))  # first on ties
    state.learn(batch)
    return Selection(winner, candidates[winner], candidates)
