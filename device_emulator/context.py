"""What every firmware component gets: the device's shared state and its clocks, in one object.

This is the contract between the firmware loop (firmware.py, device.py) and the components
(remote_config.py, command_executor.py, ota_client.py): a component takes `ctx: FirmwareContext` in its
constructor and reaches the world only through it, so the harness can run it on real, scaled or
virtual time and cut the power at any tagged point.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported for types only: these modules import this one
    import aiohttp

    from device_emulator.console import Console
    from device_emulator.event_log import EventLog
    from device_emulator.flash import Flash
    from device_emulator.inverter_link import InverterLink
    from device_emulator.nvs import NvsStore
    from device_emulator.power import PowerMeter
    from device_emulator.profiles import Profile


class PowerCut(BaseException):
    """Raised at a tagged point to emulate losing power there.

    A BaseException, not an Exception, so that no `except Exception` in the firmware model swallows
    it: like a real power cut, it stops everything and only what was already durable survives.
    """

    def __init__(self, point: str) -> None:
        super().__init__(point)
        self.point = point


@dataclass
class FirmwareContext:
    """The running firmware's view of its board (one per boot)."""

    device_id: str
    version: str
    profile: Profile
    nvs: NvsStore
    flash: Flash
    events: EventLog
    power: PowerMeter
    console: Console  # console.log(tag, message): a UART log line in the firmware's style
    http: aiohttp.ClientSession  # the WiFi stack: requests to the cloud
    cloud_url: str  # base URL without a trailing slash
    inverter: InverterLink  # await inverter.write_register(address, value) -> bool
    clock: Callable[[], float]  # device seconds (monotonic, time-scaled)
    wall_clock: Callable[[], float]  # epoch seconds, for timestamps
    millis: Callable[[], int]  # milliseconds since boot, wrapping at 2**32 like Arduino millis()
    sleep: Callable[[float], Awaitable[None]]  # sleep for device seconds (honours the time scale)
    request_reboot: Callable[
        [str], None
    ]  # ask the device to restart (reason); takes effect after the loop step
    point: Callable[[str], None]  # tagged point hook, e.g. "upload.sent": the harness may raise PowerCut
    time_scale: float = 1.0  # device seconds per loop second (aiohttp/pymodbus timeouts are loop seconds)

    def loop_seconds(self, device_seconds: float) -> float:
        """A device duration in loop seconds, e.g. for `aiohttp.ClientTimeout(total=...)`."""
        return device_seconds / self.time_scale

    def url(self, path: str) -> str:
        """The cloud URL of `path` (which starts with '/')."""
        return self.cloud_url.rstrip("/") + path
