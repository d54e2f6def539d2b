"""Provision a board (or an emulated one): its settings into an NVS partition image, flashed with esptool.

    image = nvs_image(BoardSettings(cloud_url=..., inverter_url=..., device_id=..., key=...))
    result = await provision(port, settings, FlashOptions(...))   # writes it at the nvs partition

The image is written by Espressif's own generator (esp-idf-nvs-partition-gen), in the `provision`
namespace the firmware reads at boot (device_emulator/nvs_partition.py names the keys), so what a real
board and the emulator read is the same binary. It goes to the nvs partition of the EcoWatt partition
table (protocol/partition_table.py `default_partition_table`), whole: provisioning replaces whatever
the partition held.

The scenario's poll and upload periods (`poll_s`, `upload_s`, optional) go in the firmware's own `freq`
namespace (device_emulator/nvs.py: POLL_FREQ, UPLOAD_FREQ, microseconds), where the firmware reads its
periods at boot and a remote configuration later overwrites them, as on a board that was configured
before.
"""

from __future__ import annotations

import dataclasses
import io
from dataclasses import dataclass
from urllib.parse import urlsplit

from esp_idf_nvs_partition_gen import nvs_partition_gen as nvs_gen

from device_emulator.nvs import POLL_FREQ, UPLOAD_FREQ, NvsKey
from device_emulator.nvs_partition import (
    CLOUD_URL_KEY,
    DEVICE_ID_KEY,
    INVERTER_URL_KEY,
    PAGE_SIZE,
    PROVISION_NAMESPACE,
    PSK_KEY,
)
from harness.flashing import FlashOptions, FlashResult, ProgressHook, flash_image
from protocol.envelope import PSK_SIZE
from protocol.partition_table import DataSubtype, Partition, PartitionType, default_partition_table

MAX_TEXT = 1000  # bytes of a URL or device id: far below NVS's 4000-byte string limit


@dataclass(frozen=True)
class BoardSettings:
    """What provisioning gives a board. ValueError on construction when a value cannot be stored."""

    cloud_url: str
    inverter_url: str
    device_id: str
    key: bytes
    poll_s: float | None = None  # None: the firmware's default period
    upload_s: float | None = None

    def __post_init__(self) -> None:
        for name in ("cloud_url", "inverter_url"):
            url = getattr(self, name)
            parts = urlsplit(url)
            if not parts.scheme or not parts.hostname:
                raise ValueError(f"{name} is not a URL: {url!r}")
        for name in ("cloud_url", "inverter_url", "device_id"):
            value = getattr(self, name)
            if not value or not value.isprintable() or len(value.encode()) > MAX_TEXT:
                raise ValueError(f"{name} must be 1..{MAX_TEXT} bytes of printable text")
        if "/" in self.device_id:
            raise ValueError("a device id cannot contain '/' (it is a URL path segment)")
        if len(self.key) != PSK_SIZE:
            raise ValueError(f"the key is {PSK_SIZE} bytes ({2 * PSK_SIZE} hex digits)")
        for name, key in (("poll_s", POLL_FREQ), ("upload_s", UPLOAD_FREQ)):
            value = getattr(self, name)
            if value is not None and not _micros(key, value):
                raise ValueError(f"{name} must be at least {(key.minimum or 1) / 1e6:g} s, not {value!r}")

    def periods(self) -> list[tuple[NvsKey, int]]:
        """The periods to store, in µs, as the firmware keeps them."""
        chosen = ((POLL_FREQ, self.poll_s), (UPLOAD_FREQ, self.upload_s))
        return [(key, _micros(key, value)) for key, value in chosen if value is not None]


def _micros(key: NvsKey, seconds: float) -> int:
    """`seconds` in whole µs, 0 when the firmware would refuse it (below the key's minimum)."""
    try:
        micros = round(seconds * 1_000_000)
    except (TypeError, ValueError, OverflowError):
        return 0
    return micros if micros >= max(key.minimum or 1, 1) and micros < 1 << 63 else 0


def nvs_partition() -> Partition:
    """The nvs partition of the EcoWatt partition table."""
    found = default_partition_table().find(PartitionType.DATA, DataSubtype.NVS)
    assert found is not None, "the EcoWatt partition table has an nvs partition"
    return found


def nvs_image(settings: BoardSettings, size: int | None = None) -> bytes:
    """The NVS partition image (`size` bytes, default the nvs partition's) holding `settings`."""
    size = nvs_partition().size if size is None else size
    if size < 3 * PAGE_SIZE or size % PAGE_SIZE:
        raise ValueError(f"an NVS partition is at least 3 pages of {PAGE_SIZE} bytes")
    out = io.BytesIO()
    # The generator keeps the last page free for the driver's garbage collection: it is given one
    # page less than the partition, as its own command line does.
    nvs = nvs_gen.nvs_open(out, size - PAGE_SIZE, nvs_gen.Page.VERSION2)
    nvs_gen.write_entry(nvs, PROVISION_NAMESPACE, "namespace", "", "")
    for key, value in (
        (CLOUD_URL_KEY, settings.cloud_url),
        (INVERTER_URL_KEY, settings.inverter_url),
        (DEVICE_ID_KEY, settings.device_id),
    ):
        nvs_gen.write_entry(nvs, key, "data", "string", value)
    nvs_gen.write_entry(nvs, PSK_KEY, "data", "hex2bin", settings.key.hex())
    namespace = None
    for key, micros in settings.periods():
        if key.namespace != namespace:
            namespace = key.namespace
            nvs_gen.write_entry(nvs, namespace, "namespace", "", "")
        nvs_gen.write_entry(nvs, key.key, "data", key.type.name.lower(), str(micros))
    nvs_gen.nvs_close(nvs)
    image = out.getvalue()
    assert len(image) == size, (len(image), size)
    return image


async def provision(
    port: str,
    settings: BoardSettings,
    options: FlashOptions | None = None,
    *,
    progress: ProgressHook | None = None,
) -> FlashResult:
    """Flash `settings` to the board on `port` (esptool; FlashingFailed names the port). `options`
    set how esptool resets and talks to it; the offset is always the nvs partition's."""
    options = dataclasses.replace(options or FlashOptions(), offset=nvs_partition().offset)
    return await flash_image(port, nvs_image(settings), options, progress=progress)
