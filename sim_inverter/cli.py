"""`ecowatt sim serve`: run the inverter simulator until SIGINT or SIGTERM.

Prints one `listening on URL` line per transport once all of them are ready (flushed), so scripts can
start it with port 0 and read the real ports.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import TYPE_CHECKING

from protocol.registers import SLAVE_ADDRESS

if TYPE_CHECKING:
    from sim_inverter.service import SimConfig


def add_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    sim = subparsers.add_parser("sim", help="the inverter simulator")
    commands = sim.add_subparsers(dest="sim_command", metavar="COMMAND")
    serve = commands.add_parser(
        "serve", help="serve the simulated inverter over HTTP frames, Modbus TCP and Modbus RTU"
    )
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--http-port", type=_port, default=8080, help="HTTP frame API port, 0 = any free")
    serve.add_argument("--modbus-port", type=_port, default=5020, help="Modbus TCP port, 0 = any free")
    rtu = serve.add_mutually_exclusive_group()
    rtu.add_argument("--rtu", metavar="PATH", help="also serve Modbus RTU on this serial port")
    rtu.add_argument("--rtu-pty", action="store_true", help="also serve Modbus RTU on a new pty pair")
    serve.add_argument("--baudrate", type=int, default=9600, help="RTU baud rate (default 9600)")
    serve.add_argument("--slave", type=_slave, default=SLAVE_ADDRESS, help="slave address (default 17)")
    serve.add_argument("--api-key", default=None, help="required Authorization value (default: any)")
    serve.add_argument("--seed", type=int, default=1, help="seed of the model and of fault profiles")
    serve.add_argument("--latitude", type=_latitude, default=None, help="site latitude, degrees")
    serve.add_argument("--time-scale", type=_positive, default=1.0, help="sim seconds per real second")
    serve.add_argument("--time-offset", type=float, default=0.0, help="sim time at start, seconds")
    serve.set_defaults(func=serve_command)


def serve_command(args: argparse.Namespace) -> int:
    # The model pulls in pvlib and pandas (seconds): import on use so every `ecowatt` command starts fast.
    from sim_inverter.service import SimConfig

    config = SimConfig(
        host=args.host,
        http_port=args.http_port,
        modbus_port=args.modbus_port,
        rtu=args.rtu,
        rtu_pty=args.rtu_pty,
        baudrate=args.baudrate,
        slave=args.slave,
        api_key=args.api_key,
        seed=args.seed,
        latitude=args.latitude,
        time_scale=args.time_scale,
        time_offset=args.time_offset,
    )
    return asyncio.run(_serve(config))


async def _serve(config: SimConfig) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    from sim_inverter.service import SimService

    service = SimService(config)
    try:
        await service.start()
    except OSError as error:  # port taken, serial port missing...
        print(f"ecowatt sim serve: {error}", file=sys.stderr)
        return 1
    try:
        for url in service.urls:
            print(f"listening on {url}", flush=True)
        await stop.wait()
    finally:
        await service.stop()
    return 0


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError("a port is 0..65535")
    return value


def _slave(text: str) -> int:
    value = int(text, 0)
    if not 1 <= value <= 247:
        raise argparse.ArgumentTypeError("a slave address is 1..247")
    return value


def _latitude(text: str) -> float:
    value = float(text)
    if not -90.0 <= value <= 90.0:
        raise argparse.ArgumentTypeError("latitude is -90..90")
    return value


def _positive(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError("must be positive")
    return value
