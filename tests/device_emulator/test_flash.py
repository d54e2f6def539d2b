"""The emulated SPI NOR flash: erase/program semantics, persistence, partitions and torn writes."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_emulator.context import PowerCut
from device_emulator.flash import (
    FLASH_SIZE,
    POINT_ERASE_TORN,
    POINT_WRITE_TORN,
    SECTOR_SIZE,
    Flash,
    factory_program,
)
from protocol.errors import FlashError, ImageError
from protocol.esp_image import build_firmware_image, firmware_identity, verify_app_image
from protocol.partition_table import default_partition_table


def cut_at(tag: str) -> Callable[[str], None]:
    def hook(point: str) -> None:
        if point == tag:
            raise PowerCut(point)

    return hook


@pytest.fixture
def flash(tmp_path: Path) -> Flash:
    return Flash(tmp_path / "flash.bin")


def test_a_new_chip_is_erased_and_costs_almost_no_disk(tmp_path: Path) -> None:
    flash = Flash(tmp_path / "flash.bin")
    assert flash.created
    assert flash.read(0, 64) == b"\xff" * 64
    assert flash.read(FLASH_SIZE - 16, 16) == b"\xff" * 16
    assert (tmp_path / "flash.bin").stat().st_blocks * 512 < 64 * 1024  # a hole, not 4 MB of 0xFF
    assert not Flash(tmp_path / "flash.bin").created


def test_writes_only_clear_bits_and_erase_sets_whole_sectors(flash: Flash) -> None:
    flash.write(0x1000, b"\x0f\xff")
    flash.write(0x1000, b"\xf0\x3c")  # no erase in between: stored = old AND new
    assert flash.read(0x1000, 2) == b"\x00\x3c"
    flash.write(0x1FFF, b"\x00")
    flash.erase(0x1000, SECTOR_SIZE)
    assert flash.read(0x1000, SECTOR_SIZE) == b"\xff" * SECTOR_SIZE


def test_contents_survive_reopening(tmp_path: Path) -> None:
    Flash(tmp_path / "flash.bin").write(0x20000, b"persist")
    assert Flash(tmp_path / "flash.bin").read(0x20000, 7) == b"persist"


@pytest.mark.parametrize(
    ("offset", "length"),
    [(1, SECTOR_SIZE), (0, 100), (SECTOR_SIZE, SECTOR_SIZE + 1), (-SECTOR_SIZE, SECTOR_SIZE)],
)
def test_an_erase_off_sector_boundaries_is_refused(flash: Flash, offset: int, length: int) -> None:
    flash.write(0, b"\x00")
    with pytest.raises(FlashError):
        flash.erase(offset, length)
    assert flash.read(0, 1) == b"\x00"


@pytest.mark.parametrize(("offset", "length"), [(FLASH_SIZE, 1), (FLASH_SIZE - 1, 2), (-1, 1)])
def test_access_outside_the_chip_is_refused(flash: Flash, offset: int, length: int) -> None:
    with pytest.raises(FlashError):
        flash.read(offset, length)
    with pytest.raises(FlashError):
        flash.write(offset, b"\x00" * length)


def test_chip_erase(flash: Flash) -> None:
    flash.write(0x3000, b"\x12\x34")
    flash.erase_all()
    assert flash.read(0x3000, 2) == b"\xff\xff"


OPS = st.lists(
    st.one_of(
        st.tuples(st.just("write"), st.integers(0, 4 * SECTOR_SIZE - 1), st.binary(min_size=1, max_size=300)),
        st.tuples(st.just("erase"), st.integers(0, 3), st.integers(1, 4)),
    ),
    max_size=20,
)


@given(OPS)
def test_flash_behaves_like_a_nor_model(ops: list[tuple[str, int, object]]) -> None:
    size = 4 * SECTOR_SIZE
    model = bytearray(b"\xff" * size)
    with tempfile.TemporaryDirectory() as directory:
        flash = Flash(Path(directory) / "f.bin", size)
        for op, first, second in ops:
            if op == "write":
                assert isinstance(second, bytes)
                data = second[: size - first]
                flash.write(first, data)
                for i, byte in enumerate(data):
                    model[first + i] &= byte
            else:
                assert isinstance(second, int)
                count = min(second, 4 - first)
                flash.erase(first * SECTOR_SIZE, count * SECTOR_SIZE)
                model[first * SECTOR_SIZE : (first + count) * SECTOR_SIZE] = b"\xff" * (count * SECTOR_SIZE)
        assert flash.read(0, size) == bytes(model)


def test_a_power_cut_mid_write_leaves_half_the_bytes_programmed(tmp_path: Path) -> None:
    flash = Flash(tmp_path / "flash.bin", on_point=cut_at(POINT_WRITE_TORN))
    with pytest.raises(PowerCut):
        flash.write(0x5000, b"\x00" * 8)
    assert Flash(tmp_path / "flash.bin").read(0x5000, 8) == b"\x00" * 4 + b"\xff" * 4


def test_a_power_cut_mid_erase_leaves_the_later_sectors_untouched(tmp_path: Path) -> None:
    Flash(tmp_path / "flash.bin").write(0, b"\x00" * (2 * SECTOR_SIZE))
    flash = Flash(tmp_path / "flash.bin", on_point=cut_at(POINT_ERASE_TORN))
    with pytest.raises(PowerCut):
        flash.erase(0, 2 * SECTOR_SIZE)
    after = Flash(tmp_path / "flash.bin")
    assert after.read(0, SECTOR_SIZE) == b"\xff" * SECTOR_SIZE
    assert after.read(SECTOR_SIZE, SECTOR_SIZE) == b"\x00" * SECTOR_SIZE


# --- partitions and images -------------------------------------------------------------------------


def test_a_blank_chip_has_no_partitions(flash: Flash) -> None:
    assert flash.partition_table().partitions == ()
    with pytest.raises(ImageError):
        flash.ota_slot(0)
    with pytest.raises(ImageError):
        flash.otadata()


def test_factory_programming_writes_table_blank_otadata_and_the_image_in_ota_0(flash: Flash) -> None:
    image = build_firmware_image("reference-1.0.4", "1.0.4")
    flash.write(0xD000, b"\x00" * 32)  # stale otadata from an earlier life
    factory_program(flash, image)
    table = flash.partition_table()
    assert table == default_partition_table(FLASH_SIZE)
    assert flash.otadata() == b"\xff" * 0x2000
    slot0 = flash.read_partition(flash.ota_slot(0))
    assert firmware_identity(verify_app_image(slot0)) == ("reference-1.0.4", "1.0.4")


def test_an_image_is_rewritten_cleanly_over_an_older_one(flash: Flash) -> None:
    factory_program(flash, build_firmware_image("reference-1.0.4", "1.0.4", size=8192))
    newer = build_firmware_image("spec", "2.0.0")
    flash.write_app_image(0, newer)  # erases first, so no bits of the old image survive
    assert verify_app_image(flash.read_partition(flash.ota_slot(0))).raw == newer


def test_an_image_larger_than_its_slot_is_refused(flash: Flash) -> None:
    factory_program(flash, build_firmware_image("spec", "1.0.0"))
    slot = flash.ota_slot(1)
    with pytest.raises(FlashError):
        flash.write_app_image(1, b"\xe9" * (slot.size + 16))
    with pytest.raises(FlashError):
        flash.write_partition(slot, slot.size - 1, b"\x00\x00")
    with pytest.raises(ImageError):
        flash.ota_slot(2)
