"""What the storage takes and gives back: plain frozen dataclasses, one per stored thing.

Times are wall-clock seconds (floats) from the storage's `wall_clock`; JSON columns come back parsed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple, overload

JsonObject = dict[str, Any]


# --- devices and operators -----------------------------------------------------------------------


@dataclass(frozen=True)
class Device:
    device_id: str
    key_hex: str | None  # 32-byte HMAC key, hex; None for a device known only from its traffic
    state: str
    firmware_version: str | None  # as the device last reported it
    created_at: float
    first_seen: float | None  # first authentic contact
    last_seen: float | None


@dataclass(frozen=True)
class OperatorToken:
    name: str
    token_sha256: str  # only the hash of a bearer token is stored
    created_at: float


@dataclass(frozen=True)
class NonceState:
    device_id: str
    last_nonce: int | None
    last_envelope_sha256: str | None
    last_upload_id: int | None
    updated_at: float | None


# --- ingest ----------------------------------------------------------------------------------------


class Verdict(StrEnum):
    ACCEPTED = "accepted"
    RESEND = "resend"  # byte-identical copy of the last accepted envelope: original reply, nothing stored
    REPLAY = "replay"  # nonce not greater than the last accepted one


class PacketStatus(StrEnum):
    DECODED = "decoded"
    UNDECODABLE = "undecodable"
    AMBIGUOUS = "ambiguous"


# A sample's id is its packet's id times this, plus its place in the packet: ids ascend in storage
# order, so they work as cursors. A packet holds fewer values than this (70 from firmware, 255 from a
# seed codec, a 256 KiB body's worth of aggregated values at most).
SAMPLE_ID_STRIDE = 1 << 16


class SampleIn(NamedTuple):
    """One decoded value of a packet (a named tuple: an upload makes dozens, on the ingest hot path)."""

    index: int  # sample number inside its packet
    address: int  # register address
    raw: int
    device_ms: int | None = None  # device millis() of the sample, when the service can tell
    sampled_at: float | None = None  # estimated wall-clock time; None -> the upload's received_at


class BatchSamples(Sequence[SampleIn]):
    """The samples of whole batches in one register order, all taken at one time (a firmware packet).

    Held as the raw values, which is how the storage keeps them (with the layout and the time); a
    `SampleIn` is made only for whoever reads them one by one.
    """

    def __init__(self, layout: Sequence[int], raw: Sequence[int], sampled_at: float) -> None:
        self.layout = tuple(layout)
        self.raw = raw
        self.sampled_at = sampled_at

    def __len__(self) -> int:
        return len(self.raw)

    @overload
    def __getitem__(self, index: int) -> SampleIn: ...

    @overload
    def __getitem__(self, index: slice) -> list[SampleIn]: ...

    def __getitem__(self, index: int | slice) -> SampleIn | list[SampleIn]:
        if isinstance(index, slice):
            return [self[k] for k in range(*index.indices(len(self.raw)))]
        k = range(len(self.raw))[index]  # IndexError and negative indexes as for a list
        n = len(self.layout)
        return SampleIn(k // n, self.layout[k % n], self.raw[k], None, self.sampled_at)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and list(self) == list(other)

    def __repr__(self) -> str:
        return f"BatchSamples({self.layout}, {list(self.raw)}, {self.sampled_at})"


@dataclass(frozen=True)
class PacketIn:
    """One compressed packet of an upload, as decoded (or not) by the service."""

    boot_id: int
    packet_ts: int  # the packet's device timestamp (millis since boot)
    content_sha256: str  # hash of the packet bytes; with device, boot and packet_ts: the dedup key
    codec: str
    status: PacketStatus = PacketStatus.DECODED
    reason: str | None = None
    samples: Sequence[SampleIn] = ()
    raw_hex: str | None = None  # the packet bytes, kept so undecodable data can be decoded later


@dataclass(frozen=True)
class DecodedUpload:
    packets: Sequence[PacketIn]
    codec_state: str | None  # the device's decoder state after these packets (text, opaque to the storage)
    reason: str | None = None  # e.g. an authentic but unparsable document: accepted, data lost


@dataclass(frozen=True)
class StoredPacket:
    packet_id: int
    new: bool  # False: the same packet was stored before (re-sent after a lost acknowledgement)
    status: PacketStatus


@dataclass(frozen=True)
class IngestResult:
    verdict: Verdict
    upload_id: int
    device_id: str
    nonce: int
    packets: tuple[StoredPacket, ...] = ()
    samples_stored: int = 0
    reply: str | None = None  # accepted: the reply just stored; resend: the original one; replay: None

    @property
    def new_packets(self) -> int:
        return sum(p.new for p in self.packets)


@dataclass(frozen=True)
class OutboxMessage:
    topic: str
    payload: str
    qos: int = 1
    retain: bool = False


def _no_reply(result: IngestResult) -> str:
    return ""


def _no_messages(result: IngestResult) -> Sequence[OutboxMessage]:
    return ()


@dataclass(frozen=True)
class IngestRequest:
    """One authentic upload. The callbacks run inside the ingest transaction, after the nonce check.

    `decode` gets the device's stored decoder state (None at first) so that decoding and saving the
    new state are atomic with the nonce; `reply` renders what the device is answered (stored for a
    resend); `outbox` lists the MQTT messages to publish. All three must be pure: no I/O, no awaits,
    and they may run again if a PostgreSQL transaction is retried.
    """

    device_id: str
    nonce: int
    envelope_sha256: str  # of the exact request body
    body_bytes: int
    decode: Callable[[str | None], DecodedUpload]
    reply: Callable[[IngestResult], str] = _no_reply
    outbox: Callable[[IngestResult], Sequence[OutboxMessage]] = _no_messages


@dataclass(frozen=True)
class Upload:
    id: int
    device_id: str
    nonce: int | None
    verdict: str  # a Verdict, or the service's own word for a rejected upload ("bad_mac", ...)
    reason: str | None
    packets: int
    new_packets: int
    samples: int
    body_bytes: int
    envelope_sha256: str | None
    received_at: float


@dataclass(frozen=True)
class Packet:
    id: int
    device_id: str
    boot_id: int
    packet_ts: int
    content_sha256: str
    codec: str
    status: PacketStatus
    reason: str | None
    sample_count: int
    raw_hex: str | None
    upload_id: int
    received_at: float


@dataclass(frozen=True)
class TelemetrySample:
    id: int
    device_id: str
    packet_id: int
    sample_index: int
    address: int
    raw: int
    device_ms: int | None
    sampled_at: float
    received_at: float
    boot_id: int
    packet_ts: int
    codec: str
    status: PacketStatus


@dataclass(frozen=True)
class PacketStats:
    codec: str
    status: PacketStatus
    packets: int
    samples: int


# --- commands -------------------------------------------------------------------------------------


class CommandStatus(StrEnum):
    QUEUED = "queued"
    DELIVERED = "delivered"
    COMPLETED = "completed"
    FAILED = "failed"
    TIMED_OUT = "timed_out"


@dataclass(frozen=True)
class Command:
    command_id: str
    device_id: str
    type: str
    params: JsonObject
    status: CommandStatus
    delivery_count: int
    lease_expires_at: float | None
    result: str | None
    created_at: float
    delivered_at: float | None
    completed_at: float | None


# --- configuration --------------------------------------------------------------------------------


class ConfigStatus(StrEnum):
    PENDING = "pending"  # desired, not yet delivered
    DELIVERED = "delivered"
    ACKNOWLEDGED = "acknowledged"
    SUPERSEDED = "superseded"  # replaced by a newer version before it was delivered


@dataclass(frozen=True)
class ConfigVersion:
    device_id: str
    version: int
    config: JsonObject
    status: ConfigStatus
    created_at: float
    delivered_at: float | None
    ack_outcome: str | None  # e.g. "accepted", "rejected", "partial", "unchanged"
    ack_details: JsonObject | None  # e.g. {"accepted": [...], "rejected": [{"field":..., "reason":...}]}
    acked_at: float | None


# --- OTA ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Firmware:
    version: str
    device_type: str
    path: str  # the encrypted image on disk
    original_size: int
    encrypted_size: int
    sha256: str  # of the plaintext image
    encrypted_sha256: str
    security_counter: int
    manifest: JsonObject
    created_at: float = 0.0  # set by the storage


class RolloutState(StrEnum):
    ACTIVE = "active"
    PAUSED = "paused"
    CANCELLED = "cancelled"
    COMPLETED = "completed"


@dataclass(frozen=True)
class RolloutTarget:
    rollout_id: int
    device_id: str
    state: str  # "pending", "in_progress", "succeeded", "failed"
    detail: str | None
    updated_at: float


@dataclass(frozen=True)
class Rollout:
    id: int
    name: str
    version: str
    state: RolloutState
    created_at: float
    updated_at: float
    targets: tuple[RolloutTarget, ...] = field(default=())


class SessionStatus(StrEnum):
    ACTIVE = "active"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"  # no activity for too long
    REPLACED = "replaced"  # the device initiated again


@dataclass(frozen=True)
class OtaSession:
    session_id: str
    device_id: str
    version: str
    status: SessionStatus
    total_chunks: int
    chunks_served: int
    bytes_served: int
    started_at: float
    last_activity: float
    finished_at: float | None


@dataclass(frozen=True)
class OtaReport:
    id: int
    device_id: str
    session_id: str | None
    kind: str  # "progress", "complete", "verification", "reboot", "boot_confirmation", ...
    status: str | None
    detail: JsonObject
    reported_at: float


# --- diagnostics and faults -----------------------------------------------------------------------


@dataclass(frozen=True)
class Diagnostic:
    id: int
    device_id: str
    document: JsonObject
    received_at: float


@dataclass(frozen=True)
class DiagnosticsSummary:
    device_id: str
    entries: int
    first_at: float
    last_at: float


@dataclass(frozen=True)
class FaultRule:
    id: int
    kind: str
    device_id: str | None  # None: every device
    probability: float
    params: JsonObject
    created_at: float
    expires_at: float | None
    cleared_at: float | None


@dataclass(frozen=True)
class FaultEvent:
    id: int
    rule_id: int | None
    kind: str
    device_id: str | None
    target: str  # what it hit, e.g. the route
    detail: JsonObject
    injected_at: float


# --- MQTT outbox ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class OutboxEntry:
    id: int
    topic: str
    payload: str
    qos: int
    retain: bool
    created_at: float
    published_at: float | None
