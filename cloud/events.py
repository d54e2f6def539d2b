"""The in-process event bus: what just happened (telemetry stored, command delivered...), live.

Producers call `publish` (never blocks). Consumers (server-sent events, `telemetry tail`) call
`subscribe()`, which registers at once and is an async iterator of `Event`s. A subscriber that falls
more than its queue behind is dropped rather than slowing producers: it still gets what was queued,
then its iteration ends (`overflowed` tells why) and a client reconnects. Durable delivery (MQTT) goes through the storage outbox instead.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

SUBSCRIBER_QUEUE = 1000


@dataclass(frozen=True)
class Event:
    id: int  # increasing within this process
    kind: str  # e.g. "telemetry", "upload", "command", "config", "ota", "fault"
    device_id: str | None
    data: dict[str, Any]
    at: float  # wall-clock seconds

    def to_dict(self) -> dict[str, Any]:
        return {"id": self.id, "kind": self.kind, "device_id": self.device_id, "at": self.at, "data": self.data}


_END = object()


@dataclass(eq=False)
class Subscription:
    """Events published after `subscribe()` returned, optionally only some kinds or one device."""

    bus: EventBus
    kinds: frozenset[str] | None
    device_id: str | None
    queue: asyncio.Queue[Any] = field(default_factory=asyncio.Queue)
    closed: bool = False
    overflowed: bool = False

    def wants(self, event: Event) -> bool:
        return (self.kinds is None or event.kind in self.kinds) and (
            self.device_id is None or event.device_id == self.device_id)

    def _offer(self, item: Any) -> None:
        if self.queue.qsize() >= SUBSCRIBER_QUEUE:
            self.overflowed = True  # what is queued is still delivered, then the iteration ends
            self._finish()
        else:
            self.queue.put_nowait(item)

    def _finish(self) -> None:
        if not self.closed:
            self.closed = True
            self.bus._subscribers.discard(self)
            self.queue.put_nowait(_END)

    def close(self) -> None:
        self._finish()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Event:
        item = await self.queue.get()
        if item is _END:
            self.queue.put_nowait(_END)  # stay ended
            raise StopAsyncIteration
        event: Event = item
        return event

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        self.close()


class EventBus:
    def __init__(self, wall_clock: Callable[[], float] = time.time) -> None:
        self._wall_clock = wall_clock
        self._ids = itertools.count(1)
        self._subscribers: set[Subscription] = set()

    def publish(self, kind: str, device_id: str | None, data: dict[str, Any]) -> Event:
        event = Event(next(self._ids), kind, device_id, data, self._wall_clock())
        for subscription in list(self._subscribers):
            if subscription.wants(event):
                subscription._offer(event)
        return event

    def subscribe(self, kinds: set[str] | frozenset[str] | None = None,
                  device_id: str | None = None) -> Subscription:
        subscription = Subscription(self, None if kinds is None else frozenset(kinds), device_id)
        self._subscribers.add(subscription)
        return subscription

    @property
    def subscriber_count(self) -> int:
        return len(self._subscribers)

    def close(self) -> None:
        """End every subscription (at shutdown, so streaming responses finish)."""
        for subscription in list(self._subscribers):
            subscription.close()
