"""The inner upload document, the bytes an envelope signs (firmware-protocol.md §4.2).

`UploadDocument.to_json()` writes the firmware's exact bytes (key order, compact JSON, ArduinoJson
number format), so an emulator emits what a real board emits; `parse_upload_document` reads one back
into the same model (DocumentError on a wrong shape). The packet itself stays text here:
`compressed_binary` is the firmware's quirky base64, decoded by `protocol.compression`.

`firmware_packet` and `firmware_document` reproduce how the firmware fills the numbers, in 32-bit
float arithmetic and with its defects: `original_size_bytes` is 2·n instead of 14·n (so the session
summary is built from wrong sizes) and `lossless_verified` is always true. Callers that model a fixed
firmware pass the correct size explicitly.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from typing import Any

from protocol.errors import DocumentError
from protocol.json_wire import UINT32_MAX, JsonObject, dumps, load_object
from protocol.registers import REGISTER_COUNT, by_address

DATA_TYPE = "compressed_sensor_batch"
SAMPLES_PER_PACKET = 7
# The firmware serialises into a buffer of this size and silently truncates beyond it (§4.2).
FIRMWARE_DOCUMENT_BUFFER = 2048
# Register ids in a layout: 0..9, or -1, the firmware's filler for an inconsistent selection (§2.2).
_LAYOUT_MIN, _LAYOUT_MAX = -1, 255


@dataclass(frozen=True)
class PacketMetadata:
    method: str
    register_count: int
    original_size_bytes: int
    compressed_size_bytes: int
    timestamp: int
    register_layout: tuple[int, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "register_count": self.register_count,
            "original_size_bytes": self.original_size_bytes,
            "compressed_size_bytes": self.compressed_size_bytes,
            "timestamp": self.timestamp,
            "register_layout": list(self.register_layout),
        }


@dataclass(frozen=True)
class PerformanceMetrics:
    academic_ratio: float
    traditional_ratio: float
    compression_time_us: int
    savings_percent: float
    lossless_verified: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "academic_ratio": self.academic_ratio,
            "traditional_ratio": self.traditional_ratio,
            "compression_time_us": self.compression_time_us,
            "savings_percent": self.savings_percent,
            "lossless_verified": self.lossless_verified,
        }


@dataclass(frozen=True)
class CompressedPacket:
    compressed_binary: str
    metadata: PacketMetadata
    metrics: PerformanceMetrics | None = None

    def to_dict(self) -> dict[str, Any]:
        entry: dict[str, Any] = {
            "compressed_binary": self.compressed_binary,
            "decompression_metadata": self.metadata.to_dict(),
        }
        if self.metrics is not None:
            entry["performance_metrics"] = self.metrics.to_dict()
        return entry


@dataclass(frozen=True)
class SessionSummary:
    total_original_bytes: int
    total_compressed_bytes: int
    overall_academic_ratio: float
    overall_savings_percent: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "total_original_bytes": self.total_original_bytes,
            "total_compressed_bytes": self.total_compressed_bytes,
            "overall_academic_ratio": self.overall_academic_ratio,
            "overall_savings_percent": self.overall_savings_percent,
        }


@dataclass(frozen=True)
class UploadDocument:
    device_id: str
    timestamp: int
    packets: tuple[CompressedPacket, ...]
    register_mapping: dict[str, str] = field(default_factory=dict)
    total_samples: int = 0
    data_type: str = DATA_TYPE
    session_summary: SessionSummary | None = None

    def to_dict(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "device_id": self.device_id,
            "timestamp": self.timestamp,
            "data_type": self.data_type,
            "total_samples": self.total_samples,
            "register_mapping": dict(self.register_mapping),
            "compressed_data": [p.to_dict() for p in self.packets],
        }
        if self.session_summary is not None:
            document["session_summary"] = self.session_summary.to_dict()
        return document

    def to_json(self) -> bytes:
        """The document's bytes as the firmware serialises them."""
        return dumps(self.to_dict())


# --- the firmware's arithmetic ---------------------------------------------------------------------


def _f32(value: float) -> float:
    """Round to a 32-bit float, as the ESP32 computes these figures."""
    try:
        result: float = struct.unpack("<f", struct.pack("<f", value))[0]
    except OverflowError:
        return float("inf") if value > 0 else float("-inf")
    return result


def _ratio(numerator: int, denominator: int) -> float:
    return _f32(numerator / denominator) if denominator else 0.0


