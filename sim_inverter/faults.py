"""Fault injection of the inverter SIM (firmware-protocol.md §1.4): one-shot flags and seeded profiles.

A *flag* is armed for one client key (the HTTP `Authorization` value) and spoils exactly the next read
or write that key makes; several flags queue up in order. A *profile* gives every request, whatever its
transport, a seeded chance of each fault, so a run with the same seed and the same request sequence
sees the same faults. Flags win over the profile.

The damage functions turn a good response into the faulty bytes a transport sends.
"""

from __future__ import annotations

import enum
import random
from collections import defaultdict, deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from protocol import modbus
from protocol.errors import DocumentError
from protocol.registers import SLAVE_ADDRESS

MAX_DELAY_MS = 600_000  # ten minutes: far past any client timeout, short enough not to wedge a run


class FaultKind(enum.Enum):
    EXCEPTION = "EXCEPTION"  # a Modbus exception frame instead of the answer
    CRC_ERROR = "CRC_ERROR"  # the answer with a broken CRC
    CORRUPT = "CORRUPT"  # the answer garbled: truncated, or random bytes of the same length
    PACKET_DROP = "PACKET_DROP"  # no answer at all (the request is lost before the inverter sees it)
    DELAY = "DELAY"  # the answer, late


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    exception_code: int = modbus.ExceptionCode.SLAVE_DEVICE_FAILURE
    delay_ms: int = 0  # DELAY: how late; PACKET_DROP: how long the connection is held before it closes

    @classmethod
    def from_json(cls, doc: Any) -> Fault:
        """A fault from the SIM API's fields `errorType`, `exceptionCode`, `delayMs` (DocumentError if bad)."""
        if not isinstance(doc, Mapping):
            raise DocumentError("the body must be a JSON object", doc)
        kind = _kind(doc.get("errorType"))
        code = doc.get("exceptionCode")
        delay = doc.get("delayMs")
        if kind is FaultKind.EXCEPTION and code is None:
            raise DocumentError("exceptionCode is required for EXCEPTION", doc)
        if kind is FaultKind.DELAY and delay is None:
            raise DocumentError("delayMs is required for DELAY", doc)
        return cls(
            kind,
            modbus.ExceptionCode.SLAVE_DEVICE_FAILURE if code is None else _exception_code(code),
            0 if delay is None else _delay_ms(delay),
        )

    def to_json(self) -> dict[str, Any]:
        return {"errorType": self.kind.value, "exceptionCode": self.exception_code, "delayMs": self.delay_ms}


@dataclass(frozen=True)
class FaultProfile:
    """A seeded chance of each fault on every request."""

    probabilities: Mapping[FaultKind, float]
    seed: int = 1
    exception_code: int = modbus.ExceptionCode.SLAVE_DEVICE_FAILURE
    delay_ms: int = 1000

    @classmethod
    def from_json(cls, doc: Any) -> FaultProfile:
        """From `{"probabilities": {"CRC_ERROR": 0.1, ...}, "seed": 7, "exceptionCode": 4, "delayMs": 800}`."""
        if not isinstance(doc, Mapping):
            raise DocumentError("the body must be a JSON object", doc)
        raw = doc.get("probabilities")
        if not isinstance(raw, Mapping) or not raw:
            raise DocumentError("probabilities must be an object of errorType -> probability", raw)
        probabilities = {_kind(name): _probability(p) for name, p in raw.items()}
        if sum(probabilities.values()) > 1.0 + 1e-9:
            raise DocumentError("probabilities add up to more than 1", raw)
        seed = doc.get("seed", 1)
        if not _is_int(seed):
            raise DocumentError("seed must be an integer", seed)
        code = doc.get("exceptionCode", modbus.ExceptionCode.SLAVE_DEVICE_FAILURE)
        return cls(probabilities, seed, _exception_code(code), _delay_ms(doc.get("delayMs", 1000)))

    def to_json(self) -> dict[str, Any]:
        return {
            "probabilities": {kind.value: p for kind, p in self.probabilities.items()},
            "seed": self.seed,
            "exceptionCode": self.exception_code,
            "delayMs": self.delay_ms,
        }

    def draw(self, rng: random.Random) -> Fault | None:
        roll = rng.random()
        for kind in FaultKind:  # a fixed order, so a seed means the same thing on every run
            roll -= self.probabilities.get(kind, 0.0)
            if roll < 0:
                return Fault(kind, self.exception_code, self.delay_ms)
        return None


