"""How one emulated device is set up: where its cloud and inverter are, who it is, which build it runs.

Everything a real board gets from its build and its provisioning (cloud URL, inverter API key, device
id, pre-shared key) plus what only the emulator has (state directory, time scale, timing overrides,
jitter seed).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from device_emulator.profiles import PROFILES, REFERENCE, SPEC, Profile, Quirks, Timings
from protocol.envelope import PSK_SIZE, REFERENCE_PSK

# The firmware's compiled-in pre-shared key (§4.4): one public key for the whole fleet.
FLEET_KEY: bytes = REFERENCE_PSK
DEFAULT_DEVICE_ID = "ESP32_EcoWatt_Smart"
# The version a fresh state directory is factory-flashed with, per profile.
FACTORY_VERSIONS = {REFERENCE: "1.0.4", SPEC: "1.1.0"}

TRANSPORT_HTTP = "http"
TRANSPORT_MODBUS_TCP = "modbus-tcp"
TRANSPORT_RTU = "rtu"


@dataclass(frozen=True)
class Transport:
    """How the device reaches the inverter: `http` (the SIM's frame API, the firmware's transport),
    `modbus-tcp`, or `rtu` on a serial port."""

    kind: str
    serial_path: str | None = None

    @classmethod
    def parse(cls, text: str) -> Transport:
        """`http`, `modbus-tcp` or `rtu:PATH`; ValueError otherwise."""
        if text in (TRANSPORT_HTTP, TRANSPORT_MODBUS_TCP):
            return cls(text)
        kind, colon, path = text.partition(":")
        if kind == TRANSPORT_RTU and colon and path:
            return cls(TRANSPORT_RTU, path)
        raise ValueError(f"transport must be http, modbus-tcp or rtu:PATH, not {text!r}")

    def __str__(self) -> str:
        return f"{self.kind}:{self.serial_path}" if self.serial_path else self.kind


@dataclass(frozen=True)
class DeviceConfig:
    cloud_url: str  # base URL of the cloud, e.g. http://127.0.0.1:5001
    inverter_url: str  # http://HOST:PORT (frame API) or modbus-tcp://HOST:PORT; ignored for rtu
    state_dir: Path  # flash and NVS files live here: the device's durable state
    transport: Transport = field(default_factory=lambda: Transport(TRANSPORT_HTTP))
    device_id: str = DEFAULT_DEVICE_ID
    key: bytes = FLEET_KEY  # PSK of the upload envelope (§4.4)
    profile: str = REFERENCE  # the build factory-flashed into a fresh state directory
    version: str | None = None  # its version; None: FACTORY_VERSIONS[profile]
    time_scale: float = 1.0  # device seconds per loop second
    api_key: str = ""  # Authorization value for the inverter's frame API
    timings: dict[str, Any] = field(default_factory=dict)  # Timings field -> value (device seconds)
    quirks: dict[str, bool] = field(default_factory=dict)  # Quirks field -> switch, over the profile's
    seed: int | None = None  # jitter of the timer phases (fleets); None: no jitter
    durable: bool = True  # fsync NVS writes (off for big fleets on virtual time)
    firmware_keys: Path | None = None  # AES key + signer's public key the build has compiled in (§7.1)

    def __post_init__(self) -> None:
        if isinstance(self.transport, str):
            object.__setattr__(self, "transport", Transport.parse(self.transport))
        object.__setattr__(self, "state_dir", Path(self.state_dir))
        if self.profile not in PROFILES:
            raise ValueError(f"unknown profile {self.profile!r} (known: {', '.join(PROFILES)})")
        if len(self.key) != PSK_SIZE:
            raise ValueError(f"the key must be {PSK_SIZE} bytes, not {len(self.key)}")
        if not self.time_scale > 0:
            raise ValueError("time_scale must be positive")
        if not self.device_id:
            raise ValueError("device_id must not be empty")
        known = {f.name for f in dataclasses.fields(Timings)}
        unknown = set(self.timings) - known
        if unknown:
            raise ValueError(f"unknown timing overrides {sorted(unknown)} (known: {sorted(known)})")
        unknown = set(self.quirks) - {f.name for f in dataclasses.fields(Quirks)}
        if unknown:
            raise ValueError(f"unknown quirks {sorted(unknown)}")
        for url in (self.cloud_url,) + ((self.inverter_url,) if self.transport.kind != TRANSPORT_RTU else ()):
            parts = urlsplit(url)
            if not parts.scheme or not parts.hostname:
                raise ValueError(f"not a URL: {url!r}")

    @property
    def factory_version(self) -> str:
        return self.version or FACTORY_VERSIONS[self.profile]

    def profile_for(self, name: str) -> Profile:
        """The profile `name` (from the booted image) with this device's timing overrides."""
        base = PROFILES[name]
        if self.quirks:
            base = dataclasses.replace(base, quirks=dataclasses.replace(base.quirks, **self.quirks))
        return base.with_timings(**self.timings) if self.timings else base
