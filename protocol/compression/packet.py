"""Packet identification, the method label and decoding of a received packet (§3.8, §3.10).

With more than 8 values per batch every format has a header and the first byte names it. A
single-register batch (7 values) may be headerless, so a packet can fit several formats: the
decoder lists every structural reading and, when more than one remains, keeps those that the
firmware's smart selection reproduces byte for byte from the mirrored state. When that still leaves
several, the packet is reported undecodable rather than guessed.
"""

from __future__ import annotations

from collections.abc import Sequence

from protocol.compression import bitpack, dictionary, raw, rle, temporal
from protocol.compression.batch import BATCH_SAMPLES, MAX_COUNT, Batch, check_layout
from protocol.compression.binary import encode_binary
from protocol.compression.decoded import Decoded, DecodeStatus, PacketFormat
from protocol.compression.selection import CANDIDATES, Encoder
from protocol.compression.state import CodecState
from protocol.errors import CodecError

LABELS = {
    dictionary.MARKER: "BATCH_DICTIONARY",
    temporal.BASE_MARKER: "BATCH_TEMPORAL",
    temporal.DELTA_MARKER: "BATCH_TEMPORAL",
    rle.MARKER: "BATCH_SEMANTIC",
}
DEFAULT_LABEL = "BATCH_BITPACK"  # also raw 0x00 and every headerless packet

MARKERS = {
    dictionary.MARKER: PacketFormat.DICTIONARY,
    bitpack.MARKER: PacketFormat.BITPACK,
    raw.MARKER: PacketFormat.RAW,
    rle.MARKER: PacketFormat.SEMANTIC,
    temporal.BASE_MARKER: PacketFormat.TEMPORAL_BASE,
    temporal.DELTA_MARKER: PacketFormat.TEMPORAL_DELTA,
}
HEADERLESS = (PacketFormat.HEADERLESS_RAW, PacketFormat.HEADERLESS_BITPACK)
HEADERLESS_MAX_COUNT = 8


def method_label(packet: bytes) -> str:
    """`decompression_metadata.method` as the firmware derives it: from the first byte only."""
    if not packet:
        raise CodecError("empty packet", packet)
    return LABELS.get(packet[0], DEFAULT_LABEL)


def _count(layout: Sequence[int], samples: int) -> tuple[tuple[int, ...], int]:
    regs = check_layout(layout)
    count = samples * len(regs)
    if not 0 < count <= MAX_COUNT:
        raise CodecError(f"a batch holds 1..{MAX_COUNT} values", count)
    return regs, count


def decode_as(
    fmt: PacketFormat,
    packet: bytes,
    layout: Sequence[int],
    state: CodecState,
    samples: int = BATCH_SAMPLES,
) -> Decoded:
    """Decode `packet` read as format `fmt` (CodecError if it is not one)."""
    regs, count = _count(layout, samples)
    return _decode_as(fmt, packet, regs, count, state)


def _decode_as(
    fmt: PacketFormat, packet: bytes, regs: tuple[int, ...], count: int, state: CodecState
) -> Decoded:
    """`decode_as` for a layout and count already checked."""
    if fmt in HEADERLESS and count > HEADERLESS_MAX_COUNT:
        raise CodecError("headerless packets exist only for batches of at most 8 values", count)
    match fmt:
        case PacketFormat.DICTIONARY:
            return dictionary.decode_dictionary(packet, regs, state, count)
        case PacketFormat.BITPACK:
            return bitpack.decode_bitpack(packet, count)
        case PacketFormat.RAW:
            return raw.decode_raw(packet, count)
        case PacketFormat.SEMANTIC:
            return rle.decode_semantic(packet, regs, count)
        case PacketFormat.TEMPORAL_BASE:
            return temporal.decode_temporal_base(packet, regs, count)
        case PacketFormat.TEMPORAL_DELTA:
            return temporal.decode_temporal_delta(packet, regs, state.temporal, count)
        case PacketFormat.HEADERLESS_RAW:
            return raw.decode_headerless_raw(packet, count)
        case PacketFormat.HEADERLESS_BITPACK:
            return _decode_headerless_bitpack(packet, count)


