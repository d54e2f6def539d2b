"""The NVS partition reader against partition images written by Espressif's own generator
(esp-idf-nvs-partition-gen): what it writes is what the emulated board reads at boot; what it cannot
trust it skips and reports, and bytes it cannot read at all give NvsError, whatever they are."""

from __future__ import annotations

import contextlib
import io
import string
import struct
import zlib

import pytest
from esp_idf_nvs_partition_gen import nvs_partition_gen as gen
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device_emulator.nvs import NvsType
from device_emulator.nvs_partition import (
    ENTRY_SIZE,
    FIRST_ENTRY_OFFSET,
    PAGE_SIZE,
    PROVISION_NAMESPACE,
    NvsPartition,
    provisioned,
    read_nvs_partition,
)
from protocol.errors import NvsError

INTEGER_TYPES = [t for t in NvsType if t.is_int]
NAMES = st.text(string.ascii_letters + string.digits + "_", min_size=1, max_size=15)


def generate(
    entries: list[tuple[str, str, str, object]], *, size: int = 0x4000, version: int = gen.Page.VERSION2
) -> bytes:
    """A partition image by the IDF generator. `entries`: (key, "namespace" | "data", encoding, value)."""
    out = io.BytesIO()
    nvs = gen.nvs_open(out, size - PAGE_SIZE, version)  # the generator keeps one page spare
    for key, kind, encoding, value in entries:
        gen.write_entry(nvs, key, kind, encoding, value)
    gen.nvs_close(nvs)
    return out.getvalue()


def values(partition: NvsPartition) -> dict[str, dict[str, tuple[NvsType, object]]]:
    return {
        name: {key: (entry.type, entry.value) for key, entry in keys.items()}
        for name, keys in partition.namespaces.items()
    }


def entry_offset(image: bytes, key: str) -> int:
    """Where the header entry of the (first) item called `key` sits in the image."""
    raw = key.encode().ljust(16, b"\0")
    for page in range(0, len(image), PAGE_SIZE):
        for entry in range(126):
            at = page + FIRST_ENTRY_OFFSET + entry * ENTRY_SIZE
            if image[at + 8 : at + 24] == raw:
                return at
    raise AssertionError(f"no item {key!r}")


def test_every_type_the_generator_writes_reads_back() -> None:
    image = generate(
        [
            ("numbers", "namespace", "", ""),
            ("u8", "data", "u8", "255"),
            ("i8", "data", "i8", "-128"),
            ("u16", "data", "u16", "65535"),
            ("i16", "data", "i16", "-32768"),
            ("u32", "data", "u32", str(2**32 - 1)),
            ("i32", "data", "i32", str(-(2**31))),
            ("u64", "data", "u64", str(2**64 - 1)),
            ("i64", "data", "i64", str(-(2**63))),
            ("texts", "namespace", "", ""),
            ("greeting", "data", "string", "grüß dich"),
            ("empty", "data", "string", ""),
            ("small", "data", "hex2bin", "00ff10"),
            ("large", "data", "hex2bin", "a5" * 9000),  # three pages of chunks
        ],
        size=0x6000,
    )
    partition = read_nvs_partition(image)
    assert partition.damage == [] and partition.version == gen.Page.VERSION2
    assert values(partition) == {
        "numbers": {
            "u8": (NvsType.U8, 255),
            "i8": (NvsType.I8, -128),
            "u16": (NvsType.U16, 65535),
            "i16": (NvsType.I16, -32768),
            "u32": (NvsType.U32, 2**32 - 1),
            "i32": (NvsType.I32, -(2**31)),
            "u64": (NvsType.U64, 2**64 - 1),
            "i64": (NvsType.I64, -(2**63)),
        },
        "texts": {
            "greeting": (NvsType.STR, "grüß dich"),
            "empty": (NvsType.STR, ""),
            "small": (NvsType.BLOB, b"\x00\xff\x10"),
            "large": (NvsType.BLOB, b"\xa5" * 9000),
        },
    }


def test_version_1_blobs_are_single_items() -> None:
    image = generate(
        [("ns", "namespace", "", ""), ("blob", "data", "hex2bin", "5a" * 1500)], version=gen.Page.VERSION1
    )
    partition = read_nvs_partition(image)
    assert partition.version == gen.Page.VERSION1
    assert partition.get("ns", "blob") == b"\x5a" * 1500


def test_the_later_write_of_a_key_wins() -> None:
    image = generate(
        [
            ("ns", "namespace", "", ""),
            ("url", "data", "string", "http://old"),
            ("n", "data", "u32", "1"),
            ("url", "data", "string", "http://new"),
        ]
    )
    partition = read_nvs_partition(image)
    assert partition.namespace("ns") == {"url": "http://new", "n": 1}


