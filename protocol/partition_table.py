"""ESP-IDF binary partition tables (the 0xC00 bytes at flash offset 0x8000).

Each entry is 32 bytes: magic AA 50, type, subtype, offset (u32), size (u32), label (16 bytes, NUL
padded), flags (u32: bit 0 encrypted, bit 1 read-only). An MD5 entry (EB EB, 14 x FF, MD5 of every
entry before it) follows the last partition, then FF padding; an entry starting FF FF FF FF ends the
table. The layout rules are those of ESP-IDF's gen_esp32part: app partitions on 64 KiB boundaries,
data partitions on 4 KiB, nothing below 0x9000, no overlaps, unique labels, one otadata of 0x2000.
"""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum, IntFlag

from protocol.errors import ImageError

PARTITION_TABLE_OFFSET = 0x8000
PARTITION_TABLE_LENGTH = 0xC00  # the last 1 KiB of the 4 KiB sector is kept for a signature
FIRST_PARTITION_OFFSET = PARTITION_TABLE_OFFSET + 0x1000
ENTRY_SIZE = 32
MAX_ENTRIES = PARTITION_TABLE_LENGTH // ENTRY_SIZE  # the bootloader scans this many slots
ENTRY_MAGIC = b"\xaa\x50"
MD5_MAGIC = b"\xeb\xeb"
MD5_ENTRY_PREFIX = MD5_MAGIC + b"\xff" * 14
END_MARKER = b"\xff\xff\xff\xff"  # magic FFFF, type FF, subtype FF
APP_ALIGNMENT = 0x10000
DATA_ALIGNMENT = 0x1000
OTADATA_SIZE = 0x2000
OTA_SLOTS = 16
LABEL_SIZE = 16

_ENTRY = struct.Struct("<2sBBII16sI")


class PartitionType(IntEnum):
    APP = 0x00
    DATA = 0x01


class AppSubtype(IntEnum):
    FACTORY = 0x00
    OTA_0 = 0x10  # ota_<n> is 0x10 + n, n < 16
    TEST = 0x20


class DataSubtype(IntEnum):
    OTA = 0x00
    PHY = 0x01
    NVS = 0x02
    COREDUMP = 0x03
    NVS_KEYS = 0x04
    EFUSE = 0x05
    UNDEFINED = 0x06
    ESPHTTPD = 0x80
    FAT = 0x81
    SPIFFS = 0x82
    LITTLEFS = 0x83


class PartitionFlag(IntFlag):
    ENCRYPTED = 1 << 0
    READONLY = 1 << 1


def ota_subtype(slot: int) -> int:
    if not 0 <= slot < OTA_SLOTS:
        raise ImageError(f"OTA slot must be 0..{OTA_SLOTS - 1}", slot)
    return AppSubtype.OTA_0 + slot


@dataclass(frozen=True)
class Partition:
    label: str
    type: int
    subtype: int
    offset: int
    size: int
    flags: PartitionFlag = PartitionFlag(0)

    @property
    def end(self) -> int:
        return self.offset + self.size

    @property
    def ota_slot(self) -> int | None:
        """n for an ota_<n> app partition, else None."""
        if self.type == PartitionType.APP and AppSubtype.OTA_0 <= self.subtype < AppSubtype.OTA_0 + OTA_SLOTS:
            return self.subtype - AppSubtype.OTA_0
        return None

    def contains(self, address: int) -> bool:
        return self.offset <= address < self.end

    def to_bytes(self) -> bytes:
        label = self.label.encode("utf-8")
        if not label or len(label) > LABEL_SIZE or b"\x00" in label:
            raise ImageError(
                f"partition label must be 1..{LABEL_SIZE} bytes of UTF-8 without NUL", self.label
            )
        for name, value, limit in (("type", self.type, 0xFF), ("subtype", self.subtype, 0xFF)):
            if not 0 <= value <= limit:
                raise ImageError(f"partition {self.label}: {name} must be 0..{limit:#x}", value)
        for name, value in (("offset", self.offset), ("size", self.size), ("end", self.end)):
            if not 0 <= value <= 0xFFFFFFFF:
                raise ImageError(f"partition {self.label}: {name} does not fit 32 bits", value)
        return _ENTRY.pack(
            ENTRY_MAGIC, self.type, self.subtype, self.offset, self.size, label, int(self.flags)
        )


