"""The device's NVS: a file-backed key-value store with ESP-IDF's namespaces and typed values.

On-disk format: an append-only log of records, each framed as

    marker b"\\xe5NV" | payload length (u32 LE) | CRC-32 of length+payload (u32 LE) | payload

where a payload is one or more operations (set, erase key, erase namespace, erase all) applied
together. Why a log rather than rewriting a snapshot file on every write:

* A power cut at any byte of a write leaves the old value: a write only appends, it never touches the
  bytes an earlier value lives in, and a record that is torn or corrupt fails its CRC and is
  discarded on load. The real NVS is built the same way (append-only entries, each with a CRC32).
* A record is all-or-nothing, so a transaction (a whole configuration: poll, upload, registers) is
  accepted entirely or not at all.
* It is cheap: the nonce is written before every upload; that is one small append, not a rewrite.

On load, damaged bytes are skipped up to the next record whose CRC holds (so a corrupt old record
cannot roll the nonce back to an earlier value), the damage is logged and reported, and the log is
compacted. Compaction (also when the log grows) writes a fresh file and swaps it in with
temp file + fsync + os.replace + directory fsync, which is atomic as well.

The second half of the module is the firmware's table of namespaces and keys (firmware-protocol.md
§2, §4.5, §5.3, §7.3, §8.1) with typed getters that read them the way the firmware does.
"""

from __future__ import annotations

import logging
import os
import struct
import zlib
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path

from protocol.errors import NvsError
from protocol.registers import DEFAULT_SELECTION, addresses_from_mask, selection_mask

log = logging.getLogger(__name__)

NAME_MAX = 15  # ESP-IDF: namespace and key names are at most 15 characters
STR_MAX_BYTES = 3999  # ESP-IDF: strings up to 4000 bytes including the NUL terminator
BLOB_MAX_BYTES = 508_000  # ESP-IDF's blob limit

# Tagged points: the store calls `on_point(tag)` there; the harness may raise (a power cut) to stop
# the write exactly at that point, leaving on disk what a real cut would leave.
POINT_BEFORE_COMMIT = "nvs.write.before_commit"  # nothing of the new record written yet
POINT_TORN = "nvs.write.torn"  # half of the new record written: a torn tail
POINT_AFTER_COMMIT = "nvs.write.after_commit"  # record durable; the caller has not been told
POINT_BEFORE_COMPACT = "nvs.compact.before_replace"  # compacted copy written, not swapped in yet

PointHook = Callable[[str], None]

_MARKER = b"\xe5NV"
_HEADER = struct.Struct("<II")  # payload length, CRC-32
_HEADER_SIZE = len(_MARKER) + _HEADER.size
_MAX_PAYLOAD = 64 * 1024 * 1024  # no real record comes near; larger lengths are corrupt headers

_SET, _ERASE_KEY, _ERASE_NAMESPACE, _ERASE_ALL = 1, 2, 3, 4


class NvsType(IntEnum):
    """ESP-IDF's item type codes: the low nibble is the integer width in bytes, 0x10 means signed."""

    U8 = 0x01
    I8 = 0x11
    U16 = 0x02
    I16 = 0x12
    U32 = 0x04
    I32 = 0x14
    U64 = 0x08
    I64 = 0x18
    STR = 0x21
    BLOB = 0x42

    @property
    def is_int(self) -> bool:
        return self.value < 0x20

    @property
    def width(self) -> int:
        return self.value & 0x0F

    @property
    def signed(self) -> bool:
        return bool(self.value & 0x10)

    @property
    def bounds(self) -> tuple[int, int]:
        bits = 8 * self.width
        if self.signed:
            return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
        return 0, (1 << bits) - 1


NvsValue = int | str | bytes


@dataclass(frozen=True)
class NvsEntry:
    type: NvsType
    value: NvsValue


@dataclass(frozen=True)
class Damage:
    """Bytes of the file that were not applied on load, and why."""

    offset: int
    length: int
    reason: str


@dataclass
class LoadReport:
    records: int = 0
    damage: list[Damage] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.damage


