"""A throwaway PostgreSQL cluster on 127.0.0.1 for tests and local runs.

It runs the distribution's own server binaries (`initdb`, `pg_ctl` from /usr/lib/postgresql/*/bin or
PATH) in a temporary directory, on a free loopback port, with trust authentication for one user. The
server refuses to run as root, so under root every command runs as the `postgres` user and the
directory is handed to it. `stop()` shuts the server down and removes the directory.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

SERVER_USER = "postgres"
DB_USER = "ecowatt"


class PostgresNotInstalled(RuntimeError):
    """No PostgreSQL server binaries on this machine."""


def find_bin_dir() -> Path:
    """The newest installed PostgreSQL's bin directory (the one holding initdb and pg_ctl)."""

    def version(path: Path) -> tuple[int, ...]:
        return tuple(int(part) for part in re.findall(r"\d+", path.parent.name))

    candidates = [
        p for p in Path("/usr/lib/postgresql").glob("*/bin") if (p / "initdb").exists() and (p / "pg_ctl").exists()
    ]
    if candidates:
        return max(candidates, key=version)
    initdb = shutil.which("initdb")
    if initdb and shutil.which("pg_ctl"):
        return Path(initdb).resolve().parent
    raise PostgresNotInstalled("PostgreSQL server not installed")


def is_installed() -> bool:
    try:
        find_bin_dir()
    except PostgresNotInstalled:
        return False
    return True


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class PgCluster:
    """One temporary cluster. `fsync=False` trades crash safety of the *server* for speed (tests)."""

    fsync: bool = True
    bin_dir: Path | None = None
    port: int = 0
    directory: Path | None = field(default=None, init=False)
    _running: bool = field(default=False, init=False)

    @property
    def dsn(self) -> str:
        return f"postgresql://{DB_USER}@127.0.0.1:{self.port}/postgres"

    @property
    def data_dir(self) -> Path:
        assert self.directory is not None, "cluster not started"
        return self.directory / "data"

    def _run(self, *argv: str | Path) -> None:
        command = [str(a) for a in argv]
        if os.geteuid() == 0:
            command = ["runuser", "-u", SERVER_USER, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{Path(command[0]).name} failed: {result.stdout}{result.stderr}".strip())

    def start(self) -> str:
        """Create and start the cluster; return its DSN."""
        bin_dir = self.bin_dir = self.bin_dir or find_bin_dir()
        self.directory = Path(tempfile.mkdtemp(prefix="ecowatt-pg-"))
        if os.geteuid() == 0:
            shutil.chown(self.directory, SERVER_USER, SERVER_USER)
        atexit.register(self.stop)
        try:
            # --no-sync: a throwaway cluster does not need its initial files flushed.
            self._run(bin_dir / "initdb", "-D", self.data_dir, "-A", "trust", "-U", DB_USER,
                      "-E", "UTF8", "--no-sync", "--no-instructions")
            settings = f"-c listen_addresses=127.0.0.1 -k {self.directory} -c fsync={'on' if self.fsync else 'off'}"
            for attempt in range(5):  # the free port can be taken between probing and binding
                self.port = self.port or _free_port()
                try:
                    self._run(bin_dir / "pg_ctl", "-D", self.data_dir, "-l", self.directory / "server.log",
                              "-w", "-t", "60", "-o", f"{settings} -p {self.port}", "start")
                    break
                except RuntimeError:
                    if attempt == 4:
                        raise
                    self.port = 0
            self._running = True
        except BaseException:
            self.stop()
            raise
        return self.dsn

    def stop(self) -> None:
        """Stop the server (immediate shutdown: the data is thrown away) and remove the directory."""
        atexit.unregister(self.stop)
        if self.directory is None:
            return
        if self._running and self.bin_dir is not None:
            with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
                self._run(self.bin_dir / "pg_ctl", "-D", self.data_dir, "-m", "immediate",
                          "-w", "stop")
            self._running = False
        shutil.rmtree(self.directory, ignore_errors=True)
        self.directory = None

    def __enter__(self) -> PgCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """Start a cluster, print its DSN, and keep it until interrupted (for local experiments)."""
    parser = argparse.ArgumentParser(prog="python -m harness.pg_cluster", description=main.__doc__)
    parser.add_argument("--no-fsync", action="store_true", help="faster, not crash-safe")
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # SIGTERM cleans up like Ctrl-C
    with PgCluster(fsync=not args.no_fsync) as cluster:
        print(cluster.dsn, flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()
    return 0


if __name__ == "__main__":
    sys.exit(main())
