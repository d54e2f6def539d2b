"""The operator's commands over the cloud's operator API, replacing the seed's helper scripts:

    ecowatt command queue DEVICE TYPE [--param k=v ...]     ecowatt command status ID | list DEVICE
    ecowatt config set DEVICE [--poll S] [--upload S] [--registers NAMES]    ecowatt config history DEVICE
    ecowatt fault inject TYPE [--probability P] [--duration S] [--device D] [--param k=v ...]
    ecowatt fault clear [--device D]                          ecowatt fault status
    ecowatt telemetry tail [DEVICE] [--count N]

Every command takes `--url` and `--token` (else ECOWATT_CLOUD_URL / ECOWATT_TOKEN, else the local
defaults) and `--json` for the server's whole answer. A refusal or an unreachable server is one line on
stderr and exit status 1.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cloud.operator_client import DEFAULT_KEYS_DIR, OperatorClient, OperatorError, SseEvent

EXIT_REFUSED = 1

Action = Callable[[OperatorClient, argparse.Namespace], Awaitable[str | None]]


def _param(text: str) -> tuple[str, Any]:
    """`k=v`; the value is read as JSON when it is JSON (5000, true, ["/changes"]), else as text."""
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=VALUE, got {text!r}")
    try:
        return name, json.loads(value)
    except ValueError:
        return name, value


def _seconds(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected whole seconds, got {text!r}") from None


def _when(seconds: Any) -> str:
    """Wall-clock seconds as ISO 8601 UTC; "-" for anything else."""
    if isinstance(seconds, bool) or not isinstance(seconds, int | float):
        return "-"
    try:
        return datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    except (OverflowError, OSError, ValueError):
        return "-"


def _run(action: Action) -> Callable[[argparse.Namespace], int]:
    def handler(args: argparse.Namespace) -> int:
        async def main() -> str | None:
            async with OperatorClient(args.url, args.token, keys_dir=args.keys_dir) as client:
                return await action(client, args)

        try:
            line = asyncio.run(main())
        except OperatorError as error:
            print(f"error: {error}", file=sys.stderr, flush=True)
            return EXIT_REFUSED
        if line is not None:
            print(line, flush=True)
        return 0

    return handler


def _answer(args: argparse.Namespace, reply: Any, line: str) -> str:
    return json.dumps(reply, indent=2) if args.json else line


# --- commands ---


async def _queue(client: OperatorClient, args: argparse.Namespace) -> str:
    reply = await client.queue_command(args.device, args.type, dict(args.param))
    return _answer(args, reply, f"queued {reply['command_id']}: {args.type} for {args.device}")


def _command_line(view: dict[str, Any]) -> str:
    result = f" result: {view['result']}" if view.get("result") else ""
    return (f"{view['command_id']} {view['command_type']} {json.dumps(view['parameters'])} {view['status']} "
            f"(deliveries {view['delivery_count']}, queued {_when(view['created_at'])}){result}")


async def _command_status(client: OperatorClient, args: argparse.Namespace) -> str:
    reply = await client.command_status(args.command_id)
    return _answer(args, reply, _command_line(reply["status"]))


async def _command_list(client: OperatorClient, args: argparse.Namespace) -> str:
    reply = await client.command_history(args.device, args.limit)
    return _answer(args, reply, "\n".join(_command_line(c) for c in reply["commands"]) or "no commands")


# --- configuration ---


def _config_line(view: dict[str, Any]) -> str:
    config = view["config"]
    outcome = f", device: {view['outcome']}" if view.get("outcome") else ""
    return (f"version {view['version']} {view['status']}{outcome}: poll {config['poll_interval']} s, "
            f"upload {config['upload_interval']} s, registers {','.join(config['register_names'])} "
            f"(changes {','.join(view['changes']) or '-'})")


async def _config_set(client: OperatorClient, args: argparse.Namespace) -> str:
    registers = None if args.registers is None else [r.strip() for r in args.registers.split(",") if r.strip()]
    reply = await client.set_config(args.device, poll_s=args.poll, upload_s=args.upload, registers=registers)
    return _answer(args, reply, f"{args.device}: {_config_line(reply['version'])}")


async def _config_history(client: OperatorClient, args: argparse.Namespace) -> str:
    reply = await client.config_history(args.device, args.limit)
    return _answer(args, reply, "\n".join(_config_line(v) for v in reply["history"]) or "no configuration set")


# --- faults ---


async def _fault_inject(client: OperatorClient, args: argparse.Namespace) -> str:
    reply = await client.inject_fault(args.type, probability=args.probability, duration_s=args.duration,
                                      device_id=args.device, parameters=dict(args.param))
    rule = reply["rule"]
    scope = rule["device_id"] or "every device"
    until = "until cleared" if rule["expires_at"] is None else f"until {_when(rule['expires_at'])}"
    return _answer(args, reply, f"fault rule {rule['rule_id']}: {rule['fault_type']} on {scope}, "
                                f"probability {rule['probability']}, {until}")


async def _fault_clear(client: OperatorClient, args: argparse.Namespace) -> str:
    reply = await client.clear_faults(args.device)
    return _answer(args, reply, f"cleared {reply['cleared']} fault rule(s)")


async def _fault_status(client: OperatorClient, args: argparse.Namespace) -> str:
    reply = await client.fault_status()
    status = reply["status"]
    lines = [f"{len(status['rules'])} rule(s) in force, {status['faults_injected']} fault(s) injected"]
    lines += [f"  rule {r['rule_id']}: {r['fault_type']} on {r['device_id'] or 'every device'}, "
              f"probability {r['probability']}" for r in status["rules"]]
    return _answer(args, reply, "\n".join(lines))


# --- telemetry ---


def sample_lines(event: SseEvent, device_id: str | None) -> list[str]:
    """One line per sample of a telemetry event (other events give none)."""
    data = event.data
    if not isinstance(data, dict):
        return []
    # The event bus's own shape {"kind","device_id","data",...}, or just its data under `event: telemetry`.
    kind = data.get("kind", event.kind)
    payload = data.get("data", data) if "kind" in data else data
    if kind != "telemetry" or not isinstance(payload, dict):
        return []
    device = payload.get("device_id") or data.get("device_id")
    if device_id is not None and device != device_id:
        return []
    samples = payload.get("samples")
    lines = []
    for sample in samples if isinstance(samples, list) else []:
        if not isinstance(sample, dict):
            continue
        name = sample.get("register") or f"reg{sample.get('address')}"
        value = sample.get("value")
        shown = f"{value:g}" if isinstance(value, int | float) else "?"
        unit = f" {sample['unit']}" if sample.get("unit") else ""
        when = _when(sample.get("sampled_at") or payload.get("received_at"))
        lines.append(f"{when} {device} {name}={shown}{unit} raw={sample.get('raw')} "
                     f"boot={sample.get('boot_id')} packet_ts={sample.get('packet_ts')} {sample.get('status')}")
    return lines


async def _telemetry_tail(client: OperatorClient, args: argparse.Namespace) -> None:
    printed = 0
    async for event in client.events(device_id=args.device):
        for line in sample_lines(event, args.device):
            print(line, flush=True)
            printed += 1
            if args.count is not None and printed >= args.count:
                return
    raise OperatorError("the event stream ended")


# --- parsers ---


def _common() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument("--url", help="the cloud's base URL (else $ECOWATT_CLOUD_URL, else http://127.0.0.1:5001)")
    parent.add_argument("--token", help="operator bearer token (else $ECOWATT_TOKEN, else keys/operator.token)")
    parent.add_argument("--keys-dir", type=Path, default=DEFAULT_KEYS_DIR, help=argparse.SUPPRESS)
    parent.add_argument("--json", action="store_true", help="print the server's whole JSON answer")
    return parent


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    common = _common()

    def group(name: str, help_text: str) -> argparse._SubParsersAction[argparse.ArgumentParser]:
        parser = subparsers.add_parser(name, help=help_text)

        def usage(_args: argparse.Namespace) -> int:
            parser.print_help()
            return 2

        parser.set_defaults(func=usage)
        return parser.add_subparsers(dest=f"{name}_command", metavar="ACTION")

    def leaf(actions: argparse._SubParsersAction[argparse.ArgumentParser], name: str, help_text: str,
             action: Action) -> argparse.ArgumentParser:
        parser = actions.add_parser(name, help=help_text, parents=[common])
        parser.set_defaults(func=_run(action))
        return parser

    command = group("command", "queue inverter commands and follow them")
    p = leaf(command, "queue", "queue a command for a device", _queue)
    p.add_argument("device")
    p.add_argument("type", help="set_power, set_power_percentage, write_register, get_power_stats, "
                                "reset_power_stats, get_peripheral_stats or reset_peripheral_stats")
    p.add_argument("--param", type=_param, action="append", default=[], metavar="NAME=VALUE",
                   help="a parameter, e.g. power_value=5000 (repeatable)")
    p = leaf(command, "status", "show one command", _command_status)
    p.add_argument("command_id")
    p = leaf(command, "list", "a device's commands, newest first", _command_list)
    p.add_argument("device")
    p.add_argument("--limit", type=int, default=20)

    config = group("config", "set a device's remote configuration")
    p = leaf(config, "set", "set poll/upload intervals and the register selection", _config_set)
    p.add_argument("device")
    p.add_argument("--poll", type=_seconds, metavar="S", help="poll interval, whole seconds")
    p.add_argument("--upload", type=_seconds, metavar="S", help="upload interval, whole seconds")
    p.add_argument("--registers", metavar="NAMES", help="comma-separated register names or addresses, e.g. Vac1,Pac")
    p = leaf(config, "history", "a device's configuration versions with outcomes", _config_history)
    p.add_argument("device")
    p.add_argument("--limit", type=int, default=20)

    fault = group("fault", "inject faults into the cloud's answers")
    p = leaf(fault, "inject", "enable a fault", _fault_inject)
    p.add_argument("type", help="delay, http_500, http_503, drop, truncate, corrupt_chunk or wrong_hash")
    p.add_argument("--probability", type=float, help="per request, (0, 1]; default 1")
    p.add_argument("--duration", type=float, metavar="S", help="seconds until it ends by itself")
    p.add_argument("--device", help="only this device (default: every device)")
    p.add_argument("--param", type=_param, action="append", default=[], metavar="NAME=VALUE",
                   help="e.g. seconds=3, after=true, keep_bytes=10, paths='[\"/changes\"]' (repeatable)")
    p = leaf(fault, "clear", "clear the faults in force", _fault_clear)
    p.add_argument("--device", help="only this device's own rules")
    leaf(fault, "status", "the faults in force and the counts injected", _fault_status)

    telemetry = group("telemetry", "watch decoded telemetry")
    p = leaf(telemetry, "tail", "follow the event stream, one line per sample", _telemetry_tail)
    p.add_argument("device", nargs="?")
    p.add_argument("--count", type=int, help="stop after this many samples")
