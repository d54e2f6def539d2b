"""SLIP framing (RFC 1055) as the ESP32 serial loader and esptool use it.

A frame is `0xC0 body 0xC0`; inside the body 0xC0 travels as `DB DC` and 0xDB as `DB DD`. Frames often
come back to back (`C0 .. C0 C0 .. C0`), and an empty body between two END bytes is just the start of
the next frame. Bytes outside any frame (console text, line noise) are not part of the protocol.

`encode` builds one frame; `decode` undoes the escaping of one body; `SlipDecoder` finds frames in a byte
stream that arrives in arbitrary pieces. A bad escape or an oversized frame is a `LoaderFrameError`:
`decode` raises it, the stream decoder reports it and resynchronises on the next END byte, as the ROM
does (it drops the frame and waits for the next one).
"""

from __future__ import annotations

from collections.abc import Callable

from protocol.errors import LoaderFrameError

END = 0xC0
ESC = 0xDB
ESC_END = 0xDC
ESC_ESC = 0xDD

# The largest body esptool sends is a stub FLASH_DATA block (16 KiB + 24 bytes of headers); anything
# much longer is noise, and bounding it bounds the memory a misbehaving peer can make us hold.
MAX_FRAME = 0x10000

ErrorHook = Callable[[LoaderFrameError], None]


def encode(payload: bytes) -> bytes:
    """One SLIP frame carrying `payload`."""
    body = bytes(payload).replace(b"\xdb", b"\xdb\xdd").replace(b"\xc0", b"\xdb\xdc")
    return b"\xc0" + body + b"\xc0"


def decode(body: bytes) -> bytes:
    """The payload of one frame body (the bytes between its END bytes)."""
    body = bytes(body)
    if END in body:
        raise LoaderFrameError("END byte inside a SLIP frame body", body)
    head, *escaped = body.split(b"\xdb")
    out = bytearray(head)
    for part in escaped:
        if not part or part[0] not in (ESC_END, ESC_ESC):
            raise LoaderFrameError("invalid SLIP escape (0xDB not followed by 0xDC or 0xDD)", body)
        out.append(END if part[0] == ESC_END else ESC)
        out += part[1:]
    if len(out) > MAX_FRAME:
        raise LoaderFrameError(f"SLIP frame longer than {MAX_FRAME} bytes", bytes(out[:64]))
    return bytes(out)


class SlipDecoder:
    """Incremental SLIP decoder: `feed()` returns the payloads of the frames completed so far.

    Bytes between frames are counted in `noise` and otherwise ignored. A rejected frame (bad escape,
    longer than `max_frame`) goes to `on_error` and is skipped up to its END byte.
    """

    def __init__(self, on_error: ErrorHook | None = None, *, max_frame: int = MAX_FRAME) -> None:
        self.on_error = on_error
        self.max_frame = max_frame
        self.noise = 0
        self.rejected = 0
        self._body: bytearray | None = None  # None: between frames
        self._discarding = False  # inside a rejected (oversized) frame, waiting for its END

    @property
    def in_frame(self) -> bool:
        """True while part of a frame has arrived and its END byte has not."""
        return self._discarding or bool(self._body)

    def reset(self) -> None:
        """Forget any partial frame (the line was reset)."""
        self._body = None
        self._discarding = False

    def _reject(self, error: LoaderFrameError) -> None:
        self.rejected += 1
        if self.on_error is not None:
            self.on_error(error)

    def feed(self, data: bytes) -> list[bytes]:
        frames: list[bytes] = []
        data = bytes(data)
        position = 0
        while position < len(data):
            end = data.find(b"\xc0", position)
            stop = len(data) if end < 0 else end
            if self._discarding:
                pass
            elif self._body is None:
                self.noise += stop - position
            else:
                self._body += data[position:stop]
                # Escaping at most doubles a body, so the raw length bounds the decoded one.
                if len(self._body) > 2 * self.max_frame:
                    too_long = bytes(self._body[:64])
                    self._body, self._discarding = None, True
                    self._reject(LoaderFrameError(f"SLIP frame longer than {self.max_frame} bytes", too_long))
            if end < 0:
                break
            position = end + 1
            if self._discarding:
                self._body, self._discarding = None, False  # the END of the rejected frame
            elif not self._body:
                self._body = bytearray()  # an opening END (or the second END of a C0 C0 pair)
            else:
                body, self._body = bytes(self._body), None
                try:
                    payload = decode(body)
                except LoaderFrameError as error:
                    self._reject(error)
                    continue
                if len(payload) > self.max_frame:
                    self._reject(
                        LoaderFrameError(f"SLIP frame longer than {self.max_frame} bytes", payload[:64])
                    )
                else:
                    frames.append(payload)
        return frames
