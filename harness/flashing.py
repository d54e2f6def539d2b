"""Flash an ESP32 (a real board, or an emulated one on its serial endpoint) with esptool.

esptool runs as a subprocess (the same install as the `esptool` command, with the harness's pyserial
URL handlers installed: harness/serial_urls, which make rfc2217:// ports about ten times faster): it is
GPL-licensed, so the harness drives it as a tool rather than linking its internals, and a subprocess can
be stopped when a port never answers. Its output is read line by line: the connection, the chip, the
MAC, write progress and the final hash check become a typed `FlashResult`; failures become
`FlashingFailed`, whose message always names the port.

esptool's own connection attempts can take longer than a person waits at a silent port (7 attempts, each
with reset pulses and five syncs); `connect_timeout` bounds that: no "Connected" within it, and the
port is reported as not answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from harness.serial_urls import ESPTOOL_MAIN

CONNECT_TIMEOUT = 7.0  # seconds: well under the 10 s a user should wait to hear that nothing answers
DEFAULT_OFFSET = 0x10000  # the factory / ota_0 app slot of the default partition table
DEFAULT_BAUD = 460800
BEFORE_CHOICES = ("default-reset", "usb-reset", "no-reset", "no-reset-no-sync")
AFTER_CHOICES = ("hard-reset", "soft-reset", "no-reset", "no-reset-stub", "watchdog-reset")

ProgressHook = Callable[[float], None]

_CONNECTED = re.compile(r"^Connected to (\S+) on ")
_CHIP = re.compile(r"^Chip type:\s+(.+)$")
_MAC = re.compile(r"^MAC:\s+([0-9a-f:]{17})")
_PROGRESS = re.compile(r"^Writing at 0x[0-9a-f]+\b.*?(\d+(?:\.\d+)?)%")
_FATAL = re.compile(r"A fatal error occurred:\s*(.+)$")


class FlashingFailed(Exception):
    """esptool could not flash the board. `port` is the port, `output` what esptool printed."""

    def __init__(self, message: str, port: str, output: str = "") -> None:
        super().__init__(message)
        self.port = port
        self.output = output


@dataclass(frozen=True)
class FlashResult:
    port: str
    chip: str  # e.g. "ESP32-D0WD (revision v1.0)"
    mac: str  # e.g. "24:0a:c4:e5:a0:10"
    offset: int
    size: int
    verified: bool  # esptool read the MD5 back and it matched
    output: str


@dataclass(frozen=True)
class FlashOptions:
    offset: int = DEFAULT_OFFSET
    baud: int = DEFAULT_BAUD
    chip: str = "esp32"
    before: str = "default-reset"
    after: str = "hard-reset"
    no_stub: bool = False
    compress: bool | None = None  # None: esptool's default (compressed with the stub)
    connect_timeout: float = CONNECT_TIMEOUT

    def esptool_args(self, port: str, image_path: str) -> list[str]:
        if self.before not in BEFORE_CHOICES or self.after not in AFTER_CHOICES:
            raise ValueError(f"unknown reset mode: --before {self.before} --after {self.after}")
        args = ["--chip", self.chip, "--port", port, "--baud", str(self.baud)]
        args += ["--before", self.before, "--after", self.after]
        if self.no_stub:
            args.append("--no-stub")
        args.append("write-flash")
        if self.compress is not None:
            args.append("-z" if self.compress else "-u")
        return [*args, hex(self.offset), image_path]


def esptool_command() -> list[str]:
    """How to run esptool: the interpreter running the harness, so its venv's esptool, with the
    harness's pyserial URL handlers."""
    return [sys.executable, "-c", ESPTOOL_MAIN]


async def flash_image(
    port: str,
    image: bytes | str | Path,
    options: FlashOptions | None = None,
    *,
    progress: ProgressHook | None = None,
) -> FlashResult:
    """Write `image` (bytes or a file) to the flash behind `port` at `options.offset` and verify it."""
    options = options or FlashOptions()
    with contextlib.ExitStack() as stack:
        if isinstance(image, bytes):
            temporary = stack.enter_context(tempfile.NamedTemporaryFile(suffix=".bin"))
            temporary.write(image)
            temporary.flush()
            path, size = temporary.name, len(image)
        else:
            path = str(image)
            try:
                size = Path(path).stat().st_size
            except OSError as error:
                raise FlashingFailed(f"cannot read the image {path}: {error.strerror}", port) from error
        run = _EsptoolRun(port, [*esptool_command(), *options.esptool_args(port, path)], progress)
        await run.wait(options.connect_timeout)
        if not run.verified:
            raise FlashingFailed(f"{port}: esptool did not confirm the written data", port, run.text)
        return FlashResult(port, run.chip, run.mac, options.offset, size, run.verified, run.text)


class _EsptoolRun:
    """One esptool subprocess, its output parsed as it arrives."""

    def __init__(self, port: str, argv: Sequence[str], progress: ProgressHook | None) -> None:
        self.port = port
        self.argv = list(argv)
        self.progress = progress
        self.lines: list[str] = []
        self.connected = asyncio.Event()
        self.chip = ""
        self.mac = ""
        self.verified = False
        self.fatal = ""

    @property
    def text(self) -> str:
        return "\n".join(self.lines)

    async def wait(self, connect_timeout: float) -> None:
        # A wide, colourless console so progress lines are not wrapped or decorated.
        env = {**os.environ, "COLUMNS": "200", "NO_COLOR": "1", "PYTHONUNBUFFERED": "1"}
        process = await asyncio.create_subprocess_exec(
            *self.argv,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env=env,
            limit=1 << 20,
        )
        assert process.stdout is not None
        reading = asyncio.ensure_future(self._read(process.stdout))
        try:
            connected = asyncio.ensure_future(self.connected.wait())
            await asyncio.wait(
                {connected, reading}, timeout=connect_timeout, return_when=asyncio.FIRST_COMPLETED
            )
            connected.cancel()
            if not self.connected.is_set() and not reading.done():
                raise FlashingFailed(
                    f"no ESP32 answered on {self.port} within {connect_timeout:g} s "
                    "(is it connected, powered, and able to enter download mode?)",
                    self.port,
                    self.text,
                )
            await reading
            returncode = await process.wait()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()
            reading.cancel()
        if returncode != 0:
            reason = self.fatal or (
                self.lines[-1] if self.lines else f"esptool exited with status {returncode}"
            )
            if not self.connected.is_set():
                raise FlashingFailed(
                    f"could not connect to an ESP32 on {self.port}: {reason}", self.port, self.text
                )
            raise FlashingFailed(f"flashing through {self.port} failed: {reason}", self.port, self.text)

    async def _read(self, stream: asyncio.StreamReader) -> None:
        while raw := await stream.readline():
            line = raw.decode("utf-8", "replace").rstrip()
            self.lines.append(line)
            self._parse(line)

    def _parse(self, line: str) -> None:
        if _CONNECTED.match(line):
            self.connected.set()
        elif match := _CHIP.match(line):
            self.chip = match.group(1).strip()
        elif match := _MAC.match(line):
            self.mac = match.group(1)
        elif match := _PROGRESS.match(line):
            if self.progress is not None:
                self.progress(float(match.group(1)))
        elif line.startswith("Hash of data verified"):
            self.verified = True
        elif match := _FATAL.search(line):
            self.fatal = match.group(1).strip()
