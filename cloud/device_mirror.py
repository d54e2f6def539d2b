"""A device's decoder mirror, as the cloud keeps it between uploads, and its stored form.

The mirror is written on every accepted upload, so its stored form is packed integers (text: "m2:" and
base64, for the TEXT column of either database): about 2.4 KB, written in under 20 us. The JSON form
of version 1 (6 KB, ~70 us, most of it the re-send memory) still loads from older databases.
Packets are remembered for re-sends by timestamp and the first 8 bytes of their hash: two different
packets of one boot never share a timestamp, so the prefix only has to tell a re-send from a reboot.
"""

from __future__ import annotations

import base64
import binascii
import json
import struct
from dataclasses import dataclass, field

from protocol.compression import CodecState
from protocol.compression.state import BUILTIN_PATTERNS, HISTORY_ROWS, MAX_PATTERNS, TemporalHistory
from protocol.errors import DocumentError, EcoWattError
from protocol.json_wire import is_integer
from protocol.registers import REGISTER_COUNT

# Packets remembered per boot to recognise re-sends: the firmware's queue holds 20, so a re-sent
# packet is always among the last few dozen received.
RECENT_PACKETS = 64
SHA_PREFIX = 8  # bytes of a packet's sha256 remembered
JSON_VERSION = 1
PACKED_PREFIX = "m2:"
NONE = -1  # a value or bound not known (None) in the packed cells; real ones are uint16

# boot, document_ts, packet_ts (-1: none), patterns, doubtful_from (-1: none), entries with error
# bounds, next_row, batches, previous_count, previous_layout length, remembered packets
_HEADER = struct.Struct("<qqqBbBBQHHH")
_CELLS = REGISTER_COUNT * HISTORY_ROWS


@dataclass
class DeviceMirror:
    """What the cloud keeps per device between uploads: the boot counter, where this boot stands, and
    the mirrored compression state."""

    boot: int = 0
    document_ts: int | None = None  # `timestamp` of the last accepted document of this boot
    packet_ts: int | None = None  # newest packet timestamp decoded in this boot
    recent: list[tuple[int, bytes]] = field(default_factory=list)  # (packet ts, sha256 prefix)
    codec: CodecState = field(default_factory=CodecState)
    note: str | None = None  # why the stored state was not usable, if it was not

    @classmethod
    def load(cls, text: str | None) -> DeviceMirror:
        if text is None:
            return cls()
        try:
            if text.startswith(PACKED_PREFIX):
                return _unpack(base64.b64decode(text[len(PACKED_PREFIX):], validate=True))
            return _from_json(text)
        except (EcoWattError, ValueError, KeyError, TypeError, struct.error, binascii.Error) as error:
            # A state this code cannot read: restart the mirror in a new boot rather than guess.
            return cls(boot=_old_boot(text) + 1, note=f"decoder state unreadable ({error}): mirror restarted")

    def dump(self) -> str:
        return PACKED_PREFIX + base64.b64encode(_pack(self)).decode("ascii")

    def reboot(self) -> None:
        self.boot += 1
        self.document_ts = self.packet_ts = None
        self.recent = []
        self.codec = CodecState()

    def seen(self, packet_ts: int, sha: str) -> bool:
        return (packet_ts, _prefix(sha)) in self.recent

    def remember(self, packet_ts: int, sha: str) -> None:
        self.recent.append((packet_ts, _prefix(sha)))
        del self.recent[:-RECENT_PACKETS]
        self.packet_ts = packet_ts if self.packet_ts is None else max(self.packet_ts, packet_ts)


def _prefix(sha: str) -> bytes:
    """What is remembered of a packet's sha256 (hex)."""
    return bytes.fromhex(sha[:2 * SHA_PREFIX])


def _cells(rows: list[list[int | None]]) -> list[int]:
    return [NONE if v is None else v for row in rows for v in row]


def _rows(cells: tuple[int, ...]) -> list[list[int | None]]:
    if any(not (v == NONE or 0 <= v <= 0xFFFF) for v in cells):
        raise DocumentError("a mirrored value is not uint16")
    values: list[int | None] = [None if v == NONE else v for v in cells]
    return [values[r:r + REGISTER_COUNT] for r in range(0, len(values), REGISTER_COUNT)]


