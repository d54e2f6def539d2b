"""The emulated NVS: typed values, persistence, and atomicity under power cuts and file damage."""

from __future__ import annotations

import logging
import struct
import tempfile
import zlib
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_emulator import nvs
from device_emulator.nvs import NvsEntry, NvsStore, NvsType
from protocol.errors import NvsError


class PowerCut(Exception):
    """What the harness raises at a tagged point to cut the power there."""


def cut_at(tag: str) -> Callable[[str], None]:
    def hook(point: str) -> None:
        if point == tag:
            raise PowerCut(point)

    return hook


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "nvs.bin"


# --- values --------------------------------------------------------------------------------------

ROUND_TRIP = [
    (NvsType.U8, 0),
    (NvsType.U8, 255),
    (NvsType.I8, -128),
    (NvsType.I8, 127),
    (NvsType.U16, 65535),
    (NvsType.I16, -32768),
    (NvsType.U32, 0xFFFF_FFFF),
    (NvsType.I32, -(2**31)),
    (NvsType.U64, 2**64 - 1),
    (NvsType.I64, -(2**63)),
    (NvsType.STR, ""),
    (NvsType.STR, "héllo ✓ 1.0.4"),
    (NvsType.STR, "x" * nvs.STR_MAX_BYTES),
    (NvsType.BLOB, b""),
    (NvsType.BLOB, bytes(range(256)) * 4),
]


@pytest.mark.parametrize(("nvs_type", "value"), ROUND_TRIP)
def test_each_type_round_trips_and_survives_reopen(path: Path, nvs_type: NvsType, value: object) -> None:
    store = NvsStore(path)
    assert store.set("test", "key", nvs_type, value)  # type: ignore[arg-type]
    assert store.entry("test", "key") == NvsEntry(nvs_type, value)  # type: ignore[arg-type]
    reopened = NvsStore(path)
    assert reopened.entry("test", "key") == NvsEntry(nvs_type, value)  # type: ignore[arg-type]
    assert reopened.load_report.clean


@pytest.mark.parametrize(
    ("nvs_type", "value"),
    [
        (NvsType.U8, 256),
        (NvsType.U8, -1),
        (NvsType.I8, 128),
        (NvsType.U32, 2**32),
        (NvsType.I64, 2**63),
        (NvsType.U16, True),
        (NvsType.U32, 1.5),
        (NvsType.U32, "5"),
        (NvsType.STR, "a\0b"),
        (NvsType.STR, "x" * (nvs.STR_MAX_BYTES + 1)),
        (NvsType.STR, "é" * 2000),  # 4000 bytes of UTF-8
        (NvsType.STR, "\ud800"),
        (NvsType.STR, b"bytes"),
        (NvsType.BLOB, bytes(nvs.BLOB_MAX_BYTES + 1)),
        (NvsType.BLOB, "text"),
        (0x33, 1),
    ],
)
def test_values_esp_idf_refuses_raise_a_typed_error_and_write_nothing(
    path: Path, nvs_type: NvsType, value: object
) -> None:
    store = NvsStore(path)
    with pytest.raises(NvsError):
        store.set("test", "key", nvs_type, value)  # type: ignore[arg-type]
    assert not path.exists()
    assert store.entry("test", "key") is None


@pytest.mark.parametrize("name", ["", "a" * 16, "clé", "tab\tkey", 7])
def test_names_follow_esp_idf_rules(path: Path, name: object) -> None:
    store = NvsStore(path)
    with pytest.raises(NvsError):
        store.set(name, "key", NvsType.U8, 1)  # type: ignore[arg-type]
    with pytest.raises(NvsError):
        store.set("ns", name, NvsType.U8, 1)  # type: ignore[arg-type]
    assert store.set("a" * 15, "b" * 15, NvsType.U8, 1)
    assert NvsStore(path).entry("a" * 15, "b" * 15) == NvsEntry(NvsType.U8, 1)


def test_a_key_keeps_its_type_until_erased(path: Path) -> None:
    store = NvsStore(path)
    store.set("freq", "poll_freq", NvsType.U64, 5)
    with pytest.raises(NvsError):
        store.set("freq", "poll_freq", NvsType.U32, 5)
    assert store.erase_key("freq", "poll_freq")
    store.set("freq", "poll_freq", NvsType.U32, 5)
    assert NvsStore(path).entry("freq", "poll_freq") == NvsEntry(NvsType.U32, 5)