@dataclass(frozen=True)
class PartitionTable:
    partitions: tuple[Partition, ...]

    def find_all(
        self, type: int | None = None, subtype: int | None = None, label: str | None = None
    ) -> tuple[Partition, ...]:
        """Partitions matching every criterion given, in table order."""
        return tuple(
            p
            for p in self.partitions
            if (type is None or p.type == type)
            and (subtype is None or p.subtype == subtype)
            and (label is None or p.label == label)
        )

    def find(
        self, type: int | None = None, subtype: int | None = None, label: str | None = None
    ) -> Partition | None:
        """The first match, as esp_partition_find_first returns it."""
        found = self.find_all(type, subtype, label)
        return found[0] if found else None

    def require(
        self, type: int | None = None, subtype: int | None = None, label: str | None = None
    ) -> Partition:
        found = self.find(type, subtype, label)
        if found is None:
            raise ImageError("no such partition", {"type": type, "subtype": subtype, "label": label})
        return found

    def at(self, address: int) -> Partition | None:
        """The partition holding a flash address."""
        return next((p for p in self.partitions if p.contains(address)), None)

    @property
    def ota_apps(self) -> tuple[Partition, ...]:
        """ota_0, ota_1, ... up to the first missing slot: the slots the bootloader counts."""
        apps = []
        for slot in range(OTA_SLOTS):
            found = self.find(PartitionType.APP, AppSubtype.OTA_0 + slot)
            if found is None:
                break
            apps.append(found)
        return tuple(apps)

    @property
    def otadata(self) -> Partition | None:
        return self.find(PartitionType.DATA, DataSubtype.OTA)

    @property
    def factory(self) -> Partition | None:
        return self.find(PartitionType.APP, AppSubtype.FACTORY)

    def to_bytes(self, *, md5: bool = True) -> bytes:
        return build_partition_table(self.partitions, md5=md5)


def check_layout(partitions: Iterable[Partition], flash_size: int | None = None) -> None:
    """Raise ImageError unless the partitions follow ESP-IDF's rules (and fit `flash_size`, if given)."""
    ordered = sorted(partitions, key=lambda p: p.offset)
    labels = [p.label for p in ordered]
    duplicates = sorted({label for label in labels if labels.count(label) > 1})
    if duplicates:
        raise ImageError("partition labels must be unique", duplicates)
    previous: Partition | None = None
    for part in ordered:
        alignment = APP_ALIGNMENT if part.type == PartitionType.APP else DATA_ALIGNMENT
        if part.offset % alignment:
            raise ImageError(f"partition {part.label} offset is not {alignment:#x}-aligned", part.offset)
        if part.type == PartitionType.APP and part.size % DATA_ALIGNMENT:
            raise ImageError(f"app partition {part.label} size is not {DATA_ALIGNMENT:#x}-aligned", part.size)
        if part.size == 0:
            raise ImageError(f"partition {part.label} is empty", part.size)
        if part.offset < FIRST_PARTITION_OFFSET:
            raise ImageError(f"partition {part.label} starts below {FIRST_PARTITION_OFFSET:#x}", part.offset)
        if previous is not None and part.offset < previous.end:
            raise ImageError(f"partition {part.label} overlaps {previous.label}", part.offset)
        if flash_size is not None and part.end > flash_size:
            raise ImageError(f"partition {part.label} ends past the {flash_size:#x}-byte flash", part.end)
        previous = part
    otadata = [p for p in ordered if p.type == PartitionType.DATA and p.subtype == DataSubtype.OTA]
    if len(otadata) > 1:
        raise ImageError("only one otadata partition is allowed", [p.label for p in otadata])
    if otadata and otadata[0].size != OTADATA_SIZE:
        raise ImageError(f"otadata partition must be {OTADATA_SIZE:#x} bytes", otadata[0].size)


def build_partition_table(partitions: Iterable[Partition], *, md5: bool = True) -> bytes:
    """The 0xC00-byte binary table, entries in the order given."""
    parts = tuple(partitions)
    check_layout(parts)
    body = b"".join(p.to_bytes() for p in parts)
    if md5:
        body += MD5_ENTRY_PREFIX + hashlib.md5(body).digest()
    if len(body) >= PARTITION_TABLE_LENGTH:
        raise ImageError(f"partition table longer than {PARTITION_TABLE_LENGTH:#x} bytes", len(parts))
    return body + b"\xff" * (PARTITION_TABLE_LENGTH - len(body))


