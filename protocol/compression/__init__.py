"""The firmware's batch compression (firmware-protocol.md §3): encoders, decoders and their state.

Device side: `compress_batch(batch, state)` runs the smart selection and moves the state on.
Cloud side: `decode_packet(packet, layout, state)` identifies and decodes a received packet against
the mirrored state, then `state.advance(decoded, layout, samples)` moves the mirror on.
"""

from protocol.compression.batch import BATCH_SAMPLES, Batch
from protocol.compression.decoded import Decoded, DecodeStatus, Encoded, PacketFormat
from protocol.compression.firmware_base64 import decode_compressed_binary, encode_compressed_binary
from protocol.compression.packet import decode_as, decode_packet, method_label
from protocol.compression.selection import CANDIDATES, Encoder, Selection, compress_batch
from protocol.compression.state import BUILTIN_PATTERNS, CodecState, TemporalHistory

__all__ = [
    "BATCH_SAMPLES",
    "BUILTIN_PATTERNS",
    "CANDIDATES",
    "Batch",
    "CodecState",
    "Decoded",
    "DecodeStatus",
    "Encoded",
    "Encoder",
    "PacketFormat",
    "Selection",
    "TemporalHistory",
    "compress_batch",
    "decode_as",
    "decode_compressed_binary",
    "decode_packet",
    "encode_compressed_binary",
    "method_label",
]