def test_typed_getters_fall_back_to_the_default_on_absence_or_type_mismatch(path: Path) -> None:
    store = NvsStore(path)
    store.set("ns", "num", NvsType.U32, 7)
    store.set("ns", "text", NvsType.STR, "seven")
    store.set("ns", "blob", NvsType.BLOB, b"\x07")
    assert store.get_int("ns", "num", NvsType.U32, 0) == 7
    assert store.get_int("ns", "num", NvsType.U64, 99) == 99
    assert store.get_int("ns", "missing", NvsType.U32, 99) == 99
    assert store.get_str("ns", "text", "") == "seven"
    assert store.get_str("ns", "num", "none") == "none"
    assert store.get_blob("ns", "blob", b"") == b"\x07"
    assert store.get_blob("ns", "text", b"none") == b"none"


def test_erasing_keys_namespaces_and_everything_persists(path: Path) -> None:
    store = NvsStore(path)
    store.set("a", "one", NvsType.U8, 1)
    store.set("a", "two", NvsType.U8, 2)
    store.set("b", "three", NvsType.U8, 3)
    store.set("c", "four", NvsType.U8, 4)
    store.erase_key("a", "one")
    store.erase_namespace("b")
    assert NvsStore(path).snapshot() == {
        "a": {"two": NvsEntry(NvsType.U8, 2)},
        "c": {"four": NvsEntry(NvsType.U8, 4)},
    }
    store.erase_all()
    reopened = NvsStore(path)
    assert reopened.snapshot() == {}
    assert reopened.namespaces() == []


def test_rewriting_the_same_value_writes_nothing(path: Path) -> None:
    points: list[str] = []
    store = NvsStore(path, on_point=points.append)
    assert store.set("freq", "poll_freq", NvsType.U64, 9_000_000)
    size = path.stat().st_size
    points.clear()
    assert not store.set("freq", "poll_freq", NvsType.U64, 9_000_000)
    assert path.stat().st_size == size
    assert points == []


def test_a_transaction_that_raises_writes_nothing(path: Path) -> None:
    store = NvsStore(path)
    store.put(nvs.POLL_FREQ, 3_000_000)
    with pytest.raises(RuntimeError), store.transaction() as tx:
        tx.put(nvs.POLL_FREQ, 4_000_000)
        raise RuntimeError("validation failed half way")
    assert nvs.poll_interval_us(NvsStore(path)) == 3_000_000


# --- atomicity -----------------------------------------------------------------------------------


OLD_CONFIG = (3_000_000, 60_000_000, 0b11, 2)
NEW_CONFIG = (9_000_000, 900_000_000, 0x3FF, 10)


def _config(store: NvsStore) -> tuple[object, ...]:
    return (
        nvs.poll_interval_us(store),
        nvs.upload_interval_us(store),
        nvs.REGS.read(store),
        nvs.REG_COUNT.read(store),
    )


def _write_config(store: NvsStore, poll: int, upload: int, regs: int, count: int) -> None:
    with store.transaction() as tx:
        tx.put(nvs.POLL_FREQ, poll)
        tx.put(nvs.UPLOAD_FREQ, upload)
        tx.put(nvs.REGS, regs)
        tx.put(nvs.REG_COUNT, count)


def _prepare(path: Path) -> NvsStore:
    """A store holding an old configuration, a used nonce and an unrelated key."""
    store = NvsStore(path)
    store.set("keep", "me", NvsType.STR, "untouched")
    _write_config(store, *OLD_CONFIG)
    nvs.advance_nonce(store)
    return store


def _old_and_new_files(path: Path, write: Callable[[NvsStore], None]) -> tuple[bytes, bytes]:
    """The file before and after one write, on a prepared store."""
    store = _prepare(path)
    old = path.read_bytes()
    write(store)
    new = path.read_bytes()
    assert new.startswith(old) and len(new) > len(old)
    return old, new


def test_a_write_truncated_at_every_byte_leaves_the_old_or_the_new_values(path: Path) -> None:
    old, new = _old_and_new_files(path, lambda store: _write_config(store, *NEW_CONFIG))
    for cut in range(len(old), len(new) + 1):
        path.write_bytes(new[:cut])
        store = NvsStore(path, durable=False)  # fsync is not what is tested here; keeps it fast
        assert _config(store) == (NEW_CONFIG if cut == len(new) else OLD_CONFIG), cut
        assert nvs.current_nonce(store) == 10_001
        assert store.get_str("keep", "me", "") == "untouched"
        assert store.load_report.clean == (cut in (len(old), len(new)))


@pytest.mark.parametrize("flip", [0x01, 0x80, 0xFF])
def test_a_write_corrupted_at_every_byte_leaves_the_old_values(path: Path, flip: int) -> None:
    old, new = _old_and_new_files(path, lambda store: _write_config(store, *NEW_CONFIG))
    for offset in range(len(old), len(new)):
        damaged = bytearray(new)
        damaged[offset] ^= flip
        path.write_bytes(bytes(damaged))
        store = NvsStore(path, durable=False)
        assert _config(store) == OLD_CONFIG, offset
        assert nvs.current_nonce(store) == 10_001
        assert store.get_str("keep", "me", "") == "untouched"
        assert not store.load_report.clean


