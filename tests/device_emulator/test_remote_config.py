"""Remote configuration per profile, against a stand-in cloud: 1.0.4 stores and applies only after a
reboot and never acknowledges; spec validates, persists, applies after the next upload and
acknowledges accepted / rejected / unchanged, idempotently and across power cuts."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest

from device_emulator.nvs import CONFIG_PENDING_ACK, POLL_FREQ, REG_COUNT, REGS, UPLOAD_FREQ
from device_emulator.remote_config import POINT_PERSISTED, RemoteConfig
from protocol.config_message import ConfigReply, DeviceSettings, Rejection
from protocol.registers import DEFAULT_SELECTION
from tests.device_emulator.component_board import Board, StandInCloud, run_until_cut

REFERENCE, SPEC = "reference-1.0.4", "spec"
DEFAULTS = {
    REFERENCE: DeviceSettings(2, 15, DEFAULT_SELECTION),
    SPEC: DeviceSettings(2, 900, DEFAULT_SELECTION),
}
# The LEGACY server's example: poll every 9 s, registers 0..9 (upload flagged off).
EXAMPLE = ConfigReply(True, True, 9, False, 11, True, 10, 1023)


def board_for(tmp_path: Path, session: aiohttp.ClientSession, cloud: StandInCloud, profile: str) -> Board:
    return Board(tmp_path, session, cloud.url).factory(profile, "1.0.4" if profile == REFERENCE else "1.1.0")


def config(board: Board) -> RemoteConfig:
    return RemoteConfig(board.boot())


@pytest.mark.parametrize("profile", [REFERENCE, SPEC])
async def test_every_check_posts_the_firmware_request_and_no_change_means_nothing(
    tmp_path, session, cloud, profile: str
) -> None:
    board = board_for(tmp_path, session, cloud, profile)
    remote = config(board)
    assert remote.settings == DEFAULTS[profile]
    assert await remote.check() is None
    assert [r.device_id for r in cloud.config_requests] == ["ESP32_EcoWatt_Smart"]
    assert remote.apply_pending() is None
    assert cloud.acks == []
    assert board.ctx is not None and board.ctx.nvs.namespaces() == []


async def test_reference_stores_but_applies_only_after_a_reboot(tmp_path, session, cloud) -> None:
    board = board_for(tmp_path, session, cloud, REFERENCE)
    remote = config(board)
    cloud.config_replies.append(EXAMPLE)
    assert await remote.check() is None  # no acknowledgement
    nvs = board.ctx.nvs  # type: ignore[union-attr]
    assert POLL_FREQ.read(nvs) == 9_000_000 and REGS.read(nvs) == 1023 and REG_COUNT.read(nvs) == 10
    assert nvs.entry(UPLOAD_FREQ.namespace, UPLOAD_FREQ.key) is None  # not flagged: not stored
    assert remote.apply_pending() is None  # the inverted flag: never at run time
    assert remote.settings == DEFAULTS[REFERENCE]
    assert cloud.acks == []
    after_reboot = config(board)
    assert after_reboot.settings == DeviceSettings(9, 15, tuple(range(10)))


async def test_reference_stores_an_inconsistent_register_count(tmp_path, session, cloud) -> None:
    board = board_for(tmp_path, session, cloud, REFERENCE)
    cloud.config_replies.append(ConfigReply(True, regs_changed=True, regs_count=5, regs=0b111))
    await config(board).check()
    # 3 registers selected, 5 claimed: after a reboot the layout is padded with the invalid id -1.
    assert config(board).settings.registers == (0, 1, 2, -1, -1)


async def test_spec_applies_after_the_next_upload_and_acknowledges(tmp_path, session, cloud) -> None:
    board = board_for(tmp_path, session, cloud, SPEC)
    remote = config(board)
    cloud.config_replies.append(EXAMPLE)
    ack = await remote.check()
    assert ack is not None
    assert ack.accepted == ("poll_interval", "registers") and ack.unchanged == ("upload_interval",)
    assert cloud.acks == [ack]
    assert remote.settings == DEFAULTS[SPEC]  # not yet: after the next upload
    applied = remote.apply_pending()
    assert applied == DeviceSettings(9, 900, tuple(range(10))) == remote.settings
    assert remote.apply_pending() is None  # once
    assert board.ctx is not None and CONFIG_PENDING_ACK.read(board.ctx.nvs) is None
    assert config(board).settings == applied  # and persisted


async def test_spec_rejects_invalid_values_with_a_reason_and_keeps_the_rest(tmp_path, session, cloud) -> None:
    board = board_for(tmp_path, session, cloud, SPEC)
    remote = config(board)
    # upload 0 s is refused; 3 registers but regsCount 5 is refused; poll 30 s is fine.
    cloud.config_replies.append(ConfigReply(True, True, 30, True, 0, True, 5, 0b111))
    ack = await remote.check()
    assert ack is not None and ack.accepted == ("poll_interval",)
    assert [r.field for r in ack.rejected] == ["upload_interval", "registers"]
    assert all(isinstance(r, Rejection) and r.reason for r in ack.rejected)
    assert remote.apply_pending() == DeviceSettings(30, 900, DEFAULT_SELECTION)
    nvs = board.ctx.nvs  # type: ignore[union-attr]
    assert nvs.entry(UPLOAD_FREQ.namespace, UPLOAD_FREQ.key) is None and nvs.keys(REGS.namespace) == {}


async def test_spec_repeating_a_configuration_is_acknowledged_unchanged_and_writes_nothing(
    tmp_path, session, cloud
) -> None:
    board = board_for(tmp_path, session, cloud, SPEC)
    remote = config(board)
    cloud.config_replies.append(EXAMPLE)
    await remote.check()
    remote.apply_pending()
    settings_before = board.ctx.nvs.snapshot()  # type: ignore[union-attr]
    cloud.config_replies.append(EXAMPLE)
    ack = await remote.check()
    assert ack is not None and ack.accepted == () and ack.rejected == ()
    assert set(ack.unchanged) == {"poll_interval", "upload_interval", "registers"}
    assert board.ctx.nvs.snapshot() == settings_before  # type: ignore[union-attr]
    assert remote.apply_pending() is None
    assert len(cloud.acks) == 2


async def test_spec_an_undelivered_ack_is_resent_until_the_cloud_takes_it(tmp_path, session, cloud) -> None:
    board = board_for(tmp_path, session, cloud, SPEC)
    remote = config(board)
    cloud.ack_status = 503
    cloud.config_replies.append(EXAMPLE)
    await remote.check()
    assert cloud.acks == []
    cloud.ack_status = 200
    await config(board).check()  # even after a reboot: the ack waits in NVS
    assert len(cloud.acks) == 1 and cloud.acks[0].accepted == ("poll_interval", "registers")


async def test_spec_a_power_cut_after_persisting_keeps_the_configuration_and_its_ack(
    tmp_path, session, cloud
) -> None:
    board = board_for(tmp_path, session, cloud, SPEC)
    board.cut(POINT_PERSISTED)
    cloud.config_replies.append(EXAMPLE)
    assert await run_until_cut(config(board).check) == POINT_PERSISTED
    remote = config(board)
    assert remote.settings == DeviceSettings(9, 900, tuple(range(10)))  # accepted is never lost
    await remote.check()
    assert [a.accepted for a in cloud.acks] == [("poll_interval", "registers")]


@pytest.mark.parametrize("profile", [REFERENCE, SPEC])
async def test_a_reply_longer_than_the_firmware_buffer_is_ignored(
    tmp_path, session, cloud, profile: str
) -> None:
    board = board_for(tmp_path, session, cloud, profile)
    remote = config(board)
    padded = EXAMPLE.to_json()[:-1] + b',"note":"' + b"x" * 1100 + b'"}'
    cloud.config_replies.append(padded)  # cut at 1023 bytes: not JSON any more
    assert await remote.check() is None
    assert board.ctx is not None and board.ctx.nvs.namespaces() == []
    assert cloud.acks == []


@pytest.mark.parametrize(
    "body", [b"", b"[]", b"not json", b'{"Changed":1,"pollFreqChanged":true,"newPollTimer":3}']
)
async def test_replies_the_firmware_does_not_act_on(tmp_path, session, cloud, body: bytes) -> None:
    for profile in (REFERENCE, SPEC):
        board = board_for(tmp_path / profile, session, cloud, profile)
        cloud.config_replies.append(body)
        assert await config(board).check() is None
        assert board.ctx is not None and board.ctx.nvs.namespaces() == []


async def test_no_reply_at_all_is_survived(tmp_path, session) -> None:
    board = Board(tmp_path, session, "http://127.0.0.1:9").factory(SPEC, "1.1.0")
    assert await config(board).check() is None
