"""The ESP32's serial download mode, as esptool talks to it: the ROM loader and the flasher stub.

A pure state machine over a byte stream: `feed(bytes)` returns a `Reply`, the bytes the chip sends back
and, when a command makes the chip leave the loader, how it leaves (`Exit.RUN`: run the app from flash;
`Exit.REBOOT`: a software reset, which on a chip strapped for download lands back in the ROM loader).
No I/O, no clock: the serial endpoint moves the bytes and acts on the exit.

The wire protocol (esptool's "serial protocol" documentation, checked against esptool 5.x):

* SLIP frames (`slip.py`). A request is `<BBHI>` direction 0, opcode, data length, checksum, then the
  data; the checksum (XOR seeded 0xEF) covers the payload of MEM_DATA / FLASH_DATA / FLASH_DEFL_DATA.
* A response is `<BBHI>` direction 1, the opcode echoed, body length, a value (READ_REG's word), then the
  body: command data and the status. The ROM's status is 4 bytes (failed, error, 0, 0), error codes 0x05
  (invalid message)..0x0B (deflate); the stub's is 2 bytes, its error codes 0xC0..0xC9 and 0xFF (not
  implemented) in the first byte.
* SYNC is answered eight times; the ROM puts 0x20120707 in the value field, the stub 0 (that is how
  esptool tells them apart). ESP32 has no GET_SECURITY_INFO, so esptool identifies the chip by the magic
  word at 0x40001000 and reads the eFuse words for the package, revision, features and MAC.
* The ROM erases the whole region on FLASH_BEGIN / FLASH_DEFL_BEGIN, its MD5 answer is 32 lowercase hex
  characters, and it reads flash 64 bytes at a time (READ_FLASH_SLOW). esptool uploads its flasher stub
  with MEM_BEGIN/MEM_DATA/MEM_END; the emulator accepts the upload, greets with "OHAI" and from then on
  answers as the stub: 2-byte status, raw 16-byte MD5, ERASE_FLASH, ERASE_REGION, and READ_FLASH, which
  streams sector-sized frames that the host acknowledges with its running byte count, then the MD5.
* esptool reads the flash ID by driving the SPI controller's "user command" registers (RDID 0x9F, SFDP
  0x5A); the register file emulates that: writing the USR bit to SPI_CMD runs the command and clears it.

The ROM and the stub refuse a request the same way a chip does: an error status, never an exception.
Malformed frames and packets (`LoaderFrameError`) are dropped, counted in `rejected`.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections import Counter
from dataclasses import dataclass, field
from enum import Enum, IntEnum
from typing import Protocol

from device_emulator.slip import SlipDecoder, encode
from protocol.errors import FlashError, LoaderFrameError


class Op(IntEnum):
    FLASH_BEGIN = 0x02
    FLASH_DATA = 0x03
    FLASH_END = 0x04
    MEM_BEGIN = 0x05
    MEM_END = 0x06
    MEM_DATA = 0x07
    SYNC = 0x08
    WRITE_REG = 0x09
    READ_REG = 0x0A
    SPI_SET_PARAMS = 0x0B
    SPI_ATTACH = 0x0D
    READ_FLASH_SLOW = 0x0E
    CHANGE_BAUDRATE = 0x0F
    FLASH_DEFL_BEGIN = 0x10
    FLASH_DEFL_DATA = 0x11
    FLASH_DEFL_END = 0x12
    SPI_FLASH_MD5 = 0x13
    GET_SECURITY_INFO = 0x14  # not in the ESP32 ROM: esptool tries it, gets an error, moves on
    ERASE_FLASH = 0xD0  # stub only from here on
    ERASE_REGION = 0xD1
    READ_FLASH = 0xD2
    RUN_USER_CODE = 0xD3


class LoaderMode(Enum):
    ROM = "rom"
    STUB = "stub"


class Exit(Enum):
    """How a command made the chip leave the loader."""

    RUN = "run"  # run user code: boot the app from flash
    REBOOT = "reboot"  # software reset: the straps still say download, so back to the ROM loader


@dataclass(frozen=True)
class Reply:
    data: bytes = b""
    exit: Exit | None = None


@dataclass(frozen=True)
class Request:
    op: int
    data: bytes
    checksum: int


# What a command handler returns: the response's value field, its body (before the status), and how
# the chip leaves the loader afterwards (None: it stays).
_Result = tuple[int, bytes, Exit | None]


class _Handler(Protocol):
    def __call__(self, request: Request) -> _Result: ...


class _FlashOperation(Protocol):
    def __call__(self) -> bytes | None: ...


class FlashMemory(Protocol):
    """What the loader needs of the SPI flash (device_emulator.flash.Flash has it): NOR semantics,
    erase in 4 KiB sectors, FlashError on a bad offset."""

    size: int

    def read(self, offset: int, length: int) -> bytes: ...

    def write(self, offset: int, data: bytes) -> None: ...

    def erase(self, offset: int, length: int) -> None: ...

    def erase_all(self) -> None: ...


SECTOR_SIZE = 0x1000
ROM_BAUD = 115200
SYNC_DATA = b"\x07\x07\x12\x20" + b"\x55" * 32
SYNC_VALUE = 0x20120707  # what the ROM puts in the value field of its SYNC replies
CHECKSUM_SEED = 0xEF
STUB_GREETING = b"OHAI"
MAX_RAM_LOAD = 0x80000  # more than the ESP32's 520 KiB SRAM is not a real upload
DEFAULT_MAC = bytes.fromhex("240ac4e5a010")  # Espressif's OUI

# --- the register file: only what esptool reads on an ESP32 --------------------------------------
CHIP_MAGIC_ADDR = 0x40001000
ESP32_MAGIC = 0x00F01D83
EFUSE_BLK0 = 0x3FF5A000  # read words 0..6 of eFuse block 0
APB_CTL_DATE = 0x3FF6607C
UART0_CLKDIV = 0x3FF40014
RTC_CALI_CFG1 = 0x3FF5F06C
GPIO_STRAP = 0x3FF44038
SPI_BASE = 0x3FF42000
SPI_CMD = SPI_BASE + 0x00
SPI_ADDR = SPI_BASE + 0x04
SPI_USER = SPI_BASE + 0x1C
SPI_USER1 = SPI_BASE + 0x20
SPI_USER2 = SPI_BASE + 0x24
SPI_MOSI_DLEN = SPI_BASE + 0x28
SPI_MISO_DLEN = SPI_BASE + 0x2C
SPI_W0 = SPI_BASE + 0x80
SPI_CMD_USR = 1 << 18
SPI_USR_ADDR = 1 << 30
SPI_USR_MISO = 1 << 28
SPI_USR_MOSI = 1 << 27

XTAL_HZ = 40_000_000
STRAP_DOWNLOAD = 0x03  # GPIO0 low: DOWNLOAD_BOOT(UART0/UART1/SDIO_REI_REO_V2)
CK8M_EFUSE = 100  # with RTC_CALI_VALUE 1024 esptool computes exactly 40 MHz for the ROM's crystal
RTC_CALI_VALUE = 1024
ADC_VREF_EFUSE = 0x0C

# An ESP32-D0WD revision v1.0 (the chip whose ROM prints "ets Jun  8 2016 00:22:57"), dual core, 240 MHz.
_EFUSE_WORD3 = (1 << 15) | (1 << 13) | (1 << 9)  # revision bit 0, CPU rated, package D0WD
_APB_CTL_DATE_VALUE = 0x16042000  # bit 31 clear: not an ECO3 (v3) chip

# SPI flash: a Winbond W25Q32 (manufacturer 0xEF, type 0x40, capacity code = log2 of the size).
FLASH_MANUFACTURER = 0xEF
FLASH_MEMORY_TYPE = 0x40
SPI_RDID = 0x9F
SPI_RDSFDP = 0x5A
SPI_READ_STATUS = (0x05, 0x35, 0x15)


class RomError(IntEnum):
    INVALID_MESSAGE = 0x05
    FAILED = 0x06
    CHECKSUM = 0x07
    FLASH_WRITE = 0x08
    FLASH_READ = 0x09
    READ_LENGTH = 0x0A
    DEFLATE = 0x0B


class StubError(IntEnum):
    BAD_DATA_LEN = 0xC0
    BAD_DATA_CHECKSUM = 0xC1
    BAD_BLOCKSIZE = 0xC2
    INVALID_COMMAND = 0xC3
    FAILED_SPI_OP = 0xC4
    NOT_IN_FLASH_MODE = 0xC6
    INFLATE_ERROR = 0xC7
    NOT_ENOUGH_DATA = 0xC8
    TOO_MUCH_DATA = 0xC9
    NOT_IMPLEMENTED = 0xFF


class _Failure(Enum):
    """Why a request is refused, with the code the ROM and the stub each report for it."""

    INVALID = (RomError.INVALID_MESSAGE, StubError.BAD_DATA_LEN)
    UNSUPPORTED = (RomError.INVALID_MESSAGE, StubError.NOT_IMPLEMENTED)
    CHECKSUM = (RomError.CHECKSUM, StubError.BAD_DATA_CHECKSUM)
    NOT_IN_FLASH_MODE = (RomError.FAILED, StubError.NOT_IN_FLASH_MODE)
    SEQUENCE = (RomError.INVALID_MESSAGE, StubError.BAD_BLOCKSIZE)
    TOO_MUCH_DATA = (RomError.FAILED, StubError.TOO_MUCH_DATA)
    FLASH_WRITE = (RomError.FLASH_WRITE, StubError.FAILED_SPI_OP)
    FLASH_READ = (RomError.FLASH_READ, StubError.FAILED_SPI_OP)
    READ_LENGTH = (RomError.READ_LENGTH, StubError.BAD_DATA_LEN)
    INFLATE = (RomError.DEFLATE, StubError.INFLATE_ERROR)


class _Refused(Exception):
    def __init__(self, failure: _Failure) -> None:
        super().__init__(failure.name)
        self.failure = failure


def checksum(data: bytes, seed: int = CHECKSUM_SEED) -> int:
    """The ROM's data checksum: XOR of every byte, seeded with 0xEF."""
    value = int.from_bytes(data, "little") if data else 0
    width = len(data)
    while width > 1:  # fold halves together instead of looping over every byte in Python
        half = (width + 1) // 2
        value = (value >> (8 * half)) ^ (value & ((1 << (8 * half)) - 1))
        width = half
    return (value & 0xFF) ^ seed


