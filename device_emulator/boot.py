"""The second-stage bootloader: which app runs after a reset, and as what firmware.

It reads the partition table and otadata from flash, validates the app in every OTA slot as the
bootloader does (image magic, XOR checksum, appended SHA-256, via protocol.esp_image), and lets
protocol.otadata.boot pick the slot: the one otadata selects if its image verifies, else the next one
that does. Rollback support is on, as in an ESP-IDF build with CONFIG_BOOTLOADER_APP_ROLLBACK_ENABLE:
a slot switched to with state NEW boots as PENDING_VERIFY, and an app still PENDING_VERIFY at the next
reset (it never confirmed itself) is ABORTED, so the previous slot boots. A firmware that switches
slots without rollback states (1.0.4: state UNDEFINED) is never rolled back, exactly as on the board.

The image's app description says which firmware model runs: profile and version (`firmware_identity`).
An image that verifies but is not an EcoWatt build cannot be emulated, so it counts as not bootable.
"""

from __future__ import annotations

from dataclasses import dataclass

from device_emulator.flash import Flash
from protocol.errors import ImageError
from protocol.esp_image import AppImage, FirmwareIdentity, firmware_identity, verify_app_image
from protocol.otadata import OtaState, boot, read_otadata
from protocol.partition_table import Partition


@dataclass(frozen=True)
class SlotCheck:
    """The bootloader's verdict on one OTA slot."""

    slot: int
    partition: Partition
    image: AppImage | None  # None when it does not verify
    identity: FirmwareIdentity | None
    reason: str = ""  # why it is not bootable

    @property
    def bootable(self) -> bool:
        return self.image is not None and self.identity is not None


@dataclass(frozen=True)
class BootDecision:
    slot: int
    partition: Partition
    identity: FirmwareIdentity  # (profile, version) of the firmware model to run
    image: AppImage
    state: int | None  # the booted slot's otadata state after the bootloader ran (an OtaState value)
    selected: int | None  # the slot otadata asked for (None: blank otadata)
    checks: tuple[SlotCheck, ...]
    log: tuple[tuple[str, str], ...]  # (tag, message) console lines, ESP-IDF style

    @property
    def pending_verify(self) -> bool:
        """The app runs on probation: it must confirm itself (mark valid) or be rolled back."""
        return self.state == OtaState.PENDING_VERIFY

    @property
    def fell_back(self) -> bool:
        """otadata asked for another slot, which could not boot."""
        return self.selected is not None and self.selected != self.slot


def check_slot(flash: Flash, slot: int, partition: Partition) -> SlotCheck:
    try:
        image = verify_app_image(flash.read_partition(partition))
        identity = firmware_identity(image)
    except ImageError as error:
        return SlotCheck(slot, partition, None, None, str(error))
    return SlotCheck(slot, partition, image, identity)


def boot_device(flash: Flash) -> BootDecision:
    """Run the bootloader on `flash`: writes its otadata updates and returns what boots.

    ImageError when nothing can boot (bad partition table, no OTA slots, no valid image); a real
    chip would print the error and reset forever.
    """
    table = flash.partition_table()
    apps = table.ota_apps
    if not apps:
        raise ImageError("the partition table has no OTA app slots", None)
    checks = tuple(check_slot(flash, slot, partition) for slot, partition in enumerate(apps))
    before = flash.otadata()
    selected = read_otadata(before).boot_slot(len(apps))
    result = boot(before, [check.bootable for check in checks], rollback=True)
    if result.otadata != before:
        flash.write_otadata(result.otadata)
    slot = result.slot
    if slot is None:  # only possible with a factory partition, which EcoWatt tables do not have
        raise ImageError("no bootable OTA app", None)
    booted = checks[slot]
    assert booted.image is not None and booted.identity is not None

    log: list[tuple[str, str]] = []
    if selected is not None and not checks[selected].bootable:
        log.append(("boot", f"OTA app partition slot {selected} is not bootable: {checks[selected].reason}"))
    state = read_otadata(result.otadata).state_of(slot, len(apps))
    if selected is not None and read_otadata(before).state_of(selected, len(apps)) == OtaState.PENDING_VERIFY:
        log.append(("boot", f"slot {selected} was never confirmed: rolled back"))
    log.append(("boot", f"Loaded app from partition at offset {booted.partition.offset:#x}"))
    log.append(
        ("boot", f"{booted.identity.profile} firmware {booted.identity.version} ({booted.partition.label})")
    )
    return BootDecision(
        slot=slot,
        partition=booted.partition,
        identity=booted.identity,
        image=booted.image,
        state=state,
        selected=selected,
        checks=checks,
        log=tuple(log),
    )