def check_name(what: str, name: object) -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= NAME_MAX:
        raise NvsError(f"{what} must be 1..{NAME_MAX} characters", name)
    if not (name.isascii() and name.isprintable()):
        raise NvsError(f"{what} must be printable ASCII", name)
    return name


def check_value(nvs_type: object, value: object) -> NvsValue:
    """The value as stored, or NvsError when ESP-IDF would refuse it."""
    if not isinstance(nvs_type, NvsType):
        raise NvsError("unknown NVS type", nvs_type)
    if nvs_type.is_int:
        if not isinstance(value, int) or isinstance(value, bool):
            raise NvsError(f"{nvs_type.name} needs an integer", value)
        low, high = nvs_type.bounds
        if not low <= value <= high:
            raise NvsError(f"{nvs_type.name} takes {low}..{high}", value)
        return value
    if nvs_type is NvsType.STR:
        if not isinstance(value, str):
            raise NvsError("STR needs a string", value)
        try:
            encoded = value.encode("utf-8")
        except UnicodeEncodeError:
            raise NvsError("string is not valid Unicode", value) from None
        if b"\0" in encoded:
            raise NvsError("strings are NUL-terminated and cannot contain NUL", value)
        if len(encoded) > STR_MAX_BYTES:
            raise NvsError(f"strings hold at most {STR_MAX_BYTES} bytes", len(encoded))
        return value
    if not isinstance(value, bytes | bytearray | memoryview):
        raise NvsError("BLOB needs bytes", value)
    blob = bytes(value)
    if len(blob) > BLOB_MAX_BYTES:
        raise NvsError(f"blobs hold at most {BLOB_MAX_BYTES} bytes", len(blob))
    return blob


@dataclass(frozen=True)
class _Op:
    code: int
    namespace: str = ""
    key: str = ""
    entry: NvsEntry | None = None


_State = dict[str, dict[str, NvsEntry]]


def _apply(state: _State, op: _Op) -> None:
    if op.code == _SET:
        assert op.entry is not None
        keys = state.setdefault(op.namespace, {})
        old = keys.get(op.key)
        if old is not None and old.type is not op.entry.type:
            # ESP-IDF refuses to give an existing key a value of another type.
            raise NvsError(
                f"{op.namespace}/{op.key} holds a {old.type.name}, not a {op.entry.type.name}", op.key
            )
        keys[op.key] = op.entry
    elif op.code == _ERASE_KEY:
        keys = state.get(op.namespace, {})
        keys.pop(op.key, None)
        if not keys:
            state.pop(op.namespace, None)
    elif op.code == _ERASE_NAMESPACE:
        state.pop(op.namespace, None)
    else:
        state.clear()


def _copy(state: _State) -> _State:
    return {namespace: dict(keys) for namespace, keys in state.items()}


# --- record encoding ---------------------------------------------------------------------------


def _value_bytes(entry: NvsEntry) -> bytes:
    if isinstance(entry.value, int):
        return entry.value.to_bytes(entry.type.width, "little", signed=entry.type.signed)
    if isinstance(entry.value, str):
        return entry.value.encode("utf-8")
    return entry.value


def _encode(ops: list[_Op]) -> bytes:
    out = bytearray()
    for op in ops:
        out.append(op.code)
        if op.code in (_SET, _ERASE_KEY, _ERASE_NAMESPACE):
            out += bytes([len(op.namespace)]) + op.namespace.encode("ascii")
        if op.code in (_SET, _ERASE_KEY):
            out += bytes([len(op.key)]) + op.key.encode("ascii")
        if op.code == _SET:
            assert op.entry is not None
            raw = _value_bytes(op.entry)
            out += bytes([op.entry.type]) + struct.pack("<I", len(raw)) + raw
    return bytes(out)


def _frame(payload: bytes) -> bytes:
    length = struct.pack("<I", len(payload))
    return _MARKER + length + struct.pack("<I", zlib.crc32(length + payload)) + payload


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def take(self, size: int) -> bytes:
        if self.pos + size > len(self.data):
            raise NvsError("record ends inside an operation", self.pos)
        chunk = self.data[self.pos : self.pos + size]
        self.pos += size
        return chunk

    def name(self, what: str) -> str:
        raw = self.take(self.take(1)[0])
        try:
            return check_name(what, raw.decode("ascii"))
        except UnicodeDecodeError:
            raise NvsError(f"{what} is not ASCII", raw) from None


