"""Remote configuration: the firmware's flat reply, what 1.0.4 stores, the spec's validated ack."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.config_message import (
    POLL,
    REGISTERS,
    UPLOAD,
    ConfigAck,
    ConfigReply,
    DeviceSettings,
    Rejection,
    StoredConfig,
    config_request,
    firmware_apply,
    parse_config_ack,
    parse_config_reply,
    parse_config_request,
    parse_config_update,
    review_config,
)
from protocol.errors import DocumentError, EcoWattError
from protocol.registers import DEFAULT_SELECTION, addresses_from_mask

# LEGACY's documented settings object (firmware-protocol.md §5.2).
LEGACY_EXAMPLE = (
    b'{"Changed":true,"pollFreqChanged":true,"newPollTimer":9,"uploadFreqChanged":false,'
    b'"newUploadTimer":11,"regsChanged":false,"regsCount":10,"regs":1023}'
)


def test_the_device_request_is_the_firmwares_bytes() -> None:
    body = config_request("ESP32_EcoWatt_Smart", 30512)
    assert body == b'{"device_id":"ESP32_EcoWatt_Smart","timestamp":30512}'
    assert parse_config_request(body).device_id == "ESP32_EcoWatt_Smart"


@pytest.mark.parametrize(
    "body", [b'{"device_id":"x"}', b'{"timestamp":1}', b'{"device_id":"","timestamp":1}']
)
def test_a_request_without_id_or_timestamp_is_refused(body: bytes) -> None:
    with pytest.raises(DocumentError):
        parse_config_request(body)


def test_the_legacy_example_reads_and_writes_back_identically() -> None:
    reply = parse_config_reply(LEGACY_EXAMPLE)
    assert reply == ConfigReply(True, True, 9, False, 11, False, 10, 1023)
    assert reply.to_json() == LEGACY_EXAMPLE


def test_the_firmware_reads_sloppy_values_as_off_or_zero() -> None:
    reply = parse_config_reply(b'{"Changed":1,"pollFreqChanged":true,"newPollTimer":0.5,"regs":"7"}')
    assert (reply.changed, reply.new_poll_timer, reply.regs) == (False, 0, 0)


def test_firmware_1_0_4_stores_only_what_its_few_checks_allow() -> None:
    empty = StoredConfig()
    assert (
        firmware_apply(ConfigReply(changed=False, poll_freq_changed=True, new_poll_timer=5), empty) == empty
    )
    stored = firmware_apply(ConfigReply(True, True, 5, True, 0, True, 12, 0b11), empty)
    assert stored == StoredConfig(poll_us=5_000_000)  # upload 0 refused, count 12 refused
    # No check that the count matches the mask (the firmware then pads with an invalid id, §2.2).
    assert firmware_apply(ConfigReply(True, regs_changed=True, regs_count=3, regs=0b1), empty).reg_count == 3
    # A string "5" reads as 0, and 0 is refused: nothing stored.
    assert (
        firmware_apply(
            parse_config_reply(b'{"Changed":true,"pollFreqChanged":true,"newPollTimer":"5"}'), empty
        )
        == empty
    )


def test_the_spec_device_applies_valid_changes_and_says_why_it_rejects_others() -> None:
    current = DeviceSettings(poll_interval_s=2, upload_interval_s=15, registers=DEFAULT_SELECTION)
    reply = ConfigReply(True, True, 5, True, 0, True, 2, (1 << 10) | 1)
    review = review_config(reply, current)
    assert review.settings == DeviceSettings(5, 15, DEFAULT_SELECTION)
    assert review.ack.accepted == (POLL,)
    assert [r.field for r in review.ack.rejected] == [UPLOAD, REGISTERS]
    assert all(r.reason for r in review.ack.rejected)


def test_the_same_value_again_is_unchanged_and_registers_take_ascending_order() -> None:
    current = DeviceSettings(2, 15, (0, 1, 5, 9, 6, 7))
    same = ConfigReply.offer(current, poll_interval_s=2, registers=[9, 7, 6, 5, 1, 0])
    assert review_config(same, current).ack == ConfigAck(unchanged=(POLL, UPLOAD, REGISTERS))
    new = ConfigReply.offer(current, registers=[9, 0])
    review = review_config(new, current)
    assert review.settings.registers == (0, 9)
    assert review.ack.accepted == (REGISTERS,)


def test_nothing_applies_without_the_master_switch() -> None:
    current = DeviceSettings()
    reply = ConfigReply(changed=False, poll_freq_changed=True, new_poll_timer=99)
    assert review_config(reply, current) == review_config(ConfigReply(), current)
    assert review_config(reply, current).settings == current


def test_a_register_count_that_disagrees_with_the_mask_is_rejected() -> None:
    review = review_config(ConfigReply(True, regs_changed=True, regs_count=3, regs=0b1), DeviceSettings())
    assert review.ack.rejected[0].field == REGISTERS


def test_offer_carries_current_values_with_flags_off() -> None:
    reply = ConfigReply.offer(DeviceSettings(3, 30, (0, 9)), upload_interval_s=60)
    assert reply.to_dict() == {
        "Changed": True,
        "pollFreqChanged": False,
        "newPollTimer": 3,
        "uploadFreqChanged": True,
        "newUploadTimer": 60,
        "regsChanged": False,
        "regsCount": 2,
        "regs": 0b1000000001,
    }
    assert ConfigReply.offer(DeviceSettings()).changed is False


def test_the_ack_round_trips_in_the_course_shape() -> None:
    ack = ConfigAck(
        accepted=(POLL,), rejected=(Rejection(UPLOAD, "must be 1..3600 s"),), unchanged=(REGISTERS,)
    )
    assert json.loads(ack.to_json()) == {
        "config_ack": {
            "accepted": ["poll_interval"],
            "rejected": [{"field": "upload_interval", "reason": "must be 1..3600 s"}],
            "unchanged": ["registers"],
        }
    }
    assert parse_config_ack(ack.to_json()) == ack


@pytest.mark.parametrize(
    "body",
    [
        b'{"config_ack":{"accepted":["colour"],"rejected":[],"unchanged":[]}}',
        b'{"config_ack":{"accepted":[],"rejected":["poll_interval"],"unchanged":[]}}',
        b'{"config_ack":{"accepted":[],"unchanged":[]}}',
    ],
)
def test_malformed_acks_are_document_errors(body: bytes) -> None:
    with pytest.raises(DocumentError):
        parse_config_ack(body)


def test_the_operator_update_takes_microseconds_and_register_names() -> None:
    update = parse_config_update(
        b'{"device_id":"d1","poll_frequency":5000000,"upload_frequency":60000000,"registers":["Pac","0"," Temp "]}'
    )
    assert (update.poll_interval_s, update.upload_interval_s, update.registers) == (5, 60, (9, 0, 7))


@pytest.mark.parametrize(
    ("body", "detail"),
    [
        ({"device_id": "d", "poll_frequency": 1_500_000}, "whole seconds"),
        ({"device_id": "d", "poll_frequency": 0}, "poll_frequency must be 1..3600 s"),
        ({"device_id": "d", "upload_frequency": 3_601_000_000}, "upload_frequency"),
        ({"device_id": "d", "registers": ["Vac1", "nope"]}, "no such register"),
        ({"device_id": "d", "registers": [42]}, "no such register"),
        ({"device_id": "d", "registers": ["٣"]}, "name or address"),  # a non-ASCII digit
        ({"device_id": "d", "registers": [0, 0]}, "twice"),
        ({"device_id": "d"}, "nothing to update"),
    ],
)
def test_invalid_operator_updates_list_their_problems(body: dict[str, Any], detail: str) -> None:
    with pytest.raises(DocumentError, match="Validation failed") as info:
        parse_config_update(json.dumps(body))
    assert any(detail in d for d in info.value.value)


def test_an_operator_update_without_device_id_is_refused() -> None:
    with pytest.raises(DocumentError, match="device_id is required"):
        parse_config_update(b'{"poll_frequency":5000000}')


@given(st.binary(max_size=300))
def test_arbitrary_bytes_into_every_config_parser_give_a_value_or_a_typed_error(data: bytes) -> None:
    for parse in (parse_config_request, parse_config_reply, parse_config_ack, parse_config_update):
        with contextlib.suppress(EcoWattError):
            parse(data)


reply_keys = st.sampled_from(
    [
        "Changed",
        "pollFreqChanged",
        "newPollTimer",
        "uploadFreqChanged",
        "newUploadTimer",
        "regsChanged",
        "regsCount",
        "regs",
    ]
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=4),
)


@given(st.dictionaries(reply_keys, json_scalars))
def test_any_reply_object_is_read_and_reviewed_without_crashing(fields: dict[str, Any]) -> None:
    reply = parse_config_reply(json.dumps(fields))
    review = review_config(reply, DeviceSettings())
    stored = firmware_apply(reply, StoredConfig())
    # Every field is accounted for exactly once, and what was applied is valid.
    ack = review.ack
    assert sorted([*ack.accepted, *ack.unchanged, *(r.field for r in ack.rejected)]) == sorted(
        [POLL, UPLOAD, REGISTERS]
    )
    assert 1 <= review.settings.poll_interval_s <= 3600 and review.settings.registers
    assert stored.poll_us != 0 and stored.upload_us != 0  # 1.0.4 never stores a zero interval


@given(st.integers(1, 2**10 - 1))
def test_an_accepted_register_selection_is_the_mask_in_ascending_order(mask: int) -> None:
    count = bin(mask).count("1")
    review = review_config(
        ConfigReply(True, regs_changed=True, regs_count=count, regs=mask), DeviceSettings(registers=(3,))
    )
    expected = tuple(addresses_from_mask(mask))
    assert review.settings.registers == expected
    assert review.ack.accepted == ((REGISTERS,) if expected != (3,) else ())
