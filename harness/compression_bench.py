"""`ecowatt bench compression`: the firmware's codecs on a simulated day of inverter data.

The inverter model is polled every 2 s like the firmware does, the samples are batched by 7 and every
batch goes through each of the four encoders on its own and through the smart selection. Each output
is decoded again by a cloud-side mirror of the codec state, and compared with what was sampled: a
batch is *recovered* (decoded values equal the samples), *lossy* (decoded, but different) or
*undecodable* (the format cannot tell). The report is a table on stdout and, with --json, a file.

Ratios are compressed / original (the firmware's "academic ratio": lower is better); the original
size is 2 bytes per value. CPU times are the calling thread's CPU time, averaged per batch.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from protocol.compression import (
    BATCH_SAMPLES,
    CANDIDATES,
    Batch,
    CodecState,
    Decoded,
    compress_batch,
    decode_as,
    decode_packet,
)
from protocol.errors import EcoWattError
from protocol.registers import DEFAULT_SELECTION, by_address, resolve

POLL_SECONDS = 2.0
SMART = "SMART"


@dataclass
class CodecReport:
    """The totals of one codec over the run."""

    codec: str
    batches: int = 0
    samples: int = 0
    original_bytes: int = 0
    compressed_bytes: int = 0
    encode_cpu_ns: int = 0
    decode_cpu_ns: int = 0
    formats: Counter[str] = field(default_factory=Counter)
    winners: Counter[str] = field(default_factory=Counter)  # smart selection only
    recovered: int = 0
    ambiguous: int = 0  # decoded with several readings for some values (counted in recovered/lossy)
    lossy_batches: list[int] = field(default_factory=list)
    undecodable_batches: list[int] = field(default_factory=list)
    undecodable_reasons: Counter[str] = field(default_factory=Counter)

    def add(self, index: int, batch: Batch, packet: bytes, fmt: str, decoded: Decoded) -> None:
        self.batches += 1
        self.samples += batch.samples
        self.original_bytes += 2 * batch.count
        self.compressed_bytes += len(packet)
        self.formats[fmt] += 1
        if not decoded.decodable:
            self.undecodable_batches.append(index)
            self.undecodable_reasons[decoded.reason] += 1
            return
        self.ambiguous += decoded.status == "ambiguous"
        if decoded.values == batch.values:
            self.recovered += 1
        else:
            self.lossy_batches.append(index)

    def summary(self) -> dict[str, Any]:
        data = {k: v for k, v in vars(self).items() if not k.endswith("_cpu_ns")}
        per_batch = max(self.batches, 1)
        data |= {
            "formats": dict(self.formats),
            "winners": dict(self.winners),
            "undecodable_reasons": dict(self.undecodable_reasons),
            "ratio": self.compressed_bytes / self.original_bytes if self.original_bytes else None,
            "savings_percent": 100.0 * (1 - self.compressed_bytes / self.original_bytes)
            if self.original_bytes
            else None,
            "encode_cpu_us_per_batch": self.encode_cpu_ns / per_batch / 1000.0,
            "decode_cpu_us_per_batch": self.decode_cpu_ns / per_batch / 1000.0,
            "lossy": len(self.lossy_batches),
            "undecodable": len(self.undecodable_batches),
        }
        if self.codec != SMART:
            data.pop("winners")
        return data


def _timed(call: Callable[..., Any], *args: Any) -> tuple[Any, int]:
    start = time.thread_time_ns()
    result = call(*args)
    return result, time.thread_time_ns() - start


def _decode(call: Callable[..., Decoded], *args: Any) -> tuple[Decoded, int]:
    try:
        return _timed(call, *args)
    except EcoWattError as error:  # the firmware's own output should never be garbage
        return Decoded.undecodable(None, f"decoder error: {error}"), 0


def run_bench(hours: float, layout: tuple[int, ...], seed: int) -> dict[str, Any]:
    """Compress `hours` of simulated data; the JSON-ready report."""
    from sim_inverter.model import InverterModel  # pvlib is slow to import: only on use

    model = InverterModel(seed=seed)
    batches = int(hours * 3600 / POLL_SECONDS) // BATCH_SAMPLES
    device, mirror = CodecState(), CodecState()
    reports = {name: CodecReport(str(name)) for name in CANDIDATES}
    smart = CodecReport(SMART)
    for index in range(batches):
        polls = range(index * BATCH_SAMPLES, (index + 1) * BATCH_SAMPLES)
        samples = [model.registers(k * POLL_SECONDS) for k in polls]
        batch = Batch.from_samples([[row[r] for r in layout] for row in samples], layout)
        # Each encoder on its own, against the state as it was before this batch.
        for name, encode in CANDIDATES.items():
            encoded, cpu = _timed(encode, batch, device)
            decoded, decode_cpu = _decode(decode_as, encoded.format, encoded.packet, layout, mirror)
            report = reports[name]
            report.encode_cpu_ns += cpu
            report.decode_cpu_ns += decode_cpu
            report.add(index, batch, encoded.packet, str(encoded.format), decoded)
        # The firmware's choice, identified and decoded as the cloud would, then both states move on.
        selection, cpu = _timed(compress_batch, batch, device)
        decoded, decode_cpu = _decode(decode_packet, selection.packet, layout, mirror)
        mirror.advance(decoded, layout, BATCH_SAMPLES)
        smart.encode_cpu_ns += cpu
        smart.decode_cpu_ns += decode_cpu
        smart.winners[str(selection.encoder)] += 1
        smart.add(index, batch, selection.packet, str(selection.encoded.format), decoded)
    return {
        "parameters": {
            "hours": hours,
            "seed": seed,
            "registers": [by_address(r).name for r in layout],
            "register_layout": list(layout),
            "poll_seconds": POLL_SECONDS,
            "batch_samples": BATCH_SAMPLES,
            "site_start": model.site.start,
        },
        "batches": batches,
        "samples": batches * BATCH_SAMPLES,
        "codecs": [r.summary() for r in (*reports.values(), smart)],
    }


def _table(result: dict[str, Any]) -> Table:
    params = result["parameters"]
    table = Table(
        title=f"compression over {params['hours']:g} h, registers {','.join(params['registers'])}, "
        f"seed {params['seed']} ({result['batches']} batches of {params['batch_samples']} samples)"
    )
    for column in ("codec", "formats", "samples", "original B", "compressed B", "ratio"):
        table.add_column(column, justify="left" if column in ("codec", "formats") else "right")
    for column in ("enc µs/batch", "dec µs/batch", "recovered", "lossy", "undecodable"):
        table.add_column(column, justify="right")
    for codec in result["codecs"]:
        formats = ", ".join(f"{fmt} {n}" for fmt, n in sorted(codec["formats"].items(), key=lambda i: -i[1]))
        ratio = "-" if codec["ratio"] is None else f"{codec['ratio']:.3f}"
        table.add_row(
            codec["codec"],
            formats,
            str(codec["samples"]),
            str(codec["original_bytes"]),
            str(codec["compressed_bytes"]),
            ratio,
            f"{codec['encode_cpu_us_per_batch']:.1f}",
            f"{codec['decode_cpu_us_per_batch']:.1f}",
            str(codec["recovered"]),
            str(codec["lossy"]),
            str(codec["undecodable"]),
        )
    return table


def _layout(text: str | None) -> tuple[int, ...]:
    if not text:
        return DEFAULT_SELECTION
    return tuple(resolve(part).address for part in text.split(",") if part.strip())


def _run(args: argparse.Namespace) -> int:
    console = Console()
    if not console.is_terminal:  # keep the table whole when piped or captured
        console = Console(width=160)
    try:
        layout = _layout(args.registers)
    except EcoWattError as error:
        console.print(f"[red]bad --registers: {error}[/red]")
        return 2
    if not layout or args.hours <= 0 or int(args.hours * 3600 / POLL_SECONDS) < BATCH_SAMPLES:
        console.print("[red]--hours must cover at least one batch (14 s) and --registers one register[/red]")
        return 2
    result = run_bench(args.hours, layout, args.seed)
    console.print(_table(result))
    smart = result["codecs"][-1]
    console.print(f"smart selection winners: {smart['winners']}")
    for reason, n in smart["undecodable_reasons"].items():
        console.print(f"undecodable ({n} batches): {reason}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
        console.print(f"wrote {args.json}")
    return 0


def add_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    bench = subparsers.add_parser("bench", help="benchmarks")
    kinds = bench.add_subparsers(dest="bench", metavar="BENCH")
    bench.set_defaults(func=lambda args: bench.print_help() or 2)
    parser = kinds.add_parser("compression", help="the firmware's codecs on a simulated day")
    parser.add_argument("--hours", type=float, default=24.0, help="simulated span (default 24)")
    parser.add_argument(
        "--registers", default=None, help="comma-separated names or addresses (default: the firmware's)"
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the inverter model")
    parser.add_argument("--json", type=Path, default=None, help="also write the report to this file")
    parser.set_defaults(func=_run)
