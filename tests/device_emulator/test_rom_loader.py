"""The ROM download mode and the flasher stub, byte for byte: requests in, responses and flash out.

Requests are built here by hand from the protocol (header `<BBHI`, data, XOR checksum seeded 0xEF) and
responses parsed the same way, so these tests pin the wire format esptool relies on.
"""

from __future__ import annotations

import functools
import hashlib
import operator
import struct
import tempfile
import zlib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from device_emulator.flash import Flash
from device_emulator.rom_loader import Exit, LoaderMode, RomLoader
from device_emulator.slip import SlipDecoder, encode

SYNC = 0x08
READ_REG, WRITE_REG = 0x0A, 0x09
FLASH_BEGIN, FLASH_DATA, FLASH_END = 0x02, 0x03, 0x04
DEFL_BEGIN, DEFL_DATA, DEFL_END = 0x10, 0x11, 0x12
MEM_BEGIN, MEM_END, MEM_DATA = 0x05, 0x06, 0x07
READ_FLASH_SLOW, CHANGE_BAUDRATE, SPI_FLASH_MD5 = 0x0E, 0x0F, 0x13
GET_SECURITY_INFO = 0x14
ERASE_FLASH, ERASE_REGION, READ_FLASH, RUN_USER_CODE = 0xD0, 0xD1, 0xD2, 0xD3
SYNC_DATA = b"\x07\x07\x12\x20" + b"\x55" * 32
OK_ROM, OK_STUB = b"\x00\x00\x00\x00", b"\x00\x00"
MAC = bytes.fromhex("246f28aabbcc")


def xor(data: bytes) -> int:
    return functools.reduce(operator.xor, data, 0xEF)


def request(op: int, data: bytes = b"", chk: int = 0) -> bytes:
    return encode(struct.pack("<BBHI", 0x00, op, len(data), chk) + data)


def block(op: int, payload: bytes, seq: int) -> bytes:
    return request(op, struct.pack("<IIII", len(payload), seq, 0, 0) + payload, xor(payload))


def frames(out: bytes) -> list[bytes]:
    return SlipDecoder().feed(out)


def responses(out: bytes) -> list[tuple[int, int, bytes]]:
    """(op, value, body) of every response frame in `out` (body includes the status bytes)."""
    parsed = []
    for frame in frames(out):
        direction, op, size, value = struct.unpack_from("<BBHI", frame)
        assert direction == 0x01 and size == len(frame) - 8
        parsed.append((op, value, frame[8:]))
    return parsed


class Host:
    """The esptool side of the conversation, one request at a time."""

    def __init__(self, loader: RomLoader) -> None:
        self.loader = loader
        self.exit: Exit | None = None

    def send(self, wire: bytes) -> bytes:
        reply = self.loader.feed(wire)
        self.exit = reply.exit
        return reply.data

    def command(self, op: int, data: bytes = b"", chk: int = 0) -> tuple[int, bytes]:
        """(value, body) of the single response to one request."""
        (answer,) = responses(self.send(request(op, data, chk)))
        assert answer[0] == op
        return answer[1], answer[2]

    def start_stub(self) -> None:
        code = bytes(range(256)) * 8
        assert self.command(MEM_BEGIN, struct.pack("<IIII", len(code), 1, 0x1800, 0x40090000))[1] == OK_ROM
        assert responses(self.send(block(MEM_DATA, code, 0)))[0][2] == OK_ROM
        out = self.send(request(MEM_END, struct.pack("<II", 0, 0x40090000)))
        assert frames(out)[-1] == b"OHAI"
        assert self.loader.mode is LoaderMode.STUB


@pytest.fixture
def flash(tmp_path: Path) -> Flash:
    return Flash(tmp_path / "flash.bin")


@pytest.fixture
def host(flash: Flash) -> Host:
    return Host(RomLoader(flash, mac=MAC))


def test_sync_is_answered_eight_times_with_the_roms_signature(host: Host) -> None:
    out = host.send(request(SYNC, SYNC_DATA))
    assert out == bytes.fromhex("c0 01 08 0400 07071220 00000000 c0") * 8


def test_the_stub_answers_sync_with_value_zero_so_esptool_knows_it_is_running(host: Host) -> None:
    host.start_stub()
    answers = responses(host.send(request(SYNC, SYNC_DATA)))
    assert answers == [(SYNC, 0, OK_STUB)] * 8


def test_esptool_identifies_an_esp32_from_the_magic_word_and_reads_the_mac_from_efuse(host: Host) -> None:
    assert host.command(READ_REG, struct.pack("<I", 0x40001000))[0] == 0x00F01D83
    word1 = host.command(READ_REG, struct.pack("<I", 0x3FF5A004))[0]
    word2 = host.command(READ_REG, struct.pack("<I", 0x3FF5A008))[0]
    assert struct.pack(">II", word2, word1)[2:8] == MAC  # how esptool's ESP32ROM.read_mac assembles it


