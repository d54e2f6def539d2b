"""Modbus TCP and Modbus RTU (on the simulator's pty) with pymodbus's real async clients."""

from __future__ import annotations

from urllib.parse import urlsplit

import aiohttp
import pytest
from pymodbus.client import AsyncModbusSerialClient, AsyncModbusTcpClient
from pymodbus.exceptions import ModbusIOException

from protocol import modbus
from protocol.registers import SLAVE_ADDRESS
from sim_inverter.clock import SimClock
from sim_inverter.faults import Fault, FaultKind, FaultProfile
from sim_inverter.model import InverterModel
from sim_inverter.service import SimConfig, SimService

NOON = 6 * 3600.0
KEY = "device-key"
TIMEOUT = 0.3  # client timeout for faults that leave it waiting; everything is on loopback


@pytest.fixture(scope="module")
def shared_model() -> InverterModel:
    return InverterModel(seed=7)


@pytest.fixture
def model(shared_model: InverterModel) -> InverterModel:
    shared_model.set_export_limit(100)
    return shared_model


@pytest.fixture
async def sim(model):
    config = SimConfig(http_port=0, modbus_port=0, rtu_pty=True, api_key=KEY)
    async with SimService(config, model=model, clock=SimClock(offset=NOON, loop_time=lambda: 0.0)) as service:
        yield service


@pytest.fixture
async def tcp(sim):
    url = urlsplit(sim.modbus_url)
    client = AsyncModbusTcpClient(url.hostname, port=url.port, timeout=TIMEOUT, retries=0)
    assert await client.connect()
    yield client
    client.close()


@pytest.fixture
async def rtu(sim):
    client = AsyncModbusSerialClient(sim.rtu_path, baudrate=9600, timeout=TIMEOUT, retries=0)
    assert await client.connect()
    yield client
    client.close()


@pytest.fixture(params=["tcp", "rtu"])
def client(request):
    return request.getfixturevalue(request.param)


async def read_all(client, device_id: int = SLAVE_ADDRESS) -> list[int]:
    reply = await client.read_holding_registers(0, count=10, device_id=device_id)
    assert not reply.isError(), reply
    return reply.registers


def outcomes(sim) -> list[str]:
    return [e.outcome for e in sim.ledger.since(0)]


async def test_every_transport_serves_the_same_registers(sim, tcp, rtu, model) -> None:
    async with aiohttp.ClientSession() as http:
        body = modbus.http_body("11030000000AC75D")
        headers = {"Authorization": KEY}
        async with http.post(f"{sim.http_url}/api/inverter/read", data=body, headers=headers) as reply:
            over_http = list(modbus.parse_read_response(modbus.from_hex((await reply.json())["frame"])).values)
    assert await read_all(tcp) == await read_all(rtu) == over_http == model.registers(NOON)
    assert over_http[9] > 0  # noon: producing
    assert [e.transport for e in sim.ledger.since(0)] == ["http", "modbus-tcp", "modbus-rtu"]


async def test_partial_reads(client, model) -> None:
    reply = await client.read_holding_registers(5, count=3, device_id=SLAVE_ADDRESS)
    assert reply.registers == model.registers(NOON)[5:8]


async def test_export_limit_write_changes_what_is_served(client, sim, model) -> None:
    full_power = (await read_all(client))[9]
    reply = await client.write_register(8, 10, device_id=SLAVE_ADDRESS)
    assert not reply.isError() and reply.registers == [10]
    assert model.export_limit == 10
    values = await read_all(client)
    assert values[8] == 10
    assert values[9] <= 500 < full_power  # 10 % of a 5 kW inverter, and the sun is up
    assert outcomes(sim) == ["ok", "ok", "ok"]


@pytest.mark.parametrize(
    ("call", "code"),
    [
        (lambda c: c.write_register(8, 101, device_id=SLAVE_ADDRESS), 3),
        (lambda c: c.write_register(9, 1, device_id=SLAVE_ADDRESS), 2),
        (lambda c: c.write_register(200, 1, device_id=SLAVE_ADDRESS), 2),
        (lambda c: c.read_holding_registers(10, count=1, device_id=SLAVE_ADDRESS), 2),
        (lambda c: c.read_holding_registers(8, count=3, device_id=SLAVE_ADDRESS), 2),
        (lambda c: c.write_registers(8, [50], device_id=SLAVE_ADDRESS), 1),
        (lambda c: c.read_input_registers(0, count=2, device_id=SLAVE_ADDRESS), 1),
    ],
)
async def test_bad_requests_get_the_same_exceptions_as_over_http(client, model, call, code: int) -> None:
    reply = await call(client)
    assert reply.isError() and reply.exception_code == code
    assert model.export_limit == 100


