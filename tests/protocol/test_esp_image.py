"""ESP32 app images: what we build, the real esptool accepts; what is damaged, both reject."""

from __future__ import annotations

import re
import subprocess
import sys
from datetime import datetime
from functools import reduce
from operator import xor
from pathlib import Path

import pytest
from esptool.bin_image import ELFSection, ESP32FirmwareImage
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import ImageError
from protocol.esp_image import (
    FIRMWARE_PROFILES,
    AppDescription,
    FlashFrequency,
    FlashMode,
    FlashSettings,
    FlashSize,
    build_app_image,
    build_firmware_image,
    ecowatt_description,
    firmware_identity,
    image_checksum,
    parse_app_image,
    verify_app_image,
)

MiB = 1024 * 1024


def esptool_image_info(path: Path) -> str:
    """Run the real esptool CLI, as a user would, and return what it printed."""
    exe = Path(sys.executable).with_name("esptool")
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "esptool"]
    result = subprocess.run(
        [*command, "--chip", "esp32", "image-info", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def field(output: str, name: str) -> str:
    match = re.search(rf"^{re.escape(name)}: (.*)$", output, re.MULTILINE)
    assert match, f"esptool printed no {name!r}:\n{output}"
    return match.group(1).strip()


@pytest.mark.parametrize(
    ("profile", "version", "size", "flash"),
    [
        ("reference-1.0.4", "1.0.4", None, FlashSettings()),
        ("spec", "1.1.0", 1 * MiB, FlashSettings(FlashMode.QIO, FlashFrequency.F80M, FlashSize.MB16)),
    ],
)
def test_esptool_accepts_built_image_and_reads_its_description(tmp_path, profile, version, size, flash):
    description = ecowatt_description(profile, version, built_at=datetime(2025, 3, 7, 14, 5, 9))
    image = build_app_image(description, size=size, flash=flash)
    path = tmp_path / "app.bin"
    path.write_bytes(image)

    out = esptool_image_info(path)

    assert field(out, "Image size") == f"{len(image)} bytes"
    assert field(out, "Chip ID") == "0 (ESP32)"
    assert field(out, "Flash mode") == flash.mode.name
    assert field(out, "Flash size") == f"{flash.size.bytes // MiB}MB"
    assert field(out, "Flash freq") == flash.frequency.name[1:].lower()
    assert field(out, "Checksum").endswith("(valid)")
    assert field(out, "Validation hash").endswith("(valid)")
    assert field(out, "Project name") == f"ecowatt:{profile}"
    assert field(out, "App version") == version
    assert field(out, "Compile time") == "Mar  7 2025 14:05:09"
    assert field(out, "ESP-IDF") == description.idf_version
    assert field(out, "ELF file SHA256") == description.app_elf_sha256.hex()

    parsed = verify_app_image(image)
    assert parsed.header.flash == flash
    assert parsed.app_description == description
    assert firmware_identity(image) == (profile, version)
    if size is not None:
        assert len(image) == size


def test_corruption_is_reported_by_esptool_and_by_the_parser(tmp_path):
    image = build_firmware_image("spec", "2.0.0")
    damaged = bytearray(image)
    damaged[0x30] ^= 0x01  # inside the app description, i.e. segment data
    path = tmp_path / "damaged.bin"
    path.write_bytes(damaged)

    out = esptool_image_info(path)
    assert "invalid" in field(out, "Checksum")
    assert field(out, "Validation hash").endswith("(invalid)")

    parsed = parse_app_image(bytes(damaged))
    assert not parsed.checksum_ok and parsed.sha256_ok is False and not parsed.valid
    with pytest.raises(ImageError) as raised:
        verify_app_image(bytes(damaged))
    assert raised.value.value == parsed.checksum_offset


def test_damaged_digest_alone_fails_the_hash_but_not_the_checksum(tmp_path):
    damaged = bytearray(build_firmware_image("spec", "2.0.0"))
    damaged[-1] ^= 0xFF
    path = tmp_path / "digest.bin"
    path.write_bytes(damaged)

    out = esptool_image_info(path)
    assert field(out, "Checksum").endswith("(valid)")
    assert field(out, "Validation hash").endswith("(invalid)")

    parsed = parse_app_image(bytes(damaged))
    assert parsed.checksum_ok and parsed.sha256_ok is False
    with pytest.raises(ImageError, match="SHA-256"):
        verify_app_image(bytes(damaged))


def test_builder_output_is_byte_identical_to_esptools_own_writer():
    """esptool's ESP32FirmwareImage.save() is the oracle for layout, padding, checksum and digest."""
    description = ecowatt_description("reference-1.0.4", "1.0.4")
    ours = build_app_image(description, payload=b"EcoWatt" * 10, flash=FlashSettings(size=FlashSize.MB8))
    parsed = parse_app_image(ours)

    oracle = ESP32FirmwareImage()
    oracle.entrypoint = parsed.header.entry_point
    oracle.flash_mode = FlashMode.DIO
    oracle.flash_size_freq = (FlashSize.MB8 << 4) | FlashFrequency.F40M
    oracle.max_rev_full = parsed.header.max_chip_rev_full
    oracle.segments = [
        ELFSection(b".segment", segment.load_address, segment.data, 0) for segment in parsed.segments
    ]
    assert oracle.save(None) == ours


def test_image_of_a_requested_size_carries_the_payload_first():
    payload = bytes(range(256)) * 3
    image = build_firmware_image("spec", "1.2.3", size=64 * 1024, payload=payload)
    assert len(image) == 64 * 1024
    parsed = verify_app_image(image)
    drom = parsed.segments[0]
    assert drom.data[256 : 256 + len(payload)] == payload
    # Reproducible: same inputs, same bytes.
    assert build_firmware_image("spec", "1.2.3", size=64 * 1024, payload=payload) == image


@pytest.mark.parametrize("size", [1000, 64 * 1024 + 8, 128])
def test_impossible_sizes_are_refused(size):
    with pytest.raises(ImageError) as raised:
        build_firmware_image("spec", "1.0.0", size=size)
    assert raised.value.value == size


def test_smallest_possible_size_is_accepted():
    natural = len(build_firmware_image("spec", "1.0.0"))
    assert len(build_firmware_image("spec", "1.0.0", size=natural)) == natural
    with pytest.raises(ImageError):
        build_firmware_image("spec", "1.0.0", size=natural - 16)


def test_trailing_flash_contents_after_the_image_are_not_part_of_it():
    image = build_firmware_image("spec", "1.0.0")
    parsed = verify_app_image(image + b"\xff" * 4096)
    assert parsed.length == len(image)
    assert parsed.raw == image


def test_image_without_appended_hash(tmp_path):
    image = build_app_image(ecowatt_description("spec", "1.0.0"), hash_appended=False)
    path = tmp_path / "nohash.bin"
    path.write_bytes(image)
    out = esptool_image_info(path)
    assert field(out, "Checksum").endswith("(valid)")
    assert "Validation hash" not in out
    parsed = verify_app_image(image)
    assert parsed.sha256_ok is None and parsed.valid and parsed.length == len(image)


def _patched(image: bytes, offset: int, new: bytes) -> bytes:
    return image[:offset] + new + image[offset + len(new) :]


GOOD = build_firmware_image("reference-1.0.4", "1.0.4")


@pytest.mark.parametrize(
    ("data", "offset", "reason"),
    [
        (b"", 0, "header truncated"),
        (GOOD[:20], 20, "header truncated"),
        (_patched(GOOD, 0, b"\xea"), 0, "magic"),
        (_patched(GOOD, 1, b"\x00"), 1, "segment count"),
        (_patched(GOOD, 1, b"\x11"), 1, "segment count"),
        (_patched(GOOD, 2, b"\x07"), 2, "flash mode"),
        (_patched(GOOD, 3, b"\x25"), 3, "size/frequency"),
        (_patched(GOOD, 12, b"\x05\x00"), 12, "chip id 5"),
        (_patched(GOOD, 23, b"\x02"), 23, "hash-appended"),
        (_patched(GOOD, 28, b"\x02\x01\x00\x00"), 28, "length"),
        (_patched(GOOD, 24, b"\x00\x00\x41\x3f"), 24, "flash page"),
        (GOOD[:200], 32, "data truncated"),
        (GOOD[:290], 288, "segment 1 header truncated"),
        (GOOD[:300], 303, "checksum byte missing"),
        (GOOD[:320], 304, "SHA-256 truncated"),
    ],
)
def test_malformed_images_raise_image_error_with_offset(data, offset, reason):
    with pytest.raises(ImageError, match=reason) as raised:
        parse_app_image(data)
    assert raised.value.value == offset


def test_image_without_description_has_no_identity():
    # A RAM-only image (esptool-made bootloaders look like this) parses but is not EcoWatt firmware.
    oracle = ESP32FirmwareImage()
    oracle.entrypoint = 0x40080000
    oracle.segments = [ELFSection(b".iram0.text", 0x40080000, b"\x06\xff\xff\x00", 0)]
    image = oracle.save(None)
    parsed = verify_app_image(image)
    assert parsed.app_description is None
    with pytest.raises(ImageError, match="no app description"):
        firmware_identity(parsed)


@pytest.mark.parametrize(
    ("project", "message"), [("arduino-lib-builder", "not an EcoWatt"), ("ecowatt:beta", "unknown firmware")]
)
def test_foreign_project_names_have_no_identity(project, message):
    image = build_app_image(AppDescription(version="1.0.0", project_name=project))
    with pytest.raises(ImageError, match=message):
        firmware_identity(image)


def test_unknown_profile_and_oversized_fields_are_refused_at_build_time():
    with pytest.raises(ImageError, match="profile"):
        build_firmware_image("beta", "1.0.0")
    with pytest.raises(ImageError, match="version"):
        build_firmware_image("spec", "1" * 32)


@given(st.lists(st.binary(max_size=64), max_size=5))
def test_checksum_is_the_xor_of_all_segment_bytes_seeded_with_0xef(chunks):
    assert image_checksum(chunks) == reduce(xor, b"".join(chunks), 0xEF)


versions = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=7)


@settings(max_examples=60, deadline=None)
@given(
    profile=st.sampled_from(FIRMWARE_PROFILES),
    version=versions,
    payload=st.binary(max_size=300),
    secure_version=st.integers(0, 2**32 - 1),
)
def test_build_parse_round_trip(profile, version, payload, secure_version):
    image = build_firmware_image(profile, version, payload=payload, secure_version=secure_version)
    parsed = verify_app_image(image)
    assert firmware_identity(parsed) == (profile, version)
    assert parsed.app_description is not None
    assert parsed.app_description.secure_version == secure_version
    assert parsed.segments[0].data[256 : 256 + len(payload)] == payload
    assert parsed.length == len(image) and len(image) % 16 == 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600))
def test_arbitrary_bytes_give_an_image_or_image_error(data):
    try:
        image = parse_app_image(data)
    except ImageError as error:
        assert 0 <= error.value < len(data) + 16  # the offset of the problem
        return
    assert image.raw == data[: image.length]


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_damaged_valid_images_give_an_image_or_image_error(data):
    image = bytearray(GOOD)
    for _ in range(data.draw(st.integers(1, 4))):
        image[data.draw(st.integers(0, len(image) - 1))] = data.draw(st.integers(0, 255))
    damaged = bytes(image[: data.draw(st.integers(0, len(image)))])
    try:
        parsed = parse_app_image(damaged)
    except ImageError as error:
        assert 0 <= error.value < len(damaged) + 16
        return
    if parsed.valid and parsed.header.hash_appended:
        assert parsed.raw == GOOD  # any real damage breaks the checksum or the digest
    try:
        profile, _ = firmware_identity(parsed)
    except ImageError:
        return
    assert profile in FIRMWARE_PROFILES