def _decode_headerless_bitpack(packet: bytes, count: int) -> Decoded:
    # The width is not stored: only the one the binary encoder would pick for the values is real.
    readings = []
    for bits in bitpack.headerless_widths(len(packet), count):
        try:
            decoded = bitpack.decode_headerless_bitpack(packet, count, bits)
        except CodecError:
            continue
        if encode_binary(decoded.values).packet == packet:
            readings.append(decoded)
    if not readings:
        raise CodecError("not a headerless bit-packed packet", packet)
    if len(readings) > 1:
        return Decoded.undecodable(PacketFormat.HEADERLESS_BITPACK, "bit width cannot be told")
    return readings[0]


# The encoders whose output can be a packet of each format.
SOURCES = {
    PacketFormat.DICTIONARY: (Encoder.DICTIONARY,),
    PacketFormat.TEMPORAL_BASE: (Encoder.TEMPORAL,),
    PacketFormat.TEMPORAL_DELTA: (Encoder.TEMPORAL,),
    PacketFormat.SEMANTIC: (Encoder.SEMANTIC,),
    PacketFormat.BITPACK: (Encoder.DICTIONARY, Encoder.BITPACK),
    PacketFormat.RAW: (Encoder.DICTIONARY, Encoder.BITPACK),
    PacketFormat.HEADERLESS_BITPACK: (Encoder.DICTIONARY, Encoder.BITPACK),
    PacketFormat.HEADERLESS_RAW: (Encoder.DICTIONARY, Encoder.BITPACK),
}


def _excluded(decoded: Decoded, packet: bytes, regs: tuple[int, ...], state: CodecState) -> bool:
    """Whether the device's smart selection cannot have sent `packet` for these (exact) values.

    Encoders whose output the mirror cannot know (a doubtful dictionary, uncertain history) never
    rule a reading out.
    """
    if decoded.status is not DecodeStatus.EXACT or decoded.format is None:
        return False
    batch = Batch(decoded.values, regs)
    knowable = {
        Encoder.DICTIONARY: state.exact,
        Encoder.TEMPORAL: state.temporal.certain_for(batch.count, regs),
    }
    outputs = [
        encode(batch, state).packet if knowable.get(encoder, True) else None
        for encoder, encode in CANDIDATES.items()
    ]
    order = list(CANDIDATES)
    for source in SOURCES[decoded.format]:
        at = order.index(source)
        if outputs[at] is None:
            return False
        if outputs[at] != packet:
            continue
        # The winner is the first of the shortest: earlier outputs are longer, later ones not shorter.
        if all(
            out is None or (len(out) > len(packet) if i < at else len(out) >= len(packet))
            for i, out in enumerate(outputs)
            if i != at
        ):
            return False
    return True


def decode_packet(
    packet: bytes, layout: Sequence[int], state: CodecState, samples: int = BATCH_SAMPLES
) -> Decoded:
    """Identify and decode one packet with the device's mirrored state (which is not changed).

    Returns a Decoded (possibly ambiguous, lossy or undecodable, with the reason); raises CodecError
    for bytes the firmware cannot have produced for this layout.
    """
    regs, count = _count(layout, samples)
    if not packet:
        raise CodecError("empty packet", packet)
    if count > HEADERLESS_MAX_COUNT:
        fmt = MARKERS.get(packet[0])
        if fmt is None:
            raise CodecError("unknown packet marker", packet[0])
        return _decode_as(fmt, packet, regs, count, state)
    readings = []
    for fmt in PacketFormat:
        try:
            readings.append(_decode_as(fmt, packet, regs, count, state))
        except CodecError:
            continue
    if not readings:
        raise CodecError(f"packet fits no firmware format for {count} values", packet)
    if len(readings) > 1:
        readings = [d for d in readings if not _excluded(d, packet, regs, state)]
    if len(readings) == 1:
        return readings[0]
    if not readings:
        return Decoded.undecodable(None, "no reading re-encodes from the mirrored state: packets were lost")
    return Decoded.undecodable(
        None, "packet fits several formats: " + ", ".join(str(d.format) for d in readings)
    )
