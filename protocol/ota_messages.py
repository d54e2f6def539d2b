"""FOTA messages (firmware-protocol.md §7.1, §7.2): the manifest and the OTA route bodies.

The manifest has the reference tool's fields plus our extensions, all optional on the wire so the
reference manifests still parse: `device_type`, a monotonically increasing `security_counter`
(anti-rollback), `encrypted_sha256` (hash of the encrypted blob) and `manifest_signature`
(RSA-PSS over the canonical bytes of every other field; the reference manifest is unsigned).

Replies are written in the shapes the firmware reads (§7.3): the check reply nests the offer in
`update_info`; the chunk reply carries standard base64 and `chunk_size` = decoded length. The
`parse_*_reply` functions read them as the device does; the `parse_*_request` functions read what the
device sends. Everything raises DocumentError on a wrong shape. The spec firmware also reports its
progress, verification, reboot and boot confirmation (`OtaReport`, `POST /ota/report/<id>`) and closes
the session (`complete_request`, `POST /ota/complete/<id>`); firmware 1.0.4 does neither.
"""

from __future__ import annotations

import base64
import binascii
import enum
import json
import re
from dataclasses import asdict, dataclass, replace
from typing import Any

from cryptography.hazmat.primitives.asymmetric import rsa

from protocol.errors import DocumentError, FirmwareError
from protocol.firmware_crypto import IV_SIZE, SignatureScheme, sign_data, verify_data
from protocol.json_wire import dumps, load_object

REFERENCE_CHUNK_SIZE = 1024
# The firmware decodes a chunk into a 1040-byte buffer and decrypts whole AES blocks (§7.3).
FIRMWARE_CHUNK_LIMIT = 1040
CHUNK_ALIGNMENT = 16
_HEX64 = re.compile(r"[0-9a-f]{64}")
_VERSION = re.compile(r"[0-9]{1,9}(\.[0-9]{1,9}){0,3}")
_EXTENSIONS = ("device_type", "security_counter", "encrypted_sha256", "manifest_signature")


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise DocumentError(f"{what} is not standard base64", text) from None


def parse_version(text: str) -> tuple[int, ...]:
    """A dotted version ("1.0.5") as integers, for ordering; DocumentError otherwise."""
    if not isinstance(text, str) or not _VERSION.fullmatch(text):
        raise DocumentError("version must be dotted integers like 1.0.5", text)
    return tuple(int(part) for part in text.split("."))