def parse_request(payload: bytes) -> Request:
    """One request from a SLIP frame's payload; LoaderFrameError if it is not a request."""
    payload = bytes(payload)
    if len(payload) < 8:
        raise LoaderFrameError(f"loader request shorter than its 8-byte header ({len(payload)})", payload)
    direction, op, size, chk = struct.unpack_from("<BBHI", payload)
    if direction != 0x00:
        raise LoaderFrameError(f"loader request with direction {direction:#04x} (expected 0x00)", payload[:8])
    if size != len(payload) - 8:
        raise LoaderFrameError(
            f"loader request says {size} data bytes, carries {len(payload) - 8}", payload[:8]
        )
    return Request(op, payload[8:], chk)


def _response(mode: LoaderMode, op: int, value: int, body: bytes, failure: _Failure | None = None) -> bytes:
    """One response frame: the header, the body, then the status in the ROM's or the stub's format."""
    rom_code, stub_code = failure.value if failure is not None else (0, 0)
    if mode is LoaderMode.ROM:
        status = bytes((1, rom_code, 0, 0)) if failure is not None else bytes(4)
    else:
        status = bytes((stub_code, 0))
    payload = body + status
    return encode(struct.pack("<BBHI", 0x01, op, len(payload), value) + payload)


def mac_crc(mac: bytes) -> int:
    """CRC-8 (reflected polynomial 0x8C) over the MAC, as burnt next to it in eFuse."""
    crc = 0
    for byte in mac:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8C if crc & 1 else crc >> 1
    return crc


