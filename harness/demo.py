"""`ecowatt demo`: the main job on the embedded defaults.

Until the harness runs scenario suites, it starts the simulator on loopback and prints live register
values (scaled, with units) read back over its HTTP frame API, then exits 0.
"""

from __future__ import annotations

import argparse
import asyncio

import aiohttp
from rich.console import Console
from rich.table import Table

from protocol import modbus
from protocol.registers import REGISTERS, SLAVE_ADDRESS


def add_commands(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = subparsers.add_parser("demo", help="run the main job on the embedded defaults")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to show live values")
    parser.add_argument("--time-scale", type=float, default=600.0, help="simulated seconds per second")
    parser.set_defaults(func=lambda args: asyncio.run(_demo(args.seconds, args.time_scale)))


async def _demo(seconds: float, time_scale: float) -> int:
    from sim_inverter.service import SimConfig, SimService  # pvlib is slow to import: only on use

    console = Console()
    service = SimService(SimConfig(
        host="127.0.0.1", http_port=0, modbus_port=0, time_scale=time_scale, time_offset=4 * 3600.0
    ))
    await service.start()
    try:
        console.print(f"simulator listening on {service.http_url} and {service.modbus_url}")
        request = modbus.build_read_request(SLAVE_ADDRESS, 0, len(REGISTERS))
        async with aiohttp.ClientSession() as http:
            loop = asyncio.get_running_loop()
            end = loop.time() + seconds
            while loop.time() < end:
                body = {"frame": modbus.to_hex(request)}
                async with http.post(f"{service.http_url}/api/inverter/read", json=body) as reply:
                    frame = modbus.from_hex((await reply.json())["frame"])
                values = modbus.parse_read_response(frame).values
                table = Table(title=f"sim time {service.sim_time():,.0f} s", show_lines=False)
                for reg in REGISTERS:
                    table.add_column(reg.name, justify="right")
                table.add_row(*(f"{reg.scaled(v):g} {reg.unit}" for reg, v in zip(REGISTERS, values, strict=True)))
                console.print(table)
                await asyncio.sleep(2.0)
    finally:
        await service.stop()
    return 0
