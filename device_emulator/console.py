"""The device's UART console: log lines in the firmware's style, kept in a ring buffer, fanned out to
subscribers and, optionally, written to a pseudo-terminal that any serial tool can open.

Line format, as the Arduino-ESP32 core's log macros print it: `[  millis][L][tag] message` with
millis right-aligned in 6 columns and L the level letter (E, W, I, D).
"""

from __future__ import annotations

import contextlib
import os
import tty
from collections import deque
from collections.abc import Callable

Subscriber = Callable[[str], None]

LEVELS = ("E", "W", "I", "D")
# What the ESP32 ROM prints at every reset (abridged), before the bootloader and the app.
POWERON_RESET = "0x1 (POWERON_RESET)"  # power-on, and the EN pin (the DevKit's reset button)
SW_CPU_RESET = "0xc (SW_CPU_RESET)"  # esp_restart(), e.g. after an OTA update
ROM_BANNER = (
    "ets Jul 29 2019 12:21:46",
    "",
    "rst:{reset},boot:0x13 (SPI_FAST_FLASH_BOOT)",
    "configsip: 0, SPIWP:0xee",
    "clk_drv:0x00,q_drv:0x00,d_drv:0x00,cs0_drv:0x00,hd_drv:0x00,wp_drv:0x00",
    "mode:DIO, clock div:2",
    "entry 0x400805e4",
)


class Console:
    """UART0 of one device. `millis` gives the timestamp of each line (ms since boot)."""

    def __init__(self, millis: Callable[[], int] | None = None, *, capacity: int = 2000) -> None:
        self.millis = millis or (lambda: 0)
        self.lines: deque[str] = deque(maxlen=capacity)
        self._subscribers: list[Subscriber] = []
        self._pty_master: int | None = None
        self.pty_path: str | None = None

    def log(self, tag: str, message: str, level: str = "I") -> str:
        """Print one log line; returns it (without the line ending)."""
        if level not in LEVELS:
            raise ValueError(f"level must be one of {LEVELS}")
        return self.write(f"[{self.millis():6d}][{level}][{tag}] {message}")

    def write(self, line: str) -> str:
        """Print one raw line (boot banners, prints without a tag)."""
        self.lines.append(line)
        for subscriber in list(self._subscribers):
            subscriber(line)
        if self._pty_master is not None:
            # A console nobody reads must not stall the device: drop what the pty cannot take.
            with contextlib.suppress(BlockingIOError, OSError):
                os.write(self._pty_master, (line + "\r\n").encode("utf-8", "replace"))
        return line

    def banner(self, reset: str = POWERON_RESET) -> None:
        for line in ROM_BANNER:
            self.write(line.format(reset=reset))

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call `subscriber(line)` for every new line; returns the function that unsubscribes."""
        self._subscribers.append(subscriber)
        return lambda: self._subscribers.remove(subscriber) if subscriber in self._subscribers else None

    def tail(self, count: int = 20) -> list[str]:
        return list(self.lines)[-count:]

    def open_pty(self) -> str:
        """Mirror the console on a new pseudo-terminal; returns the path a serial tool opens."""
        if self.pty_path is not None:
            return self.pty_path
        master, slave = os.openpty()
        tty.setraw(slave)  # no line discipline: bytes pass as they are, as on a USB-UART
        os.set_blocking(master, False)
        self._pty_master, self._pty_slave = master, slave
        self.pty_path = os.ttyname(slave)
        return self.pty_path

    def close(self) -> None:
        if self._pty_master is not None:
            os.close(self._pty_master)
            os.close(self._pty_slave)
            self._pty_master = None
            self.pty_path = None
