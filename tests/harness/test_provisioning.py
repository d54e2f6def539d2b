"""What provisioning writes: the board's settings and, when a scenario sets them, its poll and upload
periods, in the NVS partition image a real ESP-IDF firmware reads (and the emulator reads back)."""

from __future__ import annotations

import pytest

from device_emulator.nvs import POLL_FREQ, UPLOAD_FREQ, NvsType
from device_emulator.nvs_partition import provisioned, read_nvs_partition
from harness.provisioning import BoardSettings, nvs_image, nvs_partition

KEY = bytes(range(32))


def settings(**periods: float | None) -> BoardSettings:
    return BoardSettings("http://10.0.0.2:5001", "http://10.0.0.3:8080", "site-7-gw", KEY, **periods)


def test_the_periods_go_where_the_firmware_keeps_them_in_microseconds() -> None:
    image = nvs_image(settings(poll_s=45, upload_s=900))
    assert len(image) == nvs_partition().size
    contents = read_nvs_partition(image)
    poll = contents.namespaces[POLL_FREQ.namespace][POLL_FREQ.key]
    upload = contents.namespaces[UPLOAD_FREQ.namespace][UPLOAD_FREQ.key]
    assert (poll.type, poll.value) == (NvsType.U64, 45_000_000)
    assert (upload.type, upload.value) == (NvsType.U64, 900_000_000)
    found = provisioned(contents)
    assert (found.device_id, found.key, found.cloud_url) == ("site-7-gw", KEY, "http://10.0.0.2:5001")
    assert not contents.damage


def test_without_periods_the_firmware_keeps_its_own() -> None:
    contents = read_nvs_partition(nvs_image(settings(poll_s=0.5)))
    assert contents.namespace(POLL_FREQ.namespace) == {POLL_FREQ.key: 500_000}  # no upload period written
    assert POLL_FREQ.namespace not in read_nvs_partition(nvs_image(settings())).namespaces


@pytest.mark.parametrize("period", [0.0, 0.05, -1.0, float("nan"), float("inf")])
def test_a_period_the_firmware_would_refuse_is_refused_here(period: float) -> None:
    with pytest.raises(ValueError, match="poll_s must be at least 0.1 s"):
        settings(poll_s=period)
