"""The inverter's register map (firmware-protocol.md §1.3).

The firmware's register id equals the Modbus address. Values travel raw; `gain` is for display only
(scaled = raw / gain).
"""

from __future__ import annotations

from dataclasses import dataclass

from protocol.errors import RegisterError

SLAVE_ADDRESS = 0x11


@dataclass(frozen=True)
class Register:
    address: int
    name: str
    meaning: str
    gain: int
    unit: str
    writable: bool
    minimum: int = 0
    maximum: int = 0xFFFF

    def scaled(self, raw: int) -> float:
        return raw / self.gain

    def check_write(self, value: int) -> None:
        """Raise RegisterError unless `value` may be written to this register."""
        if not self.writable:
            raise RegisterError(f"register {self.name} ({self.address}) is read-only", self.address)
        if not self.minimum <= value <= self.maximum:
            raise RegisterError(
                f"{self.name} takes {self.minimum}..{self.maximum} {self.unit}".rstrip(), value
            )


REGISTERS: tuple[Register, ...] = (
    Register(0, "Vac1", "L1 phase voltage", 10, "V", False),
    Register(1, "Iac1", "L1 phase current", 10, "A", False),
    Register(2, "Fac1", "L1 phase frequency", 100, "Hz", False),
    Register(3, "Vpv1", "PV1 input voltage", 10, "V", False),
    Register(4, "Vpv2", "PV2 input voltage", 10, "V", False),
    Register(5, "Ipv1", "PV1 input current", 10, "A", False),
    Register(6, "Ipv2", "PV2 input current", 10, "A", False),
    Register(7, "Temp", "inverter internal temperature", 10, "°C", False),
    Register(8, "Pow", "export power percentage", 1, "%", True, 0, 100),
    Register(9, "Pac", "inverter output power", 1, "W", False),
)

REGISTER_COUNT = len(REGISTERS)
EXPORT_LIMIT_ADDRESS = 8
BY_NAME: dict[str, Register] = {r.name.lower(): r for r in REGISTERS}

# The firmware's default selection, in the firmware's order (§2.2).
DEFAULT_SELECTION: tuple[int, ...] = (0, 1, 5, 9, 6, 7)


def by_address(address: int) -> Register:
    if not 0 <= address < REGISTER_COUNT:
        raise RegisterError("no such register address", address)
    return REGISTERS[address]


def by_name(name: str) -> Register:
    try:
        return BY_NAME[name.lower()]
    except KeyError:
        raise RegisterError("no such register name", name) from None


def resolve(ref: str | int) -> Register:
    """A register from its name ("Pac"), its address (9) or its address as text ("9")."""
    if isinstance(ref, int):
        return by_address(ref)
    text = ref.strip()
    return by_address(int(text)) if text.isascii() and text.isdigit() else by_name(text)


def selection_mask(addresses: list[int] | tuple[int, ...]) -> int:
    """The NVS `readregs/regs` bitmask (bit k = address k)."""
    mask = 0
    for a in addresses:
        mask |= 1 << by_address(a).address
    return mask


def addresses_from_mask(mask: int) -> list[int]:
    """Selected addresses in ascending order, as the firmware rebuilds them from NVS (§2.2)."""
    return [a for a in range(REGISTER_COUNT) if mask >> a & 1]
