"""OTA of a 1 MiB image end to end on loopback: check, initiate, every chunk in order (decrypted and
verified as the device does it), complete, against the real cloud on durable SQLite.

Side by side, the baseline is a bare aiohttp server answering the same chunk replies from memory (no
session, no storage, no release lookup), fetched and verified by the same client, so the ratio shows
what the service costs on top of HTTP and the device's own work. A second row holds the whole
transfer against the 1 s target (value and baseline in transfers per second).
"""

from __future__ import annotations

import asyncio
import json
import tempfile
import time
from pathlib import Path

import aiohttp
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import rsa

from bench import Result
from cloud.key_registry import KeyFiles
from cloud.ota_repository import AES_KEY_FILE, PRIVATE_KEY_FILE
from cloud.routes_ota import OTA
from cloud.server import CloudServer
from cloud.settings import CloudSettings
from protocol.firmware_crypto import generate_aes_key, generate_rsa_key, private_key_to_pem
from protocol.firmware_release import FirmwareDownload
from protocol.ota_messages import (
    UpdateOffer,
    chunk_reply,
    initiate_request,
    parse_check_reply,
    parse_chunk_reply,
)

IMAGE_BYTES = 1024 * 1024
ROUNDS = 5
DEVICE = "ESP32_EcoWatt_Smart"
TARGET_SECONDS = 1.0


def _image() -> bytes:
    return b"\xe9" + bytes(range(256)) * (IMAGE_BYTES // 256) + b"\x00" * (IMAGE_BYTES % 256 - 1)


async def _download(http: aiohttp.ClientSession, base: str, download: FirmwareDownload) -> None:
    for index in range(download.offer.total_chunks):
        async with http.get(f"{base}/ota/chunk/{DEVICE}", params={"version": "1.0.5", "chunk": str(index)}) as r:
            download.accept_chunk(index, parse_chunk_reply(await r.read()))
    download.finish()


async def _service_round(http: aiohttp.ClientSession, base: str, aes_key: bytes,
                         public_key: rsa.RSAPublicKey) -> float:
    start = time.perf_counter()
    async with http.get(f"{base}/ota/check/{DEVICE}", params={"version": "1.0.4"}) as r:
        offer = parse_check_reply(await r.read())
    assert offer is not None, "nothing offered"
    async with http.post(f"{base}/ota/initiate/{DEVICE}", data=initiate_request("1.0.5"),
                         headers={"Content-Type": "application/json"}) as r:
        assert r.status == 201, await r.text()
    await _download(http, base, FirmwareDownload(offer, aes_key, public_key))
    async with http.post(f"{base}/ota/complete/{DEVICE}", json={"success": True}) as r:
        assert r.status == 200, await r.text()
    return time.perf_counter() - start


async def _bare_server(release_chunks: list[bytes]) -> tuple[web.AppRunner, str]:
    replies = [json.dumps(chunk_reply(DEVICE, i, c)).encode() for i, c in enumerate(release_chunks)]

    async def chunk(request: web.Request) -> web.Response:
        return web.Response(body=replies[int(request.query["chunk"])], content_type="application/json")

    app = web.Application()
    app.router.add_get("/ota/chunk/{device_id}", chunk)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


async def _run(rounds: int) -> tuple[float, float]:
    image = _image()
    signing_key, aes_key = generate_rsa_key(), generate_aes_key()
    with tempfile.TemporaryDirectory() as folder:
        directory = Path(folder)
        keys = directory / "keys"
        keys.mkdir()
        (keys / PRIVATE_KEY_FILE).write_bytes(private_key_to_pem(signing_key))
        (keys / AES_KEY_FILE).write_bytes(aes_key)
        token = KeyFiles(keys).generate_operator_token()
        settings = CloudSettings(host="127.0.0.1", port=0, data_dir=directory / "data", keys_dir=keys,
                                 firmware_dir=directory / "firmware")
        settings.data_dir.mkdir()
        async with CloudServer(settings) as server, aiohttp.ClientSession(
                headers={"Authorization": f"Bearer {token}"}) as http:
            assert server.app is not None
            service = server.app[OTA]
            await service.repository.publish(image, "1.0.5")
            async with http.post(f"{server.url}/api/v1/rollouts", json={"version": "1.0.5", "devices": [DEVICE]}) as r:
                assert r.status == 201, await r.text()
            release = await service.repository.release("1.0.5")
            chunks = [release.encrypted[i:i + release.manifest.chunk_size]
                      for i in range(0, len(release.encrypted), release.manifest.chunk_size)]
            bare, bare_url = await _bare_server(chunks)
            ours, theirs = [], []
            offer = UpdateOffer.from_manifest(release.manifest)
            try:
                for _ in range(rounds):
                    start = time.perf_counter()
                    await _download(http, bare_url, FirmwareDownload(offer, aes_key, signing_key.public_key()))
                    theirs.append(time.perf_counter() - start)
                    ours.append(await _service_round(http, server.url, aes_key, signing_key.public_key()))
            finally:
                await bare.cleanup()
    return min(ours), min(theirs)  # best of the rounds: the least disturbed by the rest of the machine


def main(rounds: int = ROUNDS) -> list[Result]:
    ours, bare = asyncio.run(_run(rounds))
    return [
        Result("ota_transfer", "1 MiB OTAs/s vs bare chunk server", 1 / ours, "OTA/s", baseline=1 / bare),
        Result("ota_transfer", f"1 MiB OTAs/s vs the {TARGET_SECONDS:g} s target", 1 / ours, "OTA/s",
               baseline=1 / TARGET_SECONDS, target=1.0),
    ]


if __name__ == "__main__":
    for result in main():
        print(result, f"ratio={result.ratio:.2f}")
