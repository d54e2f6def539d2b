"""The otadata partition: which OTA slot boots, and the app rollback states.

Two `esp_ota_select_entry_t` records, one at the start of each 4 KiB sector of the 0x2000-byte
partition: ota_seq (u32), seq_label (20 bytes, unused), ota_state (u32), crc (u32) where crc is the
ROM's crc32_le seeded with 0xFFFFFFFF over the 4 bytes of ota_seq only.

The rules are ESP-IDF's (bootloader_utility.c, bootloader_common_loader.c, esp_ota_ops.c): an entry is
valid when its seq is not erased, its state is neither INVALID nor ABORTED and its crc matches; the
valid entry with the highest seq (the first on a tie) is active and boots slot (seq - 1) % app_count.
Every function here is pure: it takes the partition's bytes and returns new bytes, erasing a sector
to FF before writing its record, as the flash does.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import IntEnum

from protocol.errors import ImageError

SECTOR_SIZE = 0x1000
OTADATA_SIZE = 2 * SECTOR_SIZE
ENTRY_SIZE = 32
SEQ_ERASED = 0xFFFFFFFF
LABEL_SIZE = 20

_ENTRY = struct.Struct("<I20sII")


class OtaState(IntEnum):
    """esp_ota_img_states_t."""

    NEW = 0x0
    PENDING_VERIFY = 0x1
    VALID = 0x2
    INVALID = 0x3
    ABORTED = 0x4
    UNDEFINED = 0xFFFFFFFF  # written when rollback support is off, and what erased flash reads


def seq_crc(seq: int) -> int:
    """esp_rom_crc32_le(UINT32_MAX, &ota_seq, 4): zlib's CRC-32 continued from 0xFFFFFFFF."""
    return zlib.crc32(struct.pack("<I", seq), 0xFFFFFFFF)


@dataclass(frozen=True)
class OtaEntry:
    seq: int
    state: int  # an OtaState value when sane; kept raw because flash can hold anything
    crc: int
    label: bytes = b"\xff" * LABEL_SIZE

    @classmethod
    def make(cls, seq: int, state: int, label: bytes = b"\xff" * LABEL_SIZE) -> OtaEntry:
        """An entry with the correct crc."""
        return cls(seq, state, seq_crc(seq), label)

    @classmethod
    def from_bytes(cls, raw: bytes) -> OtaEntry:
        seq, label, state, crc = _ENTRY.unpack(raw)
        return cls(seq, state, crc, label)

    def to_bytes(self) -> bytes:
        if not all(0 <= v <= 0xFFFFFFFF for v in (self.seq, self.state, self.crc)):
            raise ImageError("otadata fields are 32-bit unsigned", (self.seq, self.state, self.crc))
        if len(self.label) != LABEL_SIZE:
            raise ImageError(f"seq_label must be {LABEL_SIZE} bytes", self.label)
        return _ENTRY.pack(self.seq, self.label, self.state, self.crc)

    @property
    def erased(self) -> bool:
        return self.seq == SEQ_ERASED

    @property
    def crc_ok(self) -> bool:
        return self.crc == seq_crc(self.seq)

    @property
    def unbootable(self) -> bool:
        """bootloader_common_ota_select_invalid (note: it does not look at the crc)."""
        return self.erased or self.state in (OtaState.INVALID, OtaState.ABORTED)

    @property
    def valid(self) -> bool:
        """bootloader_common_ota_select_valid."""
        return not self.unbootable and self.crc_ok

    def slot(self, app_count: int) -> int:
        # C's uint32_t arithmetic: seq 0 wraps to 0xFFFFFFFF before the modulo.
        return ((self.seq - 1) & 0xFFFFFFFF) % app_count

    def with_state(self, state: int) -> OtaEntry:
        return OtaEntry(self.seq, state, self.crc, self.label)


@dataclass(frozen=True)
class OtaData:
    entries: tuple[OtaEntry, OtaEntry]

    @property
    def active_index(self) -> int | None:
        """Which record is active (bootloader_common_get_active_otadata), or None."""
        first, second = (entry.valid for entry in self.entries)
        if first and second:
            return 0 if self.entries[0].seq >= self.entries[1].seq else 1
        if first:
            return 0
        return 1 if second else None

    @property
    def active(self) -> OtaEntry | None:
        index = self.active_index
        return None if index is None else self.entries[index]

    def boot_slot(self, app_count: int) -> int | None:
        """The OTA slot esp_ota_get_boot_partition names; None means the factory/default app."""
        active = self.active
        if app_count <= 0 or active is None:
            return None
        return active.slot(app_count)

    def state_of(self, slot: int, app_count: int) -> int | None:
        """esp_ota_get_state_partition: the state recorded for a slot (crc-checked), else None."""
        for entry in self.entries:
            if app_count > 0 and entry.slot(app_count) == slot and entry.crc_ok:
                return entry.state
        return None


def read_otadata(data: bytes) -> OtaData:
    """The two records of an otadata partition (its 0x2000 bytes; trailing bytes are ignored)."""
    if len(data) < SECTOR_SIZE + ENTRY_SIZE:
        raise ImageError(
            f"otadata must hold two records, one per {SECTOR_SIZE:#x}-byte sector ({len(data)} bytes given)",
            len(data),
        )
    return OtaData(
        (
            OtaEntry.from_bytes(bytes(data[:ENTRY_SIZE])),
            OtaEntry.from_bytes(bytes(data[SECTOR_SIZE : SECTOR_SIZE + ENTRY_SIZE])),
        )
    )


def blank_otadata() -> bytes:
    """An erased otadata partition (what `esptool erase-flash` or a fresh IDF build leaves)."""
    return b"\xff" * OTADATA_SIZE