async def test_another_slave_id_over_tcp_is_gateway_exception(tcp) -> None:
    reply = await tcp.read_holding_registers(0, count=2, device_id=0x12)
    assert reply.isError() and reply.exception_code == modbus.ExceptionCode.GATEWAY_TARGET_FAILED


async def test_another_slave_id_on_the_rtu_bus_is_silence(rtu) -> None:
    with pytest.raises(ModbusIOException):
        await rtu.read_holding_registers(0, count=2, device_id=0x12)
    assert len(await read_all(rtu)) == 10


# --- faults ---------------------------------------------------------------------------------------------


async def test_flags_armed_over_http_with_the_device_key_hit_modbus(sim, client) -> None:
    async with aiohttp.ClientSession() as http:
        fault = {"errorType": "EXCEPTION", "exceptionCode": 6}
        url = f"{sim.http_url}/api/user/error-flag/add"
        async with http.post(url, json=fault, headers={"Authorization": KEY}) as reply:
            assert reply.status == 200
    reply = await client.read_holding_registers(0, count=10, device_id=SLAVE_ADDRESS)
    assert reply.isError() and reply.exception_code == 6
    assert len(await read_all(client)) == 10
    assert outcomes(sim) == ["exception", "ok"]


@pytest.mark.parametrize("kind", [FaultKind.PACKET_DROP, FaultKind.CRC_ERROR])
async def test_faults_that_leave_the_client_without_a_usable_answer(sim, client, kind: FaultKind) -> None:
    sim.faults.arm(Fault(kind), KEY)
    with pytest.raises(ModbusIOException):
        await client.read_holding_registers(0, count=10, device_id=SLAVE_ADDRESS)
    assert len(await read_all(client)) == 10  # one-shot: the next read is fine
    assert outcomes(sim) == [kind.value.lower(), "ok"]


async def test_corrupt_answers_never_pass_as_the_real_registers(sim, client, model) -> None:
    for _ in range(4):
        sim.faults.arm(Fault(FaultKind.CORRUPT), KEY)
        try:
            reply = await client.read_holding_registers(0, count=10, device_id=SLAVE_ADDRESS)
        except ModbusIOException:
            continue
        assert reply.isError() or getattr(reply, "registers", None) != model.registers(NOON)
    assert len(await read_all(client)) == 10
    assert outcomes(sim)[:4] == ["corrupt"] * 4


async def test_delay_still_answers(sim, client, model) -> None:
    sim.faults.arm(Fault(FaultKind.DELAY, delay_ms=50), KEY)
    assert await read_all(client) == model.registers(NOON)
    assert outcomes(sim) == ["delay"]


async def test_dropped_or_refused_writes_do_not_happen(sim, tcp, model) -> None:
    sim.faults.arm(Fault(FaultKind.PACKET_DROP), KEY)
    with pytest.raises(ModbusIOException):
        await tcp.write_register(8, 20, device_id=SLAVE_ADDRESS)
    sim.faults.arm(Fault(FaultKind.EXCEPTION, 4), KEY)
    assert (await tcp.write_register(8, 20, device_id=SLAVE_ADDRESS)).exception_code == 4
    assert model.export_limit == 100
    assert not (await tcp.write_register(8, 20, device_id=SLAVE_ADDRESS)).isError()
    assert model.export_limit == 20
    assert [(e.operation, e.values, e.outcome) for e in sim.ledger.since(0)] == [
        ("write", (20,), "packet_drop"),
        ("write", (20,), "exception"),
        ("write", (20,), "ok"),
    ]


async def test_fault_profile_applies_to_modbus(sim, tcp) -> None:
    sim.faults.set_profile(FaultProfile({FaultKind.EXCEPTION: 1.0}, exception_code=5))
    reply = await tcp.read_holding_registers(0, count=2, device_id=SLAVE_ADDRESS)
    assert reply.isError() and reply.exception_code == 5
    sim.faults.set_profile(None)
    assert len(await read_all(tcp)) == 10


async def test_service_without_modbus_or_rtu(model) -> None:
    async with SimService(SimConfig(http_port=0, modbus_port=None), model=model) as sim:
        assert sim.modbus_url is None and sim.rtu_url is None
        assert sim.urls == [sim.http_url] and sim.http_url.startswith("http://127.0.0.1:")
        assert sim.sim_time() >= 0


def test_rtu_port_and_pty_are_exclusive() -> None:
    with pytest.raises(ValueError):
        SimConfig(rtu="/dev/ttyUSB0", rtu_pty=True)
