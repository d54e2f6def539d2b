"""The simulator as one service: one inverter model served on HTTP, Modbus TCP and Modbus RTU at once.

    service = SimService(SimConfig(http_port=0, modbus_port=0, rtu_pty=True))
    await service.start()      # service.http_url, .modbus_url, .rtu_url are now bound
    ...
    await service.stop()

All transports share the model, the sim clock, the fault book and the ledger, so the same seed and the
same sim time give the same registers whichever way they are read.
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from protocol.registers import SLAVE_ADDRESS
from sim_inverter.clock import SimClock
from sim_inverter.faults import FaultBook
from sim_inverter.http_api import build_app
from sim_inverter.ledger import DEFAULT_CAPACITY, Ledger
from sim_inverter.modbus_server import RTU, TCP, ModbusEndpoint
from sim_inverter.model import InverterModel, Site
from sim_inverter.pty_link import PtyLink
from sim_inverter.slave import InverterSlave, RegisterModel


@dataclass(frozen=True)
class SimConfig:
    host: str = "127.0.0.1"
    http_port: int | None = 8080  # None: no HTTP API; 0: any free port
    modbus_port: int | None = 5020  # None: no Modbus TCP; 0: any free port
    rtu: str | None = None  # serial port path (or pyserial URL) for Modbus RTU
    rtu_pty: bool = False  # serve RTU on a new pseudo-terminal pair; clients open `rtu_path`
    baudrate: int = 9600
    slave: int = SLAVE_ADDRESS
    api_key: str | None = None  # None: any Authorization is accepted
    seed: int = 1
    latitude: float | None = None  # None: the model's default site
    time_scale: float = 1.0  # sim seconds per loop second
    time_offset: float = 0.0  # sim time at start
    ledger_capacity: int = DEFAULT_CAPACITY

    def __post_init__(self) -> None:
        if self.rtu and self.rtu_pty:
            raise ValueError("choose a serial port or a pty for RTU, not both")


class SimService:
    def __init__(
        self, config: SimConfig, model: RegisterModel | None = None, clock: SimClock | None = None
    ) -> None:
        """`model` and `clock` default to the seeded InverterModel and the running loop's clock."""
        self.config = config
        self._clock = clock
        if model is None:
            site = Site() if config.latitude is None else Site(latitude=config.latitude)
            model = InverterModel(seed=config.seed, site=site)
        self.model = model
        self.faults = FaultBook(config.seed)
        self.ledger = Ledger(config.ledger_capacity)
        self.slave: InverterSlave | None = None
        self.http_url: str | None = None
        self.modbus_url: str | None = None
        self.rtu_url: str | None = None
        self.rtu_path: str | None = None  # the path a client opens for RTU
        self._runner: web.AppRunner | None = None
        self._endpoints: list[ModbusEndpoint] = []
        self._pty: PtyLink | None = None

    @property
    def urls(self) -> list[str]:
        return [u for u in (self.http_url, self.modbus_url, self.rtu_url) if u]

    def sim_time(self) -> float:
        if self.slave is None:
            raise RuntimeError("the simulator is not running")
        return self.slave.clock.now()

    async def start(self) -> None:
        config = self.config
        clock = self._clock or SimClock(config.time_scale, config.time_offset)
        self.slave = InverterSlave(self.model, clock, self.faults, self.ledger, config.slave)
        # Modbus clients carry no key: they spend the flags armed under the configured key.
        device_key = config.api_key or ""
        try:
            if config.http_port is not None:
                self._runner = web.AppRunner(build_app(self.slave, config.api_key), access_log=None)
                await self._runner.setup()
                site = web.TCPSite(self._runner, config.host, config.http_port)
                await site.start()
                host, port = self._runner.addresses[0][:2]
                self.http_url = f"http://{_url_host(host)}:{port}"
            if config.modbus_port is not None:
                endpoint = ModbusEndpoint(self.slave, TCP, device_key)
                self._endpoints.append(endpoint)
                host, port = await endpoint.start_tcp(config.host, config.modbus_port)
                self.modbus_url = f"modbus-tcp://{_url_host(host)}:{port}"
            if config.rtu or config.rtu_pty:
                if config.rtu_pty:
                    self._pty = PtyLink()
                    server_path, self.rtu_path = self._pty.server_path, self._pty.client_path
                else:
                    server_path = self.rtu_path = config.rtu
                endpoint = ModbusEndpoint(self.slave, RTU, device_key)
                self._endpoints.append(endpoint)
                await endpoint.start_rtu(server_path, config.baudrate)
                self.rtu_url = f"serial://{self.rtu_path}"
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        for endpoint in self._endpoints:
            await endpoint.stop()
        self._endpoints.clear()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._pty is not None:
            self._pty.close()
            self._pty = None

    async def __aenter__(self) -> SimService:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host
