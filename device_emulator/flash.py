"""The device's 4 MB SPI NOR flash, kept in a file in the state directory.

NOR semantics, as the chip has them: erasing sets whole 4 KiB sectors to 0xFF, and a write can only
clear bits (what ends up stored is `old AND new`), so rewriting data without erasing it first corrupts
it exactly as it would on a board. Everything durable that is not NVS lives here: the partition table
at 0x8000, otadata, and the app images in the OTA slots. esptool (through the ROM loader), the
bootloader (boot.py) and the OTA client all go through this one class.

The file stores every byte inverted (XOR 0xFF) so that erased flash is a file hole: a fresh or erased
4 MB device costs a few KiB of disk, which matters for fleets of emulated devices.

Tagged points (`on_point(tag)`, the harness may raise PowerCut there): a write torn in the middle, an
erase torn in the middle, and right after otadata names a new boot slot.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from protocol import otadata
from protocol.errors import FlashError, ImageError
from protocol.partition_table import (
    PARTITION_TABLE_LENGTH,
    PARTITION_TABLE_OFFSET,
    Partition,
    PartitionTable,
    default_partition_table,
    parse_partition_table,
)

FLASH_SIZE = 4 * 1024 * 1024
SECTOR_SIZE = 0x1000
ERASED = 0xFF

POINT_WRITE_TORN = "flash.write.torn"  # half of a write's bytes programmed
POINT_ERASE_TORN = "flash.erase.torn"  # half of an erase's sectors erased
POINT_BOOT_SWITCHED = "flash.boot.switched"  # otadata names the new boot slot; nothing verified it yet

PointHook = Callable[[str], None]

_INVERT = bytes(range(255, -1, -1))  # bytes.translate table for x -> x ^ 0xFF


def _invert(data: bytes) -> bytes:
    return data.translate(_INVERT)


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


class Flash:
    """One device's SPI flash. Offsets are absolute flash addresses unless a method says otherwise."""

    def __init__(
        self,
        path: str | Path,
        size: int = FLASH_SIZE,
        *,
        on_point: PointHook | None = None,
        durable: bool = False,
    ) -> None:
        if size <= 0 or size % SECTOR_SIZE:
            raise FlashError("flash size must be a positive number of 4 KiB sectors", (0, size))
        self.path = Path(path)
        self.size = size
        self.on_point = on_point
        # An emulated power cut or kill -9 keeps the page cache; fsync only guards against host crashes.
        self.durable = durable
        self.created = not self.path.exists()  # True: a blank chip, still to be factory-programmed
        if self.created:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "wb") as file:
                file.truncate(size)  # all holes: all 0xFF

    # --- raw access ---------------------------------------------------------------------------------

    def _check(self, offset: int, length: int) -> None:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise FlashError(f"flash access outside the {self.size:#x}-byte chip", (offset, length))

    def _point(self, tag: str) -> None:
        if self.on_point is not None:
            self.on_point(tag)

    def _store(self, offset: int, data: bytes, torn_point: str) -> None:
        """Put `data` (already final values) at `offset`, with a tagged point halfway."""
        fd = os.open(self.path, os.O_WRONLY)
        try:
            half = len(data) // 2 if self.on_point is not None else len(data)
            for start, end in ((0, half), (half, len(data))):
                if start == half and end > start:
                    self._point(torn_point)
                view = memoryview(_invert(data[start:end]))
                position = offset + start
                while view:
                    written = os.pwrite(fd, view, position)
                    view, position = view[written:], position + written
            if self.durable:
                os.fsync(fd)
        finally:
            os.close(fd)

    def read(self, offset: int, length: int) -> bytes:
        self._check(offset, length)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            raw = os.pread(fd, length, offset)
        finally:
            os.close(fd)
        # Past the end of a shortened file reads as erased, like a hole.
        return _invert(raw) + bytes([ERASED]) * (length - len(raw))

    def write(self, offset: int, data: bytes) -> None:
        """Program `data` at `offset`: bits can only go from 1 to 0 (stored = old AND data)."""
        data = bytes(data)
        self._check(offset, len(data))
        if not data:
            return
        old = self.read(offset, len(data))
        merged = int.from_bytes(old, "little") & int.from_bytes(data, "little")
        self._store(offset, merged.to_bytes(len(data), "little"), POINT_WRITE_TORN)

    def erase(self, offset: int, length: int) -> None:
        """Erase whole sectors to 0xFF; `offset` and `length` must be multiples of 4 KiB."""
        self._check(offset, length)
        if offset % SECTOR_SIZE or length % SECTOR_SIZE:
            raise FlashError("erase must cover whole 4 KiB sectors", (offset, length))
        if length:
            self._store(offset, bytes([ERASED]) * length, POINT_ERASE_TORN)

    def erase_all(self) -> None:
        """Chip erase (esptool erase-flash): every byte 0xFF."""
        with open(self.path, "r+b") as file:
            file.truncate(0)
            file.truncate(self.size)

    # --- partitions -----------------------------------------------------------------------------------

    def partition_table(self) -> PartitionTable:
        """The table at 0x8000, as the bootloader reads it (ImageError when it is missing or bad)."""
        raw = self.read(PARTITION_TABLE_OFFSET, PARTITION_TABLE_LENGTH)
        return parse_partition_table(raw, flash_size=self.size)

    def write_partition_table(self, table: PartitionTable) -> None:
        self.erase(PARTITION_TABLE_OFFSET, SECTOR_SIZE)
        self.write(PARTITION_TABLE_OFFSET, table.to_bytes())

    def ota_slots(self) -> tuple[Partition, ...]:
        return self.partition_table().ota_apps

    def ota_slot(self, slot: int) -> Partition:
        apps = self.ota_slots()
        if not 0 <= slot < len(apps):
            raise ImageError(f"no OTA slot ota_{slot} (the table has {len(apps)})", slot)
        return apps[slot]

    def _inside(self, partition: Partition, offset: int, length: int) -> int:
        if offset < 0 or length < 0 or offset + length > partition.size:
            raise FlashError(f"access outside partition {partition.label}", (offset, length))
        return partition.offset + offset

    def read_partition(self, partition: Partition, offset: int = 0, length: int | None = None) -> bytes:
        length = partition.size - offset if length is None else length
        return self.read(self._inside(partition, offset, length), length)

    def write_partition(self, partition: Partition, offset: int, data: bytes) -> None:
        self.write(self._inside(partition, offset, len(data)), data)

    def erase_partition(self, partition: Partition, length: int | None = None) -> None:
        """Erase the first `length` bytes of a partition, rounded up to whole sectors (all if None)."""
        length = partition.size if length is None else _round_up(length, SECTOR_SIZE)
        self.erase(self._inside(partition, 0, length), length)

    def write_app_image(self, slot: int, image: bytes) -> None:
        """Erase as much of slot `slot` as the image needs and program it (what esptool does)."""
        partition = self.ota_slot(slot)
        if len(image) > partition.size:
            raise FlashError(f"image does not fit {partition.label}", (partition.offset, len(image)))
        self.erase_partition(partition, len(image))
        self.write_partition(partition, 0, image)

    # --- otadata ----------------------------------------------------------------------------------------

    def _otadata_partition(self) -> Partition:
        found = self.partition_table().otadata
        if found is None:
            raise ImageError("the partition table has no otadata partition", None)
        return found

    def otadata(self) -> bytes:
        """The raw otadata partition (two 4 KiB sectors, one record each)."""
        return self.read_partition(self._otadata_partition())

    def write_otadata(self, data: bytes) -> None:
        """Replace otadata, erasing and programming only the sectors that change, one at a time (so a
        power cut tears at most one record and the other still names a slot, as in ESP-IDF)."""
        partition = self._otadata_partition()
        if len(data) != partition.size:
            raise FlashError("otadata must be written whole", (partition.offset, len(data)))
        old = self.read_partition(partition)
        for start in range(0, partition.size, SECTOR_SIZE):
            sector = data[start : start + SECTOR_SIZE]
            if sector != old[start : start + SECTOR_SIZE]:
                self.erase(partition.offset + start, SECTOR_SIZE)
                # Program only the record, as esp_ota does (erased bytes need no programming).
                self.write(partition.offset + start, sector.rstrip(b"\xff"))

    def ota_state(self) -> otadata.OtaData:
        return otadata.read_otadata(self.otadata())

    def set_boot_slot(self, slot: int, *, rollback: bool) -> None:
        """esp_ota_set_boot_partition: the next boot picks `slot` (state NEW with rollback support)."""
        count = len(self.ota_slots())
        self.write_otadata(otadata.set_boot_slot(self.otadata(), slot, count, rollback=rollback))
        self._point(POINT_BOOT_SWITCHED)

    def mark_app_valid(self) -> None:
        """esp_ota_mark_app_valid_cancel_rollback."""
        self.write_otadata(otadata.mark_app_valid(self.otadata()))

    def mark_app_invalid(self) -> None:
        """esp_ota_mark_app_invalid_rollback (without the reboot, which is the caller's)."""
        self.write_otadata(otadata.mark_app_invalid(self.otadata()))


def factory_program(flash: Flash, image: bytes, table: PartitionTable | None = None) -> None:
    """What the factory (or `esptool write-flash` of a full build) leaves: a partition table, blank
    otadata and `image` in ota_0. The first boot then records ota_0 as valid."""
    flash.write_partition_table(table or default_partition_table(flash.size))
    otadata_partition = flash.partition_table().otadata
    if otadata_partition is not None:
        flash.erase_partition(otadata_partition)
    flash.write_app_image(0, image)
