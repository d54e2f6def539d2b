"""Remote configuration messages (firmware-protocol.md §5).

* The device's poll, `POST /changes` with `{"device_id","timestamp"}` (`config_request`,
  `parse_config_request`).
* The flat reply object the firmware reads (`ConfigReply`): `Changed` is the master switch, each
  setting has its own `...Changed` flag, intervals are whole seconds, registers a bitmask.
  `parse_config_reply` reads it as the firmware does (non-integers are 0, only `true` is true).
* What happens next, two ways: `firmware_apply` is what firmware 1.0.4 stores in NVS (its checks
  only); `review_config` is the spec behaviour: every requested change validated with a reason and
  acknowledged as `{"config_ack":{"accepted":[...],"rejected":[...],"unchanged":[...]}}`.
* The operator's `POST /config/update` body (§5.4) with the same validation.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from protocol.errors import DocumentError, RegisterError
from protocol.json_wire import UINT32_MAX, dumps, firmware_int, firmware_true, is_integer, load_object
from protocol.registers import (
    DEFAULT_SELECTION,
    REGISTER_COUNT,
    addresses_from_mask,
    resolve,
    selection_mask,
)

# Firmware defaults: poll every 2 s, upload every 15 s, the default register selection (§2).
DEFAULT_POLL_S = 2
DEFAULT_UPLOAD_S = 15
# Spec limits (the M4 management API: 1 s .. 1 h, in whole seconds since the device works in seconds).
MIN_INTERVAL_S = 1
MAX_INTERVAL_S = 3600
# The firmware keeps at most this many bytes of the reply body (§5.1).
FIRMWARE_REPLY_LIMIT = 1023
# The firmware refuses a register count above this (§5.3).
FIRMWARE_MAX_REG_COUNT = 11
_US_PER_S = 1_000_000

POLL = "poll_interval"
UPLOAD = "upload_interval"
REGISTERS = "registers"
FIELDS = (POLL, UPLOAD, REGISTERS)


# --- device request ------------------------------------------------------------------------------


@dataclass(frozen=True)
class ConfigRequest:
    device_id: str
    timestamp: int


def config_request(device_id: str, timestamp: int) -> bytes:
    """The body the firmware posts to /changes every 5 s (timestamp = millis since boot)."""
    return dumps({"device_id": device_id, "timestamp": timestamp})


def parse_config_request(body: bytes | str) -> ConfigRequest:
    fields = load_object(body, DocumentError, "config request")
    return ConfigRequest(
        device_id=fields.text("device_id", allow_empty=False),
        timestamp=fields.integer("timestamp", 0, UINT32_MAX),
    )


# --- the flat reply --------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeviceSettings:
    """The settings the spec talks about: intervals in seconds, registers as addresses in order."""

    poll_interval_s: int = DEFAULT_POLL_S
    upload_interval_s: int = DEFAULT_UPLOAD_S
    registers: tuple[int, ...] = DEFAULT_SELECTION


@dataclass(frozen=True)
class ConfigReply:
    changed: bool = False
    poll_freq_changed: bool = False
    new_poll_timer: int = 0
    upload_freq_changed: bool = False
    new_upload_timer: int = 0
    regs_changed: bool = False
    regs_count: int = 0
    regs: int = 0

    def to_dict(self) -> dict[str, Any]:
        """The wire object, in the order of the reference server's settings object."""
        return {
            "Changed": self.changed,
            "pollFreqChanged": self.poll_freq_changed,
            "newPollTimer": self.new_poll_timer,
            "uploadFreqChanged": self.upload_freq_changed,
            "newUploadTimer": self.new_upload_timer,
            "regsChanged": self.regs_changed,
            "regsCount": self.regs_count,
            "regs": self.regs,
        }

    def to_json(self) -> bytes:
        return dumps(self.to_dict())

    @classmethod
    def offer(
        cls,
        current: DeviceSettings,
        *,
        poll_interval_s: int | None = None,
        upload_interval_s: int | None = None,
        registers: tuple[int, ...] | list[int] | None = None,
    ) -> ConfigReply:
        """A reply changing the given settings; the others carry their current values, flags off.

        RegisterError for an address that does not exist.
        """
        regs = tuple(current.registers if registers is None else registers)
        return cls(
            changed=poll_interval_s is not None or upload_interval_s is not None or registers is not None,
            poll_freq_changed=poll_interval_s is not None,
            new_poll_timer=current.poll_interval_s if poll_interval_s is None else poll_interval_s,
            upload_freq_changed=upload_interval_s is not None,
            new_upload_timer=current.upload_interval_s if upload_interval_s is None else upload_interval_s,
            regs_changed=registers is not None,
            regs_count=len(regs),
            regs=selection_mask(regs),
        )