def test_the_uart_divider_gives_a_40_mhz_crystal_at_the_current_baud_rate(host: Host) -> None:
    divider = host.command(READ_REG, struct.pack("<I", 0x3FF40014))[0] & 0xFFFFF
    assert 39.5 < 115200 * divider / 1e6 < 40.5
    assert host.command(CHANGE_BAUDRATE, struct.pack("<II", 921600, 0))[1] == OK_ROM
    assert host.loader.baudrate == 921600
    divider = host.command(READ_REG, struct.pack("<I", 0x3FF40014))[0] & 0xFFFFF
    assert 39.5 < 921600 * divider / 1e6 < 40.5


def test_an_unsupported_command_gets_an_error_status_not_silence(host: Host) -> None:
    # ESP32's ROM has no GET_SECURITY_INFO: failed, "invalid message".
    assert host.command(GET_SECURITY_INFO) == (0, b"\x01\x05\x00\x00")
    assert host.command(ERASE_FLASH) == (0, b"\x01\x05\x00\x00")  # stub-only command
    host.start_stub()
    assert host.command(0x55) == (0, b"\xff\x00")  # the stub: "command not implemented"


def test_the_spi_user_command_registers_read_the_flash_jedec_id(host: Host) -> None:
    base = 0x3FF42000

    def write(address: int, value: int) -> None:
        assert host.command(WRITE_REG, struct.pack("<IIII", address, value, 0xFFFFFFFF, 0))[1] == OK_ROM

    write(base + 0x2C, 24 - 1)  # MISO length: 24 bits
    write(base + 0x1C, (1 << 31) | (1 << 28))  # USR: command + MISO phases
    write(base + 0x24, (7 << 28) | 0x9F)  # USR2: 8-bit command RDID
    write(base + 0x80, 0)
    write(base + 0x00, 1 << 18)  # go
    assert host.command(READ_REG, struct.pack("<I", base))[0] & (1 << 18) == 0  # done
    assert host.command(READ_REG, struct.pack("<I", base + 0x80))[0] == 0x1640EF  # Winbond, 4 MB


def test_flash_begin_erases_the_region_and_flash_data_programs_it(host: Host, flash: Flash) -> None:
    flash.write(0x10000, b"\x00" * 0x1800)  # old firmware: bits already cleared
    image = bytes(range(256)) * 10  # 2560 bytes: three 1 KiB blocks, the last padded with 0xFF
    assert host.command(FLASH_BEGIN, struct.pack("<IIII", len(image), 3, 0x400, 0x10000))[1] == OK_ROM
    for seq in range(3):
        chunk = image[seq * 0x400 : (seq + 1) * 0x400].ljust(0x400, b"\xff")
        assert responses(host.send(block(FLASH_DATA, chunk, seq)))[0][2] == OK_ROM
    assert flash.read(0x10000, len(image)) == image
    assert flash.read(0x10000 + len(image), 0x1000 - len(image) % 0x1000) == b"\xff" * (
        0x1000 - len(image) % 0x1000
    )


def test_a_block_with_a_bad_checksum_is_refused_and_not_programmed(host: Host, flash: Flash) -> None:
    host.command(FLASH_BEGIN, struct.pack("<IIII", 0x400, 1, 0x400, 0))
    payload = b"\x12" * 0x400
    bad = request(FLASH_DATA, struct.pack("<IIII", 0x400, 0, 0, 0) + payload, xor(payload) ^ 1)
    assert responses(host.send(bad))[0][2] == b"\x01\x07\x00\x00"  # failed, checksum error
    assert flash.read(0, 0x400) == b"\xff" * 0x400
    assert responses(host.send(block(FLASH_DATA, payload, 0)))[0][2] == OK_ROM  # esptool's retry
    assert flash.read(0, 0x400) == payload


def test_blocks_must_come_in_sequence_but_a_resent_block_is_acknowledged(host: Host) -> None:
    host.command(FLASH_BEGIN, struct.pack("<IIII", 0x800, 2, 0x400, 0))
    assert responses(host.send(block(FLASH_DATA, b"\x01" * 0x400, 1)))[0][2][:2] == b"\x01\x05"
    assert responses(host.send(block(FLASH_DATA, b"\x01" * 0x400, 0)))[0][2] == OK_ROM
    assert responses(host.send(block(FLASH_DATA, b"\x01" * 0x400, 0)))[0][2] == OK_ROM  # answer was lost


