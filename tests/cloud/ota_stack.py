"""A running cloud service on 127.0.0.1 for the OTA, read-API and MQTT tests, with the fota_case keys.

`CloudStack` holds the service's storage, a real aiohttp client bound to a real loopback server, an
operator token, the release keys (those of fixtures/vectors/fota_case.json, so the device side can
verify what the service prepares), and helpers to publish images and start rollouts as operators do.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from cloud.app import create_app
from cloud.key_registry import KeyFiles
from cloud.ota_repository import AES_KEY_FILE, PRIVATE_KEY_FILE
from cloud.settings import CloudSettings
from cloud.storage import Storage, open_storage
from protocol.firmware_crypto import load_public_key_pem

VECTORS = Path(__file__).resolve().parents[2] / "fixtures" / "vectors"
FOTA = json.loads((VECTORS / "fota_case.json").read_text())
AES_KEY = bytes.fromhex(FOTA["aes256_key_hex"])
PUBLIC_KEY = load_public_key_pem(FOTA["rsa_public_key_pem"])
FOTA_IMAGE = base64.b64decode(FOTA["plaintext_b64"])
PART = 200 * 1024  # upload part, under the service's body limit


def image_of(size: int, seed: int = 0) -> bytes:
    """A fake app image: the ESP32 magic byte, then reproducible bytes."""
    stream = b"".join(hashlib.sha256(f"{seed}:{n}".encode()).digest() for n in range(size // 32 + 1))
    return b"\xe9" + stream[: size - 1]


@dataclass
class CloudStack:
    storage: Storage
    client: TestClient[web.Request, web.Application]
    app: web.Application
    token: str
    settings: CloudSettings

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def operator(self, method: str, path: str, *, expect: int | None = 200, **kwargs: Any) -> Any:
        """An operator request; its JSON answer (checked against `expect` unless None)."""
        response = await self.client.request(method, path, headers=self.auth, **kwargs)
        body = await response.json()
        assert expect is None or response.status == expect, (response.status, body)
        return body

    async def publish(self, image: bytes, version: str, *, expect: int = 201, **options: Any) -> Any:
        """Upload `image` in parts and publish it, as `ecowatt ota publish` does."""
        upload = await self.operator("POST", "/api/v1/firmware/uploads", expect=201)
        for offset in range(0, len(image), PART):
            await self.operator("PUT", f"/api/v1/firmware/uploads/{upload['upload_id']}?offset={offset}",
                                data=image[offset : offset + PART])
        body = {"version": version, "upload_id": upload["upload_id"], "sha256": hashlib.sha256(image).hexdigest(),
                **options}
        return await self.operator("POST", "/api/v1/firmware", json=body, expect=expect)

    async def rollout(self, version: str, devices: list[str], **extra: Any) -> Any:
        return await self.operator("POST", "/api/v1/rollouts", json={"version": version, "devices": devices, **extra},
                                   expect=201)


def write_release_keys(keys_dir: Path) -> None:
    keys_dir.mkdir(parents=True, exist_ok=True)
    (keys_dir / PRIVATE_KEY_FILE).write_text(FOTA["rsa_private_key_pem"])
    (keys_dir / AES_KEY_FILE).write_bytes(AES_KEY)


@asynccontextmanager
async def cloud_stack(tmp_path: Path, *, wall_clock: Callable[[], float] | None = None,
                      storage_url: str | None = None, **settings: Any) -> AsyncIterator[CloudStack]:
    keys_dir = tmp_path / "keys"
    write_release_keys(keys_dir)
    token = KeyFiles(keys_dir).generate_operator_token()
    config = CloudSettings(host="127.0.0.1", port=0, data_dir=tmp_path / "data", keys_dir=keys_dir,
                           firmware_dir=tmp_path / "firmware", **settings)
    clock_options = {} if wall_clock is None else {"wall_clock": wall_clock}
    async with open_storage(storage_url or str(tmp_path / "data"), **clock_options) as storage:
        app = create_app(config, storage, **clock_options)
        client = TestClient(TestServer(app, host="127.0.0.1"))
        await client.start_server()
        try:
            yield CloudStack(storage, client, app, token, config)
        finally:
            await client.close()
