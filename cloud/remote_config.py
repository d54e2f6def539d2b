"""Remote configuration: operators' changes, validated; `/changes` replies; acknowledgements.

Each stored version (storage `config_versions`) holds the whole desired configuration plus the
fields this version changes:

    {"poll_interval": 5, "upload_interval": 15, "registers": [0, 1, 5], "changes": ["poll_interval"]}

A change made before the previous one was delivered carries the earlier change along (the earlier
version is superseded, never lost). `/changes` hands the pending version out once in the firmware's
flat shape (§5.2), flagging only its changes; afterwards it answers the same values with every flag
off, as LEGACY did. The spec firmware's `config_ack` is recorded against the delivered version.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from cloud.storage import ConfigStatus, ConfigVersion, Storage
from protocol.config_message import (
    FIELDS,
    POLL,
    REGISTERS,
    UPLOAD,
    ConfigAck,
    ConfigReply,
    DeviceSettings,
    interval_problem,
)
from protocol.errors import DocumentError, RegisterError
from protocol.json_wire import is_integer
from protocol.registers import REGISTERS as REGISTER_MAP
from protocol.registers import resolve

CHANGES = "changes"


@dataclass(frozen=True)
class DesiredConfig:
    settings: DeviceSettings
    changes: tuple[str, ...] = ()  # fields (POLL, UPLOAD, REGISTERS) this version changes

    def to_json(self) -> dict[str, Any]:
        return {
            POLL: self.settings.poll_interval_s,
            UPLOAD: self.settings.upload_interval_s,
            REGISTERS: list(self.settings.registers),
            CHANGES: list(self.changes),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DesiredConfig:
        return cls(DeviceSettings(int(data[POLL]), int(data[UPLOAD]), tuple(data[REGISTERS])), tuple(data[CHANGES]))

    def reply(self) -> ConfigReply:
        """The §5.2 object offering this version's changes (the other values ride along, unflagged)."""
        s = self.settings
        return ConfigReply.offer(
            s,
            poll_interval_s=s.poll_interval_s if POLL in self.changes else None,
            upload_interval_s=s.upload_interval_s if UPLOAD in self.changes else None,
            registers=s.registers if REGISTERS in self.changes else None,
        )


@dataclass(frozen=True)
class ConfigChange:
    """What an operator asks for; None = leave as it is."""

    poll_interval_s: int | None = None
    upload_interval_s: int | None = None
    registers: tuple[int, ...] | None = None

    def fields(self) -> tuple[str, ...]:
        given = {POLL: self.poll_interval_s, UPLOAD: self.upload_interval_s, REGISTERS: self.registers}
        return tuple(name for name in FIELDS if given[name] is not None)


def _interval(value: Any, name: str, problems: list[str]) -> int | None:
    if value is None:
        return None
    if not is_integer(value):
        problems.append(f"{name} must be a whole number of seconds")
        return None
    problem = interval_problem(value)
    if problem is not None:
        problems.append(f"{name} {problem}")
        return None
    result: int = value
    return result


