"""Command messages (firmware-protocol.md §6).

Device side (what firmware 1.0.4 speaks): `POST /command/poll` with `{"device_id"}`, answered by
`{"command":{"command_id","command_type","parameters"}}` or an object without `command`; the result
goes to `POST /command/result` as `{"command_id","status":"completed"|"failed","result":"Command <type>: ..."}`.

`firmware_action` is what the firmware does with a command, as a pure decision: a write to register 8,
a local statistics action, or a refusal. Its switches turn off 1.0.4's defects: `write_register` is
unimplemented there, and a non-integer parameter silently reads as 0 (`read_parameter`), i.e. sets
export power to 0 %.

Server side: `validate_command` checks a command before it is queued (known type, expected integer
parameters, register writable and value in range), for the LEGACY queue body and the SRV (seed)
shapes alike, which are also modelled here.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from protocol.errors import DocumentError, RegisterError
from protocol.json_wire import JsonObject, dumps, firmware_int, is_integer, load_object
from protocol.registers import EXPORT_LIMIT_ADDRESS, by_address, resolve

# The firmware hard-codes a 10 kW inverter when converting watts to a percentage.
MAX_CAPACITY_W = 10_000
# The firmware keeps at most this many bytes of a poll reply (§6.1).
FIRMWARE_POLL_REPLY_LIMIT = 511
NO_PENDING_COMMANDS: dict[str, Any] = {"message": "No pending commands"}
COMPLETED, FAILED = "completed", "failed"


class CommandType(enum.StrEnum):
    SET_POWER = "set_power"
    SET_POWER_PERCENTAGE = "set_power_percentage"
    WRITE_REGISTER = "write_register"
    GET_POWER_STATS = "get_power_stats"
    RESET_POWER_STATS = "reset_power_stats"
    GET_PERIPHERAL_STATS = "get_peripheral_stats"
    RESET_PERIPHERAL_STATS = "reset_peripheral_stats"


STATS_COMMANDS = frozenset(
    {
        CommandType.GET_POWER_STATS,
        CommandType.RESET_POWER_STATS,
        CommandType.GET_PERIPHERAL_STATS,
        CommandType.RESET_PERIPHERAL_STATS,
    }
)
# Parameter names each command takes.
PARAMETERS: dict[CommandType, tuple[str, ...]] = {
    CommandType.SET_POWER: ("power_value",),
    CommandType.SET_POWER_PERCENTAGE: ("percentage",),
    CommandType.WRITE_REGISTER: ("register_address", "value"),
    **{t: () for t in STATS_COMMANDS},
}


@dataclass(frozen=True)
class Command:
    command_id: str
    command_type: str
    # None: absent or not an object (the firmware then fails set_* commands).
    parameters: dict[str, Any] | None = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "command_id": self.command_id,
            "command_type": self.command_type,
            "parameters": {} if self.parameters is None else self.parameters,
        }


# --- poll ------------------------------------------------------------------------------------------


def poll_request(device_id: str) -> bytes:
    return dumps({"device_id": device_id})


def parse_poll_request(body: bytes | str) -> str:
    """The polling device's id (DocumentError when missing, as LEGACY answers 400)."""
    return load_object(body, DocumentError, "poll request").text("device_id", allow_empty=False)


def poll_reply(command: Command | None) -> dict[str, Any]:
    """The reply to a poll; DocumentError if it would not fit the firmware's 511-byte buffer."""
    if command is None:
        return dict(NO_PENDING_COMMANDS)
    reply = {"command": command.to_dict()}
    size = len(dumps(reply))
    if size > FIRMWARE_POLL_REPLY_LIMIT:
        raise DocumentError("poll reply exceeds the firmware's 511-byte buffer", size)
    return reply


def parse_poll_reply(body: bytes | str) -> Command | None:
    """Read a poll reply as the firmware does: None unless there is a `command` key.

    A `command` that is null or garbage still comes back as a Command (with empty id/type), which
    the firmware executes as an unknown command and reports failed.
    """
    fields = load_object(body, DocumentError, "poll reply").data
    if "command" not in fields:
        return None
    raw = fields["command"]
    entry: dict[str, Any] = raw if isinstance(raw, dict) else {}
    command_id, command_type, parameters = (
        entry.get("command_id"),
        entry.get("command_type"),
        entry.get("parameters"),
    )
    return Command(
        command_id=command_id if isinstance(command_id, str) else "",
        command_type=command_type if isinstance(command_type, str) else "",
        parameters=parameters if isinstance(parameters, dict) else None,
    )


