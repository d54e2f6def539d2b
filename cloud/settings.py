"""The cloud service's settings: where it listens, where it keeps its state, and its limits."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

KIB = 1024
DEFAULT_PORT = 5001  # the port firmware 1.0.4 has compiled in


@dataclass(frozen=True)
class Limits:
    """Bounds the service enforces on what it accepts and keeps."""

    max_body_bytes: int = 256 * KIB  # any request body; beyond it 413
    diagnostics_max_bytes: int = 64 * KIB  # one diagnostics document
    diagnostics_per_device: int = 100  # retention per device
    telemetry_page: int = 1000  # default page of the read API
    telemetry_page_max: int = 10_000
    command_lease_seconds: float = 30.0  # a delivered command without result is delivered again after this
    command_max_deliveries: int = 3  # then it is timed_out
    ota_session_timeout_seconds: float = 300.0  # an OTA session without activity expires
    shutdown_seconds: float = 10.0  # SIGTERM: how long in-flight requests may take to finish


@dataclass(frozen=True)
class CloudSettings:
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    data_dir: Path = Path(".state/cloud")
    db_url: str | None = None  # postgresql://... ; None: SQLite in data_dir
    mqtt_url: str | None = None
    open_operator_api: bool = False  # lab only: operator routes without a bearer token
    keys_dir: Path = Path("keys")
    firmware_dir: Path = Path("firmware")
    limits: Limits = field(default_factory=Limits)

    @property
    def storage_target(self) -> str:
        """What `open_storage` is given: the database URL, else the SQLite data directory."""
        return self.db_url if self.db_url else os.fspath(self.data_dir)
