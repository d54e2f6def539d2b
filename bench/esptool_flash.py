"""Seconds for the real esptool to flash 1 MiB to the emulated board over a pty (budget: 3 s).

Two 1 MiB EcoWatt images: one whose contents deflate about as well as real ESP32 firmware does (to
~60 %), the budget's case; and one padded with incompressible filler, the worst case. Two paths: the
default (the flasher stub, 16 KiB blocks, compressed) and `--no-stub` (the ROM loader, 1 KiB blocks, one
round trip each, uncompressed). Times are the whole esptool command, as a user waits for it: start-up,
connect, write, MD5 check; the best of a few rounds.

esptool's own CPU time dominates: 5.6 formats every frame it writes as a hex dump even with tracing off
(`ESPLoader.write` builds its trace message eagerly), so its time grows with the bytes on the wire and
compression is what keeps it low. On a busy machine the wall times stretch with the load; the CPU row
does not: it compares, side by side, the CPU esptool spends with the CPU the emulator spends answering it.

Rows, as rates (or ratios) so that higher is better:
* wall-clock rates against the 3 s budget (1 MiB / 3 s): a ratio >= 1 means the budget is met;
* esptool's CPU seconds against the emulator's for the same write: how small the emulator's share is.
"""

from __future__ import annotations

import asyncio
import random
import resource
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench import Result
from device_emulator.flash import Flash
from device_emulator.serial_endpoint import SerialEndpoint
from protocol.esp_image import build_firmware_image

IMAGE_SIZE = 1024 * 1024
BUDGET_SECONDS = 3.0
ROUNDS = 2
OFFSET = 0x10000
ESPTOOL = str(Path(sys.executable).with_name("esptool"))


@dataclass(frozen=True)
class Run:
    wall: float
    esptool_cpu: float
    emulator_cpu: float


def _cpu(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


async def _flash(image: Path, workdir: Path, *, no_stub: bool) -> Run:
    flash = Flash(workdir / f"flash-{time.monotonic_ns()}.bin")
    async with SerialEndpoint(flash) as board:
        argv = [ESPTOOL, "--chip", "esp32", "--port", board.port, "--baud", "921600"]
        argv += ["--before", "no-reset", "--after", "no-reset"] + (["--no-stub"] if no_stub else [])
        argv += ["write-flash", hex(OFFSET), str(image)]
        children, own = _cpu(resource.RUSAGE_CHILDREN), _cpu(resource.RUSAGE_SELF)
        start = time.perf_counter()
        process = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        output, _ = await process.communicate()
        run = Run(
            time.perf_counter() - start,
            _cpu(resource.RUSAGE_CHILDREN) - children,
            _cpu(resource.RUSAGE_SELF) - own,
        )
    if process.returncode != 0 or flash.read(OFFSET, image.stat().st_size) != image.read_bytes():
        raise RuntimeError(f"esptool did not flash the image:\n{output.decode(errors='replace')}")
    return run


def firmware_like_image() -> bytes:
    """1 MiB whose bytes follow a skewed distribution, so that zlib shrinks it about as much as it does
    real ESP32 firmware (~60 %)."""
    weights = [1 / (value + 1) ** 1.4 for value in range(256)]
    header = build_firmware_image("spec", "1.0.0")
    body = bytes(random.Random(7).choices(range(256), weights=weights, k=IMAGE_SIZE - len(header)))
    return header + body


async def _measure() -> dict[str, Run]:
    with tempfile.TemporaryDirectory(prefix="bench-esptool-") as directory:
        workdir = Path(directory)
        typical, worst = workdir / "typical.bin", workdir / "incompressible.bin"
        typical.write_bytes(firmware_like_image())
        worst.write_bytes(build_firmware_image("spec", "1.0.0", size=IMAGE_SIZE))
        runs: dict[str, list[Run]] = {"typical": [], "worst": [], "rom": []}
        for _ in range(ROUNDS):
            runs["typical"].append(await _flash(typical, workdir, no_stub=False))
            runs["worst"].append(await _flash(worst, workdir, no_stub=False))
            runs["rom"].append(await _flash(typical, workdir, no_stub=True))
        return {name: min(found, key=lambda run: run.wall) for name, found in runs.items()}


def main() -> list[Result]:
    runs = asyncio.run(_measure())
    kib = IMAGE_SIZE / 1024
    budget = kib / BUDGET_SECONDS
    typical, worst, rom = runs["typical"], runs["worst"], runs["rom"]
    print(
        "esptool write-flash 1 MiB over a pty: "
        f"stub {typical.wall:.2f} s (firmware-like), {worst.wall:.2f} s (incompressible); "
        f"ROM {rom.wall:.2f} s; budget {BUDGET_SECONDS:g} s. CPU, esptool / emulator: "
        f"{typical.esptool_cpu:.2f} / {typical.emulator_cpu:.2f} s"
    )
    return [
        Result(
            "esptool_flash",
            "firmware-like 1 MiB, stub, vs the 3 s budget",
            kib / typical.wall,
            "KiB/s",
            budget,
            1.0,
        ),
        Result(
            "esptool_flash",
            "incompressible 1 MiB, stub, vs the 3 s budget",
            kib / worst.wall,
            "KiB/s",
            budget,
        ),
        Result(
            "esptool_flash",
            "firmware-like 1 MiB, ROM (--no-stub), vs the budget",
            kib / rom.wall,
            "KiB/s",
            budget,
        ),
        Result(
            "esptool_flash",
            "CPU: esptool vs the emulator answering it (stub write)",
            typical.esptool_cpu,
            "s",
            max(typical.emulator_cpu, 1e-3),
            5.0,
        ),
    ]


if __name__ == "__main__":
    for result in main():
        print(result)
