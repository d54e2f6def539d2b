"""ESP32 application images: build one without a toolchain, parse and validate one.

The layout is ESP-IDF's app image format, as the ROM, the second-stage bootloader and esptool read it:

    header (8)            magic 0xE9, segment count, SPI mode, SPI size<<4 | SPI speed, entry point
    extended header (16)  WP pin, SPI drive strengths, chip id, min/max chip revision, hash-appended flag
    segments              load address (u32), length (u32), data (length a multiple of 4)
    footer                zero padding to 15 mod 16, XOR checksum of all segment data (seed 0xEF),
                          then the SHA-256 of everything before it when the hash is appended

The first segment mapped from flash's data bus (DROM) starts with `esp_app_desc_t`, the 256-byte
application description (version, project name, build date, IDF version...).

EcoWatt convention (between `ecowatt firmware build` and the device emulator): the project name is
`ecowatt:<profile>` with the emulator's firmware profile, and the app version is the firmware version.
"""

from __future__ import annotations

import hashlib
import random
import struct
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum
from typing import NamedTuple

from protocol.errors import ImageError

IMAGE_MAGIC = 0xE9
APP_DESC_MAGIC = 0xABCD5432
CHECKSUM_SEED = 0xEF
ESP32_CHIP_ID = 0
MAX_SEGMENTS = 16
MMU_PAGE_SIZE = 0x10000
WP_PIN_DISABLED = 0xEE
HEADER_SIZE = 24  # common header + extended header
SEGMENT_HEADER_SIZE = 8
APP_DESC_SIZE = 256
SHA256_SIZE = 32
MAX_SEGMENT_LENGTH = 16 * 1024 * 1024  # the bootloader refuses anything this long or longer

# ESP32 address ranges the flash cache maps (the bootloader checks their 64 KiB page alignment).
DROM_START, DROM_END = 0x3F400000, 0x3F800000
IROM_START, IROM_END = 0x400D0000, 0x40400000

# Where the builder puts its two segments: the DROM segment right after the headers (file offset
# 0x20 = load address mod 64 KiB, as IDF images do) and a small IRAM segment holding the entry point.
DROM_LOAD_ADDRESS = DROM_START + HEADER_SIZE + SEGMENT_HEADER_SIZE
IRAM_LOAD_ADDRESS = 0x40080000
# Xtensa `j .` (jump to itself), padded to a word: a harmless entry point nobody executes.
IDLE_LOOP = b"\x06\xff\xff\x00"

ECOWATT_PROJECT = "ecowatt"
FIRMWARE_PROFILES: tuple[str, ...] = ("spec", "reference-1.0.4")
DEFAULT_IDF_VERSION = "v4.4.7"
# Builds are reproducible: the build time is an input, this is its default.
BUILD_EPOCH = datetime(2025, 1, 1)

_COMMON_HEADER = struct.Struct("<BBBBI")
_EXTENDED_HEADER = struct.Struct("<BBBBHBHH4sB")
_SEGMENT_HEADER = struct.Struct("<II")
_APP_DESC = struct.Struct("<II8s32s32s16s16s32s32sHHB3s72s")


class FlashMode(IntEnum):
    QIO = 0
    QOUT = 1
    DIO = 2
    DOUT = 3


class FlashFrequency(IntEnum):
    F40M = 0x0
    F26M = 0x1
    F20M = 0x2
    F80M = 0xF


class FlashSize(IntEnum):
    MB1 = 0
    MB2 = 1
    MB4 = 2
    MB8 = 3
    MB16 = 4
    MB32 = 5
    MB64 = 6
    MB128 = 7

    @property
    def bytes(self) -> int:
        return (1 << self.value) * 1024 * 1024


@dataclass(frozen=True)
class FlashSettings:
    """The SPI flash parameters carried in the image header (what esptool's --flash-mode/-ff/-fs set)."""

    mode: FlashMode = FlashMode.DIO
    frequency: FlashFrequency = FlashFrequency.F40M
    size: FlashSize = FlashSize.MB4


