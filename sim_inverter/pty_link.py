"""A virtual serial cable: two pseudo-terminals joined back to back (what `socat pty pty` does).

The RTU server opens one end and a client (the device emulator, a test, a person with a Modbus tool)
opens the other, by path. Bytes are copied on the event loop, in both directions.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tty


class _Pty:
    def __init__(self) -> None:
        self.master, self._slave = os.openpty()
        tty.setraw(self._slave)  # no line discipline: 0x0A, 0x0D, 0x03 are just bytes
        os.set_blocking(self.master, False)
        self.path = os.ttyname(self._slave)

    def close(self) -> None:
        for fd in (self.master, self._slave):
            with contextlib.suppress(OSError):
                os.close(fd)


class PtyLink:
    """`server_path` and `client_path` are the two ends; open each with any serial library."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._server_end, self._client_end = _Pty(), _Pty()
        self.server_path = self._server_end.path
        self.client_path = self._client_end.path
        self._loop.add_reader(self._server_end.master, self._copy, self._server_end, self._client_end)
        self._loop.add_reader(self._client_end.master, self._copy, self._client_end, self._server_end)

    @staticmethod
    def _copy(source: _Pty, target: _Pty) -> None:
        try:
            data = os.read(source.master, 4096)
            os.write(target.master, data)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            return  # the far end is not open yet (EIO): bytes on an unplugged cable are lost

    def close(self) -> None:
        for end in (self._server_end, self._client_end):
            self._loop.remove_reader(end.master)
            end.close()
