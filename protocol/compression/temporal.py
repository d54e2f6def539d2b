"""`0x70` temporal base frame and `0x71` temporal delta frame (§3.7).

    70 | count:u8 | sel[count]:u8 | (lo hi) x count
    71 | count:u8 | token x count
    token: |d| <= 63 -> 0x80 | |d| (| 0x40 if d < 0);  -127..127 -> 00 int8;  else 01 int16 LE

Every value of a 0x71 batch is predicted from its register's last values of the two previous batches
(`2*prev1 - prev2`, or prev1 when that leaves 0..65535). The firmware emits 0x71 only once its
history is full and the batch has the previous batch's shape, i.e. for single-register layouts.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

from protocol.compression.batch import Batch, check_layout
from protocol.compression.decoded import Decoded, DecodeStatus, Encoded, PacketFormat
from protocol.compression.state import TemporalHistory
from protocol.errors import CodecError

BASE_MARKER = 0x70
DELTA_MARKER = 0x71


def _int16(value: int) -> int:
    return (value + 0x8000) % 0x10000 - 0x8000


def prediction(prev1: int, prev2: int) -> int:
    p = 2 * prev1 - prev2
    return prev1 if not 0 <= p <= 0xFFFF else p


def _predictions(history: TemporalHistory, registers: Sequence[int]) -> list[int] | None:
    """Per-position predictions, None when the history holds unknown values (a mirror's doubt)."""
    out = []
    for reg in registers:
        prev1, prev2 = history.previous(reg)
        if prev1 is None or prev2 is None:
            return None
        out.append(prediction(prev1, prev2))
    return out


def _token(delta: int) -> bytes:
    if -63 <= delta <= 63:
        return bytes((0x80 | abs(delta) | (0x40 if delta < 0 else 0),))
    if -127 <= delta <= 127:
        return b"\x00" + struct.pack("<b", delta)
    return b"\x01" + struct.pack("<h", delta)


def encode_temporal(batch: Batch, history: TemporalHistory) -> Encoded:
    """The temporal encoder's output; the caller records the batch in the history afterwards."""
    count = batch.count & 0xFF
    if history.delta_allowed(batch.count, batch.layout):
        predicted = _predictions(history, batch.registers)
        if predicted is None:
            raise CodecError("temporal history holds unknown values", batch.layout)
        tokens = b"".join(_token(_int16(v - p)) for v, p in zip(batch.values, predicted, strict=True))
        return Encoded(PacketFormat.TEMPORAL_DELTA, bytes((DELTA_MARKER, count)) + tokens)
    body = bytes(batch.registers) + struct.pack(f"<{batch.count}H", *batch.values)
    return Encoded(PacketFormat.TEMPORAL_BASE, bytes((BASE_MARKER, count)) + body)


def decode_temporal_base(packet: bytes, layout: Sequence[int], count: int) -> Decoded:
    regs = check_layout(layout)
    if len(packet) < 2 or packet[0] != BASE_MARKER:
        raise CodecError("not a 0x70 temporal base packet", packet)
    if packet[1] != count or len(packet) != 2 + 3 * count:
        raise CodecError(f"temporal base packet of {count} values needs {2 + 3 * count} bytes", packet)
    if packet[2 : 2 + count] != bytes(regs * (count // len(regs))):
        raise CodecError("register list disagrees with the register layout", packet[2 : 2 + count])
    values = struct.unpack_from(f"<{count}H", packet, 2 + count)
    return Decoded(PacketFormat.TEMPORAL_BASE, DecodeStatus.EXACT, values)


def _parse_tokens(body: bytes) -> list[int]:
    deltas = []
    i = 0
    while i < len(body):
        b = body[i]
        if b & 0x80:
            magnitude = b & 0x3F
            if b & 0x40 and not magnitude:
                raise CodecError("negative zero delta token", body)
            deltas.append(-magnitude if b & 0x40 else magnitude)
            i += 1
            continue
        size = {0x00: 1, 0x01: 2}.get(b)
        if size is None or i + 1 + size > len(body):
            raise CodecError("invalid or truncated delta token", body[i:])
        (delta,) = struct.unpack_from("<b" if size == 1 else "<h", body, i + 1)
        if abs(delta) <= (63 if size == 1 else 127):
            raise CodecError("delta token wider than needed", body[i:])
        deltas.append(delta)
        i += 1 + size
    return deltas


def decode_temporal_delta(
    packet: bytes, layout: Sequence[int], history: TemporalHistory, count: int
) -> Decoded:
    regs = check_layout(layout)
    if len(packet) < 2 or packet[0] != DELTA_MARKER:
        raise CodecError("not a 0x71 temporal delta packet", packet)
    if packet[1] != count:
        raise CodecError(f"temporal delta packet holds {packet[1]} values, expected {count}", packet)
    deltas = _parse_tokens(packet[2:])
    if len(deltas) != count:
        raise CodecError(f"{len(deltas)} delta tokens for {count} values", packet)
    fmt = PacketFormat.TEMPORAL_DELTA
    if not history.delta_allowed(count, regs):
        return Decoded.undecodable(fmt, "mirrored history does not allow a delta frame: packets were lost")
    registers = regs * (count // len(regs))
    predicted = _predictions(history, registers)
    if predicted is None:
        return Decoded.undecodable(fmt, "mirrored history lacks values of an undecodable packet")
    values = tuple((p + d) & 0xFFFF for p, d in zip(predicted, deltas, strict=True))
    bounds: dict[int, int | None] = {}
    for position, reg in enumerate(registers):
        errors = history.previous_errors(reg)
        if errors != (0, 0):
            bounds[position] = _value_bound(history, reg, values[position])
    if not bounds:
        return Decoded(fmt, DecodeStatus.EXACT, values)
    return Decoded(
        fmt,
        DecodeStatus.AMBIGUOUS,
        values,
        "predicted from mirrored values that may differ from the device's",
        tuple(bounds),
        bounds={p: b for p, b in bounds.items() if b is not None},
    )


def _value_bound(history: TemporalHistory, reg: int, value: int) -> int | None:
    """How far a value predicted from approximate history may be off (None: unbounded)."""
    prev1, prev2 = history.previous(reg)
    error1, error2 = history.previous_errors(reg)
    if prev1 is None or prev2 is None or error1 is None or error2 is None:
        return None
    bound = 2 * error1 + error2
    raw = 2 * prev1 - prev2
    # Near the clamp or the 16-bit wrap the error stops being linear.
    fits = all(bound <= x <= 0xFFFF - bound for x in (raw, value))
    return bound if fits else None