@dataclass(frozen=True)
class EmulatedError:
    """A request to the error-emulation API (`POST /api/inverter/error`)."""

    slave: int
    function: int
    fault: Fault

    @classmethod
    def from_json(cls, doc: Any) -> EmulatedError:
        """Accept both spellings of the course documents: `slaveAddress` or `slaveId`, and the
        `dropPacket` / `corruptPacket` booleans of its curl example next to `errorType`."""
        if not isinstance(doc, Mapping):
            raise DocumentError("the body must be a JSON object", doc)
        slave = doc.get("slaveAddress", doc.get("slaveId", SLAVE_ADDRESS))
        function = doc.get("functionCode", modbus.READ_HOLDING_REGISTERS)
        if not _is_int(slave) or not 0 <= slave <= 0xFF:
            raise DocumentError("slaveAddress must be 0..255", slave)
        if not _is_int(function) or not 0 <= function < modbus.EXCEPTION_FLAG:
            raise DocumentError("functionCode must be 0..127", function)
        for flag in ("dropPacket", "corruptPacket"):
            if not isinstance(doc.get(flag, False), bool):
                raise DocumentError(f"{flag} must be true or false", doc.get(flag))
        if doc.get("dropPacket") or doc.get("corruptPacket"):
            kind = FaultKind.PACKET_DROP if doc.get("dropPacket") else FaultKind.CORRUPT
            fault = Fault.from_json({**doc, "errorType": kind.value})
        else:
            fault = Fault.from_json(doc)
        return cls(slave, function, fault)


class FaultBook:
    """Armed flags per client key, the active profile, and the seeded randomness both use."""

    def __init__(self, seed: int = 1) -> None:
        self._armed: defaultdict[str, deque[Fault]] = defaultdict(deque)
        self._profile: FaultProfile | None = None
        self._rng = random.Random(seed)

    def arm(self, fault: Fault, key: str = "") -> int:
        """Queue a one-shot fault for `key`; returns how many are now pending for it."""
        self._armed[key].append(fault)
        return len(self._armed[key])

    def armed(self, key: str = "") -> list[Fault]:
        return list(self._armed.get(key, ()))

    def disarm(self, key: str = "") -> None:
        self._armed.pop(key, None)

    @property
    def profile(self) -> FaultProfile | None:
        return self._profile

    def set_profile(self, profile: FaultProfile | None) -> None:
        """Install (or, with None, remove) the profile; its seed restarts the shared randomness."""
        self._profile = profile
        if profile is not None:
            self._rng = random.Random(profile.seed)

    def take(self, key: str = "") -> Fault | None:
        """The fault for the next request of `key`: its oldest armed flag, else a profile draw."""
        pending = self._armed.get(key)
        if pending:
            fault = pending.popleft()
            if not pending:
                del self._armed[key]
            return fault
        return self._profile.draw(self._rng) if self._profile else None

    def damage_rtu(self, frame: bytes, kind: FaultKind) -> bytes:
        """An RTU frame as CRC_ERROR or CORRUPT sends it."""
        if kind is FaultKind.CRC_ERROR:
            return frame[:-2] + bytes((frame[-2] ^ 0x01, frame[-1]))
        if kind is FaultKind.CORRUPT:
            return self._garble(frame)
        return frame

    def damage_tcp(self, adu: bytes, kind: FaultKind) -> bytes:
        """A Modbus TCP frame (7-byte MBAP header + PDU) as CRC_ERROR or CORRUPT sends it.

        Modbus TCP carries no CRC: CRC_ERROR cuts the two bytes where an RTU CRC would be, so the client
        never completes the frame; CORRUPT garbles the PDU behind an intact header.
        """
        if kind is FaultKind.CRC_ERROR:
            return adu[:-2]
        if kind is FaultKind.CORRUPT:
            return adu[:7] + self._garble(adu[7:])
        return adu

    def _garble(self, data: bytes) -> bytes:
        if len(data) > 2 and self._rng.random() < 0.5:
            return data[: self._rng.randrange(1, len(data) - 1)]
        garbage = self._rng.randbytes(len(data))
        return garbage if garbage != data else bytes(b ^ 0xFF for b in data)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(name: Any) -> FaultKind:
    try:
        return FaultKind(name)
    except ValueError:
        raise DocumentError(f"errorType must be one of {', '.join(k.value for k in FaultKind)}", name) from None


def _exception_code(code: Any) -> int:
    if not _is_int(code) or code not in set(modbus.ExceptionCode):
        raise DocumentError("exceptionCode must be a Modbus exception code (1-6, 8, 10, 11)", code)
    return int(code)


def _delay_ms(delay: Any) -> int:
    if not _is_int(delay) or not 0 <= delay <= MAX_DELAY_MS:
        raise DocumentError(f"delayMs must be an integer 0..{MAX_DELAY_MS}", delay)
    return int(delay)


def _probability(p: Any) -> float:
    if not isinstance(p, int | float) or isinstance(p, bool) or not 0.0 <= p <= 1.0:
        raise DocumentError("a probability must be a number 0..1", p)
    return float(p)