def parse_config_reply(body: bytes | str) -> ConfigReply:
    """Read a reply as the firmware does: only JSON `true` sets a flag, non-integers read as 0.

    DocumentError when the body is not a JSON object (the firmware then applies nothing).
    """
    fields = load_object(body, DocumentError, "config reply").data
    return ConfigReply(
        changed=firmware_true(fields.get("Changed")),
        poll_freq_changed=firmware_true(fields.get("pollFreqChanged")),
        new_poll_timer=firmware_int(fields.get("newPollTimer")),
        upload_freq_changed=firmware_true(fields.get("uploadFreqChanged")),
        new_upload_timer=firmware_int(fields.get("newUploadTimer")),
        regs_changed=firmware_true(fields.get("regsChanged")),
        regs_count=firmware_int(fields.get("regsCount")),
        regs=firmware_int(fields.get("regs"), 0, UINT32_MAX),
    )


# --- firmware 1.0.4: what it stores --------------------------------------------------------------


@dataclass(frozen=True)
class StoredConfig:
    """NVS as firmware 1.0.4 keeps it: `freq/poll_freq`, `freq/upload_freq` (µs, uint64),
    `readregs/regs` (bitmask) and `readregs/reg_count`. None = never stored (defaults apply)."""

    poll_us: int | None = None
    upload_us: int | None = None
    regs_mask: int | None = None
    reg_count: int | None = None


def firmware_apply(reply: ConfigReply, stored: StoredConfig) -> StoredConfig:
    """What 1.0.4 writes to NVS for `reply`: a 0 interval is refused, a register change is refused
    when the mask is 0, the count is 0 or above 11; nothing else is checked (§5.3)."""
    if not reply.changed:
        return stored
    result = stored
    if reply.poll_freq_changed and reply.new_poll_timer != 0:
        result = replace(result, poll_us=(reply.new_poll_timer * _US_PER_S) % 2**64)
    if reply.upload_freq_changed and reply.new_upload_timer != 0:
        result = replace(result, upload_us=(reply.new_upload_timer * _US_PER_S) % 2**64)
    if reply.regs_changed and reply.regs != 0 and 0 < reply.regs_count <= FIRMWARE_MAX_REG_COUNT:
        result = replace(result, regs_mask=reply.regs, reg_count=reply.regs_count)
    return result


# --- spec: validate and acknowledge ----------------------------------------------------------------


@dataclass(frozen=True)
class Rejection:
    field: str
    reason: str


@dataclass(frozen=True)
class ConfigAck:
    accepted: tuple[str, ...] = ()
    rejected: tuple[Rejection, ...] = ()
    unchanged: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {
            "config_ack": {
                "accepted": list(self.accepted),
                "rejected": [{"field": r.field, "reason": r.reason} for r in self.rejected],
                "unchanged": list(self.unchanged),
            }
        }

    def to_json(self) -> bytes:
        return dumps(self.to_dict())


def parse_config_ack(body: bytes | str) -> ConfigAck:
    ack = load_object(body, DocumentError, "config ack").obj("config_ack")
    names: dict[str, tuple[str, ...]] = {}
    for key in ("accepted", "unchanged"):
        items = ack.array(key)
        for item in items:
            if item not in FIELDS:
                raise ack.fail(key, f"a list of {', '.join(FIELDS)}", item)
        names[key] = tuple(items)
    rejected = []
    for entry in ack.objects("rejected"):
        name = entry.text("field")
        if name not in FIELDS:
            raise entry.fail("field", f"one of {', '.join(FIELDS)}", name)
        rejected.append(Rejection(name, entry.text("reason")))
    return ConfigAck(names["accepted"], tuple(rejected), names["unchanged"])


def interval_problem(seconds: int) -> str | None:
    """Why an interval (whole seconds) is unacceptable, or None."""
    if not MIN_INTERVAL_S <= seconds <= MAX_INTERVAL_S:
        return f"must be {MIN_INTERVAL_S}..{MAX_INTERVAL_S} s"
    return None