def test_flash_data_without_flash_begin_is_refused(host: Host) -> None:
    assert responses(host.send(block(FLASH_DATA, b"\x00" * 16, 0)))[0][2][0] == 1


def test_the_rom_refuses_a_write_that_does_not_start_on_a_sector(host: Host) -> None:
    assert host.command(FLASH_BEGIN, struct.pack("<IIII", 16, 1, 0x400, 0x10010))[1] == b"\x01\x08\x00\x00"


def test_compressed_blocks_are_inflated_into_flash(host: Host, flash: Flash) -> None:
    image = b"".join(i.to_bytes(4, "little") for i in range(3000))
    packed = zlib.compress(image, 9)
    blocks = [packed[i : i + 0x400] for i in range(0, len(packed), 0x400)]
    rounded = -(-len(image) // 0x400) * 0x400  # the ROM gets the size rounded up to the block
    host.command(DEFL_BEGIN, struct.pack("<IIII", rounded, len(blocks), 0x400, 0x20000))
    for seq, chunk in enumerate(blocks):
        assert responses(host.send(block(DEFL_DATA, chunk, seq)))[0][2] == OK_ROM
    assert flash.read(0x20000, len(image)) == image


def test_a_corrupt_deflate_stream_is_a_deflate_error(host: Host) -> None:
    host.command(DEFL_BEGIN, struct.pack("<IIII", 0x1000, 1, 0x400, 0))
    assert responses(host.send(block(DEFL_DATA, b"not zlib at all", 0)))[0][2] == b"\x01\x0b\x00\x00"


def test_inflating_more_than_announced_is_refused(host: Host) -> None:
    host.start_stub()
    host.command(DEFL_BEGIN, struct.pack("<IIIII", 100, 1, 0x4000, 0, 0))
    assert responses(host.send(block(DEFL_DATA, zlib.compress(b"\x00" * 5000), 0)))[0][2] == b"\xc9\x00"


def test_the_rom_answers_md5_in_hex_and_the_stub_in_raw_bytes(host: Host, flash: Flash) -> None:
    flash.write(0x3000, b"firmware" * 100)
    digest = hashlib.md5(flash.read(0x3000, 800))
    assert (
        host.command(SPI_FLASH_MD5, struct.pack("<IIII", 0x3000, 800, 0, 0))[1]
        == digest.hexdigest().encode() + OK_ROM
    )
    host.start_stub()
    assert (
        host.command(SPI_FLASH_MD5, struct.pack("<IIII", 0x3000, 800, 0, 0))[1] == digest.digest() + OK_STUB
    )


def test_the_rom_reads_flash_64_bytes_at_a_time(host: Host, flash: Flash) -> None:
    flash.write(0x5000, bytes(range(100)))
    assert host.command(READ_FLASH_SLOW, struct.pack("<II", 0x5000, 64))[1] == bytes(range(64)) + OK_ROM
    body = host.command(READ_FLASH_SLOW, struct.pack("<II", 0x5000 + 64, 36))[1]
    assert body[:36] == bytes(range(64, 100)) and len(body) == 64 + 4  # always a full block
    assert host.command(READ_FLASH_SLOW, struct.pack("<II", 0x5000, 65))[1] == b"\x01\x0a\x00\x00"


def test_run_user_code_leaves_download_mode_and_a_reboot_flag_restarts_the_rom(host: Host) -> None:
    host.command(FLASH_BEGIN, struct.pack("<IIII", 0, 0, 0x400, 0))  # esptool's soft reset: empty write...
    host.command(FLASH_END, struct.pack("<I", 1))  # ...then "run user code"
    assert host.exit is Exit.RUN
    host.command(FLASH_END, struct.pack("<I", 0))
    assert host.exit is Exit.REBOOT


def test_uploading_the_stub_starts_it_and_it_answers_with_two_status_bytes(host: Host) -> None:
    code = b"\x36\x41\x00" * 100
    host.command(MEM_BEGIN, struct.pack("<IIII", len(code), 1, 0x1800, 0x4009_0000))
    host.send(block(MEM_DATA, code, 0))
    out = host.send(request(MEM_END, struct.pack("<II", 0, 0x4009_0000)))
    answer, greeting = frames(out)
    assert answer[8:] == OK_ROM  # MEM_END is still answered by the ROM...
    assert greeting == b"OHAI"  # ...then the stub says hello
    assert host.command(READ_REG, struct.pack("<I", 0x40001000)) == (0x00F01D83, OK_STUB)


def test_mem_end_without_the_execute_flag_does_not_start_anything(host: Host) -> None:
    host.command(MEM_BEGIN, struct.pack("<IIII", 4, 1, 0x1800, 0x4009_0000))
    host.send(block(MEM_DATA, b"\x00" * 4, 0))
    assert frames(host.send(request(MEM_END, struct.pack("<II", 1, 0))))[-1] != b"OHAI"
    assert host.loader.mode is LoaderMode.ROM


def test_the_stub_streams_read_flash_paced_by_the_hosts_acknowledgements(host: Host, flash: Flash) -> None:
    data = bytes(range(251)) * 40  # 10040 bytes: two full sectors and a partial one
    flash.write(0x40000, data)
    host.start_stub()
    out = host.send(request(READ_FLASH, struct.pack("<IIII", 0x40000, len(data), 0x1000, 2)))
    answer, *packets = frames(out)
    assert answer[8:] == OK_STUB
    assert packets == [data[:0x1000], data[0x1000:0x2000]]  # two in flight, then it waits
    assert frames(host.send(encode(struct.pack("<I", 0x1000)))) == [data[0x2000:]]
    assert frames(host.send(encode(struct.pack("<I", 0x2000)))) == []
    assert frames(host.send(encode(struct.pack("<I", len(data))))) == [hashlib.md5(data).digest()]


def test_the_stub_erases_a_region_of_whole_sectors_or_the_whole_chip(host: Host, flash: Flash) -> None:
    flash.write(0x1000, b"\x00" * 0x3000)
    host.start_stub()
    assert host.command(ERASE_REGION, struct.pack("<II", 0x2000, 0x1000))[1] == OK_STUB
    assert flash.read(0x1000, 0x3000) == b"\x00" * 0x1000 + b"\xff" * 0x1000 + b"\x00" * 0x1000
    assert host.command(ERASE_REGION, struct.pack("<II", 0x2100, 0x1000))[1][0] != 0
    assert host.command(ERASE_FLASH)[1] == OK_STUB
    assert flash.read(0, 0x8000) == b"\xff" * 0x8000


def test_the_stub_stays_after_a_write_and_reboots_into_the_rom_on_request(host: Host) -> None:
    host.start_stub()
    host.command(FLASH_BEGIN, struct.pack("<IIIII", 0, 0, 0x4000, 0, 0))
    host.command(FLASH_END, struct.pack("<I", 1))  # how esptool ends every stub write
    assert host.exit is None and host.loader.mode is LoaderMode.STUB
    host.command(FLASH_END, struct.pack("<I", 0))  # --after no-reset: back to the ROM
    assert host.exit is Exit.REBOOT
    assert host.send(request(RUN_USER_CODE)) == b""  # (RUN_USER_CODE has no answer: the stub jumps)
    assert host.exit is Exit.RUN


def test_packets_that_are_not_requests_are_dropped_and_counted(host: Host) -> None:
    assert host.send(encode(b"\x00\x08")) == b""  # shorter than a header
    assert host.send(encode(b"\x01\x08\x00\x00\x00\x00\x00\x00")) == b""  # a response, not a request
    assert host.send(encode(struct.pack("<BBHI", 0, SYNC, 99, 0) + SYNC_DATA)) == b""  # length lies
    assert host.loader.rejected == 3
    assert len(responses(host.send(request(SYNC, SYNC_DATA)))) == 8  # still talking


_scratch = tempfile.TemporaryDirectory(prefix="rom-loader-fuzz-")


def _fresh_loader(stub: bool) -> RomLoader:
    loader = RomLoader(Flash(Path(tempfile.mkdtemp(dir=_scratch.name)) / "flash.bin", size=0x20000))
    if stub:
        Host(loader).start_stub()
    return loader


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans(), st.lists(st.binary(max_size=300), max_size=6))
def test_arbitrary_bytes_never_crash_the_loader(stub: bool, chunks: list[bytes]) -> None:
    loader = _fresh_loader(stub)
    for chunk in chunks:
        reply = loader.feed(chunk)
        assert all(frame[:1] == b"\x01" for frame in frames(reply.data))


_requests = st.builds(
    lambda op, data, chk: request(op, data, chk),
    st.sampled_from([*range(0x02, 0x15), 0xD0, 0xD1, 0xD2, 0xD3, 0x99]),
    st.one_of(
        st.binary(max_size=64),
        st.lists(st.integers(0, 0x2_0000), min_size=1, max_size=6).map(
            lambda ws: struct.pack(f"<{len(ws)}I", *ws)
        ),
    ),
    st.integers(0, 0xFF),
)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.booleans(), st.lists(_requests, max_size=12))
def test_well_framed_requests_with_arbitrary_contents_always_get_a_status_or_an_exit(
    stub: bool, wires: list[bytes]
) -> None:
    loader = _fresh_loader(stub)
    for wire in wires:
        reply = loader.feed(wire)
        if reply.exit is not None:
            loader.reset()
        else:
            assert reply.data  # every request is answered (RUN_USER_CODE exits instead)
