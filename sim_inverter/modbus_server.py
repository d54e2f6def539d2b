"""Modbus TCP and Modbus RTU servers (pymodbus 3.16, SimData/SimDevice) in front of the inverter slave.

pymodbus owns the wire (framing, MBAP/CRC, exception frames). Our `SimDevice.action` hook routes every
register access through `InverterSlave.serve`, so values come live from the model at read time and the
access rules, faults and ledger are shared with the HTTP API. Faults that spoil bytes (CRC_ERROR,
CORRUPT, PACKET_DROP) are applied in `trace_packet` to the very response the action just decided:
pymodbus builds and sends a response synchronously after the action returns, with no await in
between, so one pending slot per server cannot be taken by another connection's response.

Requests for another slave id are not answered over RTU (as on a real bus) and get exception 0B
(gateway target failed to respond) over TCP.
"""

from __future__ import annotations

from pymodbus.constants import ExcCodes
from pymodbus.framer import FramerType
from pymodbus.server import ModbusSerialServer, ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from protocol import modbus
from protocol.modbus import ReadRequest, WriteRequest
from sim_inverter.faults import FaultKind
from sim_inverter.slave import InverterSlave

TCP = "modbus-tcp"
RTU = "modbus-rtu"
_ADDRESS_SPACE = 0x10000  # the whole space, so every address reaches the slave's own access rules
_CATCH_ALL_ID = 0  # pymodbus: a SimDevice with id 0 answers for every id not otherwise defined


class ModbusEndpoint:
    """One pymodbus server (TCP, or RTU on a serial port) serving `slave` for client key `client`."""

    def __init__(self, slave: InverterSlave, transport: str, client: str = "") -> None:
        if transport not in (TCP, RTU):
            raise ValueError(f"transport must be {TCP!r} or {RTU!r}")
        self.slave = slave
        self.transport = transport
        self.client = client
        self._pending: FaultKind | None = None  # what to do to the response being sent right now
        self._server: ModbusTcpServer | ModbusSerialServer | None = None
        self.address: tuple[str, int] | None = None  # TCP: where it listens

    def _devices(self) -> list[SimDevice]:
        def registers() -> list[SimData]:
            return [SimData(0, count=_ADDRESS_SPACE, values=0, datatype=DataType.REGISTERS)]

        return [
            SimDevice(id=self.slave.slave_id, simdata=registers(), action=self._action),
            SimDevice(id=_CATCH_ALL_ID, simdata=registers(), action=self._foreign),
        ]

    async def start_tcp(self, host: str, port: int) -> tuple[str, int]:
        server = ModbusTcpServer(self._devices(), address=(host, port), trace_packet=self._trace_packet)
        await _listen(server, f"Modbus TCP on {host}:{port}")
        self._server = server
        sockname = server.transport.sockets[0].getsockname()  # type: ignore[union-attr]
        self.address = (sockname[0], sockname[1])
        return self.address

    async def start_rtu(self, port_path: str, baudrate: int = 9600) -> None:
        server = ModbusSerialServer(
            self._devices(),
            framer=FramerType.RTU,
            port=port_path,
            baudrate=baudrate,
            trace_packet=self._trace_packet,
        )
        await _listen(server, f"Modbus RTU on {port_path}")
        self._server = server

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.shutdown()
            self._server = None

    async def _action(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if function_code == modbus.WRITE_SINGLE_REGISTER and set_values is None:
            return None  # pymodbus reads the register back after a write to build the echo
        request: ReadRequest | WriteRequest
        if function_code == modbus.READ_HOLDING_REGISTERS:
            request = ReadRequest(self.slave.slave_id, address, count)
        elif function_code == modbus.WRITE_SINGLE_REGISTER and set_values:
            request = WriteRequest(self.slave.slave_id, address, int(set_values[0]))
        else:
            return ExcCodes.ILLEGAL_FUNCTION
        served = await self.slave.serve(request, client=self.client, transport=self.transport)
        if served.dropped:
            self._pending = FaultKind.PACKET_DROP
        elif served.damage:
            self._pending = served.damage
        if served.exception_code is not None:
            return ExcCodes(served.exception_code)
        if isinstance(request, ReadRequest) and not served.dropped:
            offset = address - start_address
            registers[offset : offset + count] = served.values
        return None

    async def _foreign(
        self,
        function_code: int,
        start_address: int,
        address: int,
        count: int,
        registers: list[int],
        set_values: list[int] | list[bool] | None,
    ) -> ExcCodes | None:
        if self.transport == RTU:
            self._pending = FaultKind.PACKET_DROP  # not addressed to us: stay silent
            return None
        return ExcCodes.GATEWAY_NO_RESPONSE

    def _trace_packet(self, sending: bool, data: bytes) -> bytes:
        if not sending or self._pending is None:
            return data
        kind, self._pending = self._pending, None
        if kind is FaultKind.PACKET_DROP:
            return b""
        if self.transport == TCP:
            return self.slave.faults.damage_tcp(data, kind)
        return self.slave.faults.damage_rtu(data, kind)


async def _listen(server: ModbusTcpServer | ModbusSerialServer, what: str) -> None:
    try:
        await server.serve_forever(background=True)
    except RuntimeError as error:  # pymodbus's way of saying the port could not be opened
        raise OSError(f"cannot serve {what}") from error