def selection_problem(mask: int, count: int) -> str | None:
    """Why a register mask/count pair is unacceptable, or None."""
    if mask == 0:
        return "no register selected"
    if mask >> REGISTER_COUNT:
        return f"only registers 0..{REGISTER_COUNT - 1} exist"
    if count != bin(mask).count("1"):
        return "regsCount differs from the number of selected registers"
    return None


@dataclass(frozen=True)
class ConfigReview:
    settings: DeviceSettings
    ack: ConfigAck


def review_config(reply: ConfigReply, current: DeviceSettings) -> ConfigReview:
    """The spec device: validate every flagged change, apply the valid ones, say what happened.

    A change to the value already in force is "unchanged", as is everything when `Changed` is not
    true. A new register selection takes ascending address order, as the firmware rebuilds it.
    """
    accepted: list[str] = []
    rejected: list[Rejection] = []
    unchanged: list[str] = []
    settings = current

    def consider(name: str, flagged: bool, same: bool, problem: str | None) -> bool:
        if not (reply.changed and flagged) or (same and problem is None):
            unchanged.append(name)
            return False
        if problem is not None:
            rejected.append(Rejection(name, problem))
            return False
        accepted.append(name)
        return True

    poll, upload = reply.new_poll_timer, reply.new_upload_timer
    if consider(POLL, reply.poll_freq_changed, poll == current.poll_interval_s, interval_problem(poll)):
        settings = replace(settings, poll_interval_s=poll)
    if consider(
        UPLOAD, reply.upload_freq_changed, upload == current.upload_interval_s, interval_problem(upload)
    ):
        settings = replace(settings, upload_interval_s=upload)
    registers = tuple(addresses_from_mask(reply.regs))
    same = registers == tuple(sorted(current.registers))
    if consider(REGISTERS, reply.regs_changed, same, selection_problem(reply.regs, reply.regs_count)):
        settings = replace(settings, registers=registers)
    return ConfigReview(settings, ConfigAck(tuple(accepted), tuple(rejected), tuple(unchanged)))


# --- operator API: POST /config/update (§5.4) ---------------------------------------------------


@dataclass(frozen=True)
class ConfigUpdate:
    device_id: str
    poll_interval_s: int | None = None
    upload_interval_s: int | None = None
    registers: tuple[int, ...] | None = None


def parse_config_update(body: bytes | str) -> ConfigUpdate:
    """`{"device_id", "poll_frequency", "upload_frequency", "registers"}`, frequencies in µs.

    DocumentError("device_id is required") or DocumentError("Validation failed", [details]);
    registers are names or addresses (RegisterError details are reported the same way).
    """
    fields = load_object(body, DocumentError, "config update")
    raw = fields.data
    if not isinstance(raw.get("device_id"), str) or not raw["device_id"]:
        raise DocumentError("device_id is required")
    details: list[str] = []
    intervals: dict[str, int | None] = {}
    for key in ("poll_frequency", "upload_frequency"):
        value = raw.get(key)
        intervals[key] = None
        if value is None:
            continue
        if not is_integer(value) or value % _US_PER_S:
            details.append(f"{key} must be an integer number of microseconds in whole seconds")
        elif (problem := interval_problem(value // _US_PER_S)) is not None:
            details.append(f"{key} {problem}")
        else:
            intervals[key] = value // _US_PER_S
    registers: tuple[int, ...] | None = None
    if raw.get("registers") is not None:
        refs = raw["registers"]
        if not isinstance(refs, list) or not refs:
            details.append("registers must be a non-empty list")
        else:
            try:
                addresses = [resolve(_register_ref(ref)).address for ref in refs]
                selection_mask(addresses)
                if len(set(addresses)) != len(addresses):
                    details.append("registers lists a register twice")
                registers = tuple(addresses)
            except RegisterError as exc:
                details.append(str(exc))
    if (
        all(v is None for v in (intervals["poll_frequency"], intervals["upload_frequency"], registers))
        and not details
    ):
        details.append("nothing to update")
    if details:
        raise DocumentError("Validation failed", details)
    return ConfigUpdate(
        device_id=raw["device_id"],
        poll_interval_s=intervals["poll_frequency"],
        upload_interval_s=intervals["upload_frequency"],
        registers=registers,
    )


def _register_ref(ref: Any) -> str | int:
    # Only ASCII digits count as an address: resolve() would choke on other Unicode digits.
    if is_integer(ref) or (isinstance(ref, str) and (ref.isascii() or not ref.strip().isdigit())):
        result: str | int = ref
        return result
    raise RegisterError("a register is named by its name or address", ref)
