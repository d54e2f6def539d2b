"""Turning an authentic upload document into storable packets and samples, with the device's mirror.

Firmware family (`/process`, firmware-protocol.md §3, §4.2): each device's decoder state is mirrored
and stored with its data (`DeviceMirror`, in the storage's codec state). A document whose
`timestamp` (millis since boot) went backwards, or a packet never seen before that is not newer than
the last one, means the device rebooted: the boot counter advances and the mirror restarts, as the
device's own compression state did. A packet already decoded in this boot (re-sent after a lost
acknowledgement) is recognised by its timestamp and content and is not decoded again, so the mirror
moves exactly once per batch. Packets that cannot be decoded are kept (bytes and reason), never dropped.

Seed family (`/aggregated/<id>`, §9.1): `compressed_data` as one base64 packet of the seed's codecs,
or `aggregated_data` as a list of sample objects. Neither carries a boot, so they are stored under
`SEED_BOOT` and keyed by the document's `timestamp` (else the envelope nonce).

Everything here is pure: the storage may run it again if a transaction is retried.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import re
from dataclasses import dataclass
from typing import Any

from cloud.device_mirror import DeviceMirror
from cloud.storage import SAMPLE_ID_STRIDE, BatchSamples, DecodedUpload, PacketIn, PacketStatus, SampleIn
from protocol.compression import (
    BATCH_SAMPLES,
    Decoded,
    DecodeStatus,
    decode_compressed_binary,
    decode_packet,
)
from protocol.errors import CodecError, DocumentError, RegisterError
from protocol.json_wire import JsonObject, is_integer
from protocol.registers import REGISTER_COUNT, Register, by_address, resolve
from protocol.seed_codecs import decode_seed
from protocol.upload_document import CompressedPacket, UploadDocument

SEED_BOOT = -1
UNKNOWN_ADDRESS = -1
_STATUS = {
    DecodeStatus.EXACT: PacketStatus.DECODED,
    DecodeStatus.AMBIGUOUS: PacketStatus.AMBIGUOUS,
    DecodeStatus.LOSSY: PacketStatus.AMBIGUOUS,  # values stored, flagged: they approximate what was sampled
    DecodeStatus.UNDECODABLE: PacketStatus.UNDECODABLE,
}
_DEVICE_ID_PREFIX = re.compile(rb'\s*\{\s*"device_id"\s*:\s*"([^"\\]{1,64})"')


def signed_device_id(document: bytes) -> str | None:
    """The `device_id` an inner document names, even when it is truncated JSON (the firmware writes it
    first, so it is read from there without parsing the whole document; else from the parsed JSON).
    Only meaningful once the MAC over these bytes has been verified."""
    match = _DEVICE_ID_PREFIX.match(document)
    text: object = None
    if match is not None:
        try:
            text = match.group(1).decode("utf-8")
        except UnicodeDecodeError:
            return None
    else:
        try:
            data = json.loads(document)
        except (ValueError, UnicodeDecodeError, RecursionError):
            return None
        text = data.get("device_id") if isinstance(data, dict) else None
    if not isinstance(text, str):
        return None
    return text if text and text.isprintable() and "/" not in text and len(text) <= 64 else None


@dataclass(frozen=True)
class _Packet:
    """One `compressed_data` entry, read as far as it can be."""

    entry: CompressedPacket
    data: bytes | None
    error: str | None
    sha256: str  # of the packet bytes, else of the text that could not be read as a packet

    @property
    def ts(self) -> int:
        return self.entry.metadata.timestamp


def _read_packet(entry: CompressedPacket) -> _Packet:
    try:
        data = decode_compressed_binary(entry.compressed_binary, entry.metadata.compressed_size_bytes)
    except CodecError as error:
        return _Packet(entry, None, str(error), hashlib.sha256(entry.compressed_binary.encode("utf-8")).hexdigest())
    return _Packet(entry, data, None, hashlib.sha256(data).hexdigest())


def _decode(mirror: DeviceMirror, packet: _Packet, sampled_at: float) -> PacketIn:
    meta = packet.entry.metadata
    layout = meta.register_layout
    if packet.data is None:
        decoded = Decoded.undecodable(None, packet.error or "unreadable packet")
    else:
        try:
            decoded = decode_packet(packet.data, layout, mirror.codec, BATCH_SAMPLES)
        except CodecError as error:
            decoded = Decoded.undecodable(None, str(error))
    # The device moved past this batch either way; a layout no firmware sends leaves nothing to follow.
    with contextlib.suppress(CodecError):
        mirror.codec.advance(decoded, layout, BATCH_SAMPLES)
    status = _STATUS[decoded.status]
    reason = decoded.reason or None
    if decoded.status is DecodeStatus.LOSSY:
        reason = f"lossy: {reason}" if reason else "lossy"
    return PacketIn(
        boot_id=mirror.boot,
        packet_ts=meta.timestamp,
        content_sha256=packet.sha256,
        codec=str(decoded.format) if decoded.format is not None else meta.method,
        status=status,
        reason=reason,
        samples=BatchSamples(layout, decoded.values, sampled_at) if decoded.decodable else (),
        raw_hex=packet.data.hex() if packet.data is not None else None,
    )


def decode_firmware_upload(document: UploadDocument | None, state: str | None, received_at: float, *,
                           problem: str | None = None) -> DecodedUpload:
    """The packets of an authentic `/process` document and the device's next decoder state.

    `document` is None when it could not be parsed (`problem` says why): nothing to store, but the
    upload is recorded with that reason. Sample times are estimated: a packet was compressed
    `document.timestamp - packet timestamp` ms before the upload was received.
    """
    return decode_with_mirror(document, DeviceMirror.load(state), received_at, problem=problem)


def decode_with_mirror(document: UploadDocument | None, mirror: DeviceMirror, received_at: float, *,
                       problem: str | None = None) -> DecodedUpload:
    """`decode_firmware_upload` on a mirror already loaded, which it moves on (in place)."""
    if document is None:
        return DecodedUpload((), None if mirror.note is None else mirror.dump(), problem or "no document")
    packets = [_read_packet(entry) for entry in document.packets]
    notes = [mirror.note] if mirror.note else []
    mirror.note = None
    fresh = [p for p in packets if not mirror.seen(p.ts, p.sha256)]
    went_back = mirror.document_ts is not None and document.timestamp < mirror.document_ts
    older = mirror.packet_ts is not None and any(p.ts <= mirror.packet_ts for p in fresh)
    if went_back or older:
        mirror.reboot()
        notes.append(f"device rebooted: boot {mirror.boot}")
    mirror.document_ts = document.timestamp
    stored: list[PacketIn] = []
    for packet in packets:
        if mirror.seen(packet.ts, packet.sha256):  # stored before; storage recognises it by its key
            stored.append(PacketIn(mirror.boot, packet.ts, packet.sha256, packet.entry.metadata.method))
            continue
        age = max(0, document.timestamp - packet.ts) / 1000.0
        stored.append(_decode(mirror, packet, received_at - age))
        mirror.remember(packet.ts, packet.sha256)
    return DecodedUpload(stored, mirror.dump(), "; ".join(notes) or None)


# --- the seed family --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SeedUpload:
    """A validated `/aggregated` document: what to store, decided before the nonce is consumed."""

    packet: PacketIn
    kind: str  # "compressed" or "aggregated"
    values: tuple[float, ...] = ()


def _layout(fields: JsonObject) -> list[int] | None:
    for key in ("register_layout", "registers"):
        if key in fields:
            items = fields.array(key)
            try:
                return [resolve(item).address for item in items if isinstance(item, int | str)] or None
            except (RegisterError, ValueError) as error:
                raise DocumentError(f"{key} names an unknown register", str(error)) from None
    return None


# Stored raw values are 32-bit signed (the samples column); seed values outside are not storable.
RAW_MIN, RAW_MAX = -(2**31), 2**31 - 1


def _as_raw(value: float) -> int | None:
    if not RAW_MIN <= value <= RAW_MAX:
        return None
    return int(round(value))


_VALUE_KEYS = ("value", "raw", "avg")


def _aggregated_samples(items: list[Any], sampled_at: float) -> tuple[list[SampleIn], int]:
    """Samples from a list of objects: `{"Vac1": 2400, ...}` or `{"register": "Vac1", "value": 2400}`."""
    samples: list[SampleIn] = []
    skipped = 0
    for index, item in enumerate(items):
        if not isinstance(item, dict):
            skipped += 1
            continue
        pairs: list[tuple[Any, Any]] = []
        if "register" in item:
            value = next((item[k] for k in _VALUE_KEYS if k in item), None)
            pairs.append((item["register"], value))
        else:
            pairs.extend(item.items())
        found = 0
        for name, value in pairs:
            if isinstance(value, bool) or not isinstance(value, int | float) or not isinstance(name, int | str):
                continue
            try:
                address = resolve(name).address
            except (RegisterError, ValueError):
                continue
            raw = _as_raw(value)
            if raw is None:
                continue
            samples.append(SampleIn(index, address, raw, sampled_at=sampled_at))
            found += 1
        skipped += found == 0
    return samples, skipped


def read_seed_upload(fields: JsonObject, nonce: int, received_at: float) -> SeedUpload:
    """Validate an `/aggregated` inner document (DocumentError/CodecError: refused, nothing consumed)."""
    ts: Any = fields.data.get("timestamp")
    packet_ts: int = ts if is_integer(ts) and 0 <= ts < 2**63 else nonce
    if "compressed_data" in fields:
        text = fields.text("compressed_data")
        try:
            data = base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            raise DocumentError("compressed_data is not base64", text) from None
        seed = decode_seed(data)
        layout = _layout(fields)
        raws = [_as_raw(v) for v in seed.values]
        samples = [
            SampleIn(i // len(layout) if layout else i, layout[i % len(layout)] if layout else UNKNOWN_ADDRESS,
                     raw, sampled_at=received_at)
            for i, raw in enumerate(raws) if raw is not None
        ]
        rounded = any(raw is not None and raw != v for raw, v in zip(raws, seed.values, strict=True))
        reasons = [r for r in ("no register layout given" if layout is None else None,
                               "seed values rounded to integers" if rounded else None,
                               "values out of range not stored" if None in raws else None) if r]
        packet = PacketIn(SEED_BOOT, packet_ts, hashlib.sha256(data).hexdigest(), f"SEED_{seed.method.name}",
                          PacketStatus.DECODED if not reasons else PacketStatus.AMBIGUOUS,
                          "; ".join(reasons) or None, samples, data.hex())
        return SeedUpload(packet, "compressed", seed.values)
    if "aggregated_data" in fields:
        items = fields.array("aggregated_data")
        content = json.dumps(items, separators=(",", ":"), sort_keys=True).encode()
        samples, skipped = _aggregated_samples(items, received_at)
        if len(samples) >= SAMPLE_ID_STRIDE:
            raise DocumentError(f"aggregated_data holds {len(samples)} values; at most {SAMPLE_ID_STRIDE - 1}")
        reason = f"{skipped} of {len(items)} items name no register value" if skipped else None
        packet = PacketIn(SEED_BOOT, packet_ts, hashlib.sha256(content).hexdigest(), "AGGREGATED",
                          PacketStatus.DECODED if not skipped else PacketStatus.AMBIGUOUS, reason, samples)
        return SeedUpload(packet, "aggregated", tuple(float(s.raw) for s in samples))
    raise DocumentError("Missing compressed_data or aggregated_data field")


def register_of(address: int) -> Register | None:
    """The register at `address`, or None for samples whose register is not known."""
    return by_address(address) if 0 <= address < REGISTER_COUNT else None
