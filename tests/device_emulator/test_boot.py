"""The bootloader: slot choice per otadata, image validation, fallback and the rollback states."""

from __future__ import annotations

import tempfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_emulator.boot import boot_device
from device_emulator.context import PowerCut
from device_emulator.flash import POINT_WRITE_TORN, Flash, factory_program
from protocol.errors import ImageError
from protocol.esp_image import AppDescription, build_app_image, build_firmware_image
from protocol.otadata import OtaState

OLD = build_firmware_image("reference-1.0.4", "1.0.4")
NEW = build_firmware_image("spec", "1.0.5")


@pytest.fixture
def flash(tmp_path: Path) -> Flash:
    flash = Flash(tmp_path / "flash.bin")
    factory_program(flash, OLD)
    return flash


def install(flash: Flash, image: bytes, *, rollback: bool) -> None:
    """What an OTA update leaves: the image in the passive slot and otadata pointing at it."""
    flash.write_app_image(1, image)
    flash.set_boot_slot(1, rollback=rollback)


def test_a_factory_fresh_device_boots_ota_0_and_records_it(flash: Flash) -> None:
    decision = boot_device(flash)
    assert (decision.slot, decision.identity) == (0, ("reference-1.0.4", "1.0.4"))
    assert decision.image.raw == OLD
    assert flash.ota_state().active is not None  # the first boot wrote a record for ota_0
    assert boot_device(flash).slot == 0


def test_the_slot_otadata_selects_boots_with_its_own_profile_and_version(flash: Flash) -> None:
    boot_device(flash)
    install(flash, NEW, rollback=False)
    decision = boot_device(flash)
    assert (decision.slot, decision.identity) == (1, ("spec", "1.0.5"))
    assert decision.partition.label == "ota_1"


def test_without_rollback_states_a_switched_image_stays_forever(flash: Flash) -> None:
    install(flash, NEW, rollback=False)  # firmware 1.0.4: state UNDEFINED, nothing to confirm
    for _ in range(3):
        decision = boot_device(flash)
        assert decision.slot == 1
        assert not decision.pending_verify


@pytest.mark.parametrize("rollback", [False, True])
def test_a_corrupt_image_in_the_passive_slot_is_refused_and_the_previous_one_boots(
    flash: Flash, rollback: bool
) -> None:
    boot_device(flash)
    corrupt = bytearray(NEW)
    corrupt[300] ^= 0x01  # one bit in the app data: checksum and SHA-256 no longer match
    install(flash, bytes(corrupt), rollback=rollback)
    decision = boot_device(flash)
    assert decision.slot == 0
    assert decision.identity.version == "1.0.4"
    assert decision.fell_back
    assert "not bootable" in " ".join(message for _, message in decision.log)


def test_a_valid_image_that_is_not_ecowatt_firmware_cannot_run(flash: Flash) -> None:
    foreign = build_app_image(AppDescription(version="9.9", project_name="blink"))
    install(flash, foreign, rollback=False)
    decision = boot_device(flash)
    assert decision.slot == 0
    assert "not an EcoWatt" in decision.checks[1].reason


def test_rollback_states_new_pending_verify_valid(flash: Flash) -> None:
    boot_device(flash)
    install(flash, NEW, rollback=True)
    assert flash.ota_state().active.state == OtaState.NEW  # type: ignore[union-attr]
    first = boot_device(flash)
    assert first.slot == 1 and first.pending_verify
    flash.mark_app_valid()  # the new firmware confirmed itself
    for _ in range(2):
        again = boot_device(flash)
        assert again.slot == 1 and again.state == OtaState.VALID


def test_an_image_that_never_confirms_is_rolled_back_at_the_next_reset(flash: Flash) -> None:
    boot_device(flash)
    install(flash, NEW, rollback=True)
    assert boot_device(flash).pending_verify
    decision = boot_device(flash)  # reset before mark_app_valid
    assert decision.slot == 0 and decision.identity.version == "1.0.4"
    assert decision.fell_back
    assert flash.ota_state().state_of(1, 2) == OtaState.ABORTED
    assert boot_device(flash).slot == 0  # and it stays rolled back


def test_an_image_marked_invalid_is_left_for_the_previous_one(flash: Flash) -> None:
    boot_device(flash)
    install(flash, NEW, rollback=True)
    boot_device(flash)
    flash.mark_app_invalid()  # the self-test failed
    assert boot_device(flash).slot == 0
    assert flash.ota_state().state_of(1, 2) == OtaState.INVALID


def test_a_power_cut_while_switching_slots_leaves_the_old_slot_booting(tmp_path: Path) -> None:
    flash = Flash(tmp_path / "flash.bin")
    factory_program(flash, OLD)
    boot_device(flash)
    flash.write_app_image(1, NEW)

    def cut_otadata_write(point: str) -> None:
        if point == POINT_WRITE_TORN:
            raise PowerCut(point)

    flash.on_point = cut_otadata_write
    with pytest.raises(PowerCut):
        flash.set_boot_slot(1, rollback=True)
    assert boot_device(Flash(tmp_path / "flash.bin")).slot == 0


def test_nothing_to_boot_is_an_image_error(tmp_path: Path) -> None:
    blank = Flash(tmp_path / "blank.bin")
    with pytest.raises(ImageError):
        boot_device(blank)
    factory_program(blank, OLD)
    blank.erase_partition(blank.ota_slot(0))
    with pytest.raises(ImageError):
        boot_device(blank)


# The promise of the boot path: whatever otadata and the passive slot hold, a valid image boots.
@given(
    otadata=st.binary(min_size=64, max_size=64),
    passive=st.binary(max_size=64),
    flip=st.none() | st.integers(0, 2000),
)
def test_whatever_otadata_and_the_passive_slot_hold_a_valid_image_boots(
    otadata: bytes, passive: bytes, flip: int | None
) -> None:
    with tempfile.TemporaryDirectory() as directory:
        flash = Flash(Path(directory) / "flash.bin")
        factory_program(flash, OLD)
        damaged = bytearray(NEW)
        if flip is not None:
            damaged[flip % len(damaged)] ^= 0x40
        flash.write_app_image(1, bytes(damaged) + passive)
        raw = bytearray(b"\xff" * 0x2000)
        raw[0:32], raw[0x1000:0x1020] = otadata[:32], otadata[32:]
        flash.write_otadata(bytes(raw))
        decision = boot_device(flash)
        assert decision.image.valid
        assert decision.image.raw in (OLD, NEW)
