"""otadata: OTA slot selection and the app rollback life cycle, as ESP-IDF's bootloader runs them."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol.errors import ImageError
from protocol.otadata import (
    ENTRY_SIZE,
    OTADATA_SIZE,
    SECTOR_SIZE,
    OtaEntry,
    OtaState,
    blank_otadata,
    boot,
    build_otadata,
    mark_app_invalid,
    mark_app_valid,
    read_otadata,
    seq_crc,
    set_boot_slot,
    write_entry,
)
from protocol.partition_table import default_partition_table

TWO = [True, True]


def rom_crc32_le(crc: int, data: bytes) -> int:
    """The ESP32 ROM's crc32_le, bit by bit (ESP-IDF's host build of it: ~crc in, reflected 0xEDB88320, ~crc out)."""
    crc ^= 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0xEDB88320 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


@given(st.integers(0, 0xFFFFFFFF))
def test_crc_is_the_roms_crc32_le_seeded_with_all_ones_over_ota_seq(seq):
    assert seq_crc(seq) == rom_crc32_le(0xFFFFFFFF, struct.pack("<I", seq))


def test_records_live_at_the_start_of_each_sector():
    data = build_otadata(OtaEntry.make(7, OtaState.VALID), OtaEntry.make(8, OtaState.NEW))
    assert len(data) == OTADATA_SIZE == default_partition_table().require(label="otadata").size
    assert struct.unpack_from("<I", data, 0)[0] == 7
    assert struct.unpack_from("<I", data, SECTOR_SIZE)[0] == 8
    assert struct.unpack_from("<I", data, SECTOR_SIZE + 28)[0] == seq_crc(8)
    assert data[ENTRY_SIZE:SECTOR_SIZE] == b"\xff" * (SECTOR_SIZE - ENTRY_SIZE)
    otadata = read_otadata(data)
    assert otadata.entries[1] == OtaEntry.make(8, OtaState.NEW)
    assert otadata.active_index == 1 and otadata.boot_slot(2) == 1


def test_blank_otadata_boots_ota_0_and_records_it():
    result = boot(blank_otadata(), TWO)
    assert result.slot == 0
    assert read_otadata(result.otadata).entries[0] == OtaEntry.make(1, OtaState.VALID)
    # Booting again changes nothing.
    assert boot(result.otadata, TWO) == result


def test_blank_otadata_with_a_factory_app_boots_factory_and_writes_nothing():
    result = boot(blank_otadata(), TWO, factory=True)
    assert result.slot is None and result.otadata == blank_otadata()


def test_highest_valid_seq_wins_and_maps_to_seq_minus_one_mod_slots():
    data = build_otadata(OtaEntry.make(5, OtaState.VALID), OtaEntry.make(6, OtaState.VALID))
    assert boot(data, [True] * 3).slot == (6 - 1) % 3
    assert boot(data, [True] * 4).slot == (6 - 1) % 4
    tie = build_otadata(OtaEntry.make(4, OtaState.VALID), OtaEntry.make(4, OtaState.VALID))
    assert read_otadata(tie).active_index == 0


def test_a_record_with_a_bad_crc_is_ignored():
    good = OtaEntry.make(1, OtaState.VALID)
    corrupt = OtaEntry(2, OtaState.VALID, seq_crc(2) ^ 1)
    data = build_otadata(good, corrupt)
    assert read_otadata(data).active == good
    assert boot(data, TWO).slot == 0


def test_blank_otadata_records_whichever_slot_boots():
    result = boot(blank_otadata(), [False, True])
    assert result.slot == 1
    assert read_otadata(result.otadata).entries[0] == OtaEntry.make(2, OtaState.VALID)


def test_records_with_bad_crcs_make_the_bootloader_try_every_slot_without_writing():
    data = build_otadata(OtaEntry(3, OtaState.VALID, 0), OtaEntry(4, OtaState.VALID, 0))
    result = boot(data, [False, True])
    assert result.slot == 1 and result.otadata == data


@given(st.integers(1, 16), st.lists(st.integers(0, 15), min_size=1, max_size=12))
def test_set_boot_slot_selects_that_slot_every_time(app_count, targets):
    data = blank_otadata()
    last_seq = 0
    for target in targets:
        slot = target % app_count
        data = set_boot_slot(data, slot, app_count)
        otadata = read_otadata(data)
        assert otadata.boot_slot(app_count) == slot
        assert boot(data, [True] * app_count).slot == slot
        assert otadata.active is not None and otadata.active.seq >= last_seq
        last_seq = otadata.active.seq


def test_set_boot_slot_sequence_numbers_follow_esp_idf():
    data = set_boot_slot(blank_otadata(), 1, 2)
    assert read_otadata(data).entries[0].seq == 2  # first write: record 0, seq = slot + 1
    data = set_boot_slot(data, 0, 2)
    assert read_otadata(data).entries[1].seq == 3  # the other record, next seq mapping to ota_0
    data = set_boot_slot(data, 1, 2)
    assert [e.seq for e in read_otadata(data).entries] == [4, 3]
    same = set_boot_slot(data, 1, 2)
    assert [e.seq for e in read_otadata(same).entries] == [4, 3]  # already selected: state only
    with pytest.raises(ImageError):
        set_boot_slot(data, 2, 2)


def test_without_rollback_the_new_app_is_undefined_and_never_rolled_back():
    data = set_boot_slot(boot(blank_otadata(), TWO).otadata, 1, 2)
    assert read_otadata(data).active.state == OtaState.UNDEFINED
    for _ in range(3):
        result = boot(data, TWO)
        assert result.slot == 1 and result.otadata == data


def test_rollback_an_unconfirmed_app_is_aborted_at_the_next_reset():
    running_v1 = set_boot_slot(blank_otadata(), 0, 2, rollback=True)
    running_v1 = mark_app_valid(boot(running_v1, TWO, rollback=True).otadata)

    updated = set_boot_slot(running_v1, 1, 2, rollback=True)
    assert read_otadata(updated).active.state == OtaState.NEW

    first = boot(updated, TWO, rollback=True)
    assert first.slot == 1
    assert read_otadata(first.otadata).active.state == OtaState.PENDING_VERIFY

    # Reset before the new app confirmed itself: the bootloader aborts it and boots the old one.
    second = boot(first.otadata, TWO, rollback=True)
    assert second.slot == 0
    states = [e.state for e in read_otadata(second.otadata).entries]
    assert states == [OtaState.VALID, OtaState.ABORTED]


def test_rollback_a_confirmed_app_keeps_booting():
    data = set_boot_slot(set_boot_slot(blank_otadata(), 0, 2), 1, 2, rollback=True)
    data = boot(data, TWO, rollback=True).otadata
    data = mark_app_valid(data)
    assert mark_app_valid(data) == data
    for _ in range(3):
        result = boot(data, TWO, rollback=True)
        assert result.slot == 1 and result.otadata == data


def test_an_app_marked_invalid_hands_over_to_the_previous_slot():
    data = set_boot_slot(set_boot_slot(blank_otadata(), 0, 2), 1, 2)
    data = mark_app_invalid(data)
    assert read_otadata(data).entries[1].state == OtaState.INVALID
    assert boot(data, TWO).slot == 0
    with pytest.raises(ImageError, match="no active"):
        mark_app_invalid(mark_app_invalid(data))


@pytest.mark.parametrize(
    ("bootable", "factory", "expected"),
    [
        ([True, True, True], None, 1),
        ([True, False, True], None, 0),  # downwards first
        ([False, False, True], None, 2),  # then upwards
        ([False, False, True], True, None),  # the factory app comes before higher slots
        ([False, False, False], True, None),
    ],
)
def test_an_unbootable_selected_slot_falls_back_like_the_bootloader(bootable, factory, expected):
    data = set_boot_slot(blank_otadata(), 1, 3)
    assert boot(data, bootable, factory=factory).slot == expected


def test_nothing_bootable_raises():
    with pytest.raises(ImageError, match="no bootable"):
        boot(set_boot_slot(blank_otadata(), 1, 2), [False, False], factory=False)
    with pytest.raises(ImageError, match="no bootable"):
        boot(blank_otadata(), [])


def test_state_of_a_slot():
    data = build_otadata(OtaEntry.make(1, OtaState.VALID), OtaEntry.make(2, OtaState.PENDING_VERIFY))
    otadata = read_otadata(data)
    assert otadata.state_of(0, 2) == OtaState.VALID
    assert otadata.state_of(1, 2) == OtaState.PENDING_VERIFY
    assert otadata.state_of(2, 4) is None


def test_short_otadata_and_bad_records_are_refused():
    with pytest.raises(ImageError) as raised:
        read_otadata(b"\xff" * SECTOR_SIZE)
    assert raised.value.value == SECTOR_SIZE
    with pytest.raises(ImageError):
        write_entry(blank_otadata(), 2, OtaEntry.make(1, OtaState.VALID))
    with pytest.raises(ImageError):
        OtaEntry(1 << 32, 0, 0).to_bytes()


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=SECTOR_SIZE + 2 * ENTRY_SIZE))
def test_arbitrary_bytes_read_as_otadata_or_image_error(data):
    try:
        otadata = read_otadata(data)
    except ImageError:
        assert len(data) < SECTOR_SIZE + ENTRY_SIZE
        return
    assert read_otadata(build_otadata(*otadata.entries)) == otadata


records = st.builds(
    lambda seq, state, crc_ok: OtaEntry.make(seq, state) if crc_ok else OtaEntry(seq, state, 0),
    st.one_of(st.integers(0, 8), st.integers(0, 0xFFFFFFFF)),
    st.one_of(st.sampled_from(OtaState), st.integers(0, 0xFFFFFFFF)),
    st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(st.none(), records),
    st.one_of(st.none(), records),
    st.lists(st.booleans(), max_size=16),
    st.one_of(st.none(), st.booleans()),
    st.booleans(),
)
def test_boot_on_any_otadata_picks_a_bootable_app_or_raises(first, second, bootable, factory, rollback):
    try:
        result = boot(build_otadata(first, second), bootable, factory=factory, rollback=rollback)
    except ImageError:
        assert not any(bootable) and not factory
        return
    if result.slot is None:
        assert factory
    else:
        assert bootable[result.slot]
    assert len(result.otadata) == OTADATA_SIZE
    if rollback:
        # Every unconfirmed app was aborted; only the one selected now may be pending.
        after = read_otadata(result.otadata)
        pending = [i for i, e in enumerate(after.entries) if e.state == OtaState.PENDING_VERIFY]
        assert pending in ([], [after.active_index])