def _decode(payload: bytes) -> list[_Op]:
    """The operations of one record; NvsError if the payload is not a valid list of them."""
    reader = _Reader(payload)
    ops: list[_Op] = []
    while reader.pos < len(payload):
        code = reader.take(1)[0]
        if code == _ERASE_ALL:
            ops.append(_Op(code))
            continue
        if code not in (_SET, _ERASE_KEY, _ERASE_NAMESPACE):
            raise NvsError("unknown operation", code)
        namespace = reader.name("namespace")
        if code == _ERASE_NAMESPACE:
            ops.append(_Op(code, namespace))
            continue
        key = reader.name("key")
        if code == _ERASE_KEY:
            ops.append(_Op(code, namespace, key))
            continue
        type_code = reader.take(1)[0]
        try:
            nvs_type = NvsType(type_code)
        except ValueError:
            raise NvsError("unknown value type", type_code) from None
        raw = reader.take(struct.unpack("<I", reader.take(4))[0])
        value: NvsValue
        if nvs_type.is_int:
            if len(raw) != nvs_type.width:
                raise NvsError(f"{nvs_type.name} value has the wrong width", raw)
            value = int.from_bytes(raw, "little", signed=nvs_type.signed)
        elif nvs_type is NvsType.STR:
            try:
                value = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise NvsError("string value is not UTF-8", raw) from None
        else:
            value = raw
        ops.append(_Op(code, namespace, key, NvsEntry(nvs_type, check_value(nvs_type, value))))
    return ops


def _scan(data: bytes) -> Iterator[tuple[int, int, list[_Op] | None, str]]:
    """(offset, end, ops, reason) for each record, and (offset, end, None, reason) for damage."""
    pos = 0
    damage_from: int | None = None
    while pos < len(data):
        end = pos + 1
        ops: list[_Op] | None = None
        reason = "corrupt bytes"
        if data.startswith(_MARKER, pos) and pos + _HEADER_SIZE <= len(data):
            length, crc = _HEADER.unpack_from(data, pos + len(_MARKER))
            body_end = pos + _HEADER_SIZE + length
            if length <= _MAX_PAYLOAD and body_end <= len(data):
                payload = data[pos + _HEADER_SIZE : body_end]
                if zlib.crc32(data[pos + len(_MARKER) : pos + len(_MARKER) + 4] + payload) == crc:
                    end = body_end  # framing is intact even if the content is not
                    try:
                        ops = _decode(payload)
                    except NvsError as error:
                        reason = f"undecodable record ({error})"
        if ops is not None:
            if damage_from is not None:
                yield damage_from, pos, None, "corrupt bytes"
                damage_from = None
            yield pos, end, ops, ""
        elif end > pos + 1:  # a whole record with a good CRC whose content is invalid
            if damage_from is not None:
                yield damage_from, pos, None, "corrupt bytes"
                damage_from = None
            yield pos, end, None, reason
        else:
            if damage_from is None:
                damage_from = pos
            found = data.find(_MARKER, pos + 1)
            end = len(data) if found < 0 else found
        pos = end
    if damage_from is not None:
        yield damage_from, len(data), None, "torn or corrupt tail"


def _load(data: bytes) -> tuple[_State, LoadReport]:
    state: _State = {}
    report = LoadReport()
    for offset, end, ops, reason in _scan(data):
        if ops is None:
            report.damage.append(Damage(offset, end - offset, reason))
            continue
        staged = _copy(state)
        try:
            for op in ops:
                _apply(staged, op)
        except NvsError as error:
            report.damage.append(Damage(offset, end - offset, f"conflicting record ({error})"))
            continue
        state = staged
        report.records += 1
    return state, report


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


# --- the store ---------------------------------------------------------------------------------


