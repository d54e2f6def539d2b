"""MQTT against a real Mosquitto broker the test starts: telemetry, the seed's topic and the retained
state arrive with QoS 1 from `cloud serve --mqtt`, and a broker outage loses nothing."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiomqtt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cloud.mqtt_publisher import BrokerAddress, parse_broker_url
from cloud.storage import Storage
from protocol.errors import DocumentError
from tests.cloud.firmware_uploads import FirmwareDevice
from tests.cloud.mosquitto import Mosquitto, mosquitto_path
from tests.cloud.running_cloud import Cloud, running_cloud

needs_broker = pytest.mark.skipif(mosquitto_path() is None, reason="mosquitto not installed")

DEVICE = "ESP32_EcoWatt_Smart"
WAIT = 20.0  # bound on any wait for the broker's deliveries


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Mosquitto]:
    folder = tmp_path / "broker"
    folder.mkdir()
    mosquitto = Mosquitto(folder)
    mosquitto.start()
    try:
        yield mosquitto
    finally:
        mosquitto.stop()


@pytest.fixture
async def cloud(tmp_path: Path, broker: Mosquitto) -> AsyncIterator[Cloud]:
    async with running_cloud(tmp_path, mqtt_url=broker.url) as running:
        yield running


def uploads(count: int) -> list[bytes]:
    device = FirmwareDevice()
    bodies = []
    for n in range(count):
        device.sample([[2431 + s + n, 164 - s, 72 + s, 4153 + 5 * s, 64 - s % 3, 546 + n] for s in range(7)])
        bodies.append(device.upload())
    return bodies


async def outbox_drained(storage: Storage) -> None:
    """Wait until the broker acknowledged everything (the publisher marks rows only then)."""
    async with asyncio.timeout(WAIT):
        while await storage.pending_outbox():
            await asyncio.sleep(0.02)


class Watcher:
    """A subscriber to `ecowatt/#` with a persistent session (QoS 1), reconnecting across outages."""

    def __init__(self, broker: Mosquitto, identifier: str = "watcher") -> None:
        self.broker = broker
        self.identifier = identifier
        self.messages: list[aiomqtt.Message] = []
        self.subscribed = asyncio.Event()
        self.changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        while True:
            try:
                async with aiomqtt.Client("127.0.0.1", self.broker.port, identifier=self.identifier,
                                          clean_session=False) as client:
                    await client.subscribe("ecowatt/#", qos=1)
                    self.subscribed.set()
                    async for message in client.messages:
                        self.messages.append(message)
                        self.changed.set()
            except aiomqtt.MqttError:
                await asyncio.sleep(0.1)

    async def __aenter__(self) -> Watcher:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self.subscribed.wait(), WAIT)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)

    def topics(self) -> Counter[str]:
        return Counter(str(m.topic) for m in self.messages)

    async def wait_for(self, topic: str, count: int) -> None:
        async with asyncio.timeout(WAIT):
            while self.topics()[topic] < count:
                self.changed.clear()
                await self.changed.wait()


@needs_broker
async def test_ingested_telemetry_reaches_the_broker_with_qos1_and_a_retained_state(
        cloud: Cloud, broker: Mosquitto) -> None:
    async with Watcher(broker) as watcher:
        for body in uploads(2):
            assert (await cloud.process(body)).status == 200
        await watcher.wait_for(f"ecowatt/{DEVICE}/telemetry", 2)
        await watcher.wait_for(f"ecowatt/data/{DEVICE}", 2)
        await watcher.wait_for(f"ecowatt/{DEVICE}/state", 2)
    telemetry = [m for m in watcher.messages if str(m.topic) == f"ecowatt/{DEVICE}/telemetry"]
    assert all(m.qos == 1 for m in telemetry)
    first = json.loads(telemetry[0].payload)
    assert first["device_id"] == DEVICE and len(first["samples"]) == 7 * 6
    assert first["samples"][0]["register"] == "Vac1"

    # A subscriber that comes later still gets the newest state: it is retained.
    async with aiomqtt.Client("127.0.0.1", broker.port) as late:
        await late.subscribe(f"ecowatt/{DEVICE}/state", qos=1)
        async with asyncio.timeout(WAIT):
            message = await anext(aiter(late.messages))
    assert message.retain is True
    assert json.loads(message.payload)["registers"]["Vac1"]["raw"] == 2431 + 6 + 1  # the newest sample
    await outbox_drained(cloud.server.storage)  # the broker acknowledged them all (marked after its PUBACK)


@needs_broker
async def test_a_broker_outage_loses_nothing(cloud: Cloud, broker: Mosquitto) -> None:
    storage = cloud.server.storage
    bodies = uploads(6)
    async with Watcher(broker) as watcher:
        assert (await cloud.process(bodies[0])).status == 200
        await watcher.wait_for(f"ecowatt/{DEVICE}/telemetry", 1)
        await outbox_drained(storage)

        broker.stop()
        for body in bodies[1:]:  # ingest carries on; the messages wait in the outbox
            assert (await cloud.process(body)).status == 200
        await asyncio.sleep(0.5)
        assert await storage.pending_outbox() == 5 * 3  # telemetry, seed data, state per upload
        broker.start()

        await watcher.wait_for(f"ecowatt/{DEVICE}/telemetry", 6)
        await watcher.wait_for(f"ecowatt/data/{DEVICE}", 6)
    nonces = {json.loads(m.payload)["nonce"] for m in watcher.messages
              if str(m.topic) == f"ecowatt/{DEVICE}/telemetry"}
    assert nonces == {json.loads(body)["nonce"] for body in bodies}
    await outbox_drained(storage)


@pytest.mark.parametrize(("url", "address"), [
    ("mqtt://127.0.0.1", BrokerAddress("127.0.0.1", 1883)),
    ("mqtt://user:p%40ss@broker:1884", BrokerAddress("broker", 1884, "user", "p@ss")),
    ("mqtts://broker", BrokerAddress("broker", 8883, tls=True)),
])
def test_broker_urls(url: str, address: BrokerAddress) -> None:
    parsed = parse_broker_url(url)
    assert parsed == address and "p@ss" not in str(parsed)


@pytest.mark.parametrize("url", ["http://broker", "mqtt://", "mqtt://host:99999", "broker:1883"])
def test_bad_broker_urls_are_refused(url: str) -> None:
    with pytest.raises(DocumentError):
        parse_broker_url(url)


@given(st.text(max_size=60))
def test_any_broker_url_text_gives_an_address_or_a_typed_error(text: str) -> None:
    try:
        address = parse_broker_url(text)
    except DocumentError:
        return
    assert address.host and 0 < address.port < 65536
