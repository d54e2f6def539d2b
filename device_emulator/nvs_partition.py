"""The ESP-IDF NVS partition as it sits in flash: what `nvs_flash_init` finds there, read back.

A board is provisioned by flashing an NVS partition image (esp-idf-nvs-partition-gen writes it; see
harness/provisioning.py) at the nvs partition's offset. The emulator reads the same bytes at boot, so
the binary format is the contract, not a Python object:

* The partition is a run of 4 KiB pages. A page starts with a 32-byte header: state (u32), sequence
  number (u32), format version (u8: 0xFF version 1, 0xFE version 2 with multi-page blobs), reserved
  bytes, and a CRC-32 over bytes 4..27. Pages count in sequence order; an erased page is unused.
* Then a 32-byte bitmap, two bits per entry (11 empty, 10 written, 00 erased), and 126 entries of 32
  bytes. An item's header entry holds its namespace index, type, span (entries it occupies), chunk
  index, a CRC-32 over the header without the CRC field, its key (16 bytes, NUL-terminated), and 8
  bytes of data: an integer (u8..i64, little-endian), or for strings and blobs the length and the
  CRC-32 of the payload that fills the span's remaining entries.
* Namespaces are items in namespace 0 of type u8: the key is the name, the value its index.
* Version 2 stores a blob as data chunks (type 0x42, chunk index 0, 1, ...) and an index item (0x48:
  total size, chunk count, first chunk index); version 1 as one item of type 0x41.

Like the IDF driver, the reader skips what it cannot trust and says so in `damage`: a page whose
header fails its CRC, an entry whose CRC fails, a string that is not UTF-8, a blob with a missing
chunk. A partition it cannot read at all (not whole pages, or a format version other than 1 and 2,
which the driver refuses too) raises NvsError.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field
from enum import IntEnum
from urllib.parse import urlsplit

from device_emulator.nvs import NvsEntry, NvsType, NvsValue
from protocol.errors import NvsError

PAGE_SIZE = 0x1000
ENTRY_SIZE = 32
ENTRIES_PER_PAGE = 126
FIRST_ENTRY_OFFSET = 64  # after the page header and the entry state bitmap
KEY_SIZE = 16
VERSION_1, VERSION_2 = 0xFF, 0xFE
NAMESPACE_INDEX = 0  # namespace definitions live in namespace 0
ANY_INDEX = 0xFF  # not a namespace: "any" in the driver's lookups
CHUNK_ANY = 0xFF

_HEADER = struct.Struct("<IIB19sI")  # state, sequence, version, reserved, CRC
_ITEM = struct.Struct("<BBBBI16s8s")  # namespace, type, span, chunk index, CRC, key, data


class PageState(IntEnum):
    UNINITIALIZED = 0xFFFFFFFF
    ACTIVE = 0xFFFFFFFE
    FULL = 0xFFFFFFFC
    FREEING = 0xFFFFFFF8  # its items are being moved to a newer page; they still count until then
    CORRUPT = 0xFFFFFFF0  # the driver found it corrupt and keeps it for diagnostics


class ItemType(IntEnum):
    U8 = 0x01
    I8 = 0x11
    U16 = 0x02
    I16 = 0x12
    U32 = 0x04
    I32 = 0x14
    U64 = 0x08
    I64 = 0x18
    SZ = 0x21
    BLOB = 0x41  # version 1: a blob in one item
    BLOB_DATA = 0x42  # version 2: one chunk of a blob
    BLOB_IDX = 0x48  # version 2: the blob's index


_WRITTEN = 0b10
_EMPTY = 0b11
_PRIMITIVES = {t: NvsType(t.value) for t in ItemType if t.value < 0x20}
_VARIABLE = (ItemType.SZ, ItemType.BLOB, ItemType.BLOB_DATA)


@dataclass(frozen=True)
class Damage:
    """Something the reader skipped: where (page index in the partition, entry index or None for the
    whole page) and why."""

    page: int
    entry: int | None
    reason: str


@dataclass(frozen=True)
class _Item:
    page: int
    entry: int
    namespace: int
    type: ItemType
    chunk: int
    key: str
    data: bytes  # the header's 8 data bytes
    payload: bytes = b""  # strings and blob chunks: the bytes the item's span carries


@dataclass
class NvsPartition:
    """What a partition holds: namespace -> key -> typed value, and what was skipped."""

    namespaces: dict[str, dict[str, NvsEntry]] = field(default_factory=dict)
    damage: list[Damage] = field(default_factory=list)
    version: int | None = None  # VERSION_1 or VERSION_2; None when no page is in use

    def get(self, namespace: str, key: str) -> NvsValue | None:
        entry = self.namespaces.get(namespace, {}).get(key)
        return None if entry is None else entry.value

    def namespace(self, name: str) -> dict[str, NvsValue]:
        return {key: entry.value for key, entry in self.namespaces.get(name, {}).items()}


def crc32(data: bytes) -> int:
    """The CRC the NVS driver stores (esp_rom_crc32_le seeded with 0xFFFFFFFF)."""
    return zlib.crc32(data, 0xFFFFFFFF) & 0xFFFFFFFF


def read_nvs_partition(data: bytes) -> NvsPartition:
    """Read a whole NVS partition image; NvsError when it cannot be read at all (see the module doc)."""
    data = bytes(data)
    if not data or len(data) % PAGE_SIZE:
        raise NvsError(f"an NVS partition is a whole number of {PAGE_SIZE}-byte pages", len(data))
    result = NvsPartition()
    pages: list[tuple[int, int, bytes]] = []  # (sequence, index, page)
    for index in range(len(data) // PAGE_SIZE):
        page = data[index * PAGE_SIZE : (index + 1) * PAGE_SIZE]
        sequence = _page_in_use(index, page, result)
        if sequence is not None:
            pages.append((sequence, index, page))
    items: list[_Item] = []
    for _sequence, index, page in sorted(pages):
        items += _page_items(index, page, result.damage)
    _resolve(items, result)
    return result


def _page_in_use(index: int, page: bytes, result: NvsPartition) -> int | None:
    """The page's sequence number when its items count, else None (damage noted where it matters)."""
    state, sequence, version, _reserved, crc = _HEADER.unpack_from(page)
    if state == PageState.UNINITIALIZED:
        if page.count(0xFF) != PAGE_SIZE:
            result.damage.append(Damage(index, None, "page marked unused holds data"))
        return None
    if state == PageState.CORRUPT:
        result.damage.append(Damage(index, None, "page marked corrupt"))
        return None
    if state not in (PageState.ACTIVE, PageState.FULL, PageState.FREEING):
        result.damage.append(Damage(index, None, f"unknown page state {state:#010x}"))
        return None
    if crc32(page[4:28]) != crc:
        result.damage.append(Damage(index, None, "page header CRC mismatch"))
        return None
    if version not in (VERSION_1, VERSION_2):
        raise NvsError(
            f"NVS page {index} has format version {version:#04x}; this reader knows 1 and 2", version
        )
    if result.version is not None and result.version != version:
        raise NvsError("NVS pages of two format versions in one partition", (result.version, version))
    result.version = version
    return int(sequence)


