"""The acceptance suite on a board: an unmodified scenario module passes through `ecowatt run --dut board
--port <the emulator's serial endpoint>`, with the real esptool and the real pyserial on the path.

The board is what a user starts in another terminal: `ecowatt device run --serial rfc2217://127.0.0.1:0`,
its port read from its `listening on` line. Its own settings lead nowhere; the harness provisions it for
the run (its proxies' URLs, the id and key it registered, the scenario's poll and upload periods) with
esptool, and resets it through RTS. Board and harness run on the same scaled time, so the scenario's
hour of device time takes about 72 s; everything listens on free ports, so this runs beside other
tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import runpy
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SCENARIO = REPO / "scenarios" / "test_upload_cycle.py"  # four 15-minute cycles: an hour of device time
# Device seconds per real second, for the board and the harness: the hour in about 72 s. The board's 5 s
# HTTP timeouts shrink with the scale while the harness's loop (cloud, simulator, proxies) does not
# speed up: at 300 an inverter answer that came too late shifted the samples the conservation checker
# infers from the ledger and failed the scenario; 50 leaves a busy CI machine a 100 ms margin.
SCALE = 50
MAC = "24:0a:c4:5c:a1:e0"  # not the emulator's default: the report must have read it from this board
NOWHERE = "http://127.0.0.1:9"
# Where the board reaches this machine (`--board-host`: a real board's is the LAN address of its Wi-Fi);
# another loopback address, so the test shows the harness listens and provisions where it is told.
BOARD_HOST = "127.0.0.2"
ECOWATT = [sys.executable, "-m", "harness.cli"]


@contextlib.asynccontextmanager
async def emulated_board(state_dir: Path, console: Path) -> AsyncIterator[str]:
    """`ecowatt device run` with an RFC 2217 port, as a user starts it; yields the port's URL."""
    with console.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            *ECOWATT, "device", "run", "--serial", "rfc2217://127.0.0.1:0", "--time-scale", str(SCALE),
            "--profile", "spec", "--cloud", NOWHERE, "--inverter", NOWHERE, "--mac", MAC,
            "--state-dir", str(state_dir),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=stderr,
        )  # fmt: skip
    assert process.stdout is not None
    try:
        async with asyncio.timeout(30):
            line = (await process.stdout.readline()).decode().strip()
        assert line.startswith("listening on rfc2217://127.0.0.1:"), line
        yield line.removeprefix("listening on ")
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(10):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()


@pytest.mark.timeout(240)
async def test_an_unmodified_scenario_module_passes_on_a_board_behind_an_rfc2217_port(tmp_path: Path) -> None:
    report = tmp_path / "report"
    console = tmp_path / "board-console.log"
    async with emulated_board(tmp_path / "board", console) as port:
        process = await asyncio.create_subprocess_exec(
            *ECOWATT, "run", str(SCENARIO), "--dut", "board", "--port", port, "--board-host", BOARD_HOST,
            "--time", f"scale:{SCALE}",
            "--report", str(report),
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        output, _ = await asyncio.wait_for(process.communicate(), 200)
    shown = output.decode("utf-8", "replace")
    log = (report / "pytest.log").read_text(errors="replace") if (report / "pytest.log").is_file() else ""
    assert process.returncode == 0, shown + "\n--- pytest.log ---\n" + log[-4000:]

    record = json.loads((report / "report.json").read_text())
    [scenario] = record["scenarios"]
    assert scenario["verdict"] == "passed" and scenario["nodeid"].endswith(
        "test_uploads_arrive_on_the_cycle_and_are_compressed")
    provenance = record["provenance"]
    assert (provenance["dut"], provenance["port"]) == ("board", port)
    assert provenance["board_mac"] == MAC and provenance["board_chip"].startswith("ESP32")  # esptool read it
    assert provenance["firmware_profile"] == "spec" and provenance["esptool_version"]

    # The board ran the scenario as provisioned: the stack's proxies, and the periods of its hil marker.
    marker = runpy.run_path(str(SCENARIO))
    lines = console.read_text(errors="replace").splitlines()
    provisioned = [line for line in lines if "[main] provisioned: device" in line]
    assert provisioned and re.search(rf"cloud http://{re.escape(BOARD_HOST)}:\d+, inverter http://{re.escape(BOARD_HOST)}:",
                                     provisioned[-1]), provisioned
    assert NOWHERE not in provisioned[-1]
    assert any(f"poll {marker['POLL_S']} s, upload {marker['UPLOAD_S']} s" in line for line in lines)
