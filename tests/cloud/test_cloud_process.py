"""`ecowatt cloud serve` as an OS process: killed with SIGKILL mid-stream it loses no acknowledged
upload and duplicates nothing; SIGTERM lets in-flight requests finish and exits 0.

The process is started as `python -m cloud.cli cloud serve`: the very parser and handler `ecowatt`
mounts, without the seconds `ecowatt` spends importing the simulator's science stack."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import pytest

from cloud.key_registry import KeyFiles
from protocol.upload_document import CompressedPacket
from tests.cloud.firmware_uploads import FirmwareDevice

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = 30


@dataclass
class Served:
    process: asyncio.subprocess.Process
    url: str


@asynccontextmanager
async def serve(directory: Path) -> AsyncIterator[Served]:
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "cloud.cli", "cloud", "serve", "--port", "0",
        "--data-dir", str(directory / "data"), "--keys-dir", str(directory / "keys"), "--log-level", "WARNING",
        cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert process.stdout is not None
        line = (await asyncio.wait_for(process.stdout.readline(), START_TIMEOUT)).decode()
        assert line.startswith("listening on http://127.0.0.1:"), line
        yield Served(process, line.split()[-1])
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@dataclass
class Stream:
    """One device uploading one packet per request, as fast as the cloud answers."""

    device: FirmwareDevice
    acknowledged: list[int] = field(default_factory=list)  # packet timestamps that got a 200
    unanswered: list[int] = field(default_factory=list)  # sent, no answer: stored or not, never twice
    requeued: list[CompressedPacket] = field(default_factory=list)  # what the device would send again

    def batch(self) -> int:
        n = len(self.acknowledged) + len(self.unanswered)
        rows = [[2300 + 40 * (n % 3) + 11 * s, 900 + 10 * n % 97 + s, 300 + s, 3000 + 10 * (n % 5) + s,
                 310 + s, 999 - s] for s in range(7)]
        self.device.sample(rows)
        return self.device.queue[-1].metadata.timestamp

    async def run(self, http: aiohttp.ClientSession, url: str, stop: asyncio.Event) -> None:
        while not stop.is_set():
            packet_ts = self.batch()
            pending = list(self.device.queue)
            body = self.device.upload()
            try:
                async with http.post(url + "/process", data=body,
                                     headers={"Content-Type": "application/json"}) as response:
                    await response.read()
                    assert response.status == 200, response.status
                    self.acknowledged.append(packet_ts)
            except (TimeoutError, aiohttp.ClientError):
                self.unanswered.append(packet_ts)
                self.requeued = pending
                return


def _streams(directory: Path, count: int) -> list[Stream]:
    keys = KeyFiles(directory / "keys")
    streams = [Stream(FirmwareDevice())]
    for n in range(1, count):
        device_id = f"crash-{n}"
        streams.append(Stream(FirmwareDevice(device_id=device_id, key=keys.add_device(device_id))))
    return streams


async def _packets(http: aiohttp.ClientSession, url: str, token: str, device_id: str) -> Counter[int]:
    """How many times each packet (by its timestamp) is stored, decodable or not."""
    async with http.get(f"{url}/api/v1/devices/{device_id}/packets", params={"limit": "10000"},
                        headers={"Authorization": f"Bearer {token}"}) as response:
        assert response.status == 200
        packets = (await response.json())["packets"]
    assert len(packets) < 10000
    return Counter(p["packet_ts"] for p in packets)


async def test_sigkill_mid_stream_loses_no_acknowledged_upload_and_stores_none_twice(tmp_path: Path) -> None:
    streams = _streams(tmp_path, 4)
    token = KeyFiles(tmp_path / "keys").generate_operator_token()
    async with serve(tmp_path) as served, aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
        stop = asyncio.Event()
        tasks = [asyncio.create_task(s.run(http, served.url, stop)) for s in streams]
        for _ in range(400):  # until enough uploads were acknowledged (bounded)
            if sum(len(s.acknowledged) for s in streams) >= 60:
                break
            await asyncio.sleep(0.02)
        os.kill(served.process.pid, signal.SIGKILL)  # while every stream has a request in flight
        await served.process.wait()
        stop.set()
        await asyncio.gather(*tasks)
    assert all(s.acknowledged and s.unanswered for s in streams)

    async with serve(tmp_path) as served, aiohttp.ClientSession() as http:
        for stream in streams:
            stored = await _packets(http, served.url, token, stream.device.device_id)
            for ts in stream.acknowledged:
                assert stored[ts] == 1, (stream.device.device_id, ts)  # acknowledged: present exactly once
            assert set(stored) <= set(stream.acknowledged) | set(stream.unanswered)
            assert max(stored.values()) == 1

            # The device resends what it never heard about (re-queued, a fresh nonce): now all is there once.
            stream.device.queue = stream.requeued
            async with http.post(served.url + "/process", data=stream.device.upload()) as response:
                assert response.status == 200
            stored = await _packets(http, served.url, token, stream.device.device_id)
            assert stored == Counter({ts: 1 for ts in stream.acknowledged + stream.unanswered})


async def test_sigterm_lets_in_flight_requests_finish_and_exits_zero(tmp_path: Path) -> None:
    device = FirmwareDevice()
    device.sample([[2431 + s, 164 - s, 72 + s, 4153 + 5 * s, 64 - s % 3, 546] for s in range(7)])
    body = device.upload()
    half = len(body) // 2
    received = asyncio.Event()

    async def slow_body() -> AsyncIterator[bytes]:
        yield body[:half]
        received.set()
        await asyncio.sleep(0.5)  # the cloud gets SIGTERM while this request is in flight
        yield body[half:]

    async with serve(tmp_path) as served, aiohttp.ClientSession() as http:
        async def upload() -> int:
            async with http.post(served.url + "/process", data=slow_body(),
                                 headers={"Content-Type": "application/json"}) as response:
                await response.read()
                return response.status

        in_flight = asyncio.create_task(upload())
        await asyncio.wait_for(received.wait(), 10)
        await asyncio.sleep(0.1)
        served.process.send_signal(signal.SIGTERM)
        assert await asyncio.wait_for(in_flight, 15) == 200
        assert await asyncio.wait_for(served.process.wait(), 15) == 0
        assert served.process.stdout is not None
        assert await served.process.stdout.read() == b""  # one "listening on" line, nothing else
        with pytest.raises(aiohttp.ClientConnectorError):  # nothing listens any more
            await http.get(served.url + "/health")
