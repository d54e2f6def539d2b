"""The inverter as a Modbus slave: one place where a read or write meets the model, the faults and the ledger.

Every transport (HTTP frames, Modbus TCP, Modbus RTU) hands its parsed request to `InverterSlave.serve`
and turns the `Served` result into its own bytes, so the access rules, the fault decisions and the
ledger are the same whichever way a request arrived.

Access rules (firmware-protocol.md §1.3, the SIM behaviours the spec recommends): reads of addresses
outside 0..9 -> exception 02; writes to anything but register 8 -> 02; register 8 outside 0..100 -> 03.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Protocol

from protocol import modbus
from protocol.errors import RegisterError
from protocol.modbus import ExceptionCode, ReadRequest, WriteRequest
from protocol.registers import EXPORT_LIMIT_ADDRESS, REGISTER_COUNT, SLAVE_ADDRESS, by_address
from sim_inverter.clock import SimClock
from sim_inverter.faults import Fault, FaultBook, FaultKind
from sim_inverter.ledger import OK, REFUSED, Ledger


class RegisterModel(Protocol):
    """What the slave needs of `sim_inverter.model.InverterModel`."""

    def registers(self, t: float) -> list[int]: ...

    def set_export_limit(self, percent: int) -> None: ...


@dataclass(frozen=True, slots=True)
class Served:
    """The outcome of one request, before a transport puts it on the wire."""

    request: ReadRequest | WriteRequest
    values: tuple[int, ...] = ()  # read: the registers served (empty if none)
    exception_code: int | None = None  # set if the answer is an exception frame (earned or injected)
    fault: Fault | None = None

    @property
    def dropped(self) -> bool:
        return self.fault is not None and self.fault.kind is FaultKind.PACKET_DROP

    @property
    def damage(self) -> FaultKind | None:
        """CRC_ERROR or CORRUPT if the transport must spoil the bytes it sends."""
        if self.fault and self.fault.kind in (FaultKind.CRC_ERROR, FaultKind.CORRUPT):
            return self.fault.kind
        return None

    def frame(self) -> bytes:
        """The RTU response frame (undamaged). Meaningless for a dropped request."""
        request = self.request
        if self.exception_code is not None:
            function = (
                modbus.READ_HOLDING_REGISTERS
                if isinstance(request, ReadRequest)
                else modbus.WRITE_SINGLE_REGISTER
            )
            return modbus.build_exception(request.slave, function, self.exception_code)
        if isinstance(request, ReadRequest):
            return modbus.build_read_response(request.slave, self.values)
        return request.encode()  # a successful write echoes the request


class InverterSlave:
    def __init__(
        self,
        model: RegisterModel,
        clock: SimClock,
        faults: FaultBook,
        ledger: Ledger,
        slave_id: int = SLAVE_ADDRESS,
    ) -> None:
        if not 1 <= slave_id <= 247:  # 0 is broadcast, 248..255 reserved
            raise ValueError("a Modbus slave address is 1..247")
        self.model = model
        self.clock = clock
        self.faults = faults
        self.ledger = ledger
        self.slave_id = slave_id

    def snapshot(self) -> tuple[float, list[int]]:
        """(sim time, the ten raw register values) now."""
        t = self.clock.now()
        return t, self._registers(t)

    def _registers(self, t: float) -> list[int]:
        try:
            return self.model.registers(t)
        except ValueError as error:  # e.g. a huge time scale has run past the model's range
            raise RegisterError("the model has no values at this sim time", t) from error

    async def serve(self, request: ReadRequest | WriteRequest, *, client: str, transport: str) -> Served:
        """Apply the next fault for `client` (if any) and the request, and record it in the ledger."""
        fault = self.faults.take(client)
        if fault and fault.kind is FaultKind.DELAY:
            await asyncio.sleep(fault.delay_ms / 1000)  # loop seconds, like the client's timeout
        t = self.clock.now()  # one instant per request: the values served and the ledger agree
        if fault and fault.kind is FaultKind.EXCEPTION:
            served = Served(request, exception_code=fault.exception_code, fault=fault)
        elif fault and fault.kind is FaultKind.PACKET_DROP:
            served = Served(request, fault=fault)  # lost on the way in: nothing is read or written
        else:
            served = self._apply(request, fault, t)
        self._record(served, transport, t)
        return served

    def _apply(self, request: ReadRequest | WriteRequest, fault: Fault | None, t: float) -> Served:
        if isinstance(request, ReadRequest):
            if not 1 <= request.count <= modbus.MAX_READ_COUNT:
                return Served(request, exception_code=ExceptionCode.ILLEGAL_DATA_VALUE, fault=fault)
            if request.start + request.count > REGISTER_COUNT:
                return Served(request, exception_code=ExceptionCode.ILLEGAL_DATA_ADDRESS, fault=fault)
            try:
                values = self._registers(t)[request.start : request.start + request.count]
            except RegisterError:
                return Served(request, exception_code=ExceptionCode.SLAVE_DEVICE_FAILURE, fault=fault)
            return Served(request, values=tuple(values), fault=fault)
        if request.address != EXPORT_LIMIT_ADDRESS:
            return Served(request, exception_code=ExceptionCode.ILLEGAL_DATA_ADDRESS, fault=fault)
        register = by_address(EXPORT_LIMIT_ADDRESS)
        if not register.minimum <= request.value <= register.maximum:
            return Served(request, exception_code=ExceptionCode.ILLEGAL_DATA_VALUE, fault=fault)
        self.model.set_export_limit(request.value)
        return Served(request, fault=fault)

    def _record(self, served: Served, transport: str, t: float) -> None:
        request = served.request
        if served.fault:
            outcome = served.fault.kind.value.lower()
        else:
            outcome = REFUSED if served.exception_code is not None else OK
        if isinstance(request, ReadRequest):
            operation, start, count, values = "read", request.start, request.count, served.values
        else:
            operation, start, count, values = "write", request.address, 1, (request.value,)
        self.ledger.record(
            t=t,
            transport=transport,
            operation=operation,
            slave=request.slave,
            start=start,
            count=count,
            values=values,
            outcome=outcome,
            exception_code=served.exception_code,
        )
