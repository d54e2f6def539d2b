"""Operator commands for devices: validated queueing, leased delivery, results in both shapes.

A device gets one command per poll, oldest first, under a lease (the storage's `lease_command`): when
no result arrives before the lease runs out the same command is delivered again, at most
`max_deliveries` times, then it is `timed_out`. Results come in the firmware's shape
(`{"command_id","status","result"}`, §6.1) or the seed's (`{"command_id","success",...}`, §6.3).

Everything here is a plain async function of the storage; the routes (routes_commands.py) add HTTP.
"""

from __future__ import annotations

import enum
import json
from dataclasses import dataclass
from typing import Any

from cloud.storage import Command, CommandStatus, Storage
from protocol import command_message
from protocol.command_message import SeedResult, poll_reply, validate_command
from protocol.errors import DocumentError

# A device-supplied result is free text; keep what is stored bounded.
MAX_RESULT_CHARS = 2000
# The seed's lifecycle words for the ones we keep (§6.3), used only in its poll shape.
_SEED_STATUS = {CommandStatus.QUEUED: "pending", CommandStatus.DELIVERED: "executing"}


@dataclass(frozen=True)
class DeliveryPolicy:
    """How long a delivered command waits for its result, and how often it is delivered at most."""

    lease_seconds: float = 30.0  # the firmware polls every 10 s and reports right after executing
    max_deliveries: int = 3


class ResultOutcome(enum.StrEnum):
    RECORDED = "recorded"
    DUPLICATE = "duplicate"  # the same final status was already recorded: answered as a success
    UNKNOWN = "unknown"  # no command with that id (for that device)
    NOT_DELIVERED = "not_delivered"  # still queued: a result for it cannot be genuine
    CONFLICT = "conflict"  # already finished with another status


@dataclass(frozen=True)
class ResultRecord:
    outcome: ResultOutcome
    command: Command | None


async def queue_command(storage: Storage, device_id: str, command_type: Any, parameters: Any) -> Command:
    """Validate (DocumentError / RegisterError with the reason) and queue one command."""
    if not isinstance(command_type, str) or not command_type:
        raise DocumentError("command type must be a non-empty string", command_type)
    checked = validate_command(command_type, parameters)
    return await storage.enqueue_command(device_id, command_type, checked)


def parse_queue_body(fields: dict[str, Any]) -> tuple[Any, Any]:
    """The (type, parameters) of an operator's queue request.

    The seed names the type `command`, the firmware and LEGACY `command_type`; both are taken.
    """
    if "command" in fields and "command_type" in fields:
        raise DocumentError("give the command type once, as command or command_type")
    if "command" not in fields and "command_type" not in fields:
        raise DocumentError("the command type is missing (command or command_type)")
    kind = fields.get("command", fields.get("command_type"))
    return kind, fields.get("parameters")


async def deliver_next(storage: Storage, device_id: str, policy: DeliveryPolicy) -> Command | None:
    """The command to hand to the polling device now (leased), or None."""
    return await storage.lease_command(
        device_id, lease_seconds=policy.lease_seconds, max_deliveries=policy.max_deliveries
    )


def firmware_reply(command: Command | None) -> dict[str, Any]:
    """The `/command/poll` answer in the firmware's shape (§6.1), within its 511-byte buffer."""
    if command is None:
        return poll_reply(None)
    return poll_reply(command_message.Command(command.command_id, command.type, dict(command.params)))


async def record_result(storage: Storage, command_id: str, status: CommandStatus, result: str, *,
                        device_id: str | None = None) -> ResultRecord:
    """Store a device's result; `device_id` (seed route) must own the command."""
    result = result if len(result) <= MAX_RESULT_CHARS else result[: MAX_RESULT_CHARS - 1] + "…"
    current = await storage.get_command(command_id)
    if current is None or (device_id is not None and current.device_id != device_id):
        return ResultRecord(ResultOutcome.UNKNOWN, None)
    if current.status is CommandStatus.QUEUED:
        return ResultRecord(ResultOutcome.NOT_DELIVERED, current)
    completed = await storage.complete_command(command_id, status, result)
    if completed is not None:
        return ResultRecord(ResultOutcome.RECORDED, completed)
    # Finished meanwhile (or before): a repeat of the same answer is harmless, another one is not.
    current = await storage.get_command(command_id)
    if current is not None and current.status is status:
        return ResultRecord(ResultOutcome.DUPLICATE, current)
    return ResultRecord(ResultOutcome.CONFLICT, current)


def seed_result_text(result: SeedResult, command_type: str) -> str:
    """The stored result text of a seed-shaped result: the firmware's wording plus what it carried."""
    text = result.as_result(command_type).result
    if result.error_message:
        text += f"; error: {result.error_message}"
    if result.result_data:
        text += "; data: " + json.dumps(result.result_data, separators=(",", ":"), ensure_ascii=False)
    return text


async def command_status(storage: Storage, command_id: str, policy: DeliveryPolicy) -> Command | None:
    """A command as it stands now (a command whose last lease ran out reads as timed_out)."""
    await storage.expire_commands(policy.max_deliveries)
    return await storage.get_command(command_id)


async def command_history(storage: Storage, device_id: str, policy: DeliveryPolicy, *,
                          limit: int = 100) -> list[Command]:
    """A device's commands, newest first, as they stand now."""
    await storage.expire_commands(policy.max_deliveries)
    return await storage.list_commands(device_id, limit=limit)


def command_view(command: Command) -> dict[str, Any]:
    """A command as the operator API shows it."""
    return {
        "command_id": command.command_id,
        "device_id": command.device_id,
        "command_type": command.type,
        "parameters": command.params,
        "status": str(command.status),
        "delivery_count": command.delivery_count,
        "lease_expires_at": command.lease_expires_at,
        "result": command.result,
        "created_at": command.created_at,
        "delivered_at": command.delivered_at,
        "completed_at": command.completed_at,
    }


def seed_view(command: Command) -> dict[str, Any]:
    """A command in the seed's poll list shape (§6.3), with its lifecycle words."""
    return {
        "command_id": command.command_id,
        "device_id": command.device_id,
        "command": command.type,
        "parameters": command.params,
        "status": _SEED_STATUS.get(command.status, str(command.status)),
        "created_at": command.created_at,
        "polled_at": command.delivered_at,
        "delivery_count": command.delivery_count,
    }
