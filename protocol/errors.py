"""The project's typed errors.

Every parser of network, serial or file bytes returns a value or raises one of these. Each error
carries the offending value (trimmed for display) so that a log line or an HTTP reply can say what was
wrong without echoing secrets. The mapping to HTTP statuses lives in one place: `HTTP_STATUS`.
"""

from __future__ import annotations

from typing import Any

_MAX_SHOWN = 80


def _shown(value: Any) -> str:
    text = value.hex() if isinstance(value, bytes | bytearray) else repr(value)
    return text if len(text) <= _MAX_SHOWN else text[: _MAX_SHOWN - 3] + "..."


class EcoWattError(Exception):
    """Base of every error raised on bad input. `value` is what was wrong (never a key)."""

    code = "invalid_input"

    def __init__(self, message: str, value: Any = None) -> None:
        self.message = message
        self.value = value
        super().__init__(message if value is None else f"{message}: {_shown(value)}")


class FrameError(EcoWattError):
    """A Modbus RTU frame (or its hex text) that cannot be parsed."""

    code = "bad_frame"


class RegisterError(EcoWattError):
    """An unknown register, a write to a read-only one, or a value out of range."""

    code = "bad_register"


class CodecError(EcoWattError):
    """A compressed packet that cannot be decoded."""

    code = "bad_packet"


class DocumentError(EcoWattError):
    """A JSON document (upload, config, command, manifest...) of the wrong shape."""

    code = "bad_document"


class EnvelopeError(EcoWattError):
    """A secured-upload envelope that is malformed (as opposed to one that fails authentication)."""

    code = "bad_envelope"


class AuthenticationError(EcoWattError):
    """A well-formed envelope whose MAC or nonce is not acceptable."""

    code = "unauthenticated"


class ReplayError(AuthenticationError):
    """A nonce not greater than the last accepted one for the device."""

    code = "replay"


class ImageError(EcoWattError):
    """An ESP32 app image, partition table or otadata record that is not valid."""

    code = "bad_image"


class FirmwareError(EcoWattError):
    """Firmware preparation or verification failed: decryption, padding, hash or signature."""

    code = "bad_firmware"


# One place maps error kinds to HTTP statuses (the cloud and the simulator use it).
HTTP_STATUS: dict[type[EcoWattError], int] = {
    AuthenticationError: 401,
    ReplayError: 401,
}


def http_status(error: EcoWattError) -> int:
    """The HTTP status for an error: the most specific registered class wins, else 400."""
    for cls in type(error).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 400


class NvsError(EcoWattError):
    """An NVS write the store refuses, as ESP-IDF would: bad namespace/key name, value out of range or
    too long, or a key rewritten with another type."""

    code = "bad_nvs"


class FlashError(EcoWattError):
    """A flash operation the SPI flash driver refuses: outside the chip, or an erase that is not on
    4 KiB sector boundaries. `value` is the offending (offset, length)."""

    code = "bad_flash_op"


class LoaderFrameError(FrameError):
    """A packet of the ESP32 serial loader protocol (esptool <-> ROM) that cannot be parsed: a bad SLIP
    escape, an oversized frame, a command header that is short or whose length field lies. `value` is
    the offending bytes."""

    code = "bad_loader_frame"


class HttpFramingError(FrameError):
    """HTTP/1.1 bytes whose message framing cannot be followed: a bad start line or header, a
    Content-Length or chunk size that is not a number, a head too large. `value` is the offending
    bytes."""

    code = "bad_http_framing"
