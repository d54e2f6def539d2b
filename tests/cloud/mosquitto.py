"""A real Mosquitto broker for the tests, on a free loopback port, that can be stopped and started again.

Persistence is on (in the test's directory), so a subscriber's persistent session and the retained
messages survive a restart the way they do on a production broker.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from pathlib import Path

MOSQUITTO = "/usr/sbin/mosquitto"
START_TIMEOUT = 10.0


def mosquitto_path() -> str | None:
    return MOSQUITTO if Path(MOSQUITTO).exists() else shutil.which("mosquitto")


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Mosquitto:
    def __init__(self, directory: Path, port: int | None = None) -> None:
        executable = mosquitto_path()
        assert executable is not None, "mosquitto not installed"
        self.executable = executable
        self.directory = directory
        self.port = port or free_port()
        self.config = directory / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "persistence true\n"
            f"persistence_location {directory}/\n"
            "autosave_interval 1\n"
            f"log_dest file {directory}/mosquitto.log\n"
        )
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.process = subprocess.Popen([self.executable, "-c", str(self.config)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"mosquitto exited with {self.process.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.02)
        raise RuntimeError("mosquitto did not start listening")

    def stop(self) -> None:
        """SIGTERM: the broker saves its persistent state and exits."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None
