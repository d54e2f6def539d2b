"""What the cloud publishes about stored telemetry: MQTT outbox payloads and `telemetry` events.

Per upload with new packets:
  * `ecowatt/<device>/telemetry` (QoS 1): every new sample with register, raw and scaled value, unit,
    boot, packet timestamp, estimated sampling time, codec and decode status; and a summary per packet;
  * `ecowatt/data/<device>` (QoS 1), the seed server's shape (§9.2), one per decodable packet;
  * `ecowatt/<device>/state` (QoS 1, retained): the newest value of each register.
The `telemetry` event on the bus carries the same object as the MQTT telemetry payload.

A packet's JSON is rendered once (`render_packet`), outside the storage transaction when it can be,
so the transaction only joins fragments once it knows which packets are new and the upload's id.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from cloud.storage import IngestResult, OutboxMessage, PacketIn, PacketStatus
from cloud.upload_decoder import register_of
from protocol.registers import REGISTER_COUNT, Register


def _dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def topic_segment(device_id: str) -> str:
    """A device id made safe as one MQTT topic level."""
    return "".join("_" if c in "+#/" else c for c in device_id)


@dataclass(frozen=True)
class RenderedPacket:
    samples: list[str]  # one JSON object per sample
    summary: str  # JSON object describing the packet
    seed: str | None  # the seed-shape data message, None for an undecodable packet
    latest: dict[str, str] = field(default_factory=dict)  # register name -> JSON of its last value here


def _register_fields(address: int) -> tuple[str, Register | None]:
    register = register_of(address)
    if register is None:
        return f'"register":null,"address":{address},"unit":null', None
    return f'"register":{_dumps(register.name)},"address":{address},"unit":{_dumps(register.unit)}', register


# The per-register part of a sample's JSON, rendered once (this runs for every sample ingested).
_REGISTER_FIELDS = {address: _register_fields(address) for address in range(REGISTER_COUNT)}


def render_packet(device_id: str, packet: PacketIn, received_at: float) -> RenderedPacket:
    status = str(packet.status)
    samples = []
    values: list[float | None] = []
    latest: dict[str, str] = {}
    common = (f'"boot_id":{packet.boot_id},"packet_ts":{packet.packet_ts},"codec":{_dumps(packet.codec)},'
              f'"status":{_dumps(status)}')
    times: dict[float | None, str] = {}  # a packet's samples share few sampling times
    for s in packet.samples:
        fields, register = _REGISTER_FIELDS.get(s.address) or _register_fields(s.address)
        sampled_at = times.get(s.sampled_at)
        if sampled_at is None:
            sampled_at = times[s.sampled_at] = _dumps(s.sampled_at)
        value = register.scaled(s.raw) if register else None
        values.append(value)
        value_json = "null" if value is None else repr(value)
        samples.append(f'{{{fields},"raw":{s.raw},"value":{value_json},"sample_index":{s.index},'
                       f'"sampled_at":{sampled_at},{common}}}')
        if register is not None:  # samples are in time order: the last of each register wins
            latest[register.name] = f'{{"raw":{s.raw},"value":{value_json},"unit":{_dumps(register.unit)}}}'
    summary = _dumps({"boot_id": packet.boot_id, "packet_ts": packet.packet_ts, "codec": packet.codec,
                      "status": status, "reason": packet.reason, "samples": len(packet.samples)})
    seed = None
    if packet.status is not PacketStatus.UNDECODABLE:
        size = len(packet.raw_hex) // 2 if packet.raw_hex else 0
        seed = _dumps({"device_id": device_id, "timestamp": received_at, "values": values,
                       "sample_count": len(values),
                       "compression_stats": {"method": packet.codec,
                                             "ratio": size / (2 * len(values)) if values else None,
                                             "original_size": 2 * len(values), "compressed_size": size}})
    return RenderedPacket(samples, summary, seed, latest)


def new_packets(packets: Sequence[Any], result: IngestResult) -> list[Any]:
    """The items of `packets` (parallel to the upload's packets) that were stored now, not before."""
    return [p for p, stored in zip(packets, result.packets, strict=True) if stored.new]


def telemetry_payload(device_id: str, result: IngestResult, rendered: Sequence[RenderedPacket],
                      received_at: float) -> str:
    return (f'{{"device_id":{_dumps(device_id)},"upload_id":{result.upload_id},"nonce":{result.nonce},'
            f'"received_at":{_dumps(received_at)},'
            f'"samples":[{",".join(s for r in rendered for s in r.samples)}],'
            f'"packets":[{",".join(r.summary for r in rendered)}]}}')


def outbox_messages(device_id: str, result: IngestResult, rendered: Sequence[RenderedPacket],
                    received_at: float) -> list[OutboxMessage]:
    """The MQTT messages of the new packets of one upload (none when nothing new was stored)."""
    if not rendered:
        return []
    topic = topic_segment(device_id)
    messages = [OutboxMessage(f"ecowatt/{topic}/telemetry", telemetry_payload(device_id, result, rendered,
                                                                              received_at))]
    messages += [OutboxMessage(f"ecowatt/data/{topic}", r.seed) for r in rendered if r.seed is not None]
    latest: dict[str, str] = {}
    for r in rendered:
        latest.update(r.latest)
    if latest:
        registers = ",".join(f"{_dumps(name)}:{value}" for name, value in latest.items())
        state = (f'{{"device_id":{_dumps(device_id)},"updated_at":{_dumps(received_at)},'
                 f'"registers":{{{registers}}}}}')
        messages.append(OutboxMessage(f"ecowatt/{topic}/state", state, retain=True))
    return messages
