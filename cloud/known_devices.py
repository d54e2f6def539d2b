"""Whether a device id names a device this cloud knows: one with a registered key, or a stored record.

Device routes that need no envelope (command polls, diagnostics) touch the storage only for known
devices, so made-up ids sent by anyone cannot make it grow (§11.3.10).
"""

from __future__ import annotations

from aiohttp import web

from cloud.app_keys import KEYS, STORAGE


async def is_known_device(app: web.Application, device_id: str) -> bool:
    if await app[KEYS].key_for(device_id) is not None:
        return True
    return await app[STORAGE].get_device(device_id) is not None
