"""`ecowatt device run --serial URL`: the board's serial port as a pyserial URL server, as a user runs it."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

import pytest
import serial

from harness.cli import main
from tests.device_emulator.test_device_cli import ECOWATT

NOWHERE = "http://127.0.0.1:9"


def read_console(url: str, until: bytes, timeout: float = 10.0) -> bytes:
    """Open the port as a terminal program does (reset lines released) and read until `until`."""
    port = serial.serial_for_url(url, baudrate=115200, timeout=timeout, do_not_open=True)
    port.dtr = port.rts = False
    port.open()
    try:
        data: bytes = port.read_until(until)
        return data
    finally:
        port.close()


async def test_run_serves_the_serial_port_over_rfc2217_and_prints_where(tmp_path: Path) -> None:
    process = await asyncio.create_subprocess_exec(
        *ECOWATT, "device", "run", "--cloud", NOWHERE, "--inverter", NOWHERE, "--state-dir", str(tmp_path),
        "--time-scale", "20", "--serial", "rfc2217://127.0.0.1:0", "--mac", "24:0a:c4:00:00:07", "--quiet",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert process.stdout is not None
    try:
        async with asyncio.timeout(15):
            first = (await process.stdout.readline()).decode().strip()
            second = (await process.stdout.readline()).decode().strip()
        listening = re.fullmatch(r"listening on (rfc2217://127\.0\.0\.1:\d+)", first)
        assert listening, first
        assert second == f"state directory: {tmp_path}"
        # The firmware keeps failing to reach its inverter and cloud, and says so on its console.
        console = await asyncio.to_thread(read_console, listening.group(1), b" failed")
        assert re.search(rb"\[\s*\d+\]\[[WE]\]\[\w+\] [^\r\n]* failed$", console), console[
            -300:
        ]
    finally:
        process.send_signal(signal.SIGINT)
        async with asyncio.timeout(10):
            assert await process.wait() == 0


def test_a_serial_url_must_be_socket_or_rfc2217(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["device", "run", "--cloud", NOWHERE, "--serial", "tcp://127.0.0.1:0"])
    assert exit_.value.code == 2 and "socket://HOST:PORT or rfc2217://HOST:PORT" in capsys.readouterr().err