def test_a_damaged_file_is_repaired_and_takes_new_writes(
    path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old, new = _old_and_new_files(path, nvs.advance_nonce)
    path.write_bytes(new[: (len(old) + len(new)) // 2])
    with caplog.at_level(logging.WARNING, logger="device_emulator.nvs"):
        store = NvsStore(path)
    assert "discarded" in caplog.text
    assert store.load_report.damage[0].offset == len(old)
    assert nvs.advance_nonce(store) == 10_002
    reopened = NvsStore(path)
    assert reopened.load_report.clean
    assert nvs.current_nonce(reopened) == 10_002
    assert _config(reopened) == OLD_CONFIG


@pytest.mark.parametrize(
    ("tag", "survives"),
    [(nvs.POINT_BEFORE_COMMIT, False), (nvs.POINT_TORN, False), (nvs.POINT_AFTER_COMMIT, True)],
)
def test_power_cut_at_a_tagged_point(path: Path, tag: str, survives: bool) -> None:
    _prepare(path)
    store = NvsStore(path, on_point=cut_at(tag))
    with pytest.raises(PowerCut):
        _write_config(store, *NEW_CONFIG)
    after = NvsStore(path)
    assert _config(after) == (NEW_CONFIG if survives else OLD_CONFIG)
    assert after.get_str("keep", "me", "") == "untouched"
    assert after.load_report.clean == (tag != nvs.POINT_TORN)


def test_power_cut_before_compaction_swap_keeps_every_committed_value(path: Path) -> None:
    store = NvsStore(path, compact_at=512, on_point=cut_at(nvs.POINT_BEFORE_COMPACT))
    store.set("keep", "me", NvsType.STR, "untouched")
    with pytest.raises(PowerCut):
        for _ in range(1000):
            nvs.advance_nonce(store)
    committed = nvs.current_nonce(store)
    assert 10_001 < committed < 11_000
    after = NvsStore(path)
    assert nvs.current_nonce(after) == committed
    assert after.get_str("keep", "me", "") == "untouched"
    assert not path.with_name(path.name + ".tmp").exists()


def test_a_corrupt_old_record_does_not_roll_the_nonce_back(path: Path) -> None:
    store = NvsStore(path)
    ends = []
    for _ in range(10):
        nvs.advance_nonce(store)
        ends.append(path.stat().st_size)
    damaged = bytearray(path.read_bytes())
    damaged[ends[2] + 5] ^= 0x40  # inside the record of the 4th nonce
    path.write_bytes(bytes(damaged))
    store = NvsStore(path)
    assert nvs.current_nonce(store) == 10_010
    assert len(store.load_report.damage) == 1


def test_the_log_is_compacted_as_it_grows(path: Path) -> None:
    store = NvsStore(path, compact_at=1024, durable=False)
    for _ in range(1000):
        nvs.advance_nonce(store)
    assert path.stat().st_size <= 2048
    assert nvs.current_nonce(NvsStore(path)) == 11_000


def test_a_file_that_is_not_nvs_loads_empty_with_a_reason(path: Path) -> None:
    path.write_bytes(b"this is not an NVS file\n" * 10)
    store = NvsStore(path)
    assert store.snapshot() == {}
    assert [d.reason for d in store.load_report.damage] == ["torn or corrupt tail"]
    assert nvs.current_nonce(store) == 10_000


# --- arbitrary file bytes ------------------------------------------------------------------------


def _assert_valid(store: NvsStore) -> None:
    for namespace, keys in store.snapshot().items():
        nvs.check_name("namespace", namespace)
        for key, entry in keys.items():
            nvs.check_name("key", key)
            assert nvs.check_value(entry.type, entry.value) == entry.value


@given(st.binary(max_size=3000))
def test_arbitrary_bytes_load_into_a_valid_store(data: bytes) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "nvs.bin"
        path.write_bytes(data)
        _assert_valid(NvsStore(path, durable=False))


def _framed(payload: bytes) -> bytes:
    """A record framed as the module docstring documents, whatever the payload."""
    length = struct.pack("<I", len(payload))
    return b"\xe5NV" + length + struct.pack("<I", zlib.crc32(length + payload)) + payload


@given(st.lists(st.binary(max_size=60).map(_framed) | st.binary(max_size=30), max_size=12))
def test_well_framed_garbage_records_load_into_a_valid_store(parts: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "nvs.bin"
        path.write_bytes(b"".join(parts))
        _assert_valid(NvsStore(path, durable=False))


@given(
    writes=st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 255)), min_size=1, max_size=8),
    noise=st.lists(st.binary(min_size=1, max_size=20), max_size=8),
)
def test_records_between_garbage_yield_only_values_that_were_written(
    writes: list[tuple[str, int]], noise: list[bytes]
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "nvs.bin"
        store = NvsStore(path, durable=False)
        records = []
        for key, value in writes:
            before = path.read_bytes() if path.exists() else b""
            store.set("ns", key, NvsType.U8, value)
            records.append(path.read_bytes()[len(before) :])
        mixed = b"".join(r + (noise[i] if i < len(noise) else b"") for i, r in enumerate(records))
        path.write_bytes(mixed)
        loaded = NvsStore(path, durable=False)
        written = {key: {v for k, v in writes if k == key} for key, _ in writes}
        for key, entry in loaded.keys("ns").items():
            assert entry.value in written[key]


# --- the firmware's keys -------------------------------------------------------------------------


def test_the_firmware_key_table_is_unique_and_defaults_match_the_spec() -> None:
    paths = [(k.namespace, k.key) for k in nvs.FIRMWARE_KEYS]
    assert len(paths) == len(set(paths))
    assert ("readregs", "regs") in paths and ("security", "nonce") in paths


def test_intervals_default_and_fall_back_below_the_minimum(path: Path) -> None:
    store = NvsStore(path)
    assert nvs.poll_interval_us(store) == 2_000_000
    assert nvs.upload_interval_us(store) == 15_000_000
    store.put(nvs.POLL_FREQ, 99_999)
    store.put(nvs.UPLOAD_FREQ, 999_999)
    assert (nvs.poll_interval_us(store), nvs.upload_interval_us(store)) == (2_000_000, 15_000_000)
    store.put(nvs.POLL_FREQ, 100_000)
    store.put(nvs.UPLOAD_FREQ, 900_000_000)
    reopened = NvsStore(path)
    assert (nvs.poll_interval_us(reopened), nvs.upload_interval_us(reopened)) == (100_000, 900_000_000)


def test_an_interval_stored_with_another_type_reads_as_the_default(path: Path) -> None:
    store = NvsStore(path)
    store.set("freq", "poll_freq", NvsType.U32, 5_000_000)
    assert nvs.poll_interval_us(store) == 2_000_000


def test_register_selection_as_the_firmware_rebuilds_it(path: Path) -> None:
    store = NvsStore(path)
    assert nvs.register_selection(store) == [0, 1, 5, 9, 6, 7]  # firmware order, nothing stored
    _write_config(store, 2_000_000, 15_000_000, 0x2E3, 6)
    assert nvs.register_selection(NvsStore(path)) == [0, 1, 5, 6, 7, 9]  # ascending once stored
    store.put(nvs.REG_COUNT, 8)
    assert nvs.register_selection(store) == [0, 1, 5, 6, 7, 9, -1, -1]
    store.put(nvs.REG_COUNT, 2)
    assert nvs.register_selection(store) == [0, 1]


def test_the_nonce_is_persisted_before_use_and_wraps_like_a_uint32(path: Path) -> None:
    store = NvsStore(path)
    assert nvs.advance_nonce(store) == 10_001
    assert nvs.current_nonce(NvsStore(path)) == 10_001
    assert nvs.advance_nonce(NvsStore(path)) == 10_002
    store = NvsStore(path)
    store.put(nvs.NONCE, 0xFFFF_FFFF)
    assert nvs.advance_nonce(store) == 0


def test_a_power_cut_before_the_nonce_is_saved_never_hands_out_that_nonce_twice(path: Path) -> None:
    store = NvsStore(path, on_point=cut_at(nvs.POINT_TORN))
    with pytest.raises(PowerCut):
        nvs.advance_nonce(store)  # never returned, so never sent
    assert nvs.advance_nonce(NvsStore(path)) == 10_001
    store = NvsStore(path, on_point=cut_at(nvs.POINT_AFTER_COMMIT))
    with pytest.raises(PowerCut):
        nvs.advance_nonce(store)  # durable but never returned: skipped, not reused
    assert nvs.advance_nonce(NvsStore(path)) == 10_003


def test_a_fresh_state_directory_is_created_on_first_write(tmp_path: Path) -> None:
    path = tmp_path / "device-7" / "nvs.bin"
    store = NvsStore(path)
    assert not path.exists()  # opening alone writes nothing
    nvs.advance_nonce(store)
    assert nvs.current_nonce(NvsStore(path)) == 10_001
