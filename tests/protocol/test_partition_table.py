"""ESP-IDF partition tables, cross-checked against ESP-IDF's own gen_esp32part output."""

from __future__ import annotations

import hashlib
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import ImageError
from protocol.partition_table import (
    ENTRY_SIZE,
    PARTITION_TABLE_LENGTH,
    AppSubtype,
    DataSubtype,
    Partition,
    PartitionFlag,
    PartitionTable,
    PartitionType,
    build_partition_table,
    default_partition_table,
    ota_subtype,
    parse_partition_table,
)

MiB = 1024 * 1024

# `gen_esp32part.py partitions_two_ota.csv` (ESP-IDF v5.3), up to the FF padding: six entries and the
# MD5 entry. The CSV: nvs 0x4000, otadata 0x2000, phy_init 0x1000, factory 1M, ota_0 1M, ota_1 1M.
IDF_TWO_OTA = bytes.fromhex(
    "aa50010200900000004000006e76730000000000000000000000000000000000"
    "aa50010000d00000002000006f74616461746100000000000000000000000000"
    "aa50010100f00000001000007068795f696e6974000000000000000000000000"
    "aa5000000000010000001000666163746f727900000000000000000000000000"
    "aa50001000001100000010006f74615f30000000000000000000000000000000"
    "aa50001100002100000010006f74615f31000000000000000000000000000000"
    "ebebffffffffffffffffffffffffffffbf25822c0fa6d8641bd930251e06b4c4"
)
IDF_TWO_OTA_TABLE = IDF_TWO_OTA + b"\xff" * (PARTITION_TABLE_LENGTH - len(IDF_TWO_OTA))

# SHA-256 of gen_esp32part's binaries (ESP-IDF v5.3, --flash-size 4MB) for the CSV equivalents of
# default_partition_table(): with phy_init
#   nvs,data,nvs,0x9000,0x4000 / otadata,data,ota,0xd000,0x2000 / phy_init,data,phy,0xf000,0x1000 /
#   ota_0,app,ota_0,0x10000,0x1F0000 / ota_1,app,ota_1,0x200000,0x1F0000
# and without (Arduino-ESP32's head): nvs 0x9000 0x5000, otadata 0xe000, then the same two slots.
GEN_ESP32PART_DEFAULT_SHA256 = "34e04cbdd359dc4d3cfc3b0237762da1d3a0d8cf8aa729280eecfbaae9fb9ddb"
GEN_ESP32PART_NO_PHY_SHA256 = "059858885a5db942ef21d6b290054348bfe40dc704c15137f5bf132cda678c22"


def test_parses_esp_idf_two_ota_table():
    table = parse_partition_table(IDF_TWO_OTA_TABLE)
    assert [(p.label, p.offset, p.size) for p in table.partitions] == [
        ("nvs", 0x9000, 0x4000),
        ("otadata", 0xD000, 0x2000),
        ("phy_init", 0xF000, 0x1000),
        ("factory", 0x10000, MiB),
        ("ota_0", 0x110000, MiB),
        ("ota_1", 0x210000, MiB),
    ]
    assert table.factory == table.require(label="factory")
    assert [p.label for p in table.ota_apps] == ["ota_0", "ota_1"]
    assert table.require(PartitionType.DATA, DataSubtype.NVS).label == "nvs"


def test_rebuilding_the_esp_idf_table_gives_identical_bytes():
    table = parse_partition_table(IDF_TWO_OTA_TABLE)
    assert build_partition_table(table.partitions) == IDF_TWO_OTA_TABLE


@pytest.mark.parametrize(
    ("phy_init", "expected"), [(True, GEN_ESP32PART_DEFAULT_SHA256), (False, GEN_ESP32PART_NO_PHY_SHA256)]
)
def test_default_table_matches_gen_esp32part(phy_init, expected):
    binary = default_partition_table(phy_init=phy_init).to_bytes()
    assert len(binary) == PARTITION_TABLE_LENGTH
    assert hashlib.sha256(binary).hexdigest() == expected


