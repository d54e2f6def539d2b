"""Ingest requests for the storage tests (and their child processes), standing in for the service.

A packet's samples are derived from its content, so a test can tell which packet a sample came
from. The "decoder state" counts the packets decoded so far, so a test can check that the state is
threaded through uploads atomically. The reply and outbox messages carry what the storage reported.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass

from cloud.storage import (
    DecodedUpload,
    IngestRequest,
    IngestResult,
    OutboxMessage,
    PacketIn,
    PacketStatus,
    SampleIn,
)

LAYOUT = (0, 1, 5, 9, 6, 7)  # the firmware's default register selection
SAMPLES_PER_PACKET = 7


@dataclass(frozen=True)
class FakePacket:
    boot_id: int
    packet_ts: int
    content: bytes = b"packet"
    decodable: bool = True

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    def raw(self, index: int, address: int) -> int:
        return (self.content[0] * 1000 + index * 10 + address) & 0xFFFF

    def decoded(self) -> PacketIn:
        if not self.decodable:
            return PacketIn(self.boot_id, self.packet_ts, self.sha256, "TEMPORAL_DELTA", PacketStatus.UNDECODABLE,
                            "no temporal base for this delta", raw_hex=self.content.hex())
        samples = [SampleIn(i, a, self.raw(i, a), device_ms=self.packet_ts - 1000 * (6 - i))
                   for i in range(SAMPLES_PER_PACKET) for a in LAYOUT]
        return PacketIn(self.boot_id, self.packet_ts, self.sha256, "BATCH_DICTIONARY", samples=samples,
                        raw_hex=self.content.hex())


def decoder_count(state: str | None) -> int:
    return 0 if state is None else int(json.loads(state)["packets"])


def upload(device_id: str, nonce: int, packets: Sequence[FakePacket] = (FakePacket(0, 1000),), *,
           body: bytes | None = None, calls: list[str | None] | None = None) -> IngestRequest:
    """`body` is the envelope's identity (default: unique to device, nonce and packets); `calls`
    records the decoder state every decode was given."""
    body = body if body is not None else f"{device_id}|{nonce}|{packets}".encode()

    def decode(state: str | None) -> DecodedUpload:
        if calls is not None:
            calls.append(state)
        new_state = json.dumps({"packets": decoder_count(state) + len(packets)})
        return DecodedUpload([p.decoded() for p in packets], new_state)

    def reply(result: IngestResult) -> str:
        return json.dumps({"nonce": result.nonce, "new_packets": result.new_packets,
                           "samples": result.samples_stored})

    def outbox(result: IngestResult) -> list[OutboxMessage]:
        return [OutboxMessage(f"ecowatt/{device_id}/telemetry", json.dumps({"packet": p.packet_id}))
                for p in result.packets if p.new]

    return IngestRequest(device_id, nonce, hashlib.sha256(body).hexdigest(), len(body), decode, reply, outbox)
