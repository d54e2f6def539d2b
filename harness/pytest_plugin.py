"""The EcoWatt HIL pytest plugin (entry point `pytest11`): command-line options of the harness."""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ecowatt", "EcoWatt HIL")
    group.addoption("--dut", choices=("emu", "board"), default="emu", help="device under test")
    group.addoption("--port", default=None, help="serial port of the board (with --dut board)")
    group.addoption(
        "--profile", choices=("spec", "reference-1.0.4"), default="spec", help="emulated firmware"
    )
    group.addoption("--time", default="virtual", help="virtual | real | scale:X")
    group.addoption("--seed", type=int, default=1, help="seed of the simulator and fault schedules")
    group.addoption("--report", default=None, help="directory for the run's report")
    group.addoption("--cloud-db", default=None, help="database URL of the cloud (default SQLite)")