def _entry_state(page: bytes, entry: int) -> int:
    byte = page[ENTRY_SIZE + entry // 4]
    return (byte >> (2 * (entry % 4))) & 0b11


def _page_items(index: int, page: bytes, damage: list[Damage]) -> list[_Item]:
    items: list[_Item] = []
    entry = 0
    while entry < ENTRIES_PER_PAGE:
        state = _entry_state(page, entry)
        if state == _EMPTY:
            break  # entries are written in order: nothing follows an empty one
        if state != _WRITTEN:  # erased (or the illegal 01, which the driver treats alike)
            entry += 1
            continue
        item, span, problem = _item_at(index, page, entry)
        if problem:
            damage.append(Damage(index, entry, problem))
        if item is not None:
            items.append(item)
        entry += span
    return items


def _item_at(index: int, page: bytes, entry: int) -> tuple[_Item | None, int, str]:
    """The item whose header is entry `entry`: (item or None, entries to skip, why it was refused)."""
    raw = page[FIRST_ENTRY_OFFSET + entry * ENTRY_SIZE :][:ENTRY_SIZE]
    namespace, type_code, span, chunk, crc, key_raw, data = _ITEM.unpack(raw)
    if crc32(raw[:4] + raw[8:]) != crc:
        return None, 1, "entry CRC mismatch"
    try:
        item_type = ItemType(type_code)
    except ValueError:
        return None, 1, f"unknown item type {type_code:#04x}"
    key_bytes, nul, _ = key_raw.partition(b"\0")
    if not nul or not key_bytes or not all(0x20 <= b < 0x7F for b in key_bytes):
        return None, 1, "key is not 1..15 printable ASCII characters"
    key = key_bytes.decode("ascii")
    if namespace == ANY_INDEX:
        return None, 1, f"item {key!r} in namespace index 0xff"
    if item_type not in _VARIABLE:
        if span != 1:
            return None, 1, f"item {key!r} of type {item_type.name} spans {span} entries"
        return _Item(index, entry, namespace, item_type, chunk, key, data), 1, ""
    size = int.from_bytes(data[:2], "little")
    needed = 1 + -(-size // ENTRY_SIZE)
    if span != needed or entry + span > ENTRIES_PER_PAGE:
        return None, 1, f"item {key!r} of {size} bytes spans {span} entries"
    if any(_entry_state(page, entry + i) != _WRITTEN for i in range(1, span)):
        return None, 1, f"item {key!r}: its data entries are not all written"
    start = FIRST_ENTRY_OFFSET + (entry + 1) * ENTRY_SIZE
    payload = page[start : start + size]
    if crc32(payload) != int.from_bytes(data[4:8], "little"):
        return None, span, f"item {key!r}: data CRC mismatch"
    return _Item(index, entry, namespace, item_type, chunk, key, data, payload), span, ""


def _resolve(items: list[_Item], result: NvsPartition) -> None:
    """Turn the items, oldest first, into namespaces of typed values (a later write of a key wins)."""
    names: dict[int, str] = {}
    for item in items:
        if item.namespace == NAMESPACE_INDEX and item.type is ItemType.U8:
            names[item.data[0]] = item.key
    chunks = {(i.namespace, i.key, i.chunk): i.payload for i in items if i.type is ItemType.BLOB_DATA}
    values: dict[tuple[int, str], NvsEntry] = {}
    for item in items:
        if item.namespace == NAMESPACE_INDEX or item.type is ItemType.BLOB_DATA:
            continue
        entry, problem = _entry(item, chunks)
        if problem:
            result.damage.append(Damage(item.page, item.entry, problem))
        elif item.namespace not in names:
            problem = f"item {item.key!r} in undefined namespace index {item.namespace}"
            result.damage.append(Damage(item.page, item.entry, problem))
        elif entry is not None:
            values[(item.namespace, item.key)] = entry
    for (namespace, key), entry in values.items():
        result.namespaces.setdefault(names[namespace], {})[key] = entry


def _entry(item: _Item, chunks: dict[tuple[int, str, int], bytes]) -> tuple[NvsEntry | None, str]:
    if item.type in _PRIMITIVES:
        nvs_type = _PRIMITIVES[item.type]
        value = int.from_bytes(item.data[: nvs_type.width], "little", signed=nvs_type.signed)
        return NvsEntry(nvs_type, value), ""
    if item.type is ItemType.SZ:
        text, nul, _ = item.payload.partition(b"\0")
        if not nul:
            return None, f"string {item.key!r} is not NUL-terminated"
        try:
            return NvsEntry(NvsType.STR, text.decode("utf-8")), ""
        except UnicodeDecodeError:
            return None, f"string {item.key!r} is not UTF-8"
    if item.type is ItemType.BLOB:
        return NvsEntry(NvsType.BLOB, item.payload), ""
    # BLOB_IDX: total size, chunk count, first chunk index
    size = int.from_bytes(item.data[:4], "little")
    count, first = item.data[4], item.data[5]
    parts = [chunks.get((item.namespace, item.key, first + n)) for n in range(count)]
    if any(part is None for part in parts):
        return None, f"blob {item.key!r} is missing a chunk"
    blob = b"".join(part for part in parts if part is not None)
    if len(blob) != size:
        return None, f"blob {item.key!r} holds {len(blob)} bytes, its index says {size}"
    return NvsEntry(NvsType.BLOB, blob), ""


# --- the provisioned settings ---------------------------------------------------------------------------

PROVISION_NAMESPACE = "provision"
CLOUD_URL_KEY = "cloud_url"  # string: base URL of the cloud
INVERTER_URL_KEY = "inverter_url"  # string: the inverter's frame API (or modbus-tcp://) URL
DEVICE_ID_KEY = "device_id"  # string
PSK_KEY = "psk"  # blob: the 32-byte key of the upload envelope


@dataclass(frozen=True)
class Provisioned:
    """The board's settings from the provisioning namespace; None where a key is absent or unusable
    (`problems` says why)."""

    cloud_url: str | None = None
    inverter_url: str | None = None
    device_id: str | None = None
    key: bytes | None = None
    problems: tuple[str, ...] = ()

    @property
    def present(self) -> bool:
        return any(v is not None for v in (self.cloud_url, self.inverter_url, self.device_id, self.key))


def provisioned(partition: NvsPartition, key_size: int = 32) -> Provisioned:
    """The provisioning namespace of `partition`, each value checked for its type (and the key's size)."""
    values = partition.namespaces.get(PROVISION_NAMESPACE, {})
    problems: list[str] = []

    def text(key: str, *, url: bool = False) -> str | None:
        entry = values.get(key)
        if entry is None:
            return None
        value = entry.value
        if entry.type is not NvsType.STR or not isinstance(value, str) or not value:
            problems.append(f"{PROVISION_NAMESPACE}/{key} is not a non-empty string")
            return None
        if url:
            parts = urlsplit(value)
            if parts.scheme not in ("http", "https", "modbus-tcp") or not parts.hostname:
                problems.append(f"{PROVISION_NAMESPACE}/{key} is not a URL: {value!r}")
                return None
        return value

    psk = values.get(PSK_KEY)
    key: bytes | None = None
    if psk is not None:
        if psk.type is NvsType.BLOB and isinstance(psk.value, bytes) and len(psk.value) == key_size:
            key = psk.value
        else:
            problems.append(f"{PROVISION_NAMESPACE}/{PSK_KEY} is not a {key_size}-byte blob")
    return Provisioned(
        cloud_url=text(CLOUD_URL_KEY, url=True),
        inverter_url=text(INVERTER_URL_KEY, url=True),
        device_id=text(DEVICE_ID_KEY),
        key=key,
        problems=tuple(problems),
    )