def test_default_4mb_layout_has_two_ota_slots_and_otadata():
    table = default_partition_table()
    ota_0, ota_1 = table.ota_apps
    assert (ota_0.offset, ota_1.offset) == (0x10000, 0x200000)
    assert ota_0.size == ota_1.size == 0x1F0000
    assert ota_1.end <= 4 * MiB
    assert table.otadata is not None and table.otadata.size == 0x2000
    assert table.factory is None
    assert table.find(PartitionType.DATA, DataSubtype.PHY) is not None
    assert default_partition_table(phy_init=False).find(label="phy_init") is None
    assert table.at(0x123456) == ota_0
    assert table.at(0x8000) is None
    assert ota_0.ota_slot == 0 and ota_1.ota_slot == 1 and table.otadata.ota_slot is None


@pytest.mark.parametrize("flash_mib", [1, 2, 8, 16])
def test_default_layout_scales_with_flash_size(flash_mib):
    table = default_partition_table(flash_mib * MiB)
    parsed = parse_partition_table(table.to_bytes(), flash_size=flash_mib * MiB)
    assert parsed == table
    assert table.ota_apps[1].end <= flash_mib * MiB


def test_find_by_type_subtype_and_label():
    table = default_partition_table()
    assert table.find(PartitionType.APP, ota_subtype(1)) == table.find(label="ota_1")
    assert table.find(PartitionType.APP, AppSubtype.FACTORY) is None
    assert len(table.find_all(PartitionType.APP)) == 2
    assert table.find(PartitionType.DATA, label="ota_0") is None
    with pytest.raises(ImageError, match="no such partition"):
        table.require(label="spiffs")


def test_table_without_md5_parses():
    table = default_partition_table()
    assert parse_partition_table(table.to_bytes(md5=False)) == table


def test_flags_round_trip():
    parts = (
        Partition("nvs", PartitionType.DATA, DataSubtype.NVS, 0x9000, 0x6000, PartitionFlag.ENCRYPTED),
        Partition("ota_0", PartitionType.APP, ota_subtype(0), 0x10000, 0x100000, PartitionFlag.READONLY),
    )
    assert parse_partition_table(build_partition_table(parts)).partitions == parts


def _table(*entries: bytes, md5: bool = True) -> bytes:
    body = b"".join(entries)
    if md5:
        body += b"\xeb\xeb" + b"\xff" * 14 + hashlib.md5(body).digest()
    return body + b"\xff" * (PARTITION_TABLE_LENGTH - len(body))


ENTRIES = [p.to_bytes() for p in default_partition_table().partitions]


@pytest.mark.parametrize(
    ("data", "offset", "reason"),
    [
        (IDF_TWO_OTA_TABLE[:100], 100, "truncated"),
        (b"\x00" * PARTITION_TABLE_LENGTH, 0, "magic"),
        (bytes([IDF_TWO_OTA_TABLE[0] ^ 1]) + IDF_TWO_OTA_TABLE[1:], 0, "magic"),
        (IDF_TWO_OTA_TABLE[:45] + b"x" + IDF_TWO_OTA_TABLE[46:], 6 * ENTRY_SIZE, "MD5 does not match"),
        (_table(*ENTRIES)[: 6 * ENTRY_SIZE] + ENTRIES[0] + b"\xff" * 0x900, 6 * ENTRY_SIZE, "after the MD5"),
    ],
)
def test_malformed_tables_raise_image_error_with_offset(data, offset, reason):
    with pytest.raises(ImageError, match=reason) as raised:
        parse_partition_table(data)
    assert raised.value.value == offset