def total_chunks(encrypted_size: int, chunk_size: int) -> int:
    return -(-encrypted_size // chunk_size)


# --- manifest --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Manifest:
    version: str
    original_size: int
    encrypted_size: int
    sha256_hash: str  # of the plaintext image, lowercase hex
    signature: str  # base64 of the image signature
    iv: str  # base64 of the 16-byte CBC IV
    chunk_size: int
    total_chunks: int
    timestamp: str
    device_type: str | None = None
    security_counter: int | None = None
    encrypted_sha256: str | None = None
    manifest_signature: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Reference fields in the reference order, then the extensions that are set."""
        return {k: v for k, v in asdict(self).items() if v is not None or k not in _EXTENSIONS}

    def to_json(self) -> bytes:
        return dumps(self.to_dict())

    def iv_bytes(self) -> bytes:
        iv = _b64decode(self.iv, "manifest iv")
        if len(iv) != IV_SIZE:
            raise DocumentError("manifest iv must decode to 16 bytes", len(iv))
        return iv

    def signature_bytes(self) -> bytes:
        return _b64decode(self.signature, "manifest signature")

    def signed_bytes(self) -> bytes:
        """What `manifest_signature` covers: every other field, sorted keys, compact ASCII JSON."""
        fields = self.to_dict()
        fields.pop("manifest_signature", None)
        return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode("ascii")

    def check_consistency(self) -> None:
        """DocumentError unless sizes, chunking, hashes and encodings agree (for publishing)."""
        parse_version(self.version)
        if not _HEX64.fullmatch(self.sha256_hash):
            raise DocumentError("sha256_hash must be 64 lowercase hex digits", self.sha256_hash)
        if self.encrypted_sha256 is not None and not _HEX64.fullmatch(self.encrypted_sha256):
            raise DocumentError("encrypted_sha256 must be 64 lowercase hex digits", self.encrypted_sha256)
        self.iv_bytes()
        self.signature_bytes()
        padded = self.original_size + CHUNK_ALIGNMENT - self.original_size % CHUNK_ALIGNMENT
        if self.encrypted_size != padded:
            raise DocumentError(
                "encrypted_size must be original_size plus PKCS#7 padding", self.encrypted_size
            )
        if not 0 < self.chunk_size <= FIRMWARE_CHUNK_LIMIT or self.chunk_size % CHUNK_ALIGNMENT:
            raise DocumentError("chunk_size must be a multiple of 16 up to 1040", self.chunk_size)
        if self.total_chunks != total_chunks(self.encrypted_size, self.chunk_size):
            raise DocumentError("total_chunks does not match encrypted_size / chunk_size", self.total_chunks)


def parse_manifest(data: bytes | str) -> Manifest:
    fields = load_object(data, DocumentError, "manifest")

    def optional_text(key: str) -> str | None:
        return fields.text(key) if key in fields else None

    return Manifest(
        version=fields.text("version", allow_empty=False),
        original_size=fields.integer("original_size", 0),
        encrypted_size=fields.integer("encrypted_size", 0),
        sha256_hash=fields.text("sha256_hash"),
        signature=fields.text("signature"),
        iv=fields.text("iv"),
        chunk_size=fields.integer("chunk_size", 1),
        total_chunks=fields.integer("total_chunks", 0),
        timestamp=fields.text("timestamp"),
        device_type=optional_text("device_type"),
        security_counter=fields.integer("security_counter", 0) if "security_counter" in fields else None,
        encrypted_sha256=optional_text("encrypted_sha256"),
        manifest_signature=optional_text("manifest_signature"),
    )


def sign_manifest(manifest: Manifest, key: rsa.RSAPrivateKey) -> Manifest:
    """The manifest with `manifest_signature` (RSA-PSS/SHA-256 over `signed_bytes()`)."""
    signature = sign_data(key, manifest.signed_bytes(), SignatureScheme.PSS)
    return replace(manifest, manifest_signature=base64.b64encode(signature).decode("ascii"))


def verify_manifest(manifest: Manifest, key: rsa.RSAPublicKey) -> None:
    """FirmwareError unless the manifest carries a valid signature by `key`."""
    if manifest.manifest_signature is None:
        raise FirmwareError("manifest is not signed", manifest.version)
    try:
        signature = _b64decode(manifest.manifest_signature, "manifest_signature")
    except DocumentError as exc:
        raise FirmwareError(exc.message, exc.value) from None
    verify_data(key, manifest.signed_bytes(), signature, SignatureScheme.PSS)


def check_security_counter(candidate: int | None, current: int | None, *, allow_equal: bool = False) -> None:
    """Anti-rollback: FirmwareError unless `candidate` is above (or, for a device, at least) `current`.

    A server publishing releases uses the strict rule; a device re-installing its own release level
    passes `allow_equal=True` (as ESP-IDF's secure_version does).
    """
    if current is None:
        return
    if candidate is None:
        raise FirmwareError("manifest has no security_counter", candidate)
    if candidate < current or (candidate == current and not allow_equal):
        raise FirmwareError("security_counter would roll back", candidate)


# --- GET /ota/check/<id>?version= ----------------------------------------------------------------


@dataclass(frozen=True)
class UpdateOffer:
    """What the device takes from a check reply's `update_info` (and saves in NVS)."""

    latest_version: str
    original_size: int
    encrypted_size: int
    sha256_hash: str
    signature: bytes
    iv: bytes
    chunk_size: int
    total_chunks: int

    @classmethod
    def from_manifest(cls, manifest: Manifest) -> UpdateOffer:
        return cls(
            latest_version=manifest.version,
            original_size=manifest.original_size,
            encrypted_size=manifest.encrypted_size,
            sha256_hash=manifest.sha256_hash,
            signature=manifest.signature_bytes(),
            iv=manifest.iv_bytes(),
            chunk_size=manifest.chunk_size,
            total_chunks=manifest.total_chunks,
        )


def check_reply(
    device_id: str, current_version: str, offer: Manifest | None, release_notes: str = ""
) -> dict[str, Any]:
    """The check reply: `offer` is the manifest to offer, or None when there is nothing to install."""
    if offer is None:
        return {
            "success": True,
            "device_id": device_id,
            "update_available": False,
            "update_info": {"available": False, "current_version": current_version},
        }
    return {
        "success": True,
        "device_id": device_id,
        "update_available": True,
        "update_info": {
            "available": True,
            "latest_version": offer.version,
            "current_version": current_version,
            "original_size": offer.original_size,
            "encrypted_size": offer.encrypted_size,
            "firmware_size": offer.original_size,
            "sha256_hash": offer.sha256_hash,
            "signature": offer.signature,
            "iv": offer.iv,
            "chunk_size": offer.chunk_size,
            "total_chunks": offer.total_chunks,
            "release_notes": release_notes,
        },
    }


def parse_check_reply(body: bytes | str) -> UpdateOffer | None:
    """Read a check reply as the firmware does: None unless `update_available` is true.

    `original_size` may be given as `firmware_size`; the IV must decode to exactly 16 bytes.
    """
    fields = load_object(body, DocumentError, "check reply")
    if fields.data.get("update_available") is not True:
        return None
    info = fields.obj("update_info")
    size_key = "original_size" if "original_size" in info else "firmware_size"
    iv = _b64decode(info.text("iv"), "update_info.iv")
    if len(iv) != IV_SIZE:
        raise DocumentError("update_info.iv must decode to 16 bytes", len(iv))
    return UpdateOffer(
        latest_version=info.text("latest_version", allow_empty=False),
        original_size=info.integer(size_key, 0),
        encrypted_size=info.integer("encrypted_size", 0),
        sha256_hash=info.text("sha256_hash"),
        signature=_b64decode(info.text("signature"), "update_info.signature"),
        iv=iv,
        chunk_size=info.integer("chunk_size", 1),
        total_chunks=info.integer("total_chunks", 0),
    )


# --- POST /ota/initiate/<id> ---------------------------------------------------------------------


def initiate_request(version: str) -> bytes:
    return dumps({"firmware_version": version})


def parse_initiate_request(body: bytes | str) -> str:
    """The requested version; DocumentError("firmware_version is required") otherwise."""
    fields = load_object(body, DocumentError, "initiate request")
    if "firmware_version" not in fields:
        raise DocumentError("firmware_version is required")
    return fields.text("firmware_version", allow_empty=False)


def session_id(device_id: str, version: str, unix_seconds: int) -> str:
    """The reference session id, `<device>_<version>_<unix seconds>`."""
    return f"{device_id}_{version}_{unix_seconds}"


def initiate_reply(device_id: str, session: str) -> dict[str, Any]:
    return {"success": True, "device_id": device_id, "session_id": session}


def parse_initiate_reply(body: bytes | str) -> str:
    """The session id; DocumentError unless `success` is true (what the device requires)."""
    fields = load_object(body, DocumentError, "initiate reply")
    if fields.data.get("success") is not True:
        raise DocumentError("initiate was refused", fields.data.get("error"))
    return fields.text("session_id") if "session_id" in fields else ""


# --- GET /ota/chunk/<id>?version=&chunk= ---------------------------------------------------------


def chunk_of(encrypted: bytes, index: int, chunk_size: int) -> bytes:
    """Chunk `index` of the encrypted blob; DocumentError("Invalid chunk index: n") past the end."""
    if chunk_size <= 0 or not 0 <= index < total_chunks(len(encrypted), chunk_size):
        raise DocumentError(f"Invalid chunk index: {index}", index)
    return encrypted[index * chunk_size : (index + 1) * chunk_size]


def chunk_reply(device_id: str, index: int, data: bytes) -> dict[str, Any]:
    return {
        "success": True,
        "device_id": device_id,
        "chunk_index": index,
        "chunk_data": base64.b64encode(data).decode("ascii"),
        "chunk_size": len(data),
    }


def parse_chunk_reply(body: bytes | str) -> bytes:
    """The chunk's bytes, checked as the firmware checks them (§7.3 step 4)."""
    fields = load_object(body, DocumentError, "chunk reply")
    if fields.data.get("success") is not True:
        raise DocumentError("chunk request was refused", fields.data.get("error"))
    data = _b64decode(fields.text("chunk_data"), "chunk_data")
    if len(data) > FIRMWARE_CHUNK_LIMIT:
        raise DocumentError("chunk exceeds the firmware's 1040-byte buffer", len(data))
    if len(data) != fields.integer("chunk_size", 0):
        raise DocumentError("chunk_data length differs from chunk_size", len(data))
    return data


# --- POST /ota/complete/<id>, errors -------------------------------------------------------------


def parse_complete_request(body: bytes | str) -> bool:
    fields = load_object(body, DocumentError, "complete request")
    return fields.boolean("success")


def error_reply(message: str) -> dict[str, Any]:
    """The reference error shape, `{"success":false,"error":...}`."""
    return {"success": False, "error": message}


def complete_request(success: bool) -> bytes:
    """The body of `POST /ota/complete/<id>`: `{"success": <bool>}`."""
    return dumps({"success": success})


# --- POST /ota/report/<id> (spec firmware; 1.0.4 never reports) ------------------------------------


class ReportPhase(enum.StrEnum):
    PROGRESS = "progress"  # download started, resumed, advancing or interrupted
    VERIFICATION = "verification"  # hash and signature of the downloaded image
    REBOOT = "reboot"  # the device restarts into the new image
    BOOT = "boot"  # after the restart: the new image confirmed itself, or the old one runs again


REPORT_STATUSES: dict[ReportPhase, tuple[str, ...]] = {
    ReportPhase.PROGRESS: ("started", "resumed", "downloading", "interrupted"),
    ReportPhase.VERIFICATION: ("passed", "failed"),
    ReportPhase.REBOOT: ("rebooting",),
    ReportPhase.BOOT: ("confirmed", "rolled_back"),
}


@dataclass(frozen=True)
class OtaReport:
    """One OTA status report: `{"phase","status","version"}` plus the optional fields that are set."""

    phase: str
    status: str
    version: str  # the release being installed
    chunks_done: int | None = None  # progress: chunks verified and written so far
    total_chunks: int | None = None
    running_version: str | None = None  # boot: the version running after the restart
    reason: str | None = None  # why something failed

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    def to_json(self) -> bytes:
        return dumps(self.to_dict())


def parse_ota_report(body: bytes | str) -> OtaReport:
    """A device's report, checked: a known phase, a status of that phase, counts that make sense."""
    fields = load_object(body, DocumentError, "OTA report")
    phase_text = fields.text("phase")
    try:
        phase = ReportPhase(phase_text)
    except ValueError:
        raise fields.fail("phase", f"one of {', '.join(ReportPhase)}", phase_text) from None
    status = fields.text("status")
    if status not in REPORT_STATUSES[phase]:
        raise fields.fail("status", f"one of {', '.join(REPORT_STATUSES[phase])}", status)
    total = fields.integer("total_chunks", 0) if "total_chunks" in fields else None
    done = fields.integer("chunks_done", 0, total) if "chunks_done" in fields else None
    return OtaReport(
        phase=phase.value,
        status=status,
        version=fields.text("version", allow_empty=False),
        chunks_done=done,
        total_chunks=total,
        running_version=fields.text("running_version") if "running_version" in fields else None,
        reason=fields.text("reason") if "reason" in fields else None,
    )
