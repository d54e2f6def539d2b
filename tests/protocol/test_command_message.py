"""Commands: the firmware's poll/result shapes, what it does with a command, server-side validation."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from protocol.command_message import (
    Command,
    CommandResult,
    LocalAction,
    Refused,
    RegisterWrite,
    SeedCommand,
    firmware_action,
    parse_command_result,
    parse_poll_reply,
    parse_poll_request,
    parse_queue_request,
    parse_seed_command_request,
    parse_seed_result,
    poll_reply,
    poll_request,
    power_to_percentage,
    seed_poll_reply,
    validate_command,
)
from protocol.errors import DocumentError, EcoWattError, RegisterError
from protocol.json_wire import dumps

SPEC_EXAMPLE = b'{"command":{"command_id":"CMD_1000_1729123456","command_type":"set_power","parameters":{"power_value":5000}}}'


def test_the_poll_and_its_reply_have_the_firmwares_shapes() -> None:
    assert poll_request("ESP32_EcoWatt_Smart") == b'{"device_id":"ESP32_EcoWatt_Smart"}'
    assert parse_poll_request(poll_request("dev")) == "dev"
    command = Command("CMD_1000_1729123456", "set_power", {"power_value": 5000})
    assert dumps(poll_reply(command)) == SPEC_EXAMPLE
    assert parse_poll_reply(SPEC_EXAMPLE) == command
    assert poll_reply(None) == {"message": "No pending commands"}
    assert parse_poll_reply(dumps(poll_reply(None))) is None


def test_a_garbage_command_is_executed_as_unknown_and_fails() -> None:
    command = parse_poll_reply(b'{"command":null}')
    assert command is not None
    assert isinstance(firmware_action(command), Refused)
    assert CommandResult.of(command, False).status == "failed"


def test_a_poll_reply_too_big_for_the_firmware_is_refused() -> None:
    with pytest.raises(DocumentError):
        poll_reply(Command("x" * 600, "set_power", {"power_value": 1}))


@pytest.mark.parametrize(
    ("command_type", "parameters", "action"),
    [
        ("set_power", {"power_value": 5000}, RegisterWrite(8, 50)),
        ("set_power", {"power_value": 5099}, RegisterWrite(8, 50)),  # integer division
        ("set_power", {"power_value": 20000}, RegisterWrite(8, 100)),  # clamped
        ("set_power", {"power_value": -5000}, RegisterWrite(8, 0)),
        ("set_power", {"power_value": 50.5}, RegisterWrite(8, 0)),  # the 1.0.4 quirk: non-integer = 0 %
        ("set_power_percentage", {"percentage": "50"}, RegisterWrite(8, 0)),
        ("set_power_percentage", {"percentage": 75}, RegisterWrite(8, 75)),
        ("set_power_percentage", {}, RegisterWrite(8, 0)),
        ("set_power", None, Refused("parameters missing")),
        (
            "write_register",
            {"register_address": 8, "value": 10},
            Refused("write_register is not implemented"),
        ),
        ("get_power_stats", None, LocalAction("get_power_stats")),
        ("reset_peripheral_stats", {}, LocalAction("reset_peripheral_stats")),
        ("reboot", {}, Refused("unknown command type")),
    ],
)
def test_what_firmware_1_0_4_does(
    command_type: str, parameters: dict[str, Any] | None, action: object
) -> None:
    assert firmware_action(Command("c1", command_type, parameters)) == action


@pytest.mark.parametrize(
    ("parameters", "expected"),
    [
        ({"register_address": 8, "value": 42}, RegisterWrite(8, 42)),
        ({"register_address": 9, "value": 42}, Refused),  # read-only
        ({"register_address": 8, "value": 101}, Refused),  # out of range
        ({"register_address": 77, "value": 1}, Refused),  # no such register
        ({"register_address": "8", "value": 1}, Refused),  # strict: no silent zero
    ],
)
def test_the_fixed_firmware_implements_write_register_with_checks(
    parameters: dict[str, Any], expected: object
) -> None:
    action = firmware_action(
        Command("c", "write_register", parameters), write_register=True, strict_parameters=True
    )
    if isinstance(expected, type):
        assert isinstance(action, expected)
    else:
        assert action == expected


def test_strict_parameters_refuse_instead_of_writing_zero() -> None:
    action = firmware_action(Command("c", "set_power", {"power_value": 50.5}), strict_parameters=True)
    assert isinstance(action, Refused)


@given(st.integers(-(2**40), 2**40))
def test_power_to_percentage_is_always_a_valid_register_value(power: int) -> None:
    percentage = power_to_percentage(power)
    assert 0 <= percentage <= 100
    if 0 <= power <= 10_000:
        assert percentage == power // 100


def test_the_result_is_the_firmwares_bytes() -> None:
    result = CommandResult.of(Command("CMD_1000_1", "set_power"), True)
    assert result.to_json() == (
        b'{"command_id":"CMD_1000_1","status":"completed","result":"Command set_power: executed successfully"}'
    )
    assert parse_command_result(result.to_json()) == result
    assert CommandResult.of(Command("c", "x"), False).result == "Command x: failed"


@pytest.mark.parametrize(
    "body",
    [
        b'{"command_id":"c","status":"done","result":"r"}',
        b'{"command_id":"c","status":"completed"}',
        b'{"status":"completed","result":"r"}',
    ],
)
def test_results_outside_the_legacy_rules_are_refused(body: bytes) -> None:
    with pytest.raises(DocumentError):
        parse_command_result(body)


@pytest.mark.parametrize(
    ("command_type", "parameters", "checked"),
    [
        ("set_power", {"power_value": 5000}, {"power_value": 5000}),
        ("set_power_percentage", {"percentage": 0}, {"percentage": 0}),
        ("write_register", {"register_address": 8, "value": 100}, {"register_address": 8, "value": 100}),
        ("get_peripheral_stats", None, {}),
    ],
)
def test_valid_commands_are_accepted_for_queueing(
    command_type: str, parameters: dict[str, Any] | None, checked: dict[str, int]
) -> None:
    assert validate_command(command_type, parameters) == checked


@pytest.mark.parametrize(
    ("command_type", "parameters", "error"),
    [
        ("self_destruct", {}, DocumentError),
        ("set_power", {}, DocumentError),
        ("set_power", {"power_value": 50.5}, DocumentError),
        ("set_power", {"power_value": "50"}, DocumentError),
        ("set_power", {"power_value": 10_001}, DocumentError),
        ("set_power", {"power": 5}, DocumentError),  # a misspelt parameter
        ("set_power", [1], DocumentError),
        ("set_power_percentage", {"percentage": 101}, RegisterError),
        ("write_register", {"register_address": 9, "value": 1}, RegisterError),  # read-only
        ("write_register", {"register_address": 42, "value": 1}, RegisterError),
        ("write_register", {"register_address": 8, "value": -1}, RegisterError),
        ("get_power_stats", {"verbose": True}, DocumentError),
    ],
)
def test_invalid_commands_are_refused_with_a_typed_error(
    command_type: str, parameters: Any, error: type[EcoWattError]
) -> None:
    with pytest.raises(error):
        validate_command(command_type, parameters)


def test_the_legacy_and_seed_request_shapes() -> None:
    queued = parse_queue_request(
        b'{"device_id":"d","command_type":"set_power_percentage","parameters":{"percentage":40}}'
    )
    assert (queued.device_id, queued.command_type, queued.parameters) == (
        "d",
        "set_power_percentage",
        {"percentage": 40},
    )
    assert parse_seed_command_request(b'{"command":"set_power","parameters":{"power_value":1}}') == (
        "set_power",
        {"power_value": 1},
    )
    seed = parse_seed_result(b'{"command_id":"u1","success":true,"result_data":{"x":1}}')
    assert seed.as_result("set_power").status == "completed"
    reply = seed_poll_reply(
        "d", [SeedCommand("u1", "d", "set_power", {"power_value": 1}, "executing", "t0", "t1")]
    )
    assert reply["commands"][0]["status"] == "executing" and reply["success"] is True


def test_a_device_style_result_is_not_silently_recorded_as_failed() -> None:
    # SRV defaults `success` to false for this body; we refuse it instead.
    with pytest.raises(DocumentError):
        parse_seed_result(b'{"command_id":"u1","status":"completed","result":"ok"}')


PARSERS = (
    parse_poll_request,
    parse_poll_reply,
    parse_command_result,
    parse_queue_request,
    parse_seed_command_request,
    parse_seed_result,
)


@given(st.binary(max_size=300))
def test_arbitrary_bytes_into_every_command_parser_give_a_value_or_a_typed_error(data: bytes) -> None:
    for parse in PARSERS:
        with contextlib.suppress(EcoWattError):
            parse(data)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=8), children, max_size=3)
    ),
    max_leaves=8,
)
command_types = st.sampled_from(
    ["set_power", "set_power_percentage", "write_register", "get_power_stats", "bogus", ""]
)
parameter_objects = st.dictionaries(
    st.sampled_from(["power_value", "percentage", "register_address", "value", "other"]),
    json_values,
    max_size=3,
)


@given(
    st.dictionaries(
        st.sampled_from(["command_id", "command_type", "parameters"]),
        json_values | command_types | parameter_objects,
    )
)
def test_any_poll_reply_yields_an_action_and_a_result(entry: dict[str, Any]) -> None:
    command = parse_poll_reply(json.dumps({"command": entry}))
    assert command is not None
    for switches in ({}, {"write_register": True, "strict_parameters": True}):
        action = firmware_action(command, **switches)
        if isinstance(action, RegisterWrite):
            assert action.address == 8 or switches
            assert 0 <= action.value <= 100
    CommandResult.of(command, False).to_json()


@given(command_types, parameter_objects | json_values)
def test_validation_accepts_only_what_the_firmware_can_execute_faithfully(
    command_type: str, parameters: Any
) -> None:
    try:
        checked = validate_command(command_type, parameters)
    except (DocumentError, RegisterError):
        return
    # A validated command never hits the non-integer quirk nor the clamp.
    action = firmware_action(Command("c", command_type, checked), write_register=True)
    reference = firmware_action(
        Command("c", command_type, checked), write_register=True, strict_parameters=True
    )
    assert action == reference
    if isinstance(action, RegisterWrite) and command_type != "set_power":
        assert action.value == next(iter(v for k, v in checked.items() if k in ("percentage", "value")))