def _fail(offset: int, reason: str) -> ImageError:
    """The error for malformed input: `value` is the byte offset where the problem was found."""
    return ImageError(f"invalid partition table at offset {offset:#x}: {reason}", offset)


def parse_partition_table(data: bytes, *, flash_size: int | None = None) -> PartitionTable:
    """Parse a binary table as the bootloader does (entries, one optional MD5 entry, end marker),
    then check the layout rules. `data` may be longer (a flash sector); only 0xC00 bytes are read."""
    data = bytes(data[:PARTITION_TABLE_LENGTH])
    partitions: list[Partition] = []
    md5_seen = False
    for offset in range(0, PARTITION_TABLE_LENGTH, ENTRY_SIZE):
        entry = data[offset : offset + ENTRY_SIZE]
        if len(entry) < ENTRY_SIZE:
            raise _fail(len(data), "table truncated before its end marker")
        if entry.startswith(END_MARKER):
            break
        if md5_seen:
            raise _fail(offset, "entry after the MD5 entry")
        if entry.startswith(MD5_MAGIC):
            if entry[: len(MD5_ENTRY_PREFIX)] != MD5_ENTRY_PREFIX:
                raise _fail(offset, "malformed MD5 entry")
            if entry[16:] != hashlib.md5(data[:offset]).digest():
                raise _fail(offset, "MD5 does not match the entries")
            md5_seen = True
            continue
        if not entry.startswith(ENTRY_MAGIC):
            raise _fail(offset, f"magic {entry[:2].hex()}, expected {ENTRY_MAGIC.hex()}")
        _, ptype, subtype, start, size, raw_label, flags = _ENTRY.unpack(entry)
        try:
            label = raw_label.split(b"\x00", 1)[0].decode("utf-8")
        except UnicodeDecodeError:
            raise _fail(offset + 12, "label is not UTF-8") from None
        if not label:
            raise _fail(offset + 12, "empty label")
        if start + size > 0xFFFFFFFF:
            raise _fail(offset + 4, "partition extends past the 32-bit address space")
        partitions.append(Partition(label, ptype, subtype, start, size, PartitionFlag(flags)))
    else:
        raise _fail(PARTITION_TABLE_LENGTH, "no end marker")
    try:
        check_layout(partitions, flash_size)
    except ImageError as error:
        raise ImageError(f"invalid partition table: {error.message}", error.value) from None
    return PartitionTable(tuple(partitions))


def default_partition_table(flash_size: int = 4 * 1024 * 1024, *, phy_init: bool = True) -> PartitionTable:
    """Two OTA slots and no factory app, filling the flash, like ESP-IDF's two-OTA table.

    With phy_init: nvs 0x4000 @0x9000, otadata @0xD000, phy_init 0x1000 @0xF000 (IDF's layout);
    without: nvs 0x5000, otadata @0xE000 (Arduino-ESP32's). ota_0 starts at 0x10000 and the two slots
    share the rest, rounded down to 64 KiB.
    """
    slot_size = (flash_size - APP_ALIGNMENT) // 2 // APP_ALIGNMENT * APP_ALIGNMENT
    if slot_size <= 0:
        raise ImageError("flash too small for two OTA slots", flash_size)
    nvs_size = 0x4000 if phy_init else 0x5000
    otadata_offset = FIRST_PARTITION_OFFSET + nvs_size
    parts = [
        Partition("nvs", PartitionType.DATA, DataSubtype.NVS, FIRST_PARTITION_OFFSET, nvs_size),
        Partition("otadata", PartitionType.DATA, DataSubtype.OTA, otadata_offset, OTADATA_SIZE),
    ]
    if phy_init:
        parts.append(Partition("phy_init", PartitionType.DATA, DataSubtype.PHY, 0xF000, 0x1000))
    for slot in range(2):
        offset = APP_ALIGNMENT + slot * slot_size
        parts.append(Partition(f"ota_{slot}", PartitionType.APP, ota_subtype(slot), offset, slot_size))
    check_layout(parts, flash_size)
    return PartitionTable(tuple(parts))