# --- what the firmware does --------------------------------------------------------------------------


@dataclass(frozen=True)
class RegisterWrite:
    address: int
    value: int


@dataclass(frozen=True)
class LocalAction:
    """A statistics command: printed/reset on the console, always reported successful."""

    name: str


@dataclass(frozen=True)
class Refused:
    reason: str


FirmwareAction = RegisterWrite | LocalAction | Refused


def read_parameter(parameters: dict[str, Any], name: str, *, strict: bool = False) -> int | None:
    """An integer parameter as the firmware reads it: anything but an int32 reads as 0.

    With `strict` (the fixed firmware) a missing or non-integer parameter gives None instead.
    """
    value = parameters.get(name)
    number = firmware_int(value)
    if strict and (not is_integer(value) or number != value):
        return None
    return number


def _int32(value: int) -> int:
    return (value + 2**31) % 2**32 - 2**31


def _clamp_percentage(value: int) -> int:
    return max(0, min(100, value))


def power_to_percentage(power_w: int) -> int:
    """`power_value*100/10000` in 32-bit C arithmetic (wraps, truncates toward 0), clamped 0..100."""
    product = _int32(power_w * 100)
    quotient = abs(product) // MAX_CAPACITY_W * (1 if product >= 0 else -1)
    return _clamp_percentage(quotient)


def firmware_action(
    command: Command, *, write_register: bool = False, strict_parameters: bool = False
) -> FirmwareAction:
    """What the firmware does with `command` (1.0.4 with the defaults)."""
    kind = command.command_type
    if kind in STATS_COMMANDS:
        return LocalAction(kind)
    if kind not in (CommandType.SET_POWER, CommandType.SET_POWER_PERCENTAGE, CommandType.WRITE_REGISTER):
        return Refused("unknown command type")
    if kind == CommandType.WRITE_REGISTER and not write_register:
        return Refused("write_register is not implemented")
    if command.parameters is None:
        return Refused("parameters missing")
    values = [
        read_parameter(command.parameters, name, strict=strict_parameters)
        for name in PARAMETERS[CommandType(kind)]
    ]
    if any(v is None for v in values):
        return Refused("parameters must be integers")
    numbers = [v for v in values if v is not None]
    if kind == CommandType.SET_POWER:
        return RegisterWrite(EXPORT_LIMIT_ADDRESS, power_to_percentage(numbers[0]))
    if kind == CommandType.SET_POWER_PERCENTAGE:
        return RegisterWrite(EXPORT_LIMIT_ADDRESS, _clamp_percentage(numbers[0]))
    address, value = numbers
    try:
        by_address(address).check_write(value)
    except RegisterError as exc:
        return Refused(exc.message)
    return RegisterWrite(address, value)


# --- result ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CommandResult:
    command_id: str
    status: str  # "completed" | "failed"
    result: str

    @classmethod
    def of(cls, command: Command, success: bool) -> CommandResult:
        """The result text the firmware sends after executing `command`."""
        outcome = "executed successfully" if success else "failed"
        return cls(
            command.command_id,
            COMPLETED if success else FAILED,
            f"Command {command.command_type}: {outcome}",
        )

    def to_dict(self) -> dict[str, Any]:
        return {"command_id": self.command_id, "status": self.status, "result": self.result}

    def to_json(self) -> bytes:
        return dumps(self.to_dict())


def parse_command_result(body: bytes | str) -> CommandResult:
    """The device's result (LEGACY rules: id, status completed|failed and result are required)."""
    fields = load_object(body, DocumentError, "command result")
    status = fields.text("status")
    if status not in (COMPLETED, FAILED):
        raise fields.fail("status", "completed or failed", status)
    return CommandResult(fields.text("command_id", allow_empty=False), status, fields.text("result"))


# --- server side: validation before queueing -------------------------------------------------------