def test_an_unterminated_full_table_is_refused():
    full = b"".join(ENTRIES[i % len(ENTRIES)] for i in range(PARTITION_TABLE_LENGTH // ENTRY_SIZE))
    with pytest.raises(ImageError, match="no end marker") as raised:
        parse_partition_table(full)
    assert raised.value.value == PARTITION_TABLE_LENGTH


def _entry(label: str, ptype: int, subtype: int, offset: int, size: int) -> bytes:
    # Packed by hand: the parser's layout checks need bytes the builder would refuse to write.
    return struct.pack("<2sBBII16sI", b"\xaa\x50", ptype, subtype, offset, size, label.encode(), 0)


@pytest.mark.parametrize(
    ("entries", "reason"),
    [
        ([_entry("a", 1, 2, 0x9000, 0x4000), _entry("b", 1, 2, 0xC000, 0x4000)], "overlaps"),
        ([_entry("a", 1, 2, 0x9000, 0x4000), _entry("a", 1, 2, 0xD000, 0x4000)], "unique"),
        ([_entry("otadata", 1, 0, 0x9000, 0x1000)], "otadata partition must be"),
        ([_entry("x", 1, 0, 0xD000, 0x2000), _entry("y", 1, 0, 0xF000, 0x2000)], "only one otadata"),
        ([_entry("app", 0, 0x10, 0x18000, 0x10000)], "aligned"),
        ([_entry("nvs", 1, 2, 0x9800, 0x4000)], "aligned"),
        ([_entry("nvs", 1, 2, 0x1000, 0x4000)], "below"),
        ([_entry("nvs", 1, 2, 0x9000, 0)], "empty"),
        ([_entry("", 1, 2, 0x9000, 0x1000)], "empty label"),
        ([b"\xaa\x50\x01\x02\x00\x90\x00\x00\x00\x10\x00\x00" + b"\xff\xfe" + bytes(18)], "UTF-8"),
        ([_entry("big", 1, 2, 0xFFFF0000, 0x20000)], "32-bit"),
    ],
)
def test_tables_breaking_layout_rules_are_refused(entries, reason):
    with pytest.raises(ImageError, match=reason):
        parse_partition_table(_table(*entries))


def test_flash_size_is_enforced_when_given():
    binary = default_partition_table(8 * MiB).to_bytes()
    with pytest.raises(ImageError, match="ends past"):
        parse_partition_table(binary, flash_size=4 * MiB)


def test_builder_refuses_what_esp_idf_refuses():
    with pytest.raises(ImageError, match="label"):
        build_partition_table([Partition("x" * 17, PartitionType.DATA, DataSubtype.NVS, 0x9000, 0x4000)])
    too_many = [
        Partition(f"p{i}", PartitionType.DATA, DataSubtype.UNDEFINED, 0x9000 + i * 0x1000, 0x1000)
        for i in range(95)
    ]
    with pytest.raises(ImageError, match="longer than"):
        build_partition_table(too_many)
    assert len(parse_partition_table(build_partition_table(too_many[:94])).partitions) == 94
    with pytest.raises(ImageError, match="OTA slot"):
        ota_subtype(16)


@st.composite
def layouts(draw) -> tuple[Partition, ...]:
    parts = []
    offset = 0x9000
    for index in range(draw(st.integers(0, 12))):
        is_app = draw(st.booleans())
        alignment = 0x10000 if is_app else 0x1000
        offset = -(-offset // alignment) * alignment + draw(st.integers(0, 3)) * alignment
        size = draw(st.integers(1, 64)) * 0x1000
        if is_app:
            ptype, subtype = PartitionType.APP, ota_subtype(index)
        else:
            ptype, subtype = PartitionType.DATA, draw(st.sampled_from([s for s in DataSubtype if s != 0]))
        label = draw(
            st.text(st.characters(codec="ascii", exclude_characters="\x00"), min_size=1, max_size=14)
        )
        flags = PartitionFlag(draw(st.integers(0, 3)))
        parts.append(Partition(f"{index:x}{label}"[:16], ptype, subtype, offset, size, flags))
        offset += size
    return tuple(parts)


@settings(max_examples=100, deadline=None)
@given(layouts(), st.booleans())
def test_build_parse_round_trip(parts, md5):
    assert parse_partition_table(build_partition_table(parts, md5=md5)) == PartitionTable(parts)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=PARTITION_TABLE_LENGTH + 64))
def test_arbitrary_bytes_give_a_table_or_image_error(data):
    try:
        table = parse_partition_table(data)
    except ImageError:
        return
    assert parse_partition_table(table.to_bytes(md5=False)) == table


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_damaged_tables_give_a_table_or_image_error(data):
    table = bytearray(default_partition_table().to_bytes(md5=data.draw(st.booleans())))
    for _ in range(data.draw(st.integers(1, 4))):
        table[data.draw(st.integers(0, 8 * ENTRY_SIZE))] = data.draw(st.integers(0, 255))
    try:
        parsed = parse_partition_table(bytes(table))
    except ImageError:
        return
    assert parse_partition_table(parsed.to_bytes(md5=False)) == parsed
