"""pyserial URL handlers for the harness: `install()` puts them ahead of pyserial's own.

Only `rfc2217://` is replaced (protocol_rfc2217.py): pyserial's RFC 2217 client renegotiates baud
rate, data size, parity, stop bits and flow control with the server, waiting at least 50 ms for each
acknowledgement, every time a program changes the port's read timeout, although that timeout lives in
the client alone. esptool changes it around most commands, so a `chip-id` over rfc2217:// spent about
8 of its 9 seconds in those waits. The replacement renegotiates only when a line setting changed, and
waits for acknowledgements of DTR/RTS and purge requests in milliseconds instead of 50 ms steps.

`ESPTOOL_MAIN` is a `python -c` program: esptool's own command line with these handlers installed, so
the harness can still run esptool as a separate tool (harness/flashing.py).
"""

from __future__ import annotations

import serial

PACKAGE = __name__
ESPTOOL_MAIN = (
    "import sys; from harness.serial_urls import install; install(); "
    "import esptool; sys.argv[0] = 'esptool'; esptool._main()"
)


def install() -> None:
    """Make `serial.serial_for_url` use these handlers first (idempotent)."""
    if PACKAGE not in serial.protocol_handler_packages:
        serial.protocol_handler_packages.insert(0, PACKAGE)