def _words(data: bytes, count: int, *, accept: tuple[int, ...] = ()) -> tuple[int, ...]:
    """`count` little-endian words (or one of the `accept` counts); refused if the length is different."""
    for n in (count, *accept):
        if len(data) == 4 * n:
            return struct.unpack(f"<{n}I", data)
    raise _Refused(_Failure.INVALID)


def _sector_floor(value: int) -> int:
    return value - value % SECTOR_SIZE


def _sector_ceil(value: int) -> int:
    return -(-value // SECTOR_SIZE) * SECTOR_SIZE


@dataclass
class _WriteSession:
    """Between FLASH_BEGIN (or FLASH_DEFL_BEGIN) and the last block."""

    offset: int
    size: int
    blocks: int
    block_size: int
    compressed: bool
    next_seq: int = 0
    written: int = 0  # uncompressed bytes programmed (compressed sessions)
    inflater: zlib._Decompress | None = None


@dataclass
class _MemSession:
    address: int
    size: int
    blocks: int
    block_size: int
    next_seq: int = 0
    loaded: int = 0


@dataclass
class _ReadSession:
    """The stub's READ_FLASH: frames stream out, paced by the host's acknowledgements."""

    offset: int
    length: int
    packet_size: int
    in_flight: int
    sent: int = 0
    acked: int = 0
    digest: hashlib._Hash = field(default_factory=hashlib.md5)


class SpiFlashChip:
    """What the flash chip answers to the SPI commands esptool issues through the user-command
    registers: its JEDEC ID, its SFDP table, its status registers."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.capacity_code = max(size, 1).bit_length() - 1  # 4 MiB -> 0x16

    @property
    def jedec_id(self) -> bytes:
        return bytes((FLASH_MANUFACTURER, FLASH_MEMORY_TYPE, self.capacity_code))

    def sfdp(self) -> bytes:
        """A minimal JESD216 table: the SFDP header, one parameter header and the density dword."""
        header = b"SFDP" + bytes((0x06, 0x01, 0x00, 0xFF))
        parameter_header = bytes((0x00, 0x06, 0x01, 0x10, 0x80, 0x00, 0x00, 0xFF))
        table = bytearray(b"\xff" * 0x80)
        table[0:16] = header + parameter_header
        density = struct.pack("<II", 0xFFF120E5, self.size * 8 - 1)
        return bytes(table) + density + b"\xff" * 56

    def transfer(self, command: int, address: int | None, reply_length: int) -> bytes:
        if command == SPI_RDID:
            answer = self.jedec_id
        elif command == SPI_RDSFDP and address is not None:
            answer = self.sfdp()[address : address + reply_length]
        elif command in SPI_READ_STATUS:
            answer = b"\x00"  # not busy, not write-protected
        else:
            answer = b""  # write enable, reset, status writes...: nothing to read back
        return (answer + b"\xff" * reply_length)[:reply_length]


class RegisterFile:
    """The few ESP32 registers esptool reads or drives while flashing, everything else reads as written
    (or 0). Resets with the chip."""

    def __init__(self, mac: bytes, spi_flash: SpiFlashChip, baudrate: int) -> None:
        self.spi_flash = spi_flash
        self.efuse = [
            0,
            int.from_bytes(mac[2:6], "big"),
            int.from_bytes(mac[0:2], "big") | mac_crc(mac) << 16,
            _EFUSE_WORD3,
            (ADC_VREF_EFUSE << 8) | CK8M_EFUSE,
            0,
            0,
        ]
        self.values: dict[int, int] = {}
        self.baudrate = baudrate

    def read(self, address: int) -> int:
        fixed = self._fixed(address)
        return fixed if fixed is not None else self.values.get(address, 0)

    def _fixed(self, address: int) -> int | None:
        if address == CHIP_MAGIC_ADDR:
            return ESP32_MAGIC
        if EFUSE_BLK0 <= address < EFUSE_BLK0 + 4 * len(self.efuse) and address % 4 == 0:
            return self.efuse[(address - EFUSE_BLK0) // 4]
        if address == APB_CTL_DATE:
            return _APB_CTL_DATE_VALUE
        if address == UART0_CLKDIV:
            return XTAL_HZ // max(self.baudrate, 1)  # the divider the UART runs at
        if address == RTC_CALI_CFG1:
            return RTC_CALI_VALUE << 7
        if address == GPIO_STRAP:
            return STRAP_DOWNLOAD
        return None

    def write(self, address: int, value: int, mask: int) -> None:
        old = self.read(address)
        self.values[address] = (old & ~mask) | (value & mask)
        if address == SPI_CMD and self.values[address] & SPI_CMD_USR:
            self._run_spi_user_command()

    def _run_spi_user_command(self) -> None:
        user = self.values.get(SPI_USER, 0)
        command = self.values.get(SPI_USER2, 0) & 0xFF
        address = None
        if user & SPI_USR_ADDR:
            address_bits = ((self.values.get(SPI_USER1, 0) >> 26) & 0x3F) + 1
            address = self.values.get(SPI_ADDR, 0) >> (32 - address_bits)
        reply_length = 0
        if user & SPI_USR_MISO:
            reply_length = min((self.values.get(SPI_MISO_DLEN, 0) + 8) // 8, 64)
        answer = self.spi_flash.transfer(command, address, reply_length)
        for index in range(0, len(answer), 4):
            word = answer[index : index + 4].ljust(4, b"\x00")
            self.values[SPI_W0 + index] = int.from_bytes(word, "little")
        self.values[SPI_CMD] &= ~SPI_CMD_USR  # the controller is done


class RomLoader:
    """One chip's download mode. `feed()` the bytes the host sent; send back what the `Reply` carries."""

    def __init__(
        self, flash: FlashMemory, *, mac: bytes = DEFAULT_MAC, initial_baudrate: int = ROM_BAUD
    ) -> None:
        if len(mac) != 6:
            raise ValueError("a MAC address is 6 bytes")
        self.flash = flash
        self.mac = bytes(mac)
        self.initial_baudrate = initial_baudrate
        self.spi_flash = SpiFlashChip(flash.size)
        self.commands: Counter[int] = Counter()  # opcode -> requests handled (across resets)
        self.rejected = 0  # frames or packets that were not requests
        self.reset()

    def reset(self) -> None:
        """The chip restarted into the ROM loader: no stub, no session, registers at their reset values."""
        self.mode = LoaderMode.ROM
        self.registers = RegisterFile(self.mac, self.spi_flash, self.initial_baudrate)
        self.flash_params: tuple[int, ...] | None = None
        self._write: _WriteSession | None = None
        self._mem: _MemSession | None = None
        self._read: _ReadSession | None = None
        self._decoder = SlipDecoder(on_error=self._count_rejected)

    @property
    def baudrate(self) -> int:
        """The UART's rate after CHANGE_BAUDRATE (the ROM auto-detects the first one)."""
        return self.registers.baudrate

    def _count_rejected(self, _error: LoaderFrameError) -> None:
        self.rejected += 1

    # --- the byte stream ------------------------------------------------------------------------

    def feed(self, data: bytes) -> Reply:
        out = bytearray()
        for frame in self._decoder.feed(data):
            if self._read is not None:
                if len(frame) == 4:  # the host's running count of bytes received
                    out += self._acknowledged(int.from_bytes(frame, "little"))
                    continue
                self._read = None  # anything else ends the stream, as the stub gives up on it
            try:
                request = parse_request(frame)
            except LoaderFrameError as error:
                self._count_rejected(error)
                continue
            reply, exit_ = self.handle(request)
            out += reply
            if exit_ is not None:
                # The chip leaves the loader; what else the host sent goes to whatever runs next.
                return Reply(bytes(out), exit_)
        return Reply(bytes(out))

    def handle(self, request: Request) -> tuple[bytes, Exit | None]:
        """The response frames for one request, and how the chip leaves the loader after it (if it does)."""
        self.commands[request.op] += 1
        answering = self.mode  # who answers: MEM_END is answered by the ROM, then the stub starts
        handler = self._handlers().get(request.op)
        try:
            if handler is None:
                raise _Refused(_Failure.UNSUPPORTED)
            value, body, exit_ = handler(request)
        except _Refused as refused:
            return _response(answering, request.op, 0, b"", refused.failure), None
        if request.op == Op.RUN_USER_CODE:
            return b"", exit_  # esptool does not wait for an answer: the stub just jumps
        reply = _response(answering, request.op, value, body)
        if request.op == Op.SYNC:
            reply *= 8
        elif answering is LoaderMode.ROM and self.mode is LoaderMode.STUB:
            reply += encode(STUB_GREETING)  # the stub has started and says hello
        elif request.op == Op.READ_FLASH:
            reply += self._pump_read()
        return reply, exit_

    def _handlers(self) -> dict[int, _Handler]:
        common: dict[int, _Handler] = {
            Op.SYNC: self._sync,
            Op.READ_REG: self._read_reg,
            Op.WRITE_REG: self._write_reg,
            Op.SPI_SET_PARAMS: self._spi_set_params,
            Op.SPI_ATTACH: self._spi_attach,
            Op.CHANGE_BAUDRATE: self._change_baudrate,
            Op.FLASH_BEGIN: self._flash_begin,
            Op.FLASH_DATA: self._flash_data,
            Op.FLASH_END: self._flash_end,
            Op.FLASH_DEFL_BEGIN: self._flash_begin,
            Op.FLASH_DEFL_DATA: self._flash_data,
            Op.FLASH_DEFL_END: self._flash_end,
            Op.SPI_FLASH_MD5: self._flash_md5,
            Op.MEM_BEGIN: self._mem_begin,
            Op.MEM_DATA: self._mem_data,
            Op.MEM_END: self._mem_end,
        }
        if self.mode is LoaderMode.ROM:
            common[Op.READ_FLASH_SLOW] = self._read_flash_slow
        else:
            common[Op.ERASE_FLASH] = self._erase_flash
            common[Op.ERASE_REGION] = self._erase_region
            common[Op.READ_FLASH] = self._read_flash
            common[Op.RUN_USER_CODE] = self._run_user_code
        return common

    # --- commands -----------------------------------------------------------------------------------

    def _sync(self, request: Request) -> _Result:
        if request.data != SYNC_DATA:
            raise _Refused(_Failure.INVALID)
        return (SYNC_VALUE if self.mode is LoaderMode.ROM else 0), b"", None

    def _read_reg(self, request: Request) -> _Result:
        (address,) = _words(request.data, 1)
        return self.registers.read(address), b"", None

    def _write_reg(self, request: Request) -> _Result:
        if not request.data or len(request.data) % 16:
            raise _Refused(_Failure.INVALID)
        for address, value, mask, _delay_us in struct.iter_unpack("<IIII", request.data):
            self.registers.write(address, value, mask)
        return 0, b"", None

    def _spi_set_params(self, request: Request) -> _Result:
        self.flash_params = _words(request.data, 6)
        return 0, b"", None

    def _spi_attach(self, request: Request) -> _Result:
        _words(request.data, 2, accept=(1,))  # the ROM takes an extra "is legacy" word
        return 0, b"", None

    def _change_baudrate(self, request: Request) -> _Result:
        new, _old = _words(request.data, 2)
        if not 300 <= new <= 5_000_000:
            raise _Refused(_Failure.INVALID)
        # The answer still goes out at the old rate; the UART switches right after.
        self.registers.baudrate = new
        return 0, b"", None

    def _flash_begin(self, request: Request) -> _Result:
        compressed = request.op == Op.FLASH_DEFL_BEGIN
        # The ESP32 ROM takes 4 words; the stub (and newer ROMs) a fifth, the encryption flag.
        words = _words(request.data, 4, accept=(5,) if self.mode is LoaderMode.STUB else ())
        size, blocks, block_size, offset = words[:4]
        if len(words) == 5 and words[4]:
            raise _Refused(_Failure.UNSUPPORTED)  # no flash encryption on this chip
        if block_size == 0 and blocks:
            raise _Refused(_Failure.INVALID)
        if offset + size > self.flash.size:
            raise _Refused(_Failure.FLASH_WRITE)
        if self.mode is LoaderMode.ROM and offset % SECTOR_SIZE:
            raise _Refused(_Failure.FLASH_WRITE)  # the ROM erases from the offset: it must start a sector
        if size:
            # Both erase before programming (the ROM up front, the stub as it goes: the same result).
            start, end = _sector_floor(offset), min(_sector_ceil(offset + size), self.flash.size)
            self._flash_op(lambda: self.flash.erase(start, end - start), _Failure.FLASH_WRITE)
        self._write = _WriteSession(offset, size, blocks, block_size, compressed)
        if compressed:
            self._write.inflater = zlib.decompressobj()
        return 0, b"", None

    def _flash_data(self, request: Request) -> _Result:
        payload, seq = self._block(request)
        session = self._write
        if session is None or session.compressed != (request.op == Op.FLASH_DEFL_DATA):
            raise _Refused(_Failure.NOT_IN_FLASH_MODE)
        if seq == session.next_seq - 1:
            return 0, b"", None  # a resend after a lost answer: already programmed
        if seq != session.next_seq:
            raise _Refused(_Failure.SEQUENCE)
        if seq >= session.blocks:
            raise _Refused(_Failure.TOO_MUCH_DATA)
        if session.compressed:
            self._program_compressed(session, payload)
        else:
            self._program(session.offset + seq * session.block_size, payload)
        session.next_seq += 1
        return 0, b"", None

    def _program_compressed(self, session: _WriteSession, payload: bytes) -> None:
        assert session.inflater is not None
        room = session.size - session.written
        try:
            # Inflate at most what the session has room for (plus one byte to notice an overflow).
            data = session.inflater.decompress(payload, room + 1)
        except zlib.error as error:
            raise _Refused(_Failure.INFLATE) from error
        if len(data) > room or session.inflater.unconsumed_tail:
            raise _Refused(_Failure.TOO_MUCH_DATA)
        self._program(session.offset + session.written, data)
        session.written += len(data)

    def _program(self, offset: int, data: bytes) -> None:
        # The last uncompressed block is padded with 0xFF, which may run past the end of the chip;
        # programming 0xFF changes nothing, so only real data there is an error.
        inside = max(0, min(len(data), self.flash.size - offset))
        if data[inside:].strip(b"\xff"):
            raise _Refused(_Failure.FLASH_WRITE)
        self._flash_op(lambda: self.flash.write(offset, data[:inside]), _Failure.FLASH_WRITE)

    def _flash_end(self, request: Request) -> _Result:
        (run_user_code,) = _words(request.data, 1)
        self._write = None
        if not run_user_code:
            return 0, b"", Exit.REBOOT
        # The stub keeps running (esptool ends every stub write this way); the ROM runs the app.
        return 0, b"", (Exit.RUN if self.mode is LoaderMode.ROM else None)

    def _flash_md5(self, request: Request) -> _Result:
        address, size, _, _ = _words(request.data, 4)
        data = self._read_flash_bytes(address, size)
        digest = hashlib.md5(data)
        body = digest.hexdigest().encode() if self.mode is LoaderMode.ROM else digest.digest()
        return 0, body, None

    def _read_flash_slow(self, request: Request) -> _Result:
        address, length = _words(request.data, 2)
        if length > 64:
            raise _Refused(_Failure.READ_LENGTH)
        # The ROM always answers a full 64-byte block; past the chip's end reads as erased.
        inside = max(0, min(64, self.flash.size - address))
        return 0, self._read_flash_bytes(address, inside) + b"\xff" * (64 - inside), None

    def _read_flash_bytes(self, address: int, length: int) -> bytes:
        if address + length > self.flash.size:
            raise _Refused(_Failure.FLASH_READ)
        data: bytes = self._flash_op(lambda: self.flash.read(address, length), _Failure.FLASH_READ)
        return data

    def _block(self, request: Request) -> tuple[bytes, int]:
        """The payload and sequence number of a DATA request, checked against its header and checksum."""
        if len(request.data) < 16:
            raise _Refused(_Failure.INVALID)
        length, seq, _, _ = struct.unpack_from("<IIII", request.data)
        payload = request.data[16:]
        if length != len(payload):
            raise _Refused(_Failure.INVALID)
        if checksum(payload) != request.checksum & 0xFF:
            raise _Refused(_Failure.CHECKSUM)
        return payload, seq

    def _mem_begin(self, request: Request) -> _Result:
        size, blocks, block_size, address = _words(request.data, 4)
        if size > MAX_RAM_LOAD or (blocks and not block_size):
            raise _Refused(_Failure.INVALID)
        self._mem = _MemSession(address, size, blocks, block_size)
        return 0, b"", None

    def _mem_data(self, request: Request) -> _Result:
        payload, seq = self._block(request)
        session = self._mem
        if session is None:
            raise _Refused(_Failure.NOT_IN_FLASH_MODE)
        if seq != session.next_seq or seq >= session.blocks:
            raise _Refused(_Failure.SEQUENCE)
        if session.loaded + len(payload) > session.size:
            raise _Refused(_Failure.TOO_MUCH_DATA)
        session.loaded += len(payload)
        session.next_seq += 1
        return 0, b"", None

    def _mem_end(self, request: Request) -> _Result:
        no_execute, _entry = _words(request.data, 2)
        self._mem = None
        if not no_execute:
            # The only program the emulator can run from RAM is esptool's flasher stub.
            self.mode = LoaderMode.STUB
            self._write = self._read = None
        return 0, b"", None

    def _erase_flash(self, request: Request) -> _Result:
        self._flash_op(self.flash.erase_all, _Failure.FLASH_WRITE)
        return 0, b"", None

    def _erase_region(self, request: Request) -> _Result:
        offset, size = _words(request.data, 2)
        if offset % SECTOR_SIZE or size % SECTOR_SIZE:
            raise _Refused(_Failure.INVALID)
        if offset + size > self.flash.size:
            raise _Refused(_Failure.FLASH_WRITE)
        self._flash_op(lambda: self.flash.erase(offset, size), _Failure.FLASH_WRITE)
        return 0, b"", None

    def _read_flash(self, request: Request) -> _Result:
        offset, length, packet_size, in_flight = _words(request.data, 4)
        if not packet_size or not in_flight or packet_size > 0x4000:
            raise _Refused(_Failure.INVALID)
        if offset + length > self.flash.size:
            raise _Refused(_Failure.FLASH_READ)
        self._read = _ReadSession(offset, length, packet_size, in_flight)
        return 0, b"", None

    def _run_user_code(self, request: Request) -> _Result:
        return 0, b"", Exit.RUN

    # --- READ_FLASH streaming -------------------------------------------------------------------------

    def _pump_read(self) -> bytes:
        session = self._read
        out = bytearray()
        if session is None:
            return b""
        window = session.in_flight * session.packet_size
        while session.sent < session.length and session.sent - session.acked < window:
            size = min(session.packet_size, session.length - session.sent)
            try:
                chunk = self.flash.read(session.offset + session.sent, size)
            except FlashError:
                self._read = None  # the stub stops sending; the host times out
                return bytes(out)
            session.digest.update(chunk)
            session.sent += size
            out += encode(chunk)
        return bytes(out)

    def _acknowledged(self, count: int) -> bytes:
        session = self._read
        assert session is not None
        session.acked = max(session.acked, min(count, session.sent))
        if session.acked < session.length:
            return self._pump_read()
        self._read = None
        return encode(session.digest.digest())

    def _flash_op(self, operation: _FlashOperation, failure: _Failure) -> bytes:
        try:
            result = operation()
        except FlashError as error:
            raise _Refused(failure) from error
        return result if isinstance(result, bytes) else b""
