"""Uploads built exactly as firmware 1.0.4 builds them, for the ingest tests.

Batches are compressed by the firmware's own smart selection (`compress_batch`, moving a device-side
`CodecState`), packed with the firmware's unpadded base64, wrapped in the firmware's inner document
(key order, float format, its size bugs) and signed into the envelope byte for byte (§3, §4).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from protocol.compression import Batch, CodecState, compress_batch, encode_compressed_binary, method_label
from protocol.envelope import REFERENCE_PSK, build_envelope
from protocol.upload_document import CompressedPacket, firmware_document, firmware_packet

VECTORS = Path(__file__).resolve().parents[2] / "fixtures" / "vectors"
SECURED = json.loads((VECTORS / "secured_upload.json").read_text())
COMPRESSION = json.loads((VECTORS / "compression_methods.json").read_text())
FIRMWARE_DEVICE = "ESP32_EcoWatt_Smart"
DEFAULT_LAYOUT = (0, 1, 5, 9, 6, 7)


def packet_entry(packet: bytes, layout: Sequence[int], timestamp: int) -> CompressedPacket:
    return firmware_packet(encode_compressed_binary(packet), method=method_label(packet),
                           register_layout=tuple(layout), compressed_size=len(packet), timestamp=timestamp,
                           compression_time_us=3412)


def envelope(device_id: str, nonce: int, timestamp: int, packets: Sequence[CompressedPacket],
             key: bytes = REFERENCE_PSK) -> bytes:
    document = firmware_document(device_id, timestamp, list(packets)).to_json()
    return build_envelope(key, nonce, document)


@dataclass
class FirmwareDevice:
    """A device as 1.0.4 runs: millis since boot, a nonce counter from 10000, a compression state."""

    device_id: str = FIRMWARE_DEVICE
    key: bytes = REFERENCE_PSK
    layout: tuple[int, ...] = DEFAULT_LAYOUT
    nonce: int = 10000
    millis: int = 0
    state: CodecState = field(default_factory=CodecState)
    queue: list[CompressedPacket] = field(default_factory=list)

    def sample(self, rows: Sequence[Sequence[int]]) -> bytes:
        """Compress one batch of 7 samples (each a row in `layout` order) and queue it; the packet."""
        self.millis += 14_000
        values = tuple(v for row in rows for v in row)
        packet = compress_batch(Batch(values, self.layout), self.state).encoded.packet
        self.queue.append(packet_entry(packet, self.layout, self.millis))
        return packet

    def upload(self, *, keep_queue: bool = False) -> bytes:
        """The next `/process` body: the queue drained into one document, signed with a fresh nonce."""
        self.nonce += 1
        self.millis += 1_000
        body = envelope(self.device_id, self.nonce, self.millis, self.queue, self.key)
        if not keep_queue:
            self.queue = []
        return body

    def reboot(self) -> None:
        self.millis = 0
        self.state = CodecState()
        self.queue = []
