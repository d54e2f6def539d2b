"""`rfc2217://HOST:PORT` for pyserial's `serial_for_url`: its RFC 2217 client without the needless
renegotiation (see the package docstring). Options in the URL (`?logging=debug`, `?timeout=5`...)
are pyserial's."""

from __future__ import annotations

import time
from typing import Any

import serial
import serial.rfc2217

ACK_POLL_S = 0.001  # how often to look for the server's acknowledgement (pyserial: 0.05)


class Serial(serial.rfc2217.Serial):  # type: ignore[misc]
    """pyserial's RFC 2217 client; the read timeout is the client's own business, so changing it
    sends nothing to the server."""

    _negotiated: tuple[Any, ...] | None = None

    def _line_settings(self) -> tuple[Any, ...]:
        return (self._baudrate, self._bytesize, self._parity, self._stopbits, self._rtscts, self._xonxoff)

    def open(self) -> None:
        self._negotiated = None
        super().open()

    def close(self) -> None:
        self._negotiated = None
        super().close()

    def _reconfigure_port(self) -> None:
        settings = self._line_settings()
        if self._socket is not None and settings == self._negotiated and self._write_timeout is None:
            return  # only the read timeout changed (pyserial refuses a write timeout: it still does)
        super()._reconfigure_port()
        self._negotiated = settings

    def rfc2217_set_control(self, value: bytes) -> None:
        if self._ignore_set_control_answer:
            super().rfc2217_set_control(value)
            return
        item = self._rfc2217_options["control"]
        item.set(value)
        self._acknowledged(item)

    def rfc2217_send_purge(self, value: bytes) -> None:
        item = self._rfc2217_options["purge"]
        item.set(value)
        self._acknowledged(item)

    def _acknowledged(self, item: Any) -> None:
        """Wait for the server to acknowledge `item` (what pyserial's wait does, polled finer)."""
        deadline = time.monotonic() + self._network_timeout
        while not item.is_ready():  # ValueError when the server rejected the value, as in pyserial
            if time.monotonic() > deadline:
                raise serial.SerialException(f"timeout while waiting for option {item.name!r}")
            time.sleep(ACK_POLL_S)  # a client thread waiting on the network, like pyserial's own loop


def serial_class_for_url(url: str) -> tuple[str, type[Serial]]:
    return url, Serial