def _pack(mirror: DeviceMirror) -> bytes:
    codec, history = mirror.codec, mirror.codec.temporal
    recent = mirror.recent[-RECENT_PACKETS:]
    errors = sorted(codec.pattern_errors.items())
    header = _HEADER.pack(
        mirror.boot, NONE if mirror.document_ts is None else mirror.document_ts,
        NONE if mirror.packet_ts is None else mirror.packet_ts, len(codec.patterns),
        NONE if codec.doubtful_from is None else codec.doubtful_from, len(errors), history.next_row,
        history.batches, history.previous_count, len(history.previous_layout), len(recent))
    return b"".join((
        header,
        struct.pack(f"<{len(recent)}q", *[ts for ts, _ in recent]),
        b"".join([prefix for _, prefix in recent]),
        bytes(history.previous_layout),
        struct.pack(f"<{len(codec.patterns) * REGISTER_COUNT}H", *[v for p in codec.patterns for v in p]),
        bytes([index for index, _ in errors]),
        struct.pack(f"<{(len(errors) + 2 * HISTORY_ROWS) * REGISTER_COUNT}i",
                    *_cells([list(e) for _, e in errors]), *_cells(history.rows), *_cells(history.errors)),
    ))


def _unpack(data: bytes) -> DeviceMirror:
    (boot, document_ts, packet_ts, patterns, doubtful, bounded, next_row, batches, previous_count, layout_len,
     recent_len) = _HEADER.unpack_from(data)
    if not (len(BUILTIN_PATTERNS) <= patterns <= MAX_PATTERNS and NONE <= doubtful <= MAX_PATTERNS
            and bounded <= patterns and next_row < HISTORY_ROWS and recent_len <= RECENT_PACKETS):
        raise DocumentError("mirror counters out of range")
    offset = _HEADER.size
    stamps = struct.unpack_from(f"<{recent_len}q", data, offset)
    offset += 8 * recent_len  # int64 each
    prefixes = data[offset:offset + SHA_PREFIX * recent_len]
    offset += SHA_PREFIX * recent_len
    layout = tuple(data[offset:offset + layout_len])
    offset += layout_len
    values = struct.unpack_from(f"<{patterns * REGISTER_COUNT}H", data, offset)
    offset += 2 * patterns * REGISTER_COUNT
    indexes = list(data[offset:offset + bounded])
    offset += bounded
    cells = struct.unpack_from(f"<{(bounded + 2 * HISTORY_ROWS) * REGISTER_COUNT}i", data, offset)
    offset += 4 * len(cells)
    if offset != len(data) or any(r >= REGISTER_COUNT for r in layout) or any(i >= patterns for i in indexes):
        raise DocumentError("mirror state is malformed")
    bounds = _rows(cells[:bounded * REGISTER_COUNT])
    history = TemporalHistory(rows=_rows(cells[bounded * REGISTER_COUNT:-_CELLS]), errors=_rows(cells[-_CELLS:]),
                              next_row=next_row, batches=batches, previous_count=previous_count,
                              previous_layout=layout)
    codec = CodecState([values[p:p + REGISTER_COUNT] for p in range(0, len(values), REGISTER_COUNT)], history,
                       {i: tuple(b) for i, b in zip(indexes, bounds, strict=True)},
                       None if doubtful == NONE else doubtful)
    return DeviceMirror(boot, None if document_ts == NONE else document_ts,
                        None if packet_ts == NONE else packet_ts,
                        [(ts, prefixes[SHA_PREFIX * k:SHA_PREFIX * (k + 1)]) for k, ts in enumerate(stamps)], codec)


def _from_json(text: str) -> DeviceMirror:
    """A version-1 state, as JSON (written before the packed form)."""
    doc = json.loads(text)
    if not isinstance(doc, dict) or doc.get("version") != JSON_VERSION:
        raise DocumentError("unknown mirror version")
    boot, document_ts, packet_ts = doc["boot"], doc["document_ts"], doc["packet_ts"]
    if not is_integer(boot) or any(v is not None and not is_integer(v) for v in (document_ts, packet_ts)):
        raise DocumentError("mirror counters must be integers")
    return DeviceMirror(boot=boot, document_ts=document_ts, packet_ts=packet_ts,
                        recent=[(int(ts), _prefix(str(sha))) for ts, sha in doc["recent"]],
                        codec=CodecState.from_json(doc["codec"]))


def _old_boot(text: str) -> int:
    """The boot counter of a state that cannot be read otherwise, if it shows (0 if not)."""
    boot: object = 0
    try:
        if text.startswith(PACKED_PREFIX):
            boot = struct.unpack_from("<q", base64.b64decode(text[len(PACKED_PREFIX):]))[0]
        else:
            doc = json.loads(text)
            boot = doc.get("boot", 0) if isinstance(doc, dict) else 0
    except (ValueError, struct.error, binascii.Error):
        return 0
    return boot if isinstance(boot, int) and not isinstance(boot, bool) and boot >= 0 else 0
