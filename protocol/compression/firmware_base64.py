"""The firmware's `compressed_binary` base64, which never pads (§3.8).

Its routine completes the final partial group with `A` characters instead of `=`, so a standard
decoder returns one or two extra zero bytes; the receiver must cut to `compressed_size_bytes`.
"""

from __future__ import annotations

import base64
import binascii

from protocol.errors import CodecError

MAX_PACKET_BYTES = 189  # the routine writes into a 256-character buffer


def encode_compressed_binary(packet: bytes) -> str:
    if len(packet) > MAX_PACKET_BYTES:
        raise CodecError(f"the firmware's base64 buffer holds at most {MAX_PACKET_BYTES} bytes", len(packet))
    return base64.b64encode(packet).decode("ascii").replace("=", "A")


def decode_compressed_binary(text: str, size: int) -> bytes:
    """The packet bytes of `compressed_binary`, cut to `compressed_size_bytes` (padded input also works)."""
    if not isinstance(text, str) or not text.isascii():
        raise CodecError("compressed_binary must be ASCII text", text)
    if not isinstance(size, int) or isinstance(size, bool) or not 1 <= size <= MAX_PACKET_BYTES:
        raise CodecError(f"compressed_size_bytes must be 1..{MAX_PACKET_BYTES}", size)
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise CodecError("compressed_binary is not base64", text) from None
    if len(data) not in (size, -(-size // 3) * 3) or any(data[size:]):
        raise CodecError(f"compressed_binary does not hold {size} bytes", text)
    return data[:size]