class NvsTransaction:
    """Operations collected by `NvsStore.transaction()` and committed as one record."""

    def __init__(self) -> None:
        self.ops: list[_Op] = []
        self.written = False  # after the block: whether anything changed on disk

    def set(self, namespace: str, key: str, nvs_type: NvsType, value: NvsValue) -> None:
        entry = NvsEntry(nvs_type, check_value(nvs_type, value))
        self.ops.append(_Op(_SET, check_name("namespace", namespace), check_name("key", key), entry))

    def put(self, setting: NvsKey, value: NvsValue) -> None:
        self.set(setting.namespace, setting.key, setting.type, value)

    def erase_key(self, namespace: str, key: str) -> None:
        self.ops.append(_Op(_ERASE_KEY, check_name("namespace", namespace), check_name("key", key)))

    def erase_namespace(self, namespace: str) -> None:
        self.ops.append(_Op(_ERASE_NAMESPACE, check_name("namespace", namespace)))

    def erase_all(self) -> None:
        self.ops.append(_Op(_ERASE_ALL))


class NvsStore:
    """The NVS partition of one device, kept in the file at `path`.

    Opening never fails on a damaged file: what is valid is recovered, the rest is reported in
    `load_report` and logged. Writes are durable when they return (`durable=False` skips the fsyncs,
    for fleets on virtual time where only emulated power cuts matter). An unchanged value is not
    written again.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        on_point: PointHook | None = None,
        durable: bool = True,
        compact_at: int = 64 * 1024,
    ) -> None:
        self.path = Path(path)
        self.on_point = on_point
        self.durable = durable
        self.compact_at = compact_at  # the log is compacted when it outgrows this and twice its live size
        self._temp = self.path.with_name(self.path.name + ".tmp")
        self._temp.unlink(missing_ok=True)  # a compaction cut short before its swap
        data = self.path.read_bytes() if self.path.exists() else b""
        self._state, self.load_report = _load(data)
        self._size = len(data)
        self._compact_limit = max(compact_at, 2 * len(self._compacted()))
        if not self.load_report.clean:
            for damage in self.load_report.damage:
                log.warning(
                    "NVS %s: discarded %d bytes at offset %d: %s",
                    self.path,
                    damage.length,
                    damage.offset,
                    damage.reason,
                )
            self._compact()

    # reads

    def entry(self, namespace: str, key: str) -> NvsEntry | None:
        return self._state.get(namespace, {}).get(key)

    def get_int(self, namespace: str, key: str, nvs_type: NvsType, default: int) -> int:
        """The stored integer, or `default` when the key is absent or has another type (as the
        firmware's `Preferences` getters behave)."""
        found = self.entry(namespace, key)
        if found is None or found.type is not nvs_type or not isinstance(found.value, int):
            return default
        return found.value

    def get_str(self, namespace: str, key: str, default: str) -> str:
        found = self.entry(namespace, key)
        return found.value if found is not None and isinstance(found.value, str) else default

    def get_blob(self, namespace: str, key: str, default: bytes) -> bytes:
        found = self.entry(namespace, key)
        if found is None or found.type is not NvsType.BLOB or not isinstance(found.value, bytes):
            return default
        return found.value

    def namespaces(self) -> list[str]:
        return sorted(self._state)

    def keys(self, namespace: str) -> dict[str, NvsEntry]:
        return dict(self._state.get(namespace, {}))

    def snapshot(self) -> dict[str, dict[str, NvsEntry]]:
        return _copy(self._state)

    # writes

    def set(self, namespace: str, key: str, nvs_type: NvsType, value: NvsValue) -> bool:
        """Store one value; True if the file changed."""
        with self.transaction() as tx:
            tx.set(namespace, key, nvs_type, value)
        return tx.written

    def put(self, setting: NvsKey, value: NvsValue) -> bool:
        return self.set(setting.namespace, setting.key, setting.type, value)

    def erase_key(self, namespace: str, key: str) -> bool:
        with self.transaction() as tx:
            tx.erase_key(namespace, key)
        return tx.written

    def erase_namespace(self, namespace: str) -> bool:
        with self.transaction() as tx:
            tx.erase_namespace(namespace)
        return tx.written

    def erase_all(self) -> bool:
        with self.transaction() as tx:
            tx.erase_all()
        return tx.written

    @contextmanager
    def transaction(self) -> Iterator[NvsTransaction]:
        """Collect operations; they are committed together, as one record, when the block ends
        normally (nothing is written if it raises)."""
        tx = NvsTransaction()
        yield tx
        tx.written = self._commit(tx.ops)

    def _commit(self, ops: list[_Op]) -> bool:
        staged = _copy(self._state)
        for op in ops:
            _apply(staged, op)
        if staged == self._state:
            return False
        record = _frame(_encode(ops))
        self._point(POINT_BEFORE_COMMIT)
        self._append(record)
        self._state = staged
        self._point(POINT_AFTER_COMMIT)
        if self._size > self._compact_limit:
            self._compact()
        return True

    def _point(self, tag: str) -> None:
        if self.on_point is not None:
            self.on_point(tag)

    def _append(self, record: bytes) -> None:
        created = not self.path.exists()
        if created:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            if self.on_point is None:
                _write_all(fd, record)
            else:
                half = len(record) // 2
                _write_all(fd, record[:half])
                self._point(POINT_TORN)
                _write_all(fd, record[half:])
            if self.durable:
                os.fsync(fd)
            self._size = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if created and self.durable:
            _fsync_dir(self.path.parent)

    def _compacted(self) -> bytes:
        ops = [
            _Op(_SET, namespace, key, entry)
            for namespace, keys in sorted(self._state.items())
            for key, entry in sorted(keys.items())
        ]
        return _frame(_encode(ops)) if ops else b""

    def _compact(self) -> None:
        data = self._compacted()
        with open(self._temp, "wb") as temp:
            temp.write(data)
            temp.flush()
            if self.durable:
                os.fsync(temp.fileno())
        self._point(POINT_BEFORE_COMPACT)
        os.replace(self._temp, self.path)
        if self.durable:
            _fsync_dir(self.path.parent)
        self._size = len(data)
        # Compact again once the log has doubled: amortised O(1) per write.
        self._compact_limit = max(self.compact_at, 2 * len(data))


# --- the firmware's namespaces and keys -----------------------------------------------------------


@dataclass(frozen=True)
class NvsKey:
    """One key the firmware keeps in NVS, with its type and what the firmware reads when the key is
    absent, has another type, or (`minimum`) holds a value below the minimum."""

    namespace: str
    key: str
    type: NvsType
    default: NvsValue | None
    meaning: str
    minimum: int | None = None
    spec_only: bool = False  # used only by the `spec` profile, never by firmware 1.0.4

    def __post_init__(self) -> None:
        check_name("namespace", self.namespace)
        check_name("key", self.key)
        if self.default is not None:
            check_value(self.type, self.default)

    def read(self, store: NvsStore) -> NvsValue | None:
        found = store.entry(self.namespace, self.key)
        if found is None or found.type is not self.type:
            return self.default
        if self.minimum is not None and isinstance(found.value, int) and found.value < self.minimum:
            return self.default
        return found.value

    def read_int(self, store: NvsStore) -> int:
        value = self.read(store)
        if not isinstance(value, int):
            raise TypeError(f"{self.namespace}/{self.key} is not an integer key with a default")
        return value


POLL_FREQ = NvsKey("freq", "poll_freq", NvsType.U64, 2_000_000, "poll period in µs (§2.1)", minimum=100_000)
UPLOAD_FREQ = NvsKey(
    "freq", "upload_freq", NvsType.U64, 15_000_000, "upload period in µs (§2.1)", minimum=1_000_000
)
REGS = NvsKey(
    "readregs",
    "regs",
    NvsType.U32,
    selection_mask(DEFAULT_SELECTION),
    "register selection, bit k = address k (§2.2)",
)
REG_COUNT = NvsKey(
    "readregs", "reg_count", NvsType.I32, len(DEFAULT_SELECTION), "number of selected registers (§2.2)"
)
NONCE = NvsKey(
    "security", "nonce", NvsType.U32, 10_000, "last nonce used, saved before each upload attempt (§4.5)"
)
# The OTA manifest as saved at the check (§7.3 step 1).
OTA_VERSION = NvsKey("ota", "version", NvsType.STR, None, "manifest latest_version")
OTA_SIZE = NvsKey("ota", "orig_size", NvsType.U32, None, "manifest original_size (bytes)")
OTA_ENCRYPTED_SIZE = NvsKey("ota", "enc_size", NvsType.U32, None, "manifest encrypted_size (bytes)")
OTA_SHA256 = NvsKey("ota", "sha256", NvsType.STR, None, "manifest sha256_hash (hex)")
OTA_SIGNATURE = NvsKey("ota", "signature", NvsType.STR, None, "manifest signature (base64)")
OTA_IV = NvsKey("ota", "iv", NvsType.STR, None, "manifest iv (base64)")
OTA_CHUNK_SIZE = NvsKey("ota", "chunk_size", NvsType.U32, None, "manifest chunk_size")
OTA_CHUNKS = NvsKey("ota", "total_chunks", NvsType.U32, None, "manifest total_chunks")
# Download progress (§7.3 step 4): firmware 1.0.4 tries and fails to save it; `spec` resumes from it.
OTA_PROGRESS_VERSION = NvsKey(
    "ota_progress", "version", NvsType.STR, None, "version being downloaded", spec_only=True
)
OTA_CHUNKS_RECEIVED = NvsKey("ota_progress", "chunks_recv", NvsType.U32, 0, "chunks written to flash")
OTA_BYTES_DOWNLOADED = NvsKey("ota_progress", "bytes_down", NvsType.U32, 0, "plaintext bytes written")
OTA_NEXT_IV = NvsKey(
    "ota_progress",
    "next_iv",
    NvsType.BLOB,
    None,
    "CBC state: last ciphertext block of the last verified chunk",
    spec_only=True,
)
CONFIG_PENDING_ACK = NvsKey(
    "config",
    "pending_ack",
    NvsType.STR,
    None,
    "config_ack JSON not yet delivered, so an accepted configuration is acknowledged after a power cut",
    spec_only=True,
)
DIAGNOSTICS_COUNTERS = NvsKey(
    "diagnostics", "counters", NvsType.BLOB, None, "event-log counters as JSON (§8.1)", spec_only=True
)

FIRMWARE_KEYS: tuple[NvsKey, ...] = (
    POLL_FREQ,
    UPLOAD_FREQ,
    REGS,
    REG_COUNT,
    NONCE,
    OTA_VERSION,
    OTA_SIZE,
    OTA_ENCRYPTED_SIZE,
    OTA_SHA256,
    OTA_SIGNATURE,
    OTA_IV,
    OTA_CHUNK_SIZE,
    OTA_CHUNKS,
    OTA_PROGRESS_VERSION,
    OTA_CHUNKS_RECEIVED,
    OTA_BYTES_DOWNLOADED,
    OTA_NEXT_IV,
    CONFIG_PENDING_ACK,
    DIAGNOSTICS_COUNTERS,
)

INVALID_REGISTER = -1  # what the firmware pads an inconsistent selection with (§2.2)


def poll_interval_us(store: NvsStore) -> int:
    return POLL_FREQ.read_int(store)


def upload_interval_us(store: NvsStore) -> int:
    return UPLOAD_FREQ.read_int(store)


def register_selection(store: NvsStore) -> list[int]:
    """The polled addresses as firmware 1.0.4 rebuilds them (§2.2).

    Nothing stored: the default selection in the firmware's own order. Otherwise the addresses of the
    mask in ascending order, cut or padded with INVALID_REGISTER to `reg_count` entries.
    """
    if not store.keys(REGS.namespace):
        return list(DEFAULT_SELECTION)
    addresses = addresses_from_mask(REGS.read_int(store))
    count = max(REG_COUNT.read_int(store), 0)
    return (addresses + [INVALID_REGISTER] * count)[:count]


def current_nonce(store: NvsStore) -> int:
    return NONCE.read_int(store)


def advance_nonce(store: NvsStore) -> int:
    """Increment the nonce and persist it before it is used (§4.5); wraps to 0 after 2**32 - 1 as
    the firmware's uint32 does."""
    nonce = (current_nonce(store) + 1) & 0xFFFF_FFFF
    store.put(NONCE, nonce)
    return nonce
