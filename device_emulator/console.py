"""The device's UART console: every line the board prints, kept in a ring buffer, fanned out to
subscribers and, when the board has a serial port, sent down it.

Two line formats, as a real EcoWatt board prints them after the ROM's banner (which the serial
endpoint owns, device_emulator/serial_endpoint.py `boot_banner`):

* the ESP-IDF second-stage bootloader's log, `I (ms) tag: message` (`idf()`);
* the firmware's, from the Arduino-ESP32 core's log macros, `[  millis][L][tag] message` with millis
  right-aligned in 6 columns (`log()`).

L is the level letter (E, W, I, D). `write()` prints a raw line and sends it to `sink` (the serial
endpoint's UART while the app runs); `record()` keeps a line that is already on the wire (the ROM's
banner, printed by the endpoint itself) without sending it again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

Subscriber = Callable[[str], None]
Sink = Callable[[str], None]

LEVELS = ("E", "W", "I", "D")
LINE_END = "\r\n"


class Console:
    """UART0 of one device. `millis` gives the timestamp of each line (ms since boot)."""

    def __init__(self, millis: Callable[[], int] | None = None, *, capacity: int = 2000) -> None:
        self.millis = millis or (lambda: 0)
        self.lines: deque[str] = deque(maxlen=capacity)
        self.sink: Sink | None = None  # where printed text goes on the wire (with its line ending)
        self._subscribers: list[Subscriber] = []

    def log(self, tag: str, message: str, level: str = "I") -> str:
        """Print one firmware log line; returns it (without the line ending)."""
        _check(level)
        return self.write(f"[{self.millis():6d}][{level}][{tag}] {message}")

    def idf(self, tag: str, message: str, level: str = "I") -> str:
        """Print one log line in ESP-IDF's format (the bootloader's)."""
        _check(level)
        return self.write(f"{level} ({self.millis()}) {tag}: {message}")

    def write(self, line: str) -> str:
        """Print one raw line."""
        self.record(line)
        if self.sink is not None:
            self.sink(line + LINE_END)
        return line

    def record(self, line: str) -> None:
        """Keep a line that is already on the wire: buffer and subscribers only."""
        self.lines.append(line)
        for subscriber in list(self._subscribers):
            subscriber(line)

    def subscribe(self, subscriber: Subscriber) -> Callable[[], None]:
        """Call `subscriber(line)` for every new line; returns the function that unsubscribes."""
        self._subscribers.append(subscriber)
        return lambda: self._subscribers.remove(subscriber) if subscriber in self._subscribers else None

    def tail(self, count: int = 20) -> list[str]:
        return list(self.lines)[-count:]

    def close(self) -> None:
        self.sink = None


def _check(level: str) -> None:
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}")