@given(
    st.dictionaries(
        NAMES,
        st.one_of(
            st.tuples(st.sampled_from(INTEGER_TYPES), st.integers()),
            st.tuples(st.just(NvsType.STR), st.text(max_size=300)),
            st.tuples(st.just(NvsType.BLOB), st.binary(max_size=5000)),
        ),
        max_size=12,
    )
)
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_whatever_the_generator_writes_is_what_is_read(items: dict[str, tuple[NvsType, object]]) -> None:
    expected: dict[str, tuple[NvsType, object]] = {}
    entries: list[tuple[str, str, str, object]] = [("ns", "namespace", "", "")]
    for key, (nvs_type, value) in items.items():
        if nvs_type.is_int:
            assert isinstance(value, int)
            low, high = nvs_type.bounds
            value = low + value % (high - low + 1)
            entries.append((key, "data", nvs_type.name.lower(), str(value)))
        elif nvs_type is NvsType.STR:
            assert isinstance(value, str)
            value = value.replace("\0", "") or "x"
            entries.append((key, "data", "string", value))
        else:
            assert isinstance(value, bytes)
            entries.append((key, "data", "hex2bin", value.hex()))
        expected[key] = (nvs_type, value)
    partition = read_nvs_partition(generate(entries, size=0x8000))
    assert partition.damage == []
    assert values(partition).get("ns", {}) == expected


def test_a_corrupt_entry_is_skipped_and_reported_the_rest_reads() -> None:
    image = bytearray(
        generate([("ns", "namespace", "", ""), ("a", "data", "u32", "7"), ("b", "data", "string", "kept")])
    )
    image[entry_offset(image, "a") + 24] ^= 0x01  # the value no longer matches the entry's CRC
    partition = read_nvs_partition(bytes(image))
    assert partition.namespace("ns") == {"b": "kept"}
    assert [(d.page, d.reason) for d in partition.damage] == [(0, "entry CRC mismatch")]


def test_a_string_whose_data_fails_its_crc_is_skipped() -> None:
    image = bytearray(generate([("ns", "namespace", "", ""), ("s", "data", "string", "hello")]))
    image[entry_offset(image, "s") + ENTRY_SIZE] ^= 0x20  # first payload byte
    partition = read_nvs_partition(bytes(image))
    assert partition.namespace("ns") == {}
    assert "data CRC mismatch" in partition.damage[0].reason


def test_an_erased_entry_no_longer_counts() -> None:
    image = bytearray(
        generate([("ns", "namespace", "", ""), ("a", "data", "u8", "1"), ("b", "data", "u8", "2")])
    )
    index = (entry_offset(image, "a") - FIRST_ENTRY_OFFSET) // ENTRY_SIZE
    image[ENTRY_SIZE + index // 4] &= ~(0b11 << (2 * (index % 4)))  # bitmap state 00: erased
    partition = read_nvs_partition(bytes(image))
    assert partition.namespace("ns") == {"b": 2} and partition.damage == []


def test_a_page_whose_header_fails_its_crc_is_skipped() -> None:
    image = bytearray(generate([("ns", "namespace", "", ""), ("a", "data", "u8", "1")]))
    image[4] ^= 0x01  # sequence number
    partition = read_nvs_partition(bytes(image))
    assert partition.namespaces == {}
    assert [(d.page, d.entry, d.reason) for d in partition.damage] == [(0, None, "page header CRC mismatch")]


def test_a_blank_partition_holds_nothing() -> None:
    partition = read_nvs_partition(b"\xff" * 0x4000)
    assert partition.namespaces == {} and partition.damage == [] and partition.version is None


@pytest.mark.parametrize("size", [0, 100, PAGE_SIZE + 1])
def test_a_partition_that_is_not_whole_pages_is_an_error(size: int) -> None:
    with pytest.raises(NvsError, match="whole number"):
        read_nvs_partition(b"\xff" * size)


def test_an_unknown_format_version_is_an_error() -> None:
    image = bytearray(generate([("ns", "namespace", "", "")]))
    image[8] = 0xFD
    struct.pack_into("<I", image, 28, zlib.crc32(bytes(image[4:28]), 0xFFFFFFFF))
    with pytest.raises(NvsError, match="format version"):
        read_nvs_partition(bytes(image))


@given(st.binary(max_size=3 * PAGE_SIZE))
@settings(max_examples=300)
def test_arbitrary_bytes_give_a_partition_or_nvs_error(data: bytes) -> None:
    with contextlib.suppress(NvsError):
        read_nvs_partition(data)


VALID = generate(
    [
        ("provision", "namespace", "", ""),
        ("cloud_url", "data", "string", "http://127.0.0.1:5001"),
        ("psk", "data", "hex2bin", "11" * 32),
        ("blob", "data", "hex2bin", "c3" * 5000),
        ("n", "data", "i16", "-3"),
    ]
)


@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=30))
@settings(max_examples=300)
def test_a_damaged_image_gives_a_partition_or_nvs_error(changes: list[tuple[int, int]]) -> None:
    image = bytearray(VALID)
    for offset, value in changes:
        image[offset] = value
    try:
        partition = read_nvs_partition(bytes(image))
    except NvsError:
        return
    found = provisioned(partition)  # whatever survives is typed as the reader promises
    assert found.key is None or len(found.key) == 32


def test_provisioned_settings_are_checked_for_type_and_shape() -> None:
    image = generate(
        [
            (PROVISION_NAMESPACE, "namespace", "", ""),
            ("cloud_url", "data", "string", "not a url"),
            ("inverter_url", "data", "string", "http://127.0.0.1:8080"),
            ("device_id", "data", "u8", "7"),
            ("psk", "data", "hex2bin", "11" * 16),
        ]
    )
    found = provisioned(read_nvs_partition(image))
    assert (found.cloud_url, found.inverter_url, found.device_id, found.key) == (
        None,
        "http://127.0.0.1:8080",
        None,
        None,
    )
    assert len(found.problems) == 3 and found.present