DEFAULT_FLASH = FlashSettings()
_FLASH_MODES = frozenset(m.value for m in FlashMode)
_FLASH_FREQUENCIES = frozenset(f.value for f in FlashFrequency)
_FLASH_SIZES = frozenset(s.value for s in FlashSize)


@dataclass(frozen=True)
class ImageHeader:
    segment_count: int
    flash: FlashSettings
    entry_point: int
    wp_pin: int = WP_PIN_DISABLED
    spi_drive: bytes = b"\x00\x00\x00"
    chip_id: int = ESP32_CHIP_ID
    min_chip_rev: int = 0  # legacy u8 field
    min_chip_rev_full: int = 0  # major * 100 + minor
    max_chip_rev_full: int = 399
    hash_appended: bool = True


@dataclass(frozen=True)
class ImageSegment:
    load_address: int
    data: bytes
    offset: int  # file offset of the segment's 8-byte header

    @property
    def data_offset(self) -> int:
        return self.offset + SEGMENT_HEADER_SIZE

    @property
    def flash_mapped(self) -> bool:
        return is_flash_mapped(self.load_address)

    @property
    def is_drom(self) -> bool:
        return DROM_START <= self.load_address < DROM_END


@dataclass(frozen=True)
class AppDescription:
    """`esp_app_desc_t`: what `esptool image-info` and the OTA code read from the first DROM segment."""

    version: str
    project_name: str
    time: str = ""
    date: str = ""
    idf_version: str = DEFAULT_IDF_VERSION
    secure_version: int = 0
    app_elf_sha256: bytes = bytes(32)
    min_efuse_blk_rev_full: int = 0
    max_efuse_blk_rev_full: int = 99
    mmu_page_size_log2: int = 16  # 64 KiB pages on ESP32

    def to_bytes(self) -> bytes:
        """The 256-byte structure. Raises ImageError if a text field does not fit its C array."""
        if len(self.app_elf_sha256) != 32:
            raise ImageError("app_elf_sha256 must be 32 bytes", self.app_elf_sha256)
        return _APP_DESC.pack(
            APP_DESC_MAGIC,
            self.secure_version,
            b"",
            _c_string(self.version, 32, "version"),
            _c_string(self.project_name, 32, "project_name"),
            _c_string(self.time, 16, "time"),
            _c_string(self.date, 16, "date"),
            _c_string(self.idf_version, 32, "idf_version"),
            self.app_elf_sha256,
            self.min_efuse_blk_rev_full,
            self.max_efuse_blk_rev_full,
            self.mmu_page_size_log2,
            b"",
            b"",
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> AppDescription | None:
        """The description at the start of `data`, or None if the magic word is not there."""
        if len(data) < APP_DESC_SIZE:
            return None
        fields = _APP_DESC.unpack_from(data)
        if fields[0] != APP_DESC_MAGIC:
            return None
        return cls(
            version=_text(fields[3]),
            project_name=_text(fields[4]),
            time=_text(fields[5]),
            date=_text(fields[6]),
            idf_version=_text(fields[7]),
            secure_version=fields[1],
            app_elf_sha256=fields[8],
            min_efuse_blk_rev_full=fields[9],
            max_efuse_blk_rev_full=fields[10],
            mmu_page_size_log2=fields[11],
        )


@dataclass(frozen=True)
class AppImage:
    header: ImageHeader
    segments: tuple[ImageSegment, ...]
    app_description: AppDescription | None
    checksum: int
    calculated_checksum: int
    stored_sha256: bytes | None  # None when the header says no hash is appended
    calculated_sha256: bytes | None
    length: int  # bytes the image occupies, digest included; anything after it is not the image's
    raw: bytes = field(repr=False, compare=False)

    @property
    def checksum_ok(self) -> bool:
        return self.checksum == self.calculated_checksum

    @property
    def sha256_ok(self) -> bool | None:
        """True/False when a hash is appended, None when there is none to check."""
        if self.stored_sha256 is None:
            return None
        return self.stored_sha256 == self.calculated_sha256

    @property
    def valid(self) -> bool:
        """What the bootloader needs to boot it: a good checksum and, if present, a good hash."""
        return self.checksum_ok and self.sha256_ok is not False

    @property
    def checksum_offset(self) -> int:
        return self.length - (SHA256_SIZE if self.header.hash_appended else 0) - 1


class FirmwareIdentity(NamedTuple):
    profile: str
    version: str


def is_flash_mapped(address: int) -> bool:
    return DROM_START <= address < DROM_END or IROM_START <= address < IROM_END


def image_checksum(chunks: list[bytes] | tuple[bytes, ...]) -> int:
    """The ROM's XOR checksum over segment data, seeded with 0xEF."""
    value = CHECKSUM_SEED
    for chunk in chunks:
        value ^= _xor_fold(chunk)
    return value


def _xor_fold(data: bytes) -> int:
    # XOR of all bytes without a Python-level loop per byte: fold the number in halves (1 MiB in ~1 ms).
    value = int.from_bytes(data, "little")
    width = len(data)
    while width > 1:
        half = (width + 1) // 2
        value = (value >> (8 * half)) ^ (value & ((1 << (8 * half)) - 1))
        width = half
    return value & 0xFF


def _c_string(text: str, size: int, name: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) >= size or b"\x00" in raw:
        raise ImageError(f"{name} must be under {size} bytes of UTF-8 without NUL", text)
    return raw


def _text(raw: bytes) -> str:
    return raw.split(b"\x00", 1)[0].decode("utf-8", errors="replace")


def _fail(offset: int, reason: str) -> ImageError:
    """The error for malformed input: `value` is the byte offset where the problem was found."""
    return ImageError(f"invalid app image at offset {offset:#x}: {reason}", offset)


# --------------------------------------------------------------------------------------- building


def build_app_image(
    description: AppDescription,
    *,
    payload: bytes = b"",
    size: int | None = None,
    flash: FlashSettings = DEFAULT_FLASH,
    hash_appended: bool = True,
    filler_seed: str | None = None,
) -> bytes:
    """A valid ESP32 app image: a DROM segment (app description, then `payload`) and an IRAM segment.

    With `size`, the DROM segment is topped up with deterministic pseudo-random filler (incompressible,
    so a `-z` flashing benchmark sees the worst case) until the whole image is exactly `size` bytes;
    `size` must then be a multiple of 16 and large enough for the payload.
    """
    rodata = description.to_bytes() + payload
    fixed = HEADER_SIZE + 2 * SEGMENT_HEADER_SIZE + len(IDLE_LOOP)
    trailer = SHA256_SIZE if hash_appended else 0
    if size is None:
        rodata += bytes(-len(rodata) % 4)
    else:
        # With the DROM data 4 bytes short of a 16-byte boundary, padding + checksum end exactly on it.
        target = size - trailer - 4 - fixed
        if size % 16 or target < len(rodata):
            smallest = _round_up(fixed + len(rodata) + 4, 16) + trailer
            raise ImageError(f"image size must be a multiple of 16 and at least {smallest}", size)
        seed = filler_seed if filler_seed is not None else repr(description)
        rodata += random.Random(seed).randbytes(target - len(rodata))
    if DROM_LOAD_ADDRESS + len(rodata) > DROM_END:
        raise ImageError("image too large for the DROM address range", len(rodata))

    segments = ((DROM_LOAD_ADDRESS, rodata), (IRAM_LOAD_ADDRESS, IDLE_LOOP))
    out = bytearray(
        _COMMON_HEADER.pack(
            IMAGE_MAGIC,
            len(segments),
            flash.mode,
            (flash.size << 4) | flash.frequency,
            IRAM_LOAD_ADDRESS,
        )
    )
    out += _EXTENDED_HEADER.pack(
        WP_PIN_DISABLED, 0, 0, 0, ESP32_CHIP_ID, 0, 0, 399, bytes(4), int(hash_appended)
    )
    for address, data in segments:
        out += _SEGMENT_HEADER.pack(address, len(data)) + data
    out += bytes(15 - len(out) % 16)
    out.append(image_checksum([data for _, data in segments]))
    if hash_appended:
        out += hashlib.sha256(out).digest()
    return bytes(out)


def _round_up(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def ecowatt_description(
    profile: str,
    version: str,
    *,
    built_at: datetime = BUILD_EPOCH,
    secure_version: int = 0,
    idf_version: str = DEFAULT_IDF_VERSION,
    elf_sha256: bytes | None = None,
) -> AppDescription:
    """The app description of an EcoWatt firmware build (project name `ecowatt:<profile>`)."""
    if profile not in FIRMWARE_PROFILES:
        raise ImageError(
            f"unknown firmware profile (expected one of {', '.join(FIRMWARE_PROFILES)})", profile
        )
    project = f"{ECOWATT_PROJECT}:{profile}"
    if elf_sha256 is None:
        # There is no ELF; stand in with a digest of what identifies the build.
        elf_sha256 = hashlib.sha256(f"{project}\x00{version}\x00{built_at.isoformat()}".encode()).digest()
    return AppDescription(
        version=version,
        project_name=project,
        # The C compiler's __TIME__ and __DATE__ formats, which IDF stores.
        time=built_at.strftime("%H:%M:%S"),
        date=f"{built_at:%b} {built_at.day:2d} {built_at.year}",
        idf_version=idf_version,
        secure_version=secure_version,
        app_elf_sha256=elf_sha256,
    )


def build_firmware_image(
    profile: str,
    version: str,
    *,
    size: int | None = None,
    payload: bytes = b"",
    built_at: datetime = BUILD_EPOCH,
    secure_version: int = 0,
) -> bytes:
    """An EcoWatt firmware image as `ecowatt firmware build` makes it (see `firmware_identity`)."""
    description = ecowatt_description(profile, version, built_at=built_at, secure_version=secure_version)
    return build_app_image(description, payload=payload, size=size)


# ---------------------------------------------------------------------------------------- parsing


def parse_app_image(data: bytes) -> AppImage:
    """Parse the image at the start of `data` (trailing bytes, e.g. the rest of a partition, are ignored).

    Structure problems raise ImageError (its `value` is the offset); a wrong checksum or hash does not:
    they are reported by `checksum_ok` / `sha256_ok` (use `verify_app_image` to require them).
    """
    data = bytes(data)
    if len(data) < HEADER_SIZE:
        raise _fail(len(data), f"header truncated ({len(data)} of {HEADER_SIZE} bytes)")
    magic, count, mode, size_freq, entry = _COMMON_HEADER.unpack_from(data, 0)
    if magic != IMAGE_MAGIC:
        raise _fail(0, f"magic byte {magic:#04x}, expected {IMAGE_MAGIC:#04x}")
    if not 1 <= count <= MAX_SEGMENTS:
        raise _fail(1, f"segment count {count} (1..{MAX_SEGMENTS})")
    flash = _flash_settings(mode, size_freq)
    wp_pin, drive0, drive1, drive2, chip_id, min_rev, min_full, max_full, _, hashed = (
        _EXTENDED_HEADER.unpack_from(data, 8)
    )
    if chip_id != ESP32_CHIP_ID:
        raise _fail(12, f"chip id {chip_id} is not ESP32 ({ESP32_CHIP_ID})")
    if hashed not in (0, 1):
        raise _fail(23, f"hash-appended flag {hashed} (0 or 1)")
    header = ImageHeader(
        segment_count=count,
        flash=flash,
        entry_point=entry,
        wp_pin=wp_pin,
        spi_drive=bytes((drive0, drive1, drive2)),
        chip_id=chip_id,
        min_chip_rev=min_rev,
        min_chip_rev_full=min_full,
        max_chip_rev_full=max_full,
        hash_appended=bool(hashed),
    )

    segments = []
    position = HEADER_SIZE
    for index in range(count):
        if position + SEGMENT_HEADER_SIZE > len(data):
            raise _fail(position, f"segment {index} header truncated")
        address, length = _SEGMENT_HEADER.unpack_from(data, position)
        if length % 4 or length >= MAX_SEGMENT_LENGTH:
            raise _fail(position + 4, f"segment {index} length {length:#x} (a multiple of 4 under 16 MiB)")
        start = position + SEGMENT_HEADER_SIZE
        if start + length > len(data):
            raise _fail(start, f"segment {index} data truncated ({len(data) - start} of {length} bytes)")
        if is_flash_mapped(address) and start % MMU_PAGE_SIZE != address % MMU_PAGE_SIZE:
            raise _fail(position, f"segment {index} at {address:#010x} is not aligned to its flash page")
        segments.append(ImageSegment(address, data[start : start + length], position))
        position = start + length

    checksum_at = position + 15 - position % 16
    if checksum_at >= len(data):
        raise _fail(checksum_at, "checksum byte missing")
    end = checksum_at + 1
    stored_sha = calculated_sha = None
    if header.hash_appended:
        if end + SHA256_SIZE > len(data):
            raise _fail(end, "appended SHA-256 truncated")
        stored_sha = data[end : end + SHA256_SIZE]
        calculated_sha = hashlib.sha256(data[:end]).digest()
        end += SHA256_SIZE

    drom = next((s for s in segments if s.is_drom), None)
    return AppImage(
        header=header,
        segments=tuple(segments),
        app_description=AppDescription.from_bytes(drom.data) if drom else None,
        checksum=data[checksum_at],
        calculated_checksum=image_checksum([s.data for s in segments]),
        stored_sha256=stored_sha,
        calculated_sha256=calculated_sha,
        length=end,
        raw=data[:end],
    )


def _flash_settings(mode: int, size_freq: int) -> FlashSettings:
    if mode not in _FLASH_MODES:
        raise _fail(2, f"SPI flash mode {mode:#04x}")
    if size_freq & 0xF not in _FLASH_FREQUENCIES or size_freq >> 4 not in _FLASH_SIZES:
        raise _fail(3, f"SPI flash size/frequency byte {size_freq:#04x}")
    return FlashSettings(FlashMode(mode), FlashFrequency(size_freq & 0xF), FlashSize(size_freq >> 4))


def verify_app_image(data: bytes) -> AppImage:
    """Parse and require what the bootloader requires: a good checksum and a good appended hash."""
    image = parse_app_image(data)
    if not image.checksum_ok:
        raise _fail(
            image.checksum_offset,
            f"checksum {image.checksum:#04x}, calculated {image.calculated_checksum:#04x}",
        )
    if image.sha256_ok is False:
        raise _fail(image.checksum_offset + 1, "appended SHA-256 does not match")
    return image


def firmware_identity(image: AppImage | bytes) -> FirmwareIdentity:
    """(profile, version) of an EcoWatt firmware image; ImageError if it is not one."""
    parsed = image if isinstance(image, AppImage) else parse_app_image(image)
    description = parsed.app_description
    if description is None:
        raise ImageError("image has no app description", None)
    project, _, profile = description.project_name.partition(":")
    if project != ECOWATT_PROJECT:
        raise ImageError("not an EcoWatt firmware image", description.project_name)
    if profile not in FIRMWARE_PROFILES:
        raise ImageError("unknown firmware profile", profile)
    return FirmwareIdentity(profile, description.version)