def validate_command(command_type: str, parameters: Any) -> dict[str, int]:
    """The checked parameters of a command about to be queued.

    DocumentError for an unknown type, missing/unexpected/non-integer parameters or a power outside
    0..10000 W; RegisterError for an unknown or read-only register or a value out of its range.
    """
    try:
        kind = CommandType(command_type)
    except ValueError:
        raise DocumentError("unknown command_type", command_type) from None
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict):
        raise DocumentError("parameters must be an object", parameters)
    fields = JsonObject(parameters, DocumentError, "parameters")
    names = PARAMETERS[kind]
    unexpected = sorted(set(parameters) - set(names))
    if unexpected:
        raise DocumentError(f"{kind} takes no parameter {unexpected[0]!r}", unexpected[0])
    checked: dict[str, int] = {}
    if kind == CommandType.SET_POWER:
        checked["power_value"] = fields.integer("power_value", 0, MAX_CAPACITY_W)
    elif kind == CommandType.SET_POWER_PERCENTAGE:
        checked["percentage"] = fields.integer("percentage")
        by_address(EXPORT_LIMIT_ADDRESS).check_write(checked["percentage"])
    elif kind == CommandType.WRITE_REGISTER:
        address = fields.integer("register_address")
        checked["register_address"] = address
        checked["value"] = fields.integer("value")
        resolve(address).check_write(checked["value"])
    return checked


@dataclass(frozen=True)
class QueueRequest:
    device_id: str
    command_type: str
    parameters: dict[str, int]


def parse_queue_request(body: bytes | str) -> QueueRequest:
    """LEGACY `POST /command/queue` `{"device_id","command_type","parameters"}`, validated."""
    fields = load_object(body, DocumentError, "queue request")
    device_id = fields.text("device_id", allow_empty=False)
    command_type = fields.text("command_type")
    return QueueRequest(
        device_id, command_type, validate_command(command_type, fields.data.get("parameters"))
    )


def legacy_command_id(counter: int, unix_seconds: int) -> str:
    """LEGACY ids: `CMD_<counter from 1000>_<unix seconds>`."""
    return f"CMD_{counter}_{unix_seconds}"


# --- SRV (seed) shapes §6.3 --------------------------------------------------------------------------


def parse_seed_command_request(body: bytes | str) -> tuple[str, dict[str, int]]:
    """SRV `POST /commands/<id>` `{"command": "<type>", "parameters": {...}}`, validated."""
    fields = load_object(body, DocumentError, "command request")
    command_type = fields.text("command", allow_empty=False)
    return command_type, validate_command(command_type, fields.data.get("parameters"))


@dataclass(frozen=True)
class SeedResult:
    command_id: str
    success: bool
    result_data: dict[str, Any]
    error_message: str | None

    def as_result(self, command_type: str) -> CommandResult:
        """The same outcome in the device's shape."""
        return CommandResult.of(Command(self.command_id, command_type), self.success)


def parse_seed_result(body: bytes | str) -> SeedResult:
    """SRV `POST /commands/<id>/result` `{"command_id","success","result_data","error_message"}`.

    Unlike SRV (which defaults `success` to false), a body without a boolean `success` is refused.
    """
    fields = load_object(body, DocumentError, "command result")
    data = fields.obj("result_data").data if "result_data" in fields else {}
    message = fields.data.get("error_message")
    if message is not None and not isinstance(message, str):
        raise fields.fail("error_message", "a string", message)
    return SeedResult(fields.text("command_id", allow_empty=False), fields.boolean("success"), data, message)


@dataclass(frozen=True)
class SeedCommand:
    """A command as SRV lists it in `GET /commands/<id>/poll`."""

    command_id: str
    device_id: str
    command: str
    parameters: dict[str, Any]
    status: str
    created_at: str
    polled_at: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "command_id": self.command_id,
            "device_id": self.device_id,
            "command": self.command,
            "parameters": self.parameters,
            "status": self.status,
            "created_at": self.created_at,
            "polled_at": self.polled_at,
        }


def seed_poll_reply(device_id: str, commands: list[SeedCommand]) -> dict[str, Any]:
    return {"success": True, "device_id": device_id, "commands": [c.to_dict() for c in commands]}
