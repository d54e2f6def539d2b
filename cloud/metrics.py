"""Prometheus metrics of the cloud service (`GET /metrics`), with prometheus_client.

Two kinds: what this process has answered (HTTP responses per route pattern, method and status,
counted as responses are prepared), and what the database holds, read at scrape time so every cloud
process sharing one database reports the same totals (rows per table, uploads per verdict, OTA
sessions per status, commands per status, packets and samples per codec and decode status, fault
injections, the MQTT outbox backlog).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from aiohttp import web
from prometheus_client import CollectorRegistry, Counter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from cloud.events import EventBus
from cloud.storage import Storage

PREFIX = "ecowatt"


@dataclass
class Snapshot:
    """What the database said at the start of one scrape."""

    rows: dict[str, int] = field(default_factory=dict)
    ota: dict[str, int] = field(default_factory=dict)
    commands: dict[str, int] = field(default_factory=dict)
    packets: list[tuple[str, str, int, int]] = field(default_factory=list)  # codec, status, packets, samples
    uploads: dict[str, int] = field(default_factory=dict)  # per verdict
    faults: dict[str, int] = field(default_factory=dict)
    outbox_pending: int = 0
    subscribers: int = 0


class StorageCollector(Collector):
    """Turns the scrape's snapshot into metric families (prometheus_client collects synchronously)."""

    def __init__(self) -> None:
        self.snapshot = Snapshot()

    def collect(self) -> Iterator[Metric]:
        s = self.snapshot
        rows = GaugeMetricFamily(f"{PREFIX}_rows", "Rows per database table", labels=["table"])
        for table, count in sorted(s.rows.items()):
            rows.add_metric([table], count)
        yield rows
        sessions = GaugeMetricFamily(f"{PREFIX}_ota_sessions", "OTA sessions per status", labels=["status"])
        for status, count in sorted(s.ota.items()):
            if status != "bytes_served":
                sessions.add_metric([status], count)
        yield sessions
        yield CounterMetricFamily(f"{PREFIX}_ota_bytes_served", "Firmware bytes served in chunks",
                                  value=s.ota.get("bytes_served", 0))
        commands = GaugeMetricFamily(f"{PREFIX}_commands", "Commands per status", labels=["status"])
        for status, count in sorted(s.commands.items()):
            commands.add_metric([status], count)
        yield commands
        packets = CounterMetricFamily(f"{PREFIX}_packets", "Stored packets per codec and decode status",
                                      labels=["codec", "status"])
        samples = CounterMetricFamily(f"{PREFIX}_samples", "Stored samples per codec and decode status",
                                      labels=["codec", "status"])
        for codec, status, packet_count, sample_count in s.packets:
            packets.add_metric([codec, status], packet_count)
            samples.add_metric([codec, status], sample_count)
        yield packets
        yield samples
        uploads = CounterMetricFamily(f"{PREFIX}_uploads", "Uploads per verdict", labels=["verdict"])
        for verdict, count in sorted(s.uploads.items()):
            uploads.add_metric([verdict], count)
        yield uploads
        faults = CounterMetricFamily(f"{PREFIX}_faults_injected", "Injected faults per kind", labels=["kind"])
        for kind, count in sorted(s.faults.items()):
            faults.add_metric([kind], count)
        yield faults
        yield GaugeMetricFamily(f"{PREFIX}_mqtt_outbox_pending", "MQTT messages not yet acknowledged by the broker",
                                value=s.outbox_pending)
        yield GaugeMetricFamily(f"{PREFIX}_event_subscribers", "Live event-stream subscribers in this process",
                                value=s.subscribers)


class ServiceMetrics:
    """One app's registry: its request counter and the storage collector."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(f"{PREFIX}_http_responses", "HTTP responses by route pattern, method and status",
                                ["route", "method", "status"], registry=self.registry)
        self.storage = StorageCollector()
        self.registry.register(self.storage)

    async def count_response(self, request: web.BaseRequest, response: web.StreamResponse) -> None:
        """An `on_response_prepare` handler. Labelled by route pattern, never by device id."""
        match_info = getattr(request, "match_info", None)
        route = getattr(match_info, "route", None)
        resource = getattr(route, "resource", None)
        pattern = resource.canonical if resource is not None else "unmatched"
        self.requests.labels(pattern, request.method, str(response.status)).inc()

    async def render(self, storage: Storage, events: EventBus | None, accept: str | None) -> tuple[bytes, str]:
        """The exposition text (format chosen from the Accept header) and its content type."""
        snapshot = Snapshot(
            rows=await storage.counts(),
            ota=await storage.ota_stats(),
            commands={str(k): v for k, v in (await storage.command_counts()).items()},
            packets=[(p.codec, str(p.status), int(p.packets), int(p.samples or 0))
                     for p in await storage.packet_stats()],
            uploads=await storage.upload_verdicts(),
            faults=await storage.fault_counts(),
            outbox_pending=await storage.pending_outbox(),
            subscribers=events.subscriber_count if events is not None else 0,
        )
        encoder, content_type = choose_encoder(accept or "")
        self.storage.snapshot = snapshot  # no await between this and the encoding: scrapes cannot mix
        return encoder(self.registry), content_type
