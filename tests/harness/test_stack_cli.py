"""`ecowatt stack up`: the whole system on loopback, its URLs, a live status view, and a clean stop on
Ctrl-C (or after `--for` device seconds)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "COLUMNS": "200", "PYTHONUNBUFFERED": "1"}


def stack_up(*args: str) -> list[str]:
    return [sys.executable, "-m", "harness.stack_cli", "stack", "up", *args]


def test_on_virtual_time_it_shows_devices_working_and_stops_after_the_given_time(tmp_path: Path) -> None:
    done = subprocess.run(stack_up("--time", "virtual", "--for", "120", "--upload", "30", "--devices", "2",
                                   "--dir", str(tmp_path / "stack")),
                          cwd=REPO, capture_output=True, text=True, timeout=120, env=ENV, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert re.search(r"cloud: +http://127\.0\.0\.1:\d+", out)
    for device in ("ecowatt-0000", "ecowatt-0001"):
        assert f"device {device}:" in out
        row = next(line for line in out.splitlines() if line.startswith(f"│ {device}"))
        cells = [c.strip() for c in row.strip("│").split("│")]
        firmware, boots, polls, uploads = cells[1], int(cells[2]), int(cells[3]), int(cells[6])
        assert firmware == "spec 1.1.0" and boots == 1
        assert polls >= 55 and uploads >= 3  # 2 s polls and 30 s uploads over 120 s
    assert "device time 120 s" in out
    assert (tmp_path / "stack" / "logs" / "ecowatt-0000.console.log").stat().st_size > 0


def test_on_real_time_ctrl_c_stops_everything(tmp_path: Path) -> None:
    child = subprocess.Popen(stack_up("--time", "real", "--dir", str(tmp_path / "stack")), cwd=REPO,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    assert child.stdout is not None
    seen: list[str] = []
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline:
            line = child.stdout.readline()
            seen.append(line)
            if "Ctrl-C to stop" in line or not line:
                break
        assert any("Ctrl-C to stop" in line for line in seen), "".join(seen)
        child.send_signal(signal.SIGINT)
        rest, _ = child.communicate(timeout=30)
    except BaseException:
        child.kill()
        child.wait()
        raise
    assert child.returncode == 0, "".join(seen) + rest
    assert "stopping" in rest


@pytest.mark.parametrize("argument", [["--devices", "0"], ["--time", "sometimes"]])
def test_bad_arguments_are_refused(argument: list[str]) -> None:
    done = subprocess.run(stack_up(*argument), cwd=REPO, capture_output=True, text=True, timeout=60, env=ENV,
                          check=False)
    assert done.returncode == 2 and "error" in done.stderr