def write_entry(data: bytes, index: int, entry: OtaEntry) -> bytes:
    """`data` with sector `index` erased and `entry` written at its start."""
    read_otadata(data)  # the same length check as everywhere
    if index not in (0, 1):
        raise ImageError("otadata has records 0 and 1", index)
    out = bytearray(data)
    start = index * SECTOR_SIZE
    out[start : start + SECTOR_SIZE] = b"\xff" * SECTOR_SIZE
    out[start : start + ENTRY_SIZE] = entry.to_bytes()
    return bytes(out)


def build_otadata(first: OtaEntry | None, second: OtaEntry | None = None) -> bytes:
    """A whole otadata partition from two records (None leaves a sector erased)."""
    data = blank_otadata()
    for index, entry in enumerate((first, second)):
        if entry is not None:
            data = write_entry(data, index, entry)
    return data


def _check_slot(slot: int, app_count: int) -> None:
    if not 0 <= slot < app_count:
        raise ImageError(f"OTA slot must be 0..{app_count - 1}", slot)


def set_boot_slot(data: bytes, slot: int, app_count: int, *, rollback: bool = False) -> bytes:
    """esp_ota_set_boot_partition(ota_<slot>): make the next boot pick `slot`.

    The new record gets state NEW with rollback support (the bootloader turns it into PENDING_VERIFY
    on the first boot), UNDEFINED without. Mirrors ESP-IDF 5.x: if the active record already points
    at `slot` only its state is rewritten, otherwise the other record gets the smallest seq above the
    active one that maps to `slot`.
    """
    _check_slot(slot, app_count)
    otadata = read_otadata(data)
    index = otadata.active_index
    state = OtaState.NEW if rollback else OtaState.UNDEFINED
    if index is None:
        # Both records unusable (e.g. erased): start the sequence in record 0.
        target, seq = 0, slot + 1
    else:
        current = otadata.entries[index]
        if current.slot(app_count) == slot:
            target, seq = index, current.seq
        else:
            target = 1 - index
            base = (slot + 1) % app_count
            seq = base + max(0, -(-(current.seq - base) // app_count)) * app_count
            if seq >= SEQ_ERASED:
                raise ImageError("OTA sequence number exhausted", current.seq)
    old = otadata.entries[target]
    return write_entry(data, target, OtaEntry.make(seq, state, old.label))


def _rewrite_active(data: bytes, state: OtaState) -> bytes:
    otadata = read_otadata(data)
    index = otadata.active_index
    if index is None:
        raise ImageError("no active otadata record (the factory app is running)", None)
    entry = otadata.entries[index]
    return write_entry(data, index, OtaEntry.make(entry.seq, state, entry.label))


def mark_app_valid(data: bytes) -> bytes:
    """esp_ota_mark_app_valid_cancel_rollback: the running (active) app is confirmed."""
    active = read_otadata(data).active
    if active is not None and active.state == OtaState.VALID:
        return bytes(data)  # IDF does not rewrite an already valid record
    return _rewrite_active(data, OtaState.VALID)


def mark_app_invalid(data: bytes) -> bytes:
    """esp_ota_mark_app_invalid_rollback: the running app is rejected; the next boot selects the other
    record. (IDF first checks that the other slot holds a bootable image; that is the caller's job.)"""
    return _rewrite_active(data, OtaState.INVALID)


@dataclass(frozen=True)
class BootResult:
    slot: int | None  # the OTA slot that boots, or None for the factory app
    otadata: bytes  # the partition after the bootloader's own writes


def boot(
    data: bytes,
    bootable: Sequence[bool],
    *,
    factory: bool | None = None,
    rollback: bool = False,
) -> BootResult:
    """What the second-stage bootloader does with otadata at reset.

    `bootable[n]` says whether slot ota_n holds an image that verifies; `factory` is None without a
    factory partition, else whether its image verifies. With rollback support a PENDING_VERIFY record
    (an app that never confirmed itself) becomes ABORTED, and a NEW record that is selected becomes
    PENDING_VERIFY. If the selected slot does not verify, the bootloader tries the slots below it,
    the factory app, then the slots above it. Raises ImageError when nothing can boot (the real chip
    resets and tries again forever).
    """
    app_count = len(bootable)
    otadata = read_otadata(data)
    if rollback:
        for index, entry in enumerate(otadata.entries):
            if entry.state == OtaState.PENDING_VERIFY:
                data = write_entry(data, index, entry.with_state(OtaState.ABORTED))
        otadata = read_otadata(data)

    initial = False  # blank or corrupt otadata: record whichever slot boots
    start: int | None  # None: the factory app
    if app_count == 0 or all(entry.unbootable for entry in otadata.entries):
        if factory is not None:
            start = None
        else:
            start = 0
            initial = not any(not e.erased and e.crc_ok for e in otadata.entries)
    else:
        active = otadata.active_index
        if active is None:
            start = None
        else:
            selected = otadata.entries[active]
            start = selected.slot(app_count)
            if rollback and selected.state == OtaState.NEW:
                data = write_entry(data, active, selected.with_state(OtaState.PENDING_VERIFY))

    # bootloader_utility_load_boot_image: from the chosen slot down to the factory app, then upwards.
    first = -1 if start is None else start
    order: list[int | None] = list(range(min(first, app_count - 1), -1, -1))
    order.append(None)
    order += range(first + 1, app_count)
    for candidate in order:
        ok = factory if candidate is None else bootable[candidate]
        if not ok:
            continue
        if candidate is not None and initial:
            data = write_entry(data, 0, OtaEntry.make(candidate + 1, OtaState.VALID))
        return BootResult(candidate, data)
    raise ImageError("no bootable app partition", app_count)