def _registers(value: Any, problems: list[str]) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, str):  # "Vac1,Iac1,9" as a shell user types it
        value = [part for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not value:
        problems.append("registers must be a non-empty list of register names or addresses")
        return None
    addresses: list[int] = []
    for ref in value:
        if not (is_integer(ref) or isinstance(ref, str)):
            problems.append(f"registers: {ref!r} is neither a register name nor an address")
            continue
        try:
            address = resolve(ref).address  # only ASCII digits read as an address, other text as a name
        except RegisterError:
            known = ", ".join(r.name for r in REGISTER_MAP)
            problems.append(f"registers: no register {ref!r} (known: {known}, or addresses 0..{len(REGISTER_MAP) - 1})")
            continue
        if address in addresses:
            problems.append(f"registers: {ref!r} is listed twice")
        addresses.append(address)
    return tuple(sorted(set(addresses)))  # the firmware rebuilds the selection in address order


def parse_change(fields: dict[str, Any]) -> ConfigChange:
    """An operator's change: `poll_interval` / `upload_interval` (whole seconds) and `registers`
    (names or addresses). DocumentError("Validation failed: <every reason>")."""
    problems: list[str] = []
    unknown = sorted(set(fields) - set(FIELDS) - {"device_id"})
    if unknown:
        problems.append(f"unknown field {unknown[0]!r} (expected {', '.join(FIELDS)})")
    change = ConfigChange(
        _interval(fields.get(POLL), POLL, problems),
        _interval(fields.get(UPLOAD), UPLOAD, problems),
        _registers(fields.get(REGISTERS), problems),
    )
    if not problems and not change.fields():
        problems.append(f"nothing to change: give at least one of {', '.join(FIELDS)}")
    if problems:
        raise DocumentError(f"Validation failed: {'; '.join(problems)}")
    return change


def revised(latest: ConfigVersion | None, change: ConfigChange) -> dict[str, Any]:
    """The next version's config given the newest one (pure: run inside the storage transaction)."""
    base = DesiredConfig(DeviceSettings()) if latest is None else DesiredConfig.from_json(latest.config)
    carried = base.changes if latest is not None and latest.status is ConfigStatus.PENDING else ()
    settings = base.settings
    if change.poll_interval_s is not None:
        settings = replace(settings, poll_interval_s=change.poll_interval_s)
    if change.upload_interval_s is not None:
        settings = replace(settings, upload_interval_s=change.upload_interval_s)
    if change.registers is not None:
        settings = replace(settings, registers=change.registers)
    changes = tuple(name for name in FIELDS if name in carried or name in change.fields())
    return DesiredConfig(settings, changes).to_json()


async def set_config(storage: Storage, device_id: str, change: ConfigChange) -> ConfigVersion:
    return await storage.revise_config(device_id, lambda latest: revised(latest, change))


async def changes_reply(storage: Storage, device_id: str) -> tuple[ConfigReply, ConfigVersion | None]:
    """The `/changes` answer: the pending version (now delivered, so only once), else no change.

    Returns the reply and the version it delivered (None when nothing was delivered).
    """
    # Devices ask every few seconds and almost always in vain: that answer comes from one read.
    current = await storage.current_config(device_id)
    if current is not None and current.status is ConfigStatus.PENDING:
        taken = await storage.take_config_change(device_id)
        if taken is not None:
            return DesiredConfig.from_json(taken.config).reply(), taken
        current = await storage.current_config(device_id)  # another process delivered it meanwhile
    settings = DeviceSettings() if current is None else DesiredConfig.from_json(current.config).settings
    return DesiredConfig(settings).reply(), None


def ack_outcome(ack: ConfigAck) -> str:
    """One word for an acknowledgement: accepted, rejected, partial or unchanged."""
    if ack.rejected:
        return "partial" if ack.accepted else "rejected"
    return "accepted" if ack.accepted else "unchanged"


async def record_ack(storage: Storage, device_id: str, ack: ConfigAck) -> ConfigVersion | None:
    """Record the device's acknowledgement against its newest delivered version (None if none)."""
    return await storage.ack_config(device_id, ack_outcome(ack), ack.to_dict()["config_ack"])


def version_view(version: ConfigVersion) -> dict[str, Any]:
    """A version as the history shows it: what was asked, its delivery and the device's answer."""
    desired = DesiredConfig.from_json(version.config)
    return {
        "version": version.version,
        "config": {
            POLL: desired.settings.poll_interval_s,
            UPLOAD: desired.settings.upload_interval_s,
            REGISTERS: list(desired.settings.registers),
            "register_names": [REGISTER_MAP[a].name for a in desired.settings.registers],
        },
        "changes": list(desired.changes),
        "status": str(version.status),
        "created_at": version.created_at,
        "delivered_at": version.delivered_at,
        "outcome": version.ack_outcome,
        "ack": version.ack_details,
        "acked_at": version.acked_at,
    }
