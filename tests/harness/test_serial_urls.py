"""The harness's rfc2217:// client: pyserial's, except that a change of the read timeout (esptool makes
one around most commands) sends nothing to the server, while real line changes, the modem lines and
the data still go through, so the emulated board sees what pyserial's own client would make it see.

The RFC 2217 server is the emulated board's serial endpoint; what it receives is counted on its side."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import serial
import serial.rfc2217

from device_emulator.flash import Flash
from device_emulator.serial_endpoint import ChipMode, SerialEndpoint
from harness import serial_urls
from harness.serial_urls.protocol_rfc2217 import Serial as HarnessRfc2217


@pytest.fixture
async def board(tmp_path: Path) -> AsyncIterator[SerialEndpoint]:
    async with SerialEndpoint(Flash(tmp_path / "flash.bin"), url="rfc2217://127.0.0.1:0") as endpoint:
        yield endpoint


@pytest.fixture
def baud_requests(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[bytes]]:
    """Every SET_BAUDRATE the server side receives."""
    seen: list[bytes] = []
    original = serial.rfc2217.PortManager._telnet_process_subnegotiation

    def spy(self: serial.rfc2217.PortManager, suboption: bytes) -> None:
        if suboption[:2] == serial.rfc2217.COM_PORT_OPTION + serial.rfc2217.SET_BAUDRATE:
            seen.append(suboption[2:])
        original(self, suboption)

    monkeypatch.setattr(serial.rfc2217.PortManager, "_telnet_process_subnegotiation", spy)
    yield seen


def exercise(port: serial.Serial, endpoint: SerialEndpoint) -> None:
    """What esptool does to a port, in small: timeouts changed around commands, one baud change,
    modem lines for a reset, a purge."""
    for timeout in (3.0, 0.1, 3.0, 0.1, 3.0, 0.1):
        port.timeout = timeout
    port.baudrate = 460800
    port.dtr, port.rts = False, True  # EN low
    assert endpoint.mode is ChipMode.HELD
    port.rts = False
    port.reset_input_buffer()


def open_port(url: str) -> serial.Serial:
    port = serial.serial_for_url(url, baudrate=115200, timeout=0.1, do_not_open=True)
    port.dtr = port.rts = False
    port.open()
    return port


async def test_a_timeout_change_sends_nothing_but_line_changes_reset_and_data_still_reach_the_board(
    board: SerialEndpoint, baud_requests: list[bytes]
) -> None:
    serial_urls.install()
    port = await asyncio.to_thread(open_port, board.url)
    try:
        assert isinstance(port, HarnessRfc2217)
        await asyncio.to_thread(exercise, port, board)
        async with asyncio.timeout(5):
            while board.mode is not ChipMode.RUN:  # EN rose with IO0 high: the app boots
                await asyncio.sleep(0.02)
        board.write_console("hello from the app\r\n")
        port.timeout = 2.0
        assert b"hello from the app\r\n" in await asyncio.to_thread(port.read_until, b"app\r\n")
        with pytest.raises(NotImplementedError):  # as pyserial's client: esptool relies on it
            port.write_timeout = 10
        port.write_timeout = None
    finally:
        await asyncio.to_thread(port.close)
    # Once when the port opened, once for the new rate: none of the six timeout changes.
    assert [int.from_bytes(b, "big") for b in baud_requests] == [115200, 460800]
    assert [t.cause for t in board.transitions] == ["EN low", "EN released with IO0 high"]


async def test_pyserials_own_client_renegotiates_at_every_timeout_change(
    board: SerialEndpoint, baud_requests: list[bytes]
) -> None:
    """The control: what the harness's client saves."""
    port = await asyncio.to_thread(serial.rfc2217.Serial, None, baudrate=115200, timeout=0.1)
    port.port = board.url
    try:
        await asyncio.to_thread(port.open)
        await asyncio.to_thread(exercise, port, board)
    finally:
        await asyncio.to_thread(port.close)
    assert len(baud_requests) == 1 + 6 + 1