def firmware_packet(
    compressed_binary: str,
    *,
    method: str,
    register_layout: tuple[int, ...] | list[int],
    compressed_size: int,
    timestamp: int,
    compression_time_us: int,
    original_size_bytes: int | None = None,
) -> CompressedPacket:
    """One `compressed_data` entry with the figures the firmware computes.

    `original_size_bytes` defaults to the firmware's buggy 2·n; the ratios use the correct 14·n.
    """
    n = len(register_layout)
    raw_size = 2 * n * SAMPLES_PER_PACKET
    academic = _ratio(compressed_size, raw_size)
    return CompressedPacket(
        compressed_binary=compressed_binary,
        metadata=PacketMetadata(
            method=method,
            register_count=n,
            original_size_bytes=2 * n if original_size_bytes is None else original_size_bytes,
            compressed_size_bytes=compressed_size,
            timestamp=timestamp,
            register_layout=tuple(register_layout),
        ),
        metrics=PerformanceMetrics(
            academic_ratio=academic,
            traditional_ratio=_ratio(raw_size, compressed_size),
            compression_time_us=compression_time_us,
            savings_percent=_f32(_f32(1.0 - academic) * 100.0),
            lossless_verified=True,
        ),
    )


def register_mapping(layout: tuple[int, ...] | list[int]) -> dict[str, str]:
    """`{"0":"Vac1",...}`: position → register name, from a packet's layout (unknown ids skipped)."""
    return {
        str(position): by_address(reg).name
        for position, reg in enumerate(layout)
        if 0 <= reg < REGISTER_COUNT
    }


def firmware_document(device_id: str, timestamp: int, packets: list[CompressedPacket]) -> UploadDocument:
    """The document the firmware builds from its drained queue (mapping from the first packet)."""
    total_original = sum(p.metadata.original_size_bytes for p in packets)
    total_compressed = sum(p.metadata.compressed_size_bytes for p in packets)
    overall = _ratio(total_compressed, total_original)
    return UploadDocument(
        device_id=device_id,
        timestamp=timestamp,
        data_type=DATA_TYPE,
        total_samples=len(packets),  # the firmware counts packets here, not samples
        register_mapping=register_mapping(packets[0].metadata.register_layout) if packets else {},
        packets=tuple(packets),
        session_summary=SessionSummary(
            total_original_bytes=total_original,
            total_compressed_bytes=total_compressed,
            overall_academic_ratio=overall,
            overall_savings_percent=_f32(_f32(1.0 - overall) * 100.0),
        ),
    )


# --- parsing -------------------------------------------------------------------------------------


def _metadata(fields: JsonObject) -> PacketMetadata:
    return PacketMetadata(
        method=fields.text("method"),
        register_count=fields.integer("register_count", 0, 255),
        original_size_bytes=fields.integer("original_size_bytes", 0),
        compressed_size_bytes=fields.integer("compressed_size_bytes", 0),
        timestamp=fields.integer("timestamp", 0, UINT32_MAX),
        register_layout=tuple(fields.integers("register_layout", _LAYOUT_MIN, _LAYOUT_MAX)),
    )


def _metrics(fields: JsonObject) -> PerformanceMetrics:
    return PerformanceMetrics(
        academic_ratio=fields.number("academic_ratio"),
        traditional_ratio=fields.number("traditional_ratio"),
        compression_time_us=fields.integer("compression_time_us", 0),
        savings_percent=fields.number("savings_percent"),
        lossless_verified=fields.boolean("lossless_verified"),
    )


def _packet(fields: JsonObject) -> CompressedPacket:
    return CompressedPacket(
        compressed_binary=fields.text("compressed_binary"),
        metadata=_metadata(fields.obj("decompression_metadata")),
        metrics=_metrics(fields.obj("performance_metrics")) if "performance_metrics" in fields else None,
    )


def _summary(fields: JsonObject) -> SessionSummary:
    return SessionSummary(
        total_original_bytes=fields.integer("total_original_bytes", 0),
        total_compressed_bytes=fields.integer("total_compressed_bytes", 0),
        overall_academic_ratio=fields.number("overall_academic_ratio"),
        overall_savings_percent=fields.number("overall_savings_percent"),
    )


def parse_upload_document(data: bytes | str) -> UploadDocument:
    """Read an inner document; DocumentError if it is not JSON or not of the firmware's shape.

    Unknown keys are ignored. `performance_metrics` and `session_summary` are optional (they
    describe, they do not carry data).
    """
    fields = load_object(data, DocumentError, "upload document")
    mapping = fields.obj("register_mapping")
    for key, name in mapping.data.items():
        if not isinstance(name, str):
            raise mapping.fail(key, "a register name", name)
    return UploadDocument(
        device_id=fields.text("device_id", allow_empty=False),
        timestamp=fields.integer("timestamp", 0, UINT32_MAX),
        data_type=fields.text("data_type"),
        total_samples=fields.integer("total_samples", 0),
        register_mapping=dict(mapping.data),
        packets=tuple(_packet(entry) for entry in fields.objects("compressed_data")),
        session_summary=_summary(fields.obj("session_summary")) if "session_summary" in fields else None,
    )
