"""Publishes the storage's MQTT outbox to a broker with aiomqtt, at least once, losing nothing.

Ingest writes its messages (`ecowatt/<id>/telemetry`, the seed's `ecowatt/data/<id>`, the retained
`ecowatt/<id>/state`) into the outbox in the same transaction as the data. This loop claims a batch
(a lease, so two cloud processes never publish one row at the same time), publishes it with the QoS
each row asks for (1 for ingest's), and marks rows published only once the broker acknowledged them
(PUBACK). When the broker is away the rows simply wait: the loop reconnects with backoff and carries
on where it stopped. After a failure only the acknowledged prefix of a batch is marked, so messages
of one topic never overtake each other (a retained state is never replaced by an older one); the
rest are sent again (a subscriber may see a duplicate, never a gap).
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import aiomqtt

from cloud.storage import OutboxEntry, Storage
from protocol.errors import DocumentError

log = logging.getLogger(__name__)

DEFAULT_PORTS = {"mqtt": 1883, "mqtts": 8883}


@dataclass(frozen=True)
class BrokerAddress:
    host: str
    port: int
    username: str | None = None
    password: str | None = None
    tls: bool = False

    def __str__(self) -> str:  # never the password
        return f"{'mqtts' if self.tls else 'mqtt'}://{self.host}:{self.port}"


def parse_broker_url(url: str) -> BrokerAddress:
    """`mqtt://[user[:password]@]host[:port]` or `mqtts://...`; DocumentError otherwise."""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise DocumentError("not a broker URL", url) from None
    if parts.scheme not in DEFAULT_PORTS or not parts.hostname:
        raise DocumentError("broker URL must be mqtt://host[:port] or mqtts://host[:port]", parts.scheme)
    return BrokerAddress(
        parts.hostname, port or DEFAULT_PORTS[parts.scheme],
        unquote(parts.username) if parts.username else None,
        unquote(parts.password) if parts.password else None,
        parts.scheme == "mqtts",
    )


@dataclass(frozen=True)
class PublisherSettings:
    batch: int = 100  # rows claimed at a time
    lease_seconds: float = 30.0  # a claim held by a publisher that died runs out after this
    publish_timeout: float = 10.0  # waiting for one PUBACK; then the connection is deemed gone
    idle_poll: float = 0.25  # seconds between looks at an empty outbox
    reconnect_min: float = 0.2
    reconnect_max: float = 2.0
    keep_published: float = 3600.0  # published rows are purged after this long
    purge_every: float = 300.0


class OutboxPublisher:
    def __init__(self, storage: Storage, address: BrokerAddress, settings: PublisherSettings | None = None, *,
                 wall_clock: Callable[[], float] = time.time, client_id: str | None = None) -> None:
        self.storage = storage
        self.address = address
        self.settings = settings or PublisherSettings()
        self.client_id = client_id or f"ecowatt-cloud-{uuid.uuid4().hex[:12]}"
        self._wall_clock = wall_clock
        self.connected = asyncio.Event()
        self.published = 0  # messages acknowledged by the broker since start
        self._next_purge = 0.0

    def _client(self) -> aiomqtt.Client:
        a = self.address
        return aiomqtt.Client(
            a.host, a.port, username=a.username, password=a.password, identifier=self.client_id,
            tls_context=ssl.create_default_context() if a.tls else None, timeout=self.settings.publish_timeout,
        )

    async def run(self) -> None:
        """Publish until cancelled, reconnecting whenever the broker goes away."""
        delay = self.settings.reconnect_min
        while True:
            try:
                async with self._client() as client:
                    log.info("MQTT publisher connected to %s", self.address)
                    self.connected.set()
                    delay = self.settings.reconnect_min
                    await self._drain(client)
            except aiomqtt.MqttError as error:
                if self.connected.is_set():
                    log.warning("MQTT broker %s lost (%s); messages wait in the outbox", self.address, error)
                else:
                    log.debug("MQTT broker %s unavailable: %s", self.address, error)
            self.connected.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.reconnect_max)

    async def _drain(self, client: aiomqtt.Client) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if loop.time() >= self._next_purge:
                self._next_purge = loop.time() + self.settings.purge_every
                await self.storage.purge_outbox(self._wall_clock() - self.settings.keep_published)
            entries = await self.storage.claim_outbox(self.settings.batch, self.settings.lease_seconds)
            if not entries:
                await asyncio.sleep(self.settings.idle_poll)
                continue
            await self._publish_batch(client, entries)

    async def _publish_batch(self, client: aiomqtt.Client, entries: Sequence[OutboxEntry]) -> None:
        acked: list[int] = []
        try:
            outcomes = await asyncio.gather(*(self._publish(client, e) for e in entries), return_exceptions=True)
            for entry, outcome in zip(entries, outcomes, strict=True):
                if outcome is not None:
                    if isinstance(outcome, BaseException) and not isinstance(outcome, Exception):
                        raise outcome  # cancellation
                    raise outcome if isinstance(outcome, aiomqtt.MqttError) else aiomqtt.MqttError(str(outcome))
                acked.append(entry.id)
        finally:
            # Marked only after the broker acknowledged; the rest goes back at once (not after the lease).
            rest = [e.id for e in entries if e.id not in set(acked)]
            await asyncio.shield(self._settle(acked, rest))

    async def _settle(self, acked: list[int], rest: list[int]) -> None:
        if acked:
            await self.storage.mark_published(acked)
            self.published += len(acked)
        if rest:
            await self.storage.release_outbox(rest)

    async def _publish(self, client: aiomqtt.Client, entry: OutboxEntry) -> None:
        await client.publish(entry.topic, entry.payload.encode("utf-8"), qos=entry.qos, retain=entry.retain,
                             timeout=self.settings.publish_timeout)


async def run_publisher(storage: Storage, url: str, *, settings: PublisherSettings | None = None,
                        wall_clock: Callable[[], float] = time.time) -> None:
    """Drain `storage`'s outbox to the broker at `url` until cancelled (what `cloud serve --mqtt` runs)."""
    await OutboxPublisher(storage, parse_broker_url(url), settings, wall_clock=wall_clock).run()
