"""Commands from the cloud (firmware-protocol.md §6.1): poll, execute one, report the result.

`poll()` is one `POST /command/poll`; a reply with a `command` key carries one command, which is
executed at once (a write to the inverter through the protocol adapter, or a local statistics action)
and reported with `POST /command/result` (sent once; a refusal by the cloud is only logged).

Quirks (profiles.Quirks): `write_register_unimplemented` (1.0.4 only logs it and reports failure) and
`command_non_integer_as_zero` (1.0.4 reads 50.5 or "50" as 0, so `set_power_percentage` with "50"
sets export power to 0 %; fixed, such a command is refused). The decision itself is
protocol.command_message.firmware_action.
"""

from __future__ import annotations

from device_emulator.cloud_http import exchange
from device_emulator.context import FirmwareContext
from device_emulator.event_log import EventKind
from protocol.command_message import (
    FIRMWARE_POLL_REPLY_LIMIT,
    Command,
    CommandResult,
    LocalAction,
    Refused,
    RegisterWrite,
    firmware_action,
    parse_poll_reply,
    poll_request,
)
from protocol.errors import DocumentError

TAG = "CMD"


class CommandExecutor:
    """The command component of one running firmware."""

    def __init__(self, ctx: FirmwareContext) -> None:
        self.ctx = ctx
        self.quirks = ctx.profile.quirks

    async def poll(self) -> CommandResult | None:
        """One command poll; the result of the command it executed, if there was one."""
        ctx = self.ctx
        reply = await exchange(
            ctx,
            "POST",
            "/command/poll",
            body=poll_request(ctx.device_id),
            timeout=ctx.profile.timings.cloud_timeout_s,
            limit=FIRMWARE_POLL_REPLY_LIMIT,
        )
        if reply is None:
            ctx.console.log(TAG, "command poll failed: no reply", "W")
            return None
        try:
            command = parse_poll_reply(reply.body)
        except DocumentError:
            return None  # not JSON, or cut at 511 bytes: no command
        if command is None:
            return None
        result = CommandResult.of(command, await self.execute(command))
        sent = await exchange(
            ctx,
            "POST",
            "/command/result",
            body=result.to_json(),
            timeout=ctx.profile.timings.cloud_timeout_s,
        )
        if sent is None or sent.status != 200:
            ctx.console.log(TAG, f"result of {command.command_id} not accepted by the cloud", "W")
        return result

    async def execute(self, command: Command) -> bool:
        """Carry out one command; True on success."""
        ctx = self.ctx
        ctx.console.log(TAG, f"executing {command.command_type or '(none)'} ({command.command_id})")
        action = firmware_action(
            command,
            write_register=not self.quirks.write_register_unimplemented,
            strict_parameters=not self.quirks.command_non_integer_as_zero,
        )
        if isinstance(action, RegisterWrite):
            ok = await ctx.inverter.write_register(action.address, action.value)
            detail = f"register {action.address} := {action.value}" + ("" if ok else " not confirmed")
        elif isinstance(action, LocalAction):
            ok, detail = True, self._local(action)
        else:
            assert isinstance(action, Refused)
            ok, detail = False, action.reason
        kind = EventKind.COMMAND_EXECUTED if ok else EventKind.COMMAND_FAILED
        ctx.events.record(kind, detail, command_id=command.command_id, command_type=command.command_type)
        ctx.console.log(TAG, f"{command.command_type}: {detail}", "I" if ok else "W")
        return ok

    def _local(self, action: LocalAction) -> str:
        """The statistics commands only print on the console; nothing goes back to the cloud."""
        if action.name == "get_power_stats":
            try:
                report = self.ctx.power.report()
            except (TypeError, ValueError):  # a meter without its own clock
                return "power statistics unavailable"
            return f"average {report.average_ma:.1f} mA, {report.charge_mah:.3f} mAh"
        if action.name == "get_peripheral_stats":
            counters = self.ctx.events.counters
            return ", ".join(f"{name} {count}" for name, count in sorted(counters.items())) or "no activity"
        return "statistics reset"
