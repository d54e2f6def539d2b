"""The fault proxy's toxics: what happens to bytes on their way through (Toxiproxy's set, plus HTTP ones).

Names, attributes and units follow Toxiproxy (latency and jitter in ms, rate in KB/s, the slicer's delay
in µs, timeouts in ms), so a scenario can be replayed against a real Toxiproxy where one exists
(`to_toxiproxy()`, `toxic_from_spec()`). Durations are device time: the proxy converts them to loop
time with its time scale.

A toxic acts on one stream: `upstream` (client to server) or `downstream` (server to client), as in
Toxiproxy; `partition` acts on both. `toxicity` is the probability that it hits: drawn once per
connection for stream toxics (Toxiproxy's rule), once per message for the HTTP toxics (`ack_loss`,
`duplicate_request`, `corrupt_byte` on bodies), because clients keep connections alive across requests
and a per-connection draw would hit all of them or none. Every draw uses the proxy's seeded generators.

Stream toxics form a chain in the order they were added; each gets a chunk and passes on what is left
of it (`transform`). HTTP toxics see each message's segments first (`begin` at its head, then
`segment`), before the stream chain.
"""

from __future__ import annotations

import builtins
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, fields
from enum import StrEnum
from typing import Any, ClassVar, Literal, Protocol

from harness.http_framing import Kind, Part, Segment
from protocol.errors import DocumentError

Emit = Callable[[bytes], Awaitable[None]]


class Direction(StrEnum):
    UPSTREAM = "upstream"  # client -> server
    DOWNSTREAM = "downstream"  # server -> client


class Link(Protocol):
    """One direction of one proxied connection, as a toxic sees it."""

    direction: Direction
    connection: int
    rng: random.Random  # this direction's seeded generator
    state: dict[str, Any]  # per-toxic state on this link, by toxic name

    def record(self, toxic: Toxic, action: str, nbytes: int, detail: str = "") -> None:
        """Log an injected fault."""

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of device time."""

    async def sleep_until(self, stamp: float, seconds: float) -> None:
        """Wait until `seconds` of device time after the loop time `stamp` (when a chunk arrived)."""

    def call_later(self, seconds: float, callback: Callable[[], object]) -> Cancellable:
        """Run `callback` after `seconds` of device time."""

    def close(self, *, reset: bool = False) -> bool:
        """Close both sides of the connection (with a TCP RST when `reset`); False if already closed."""

    async def until_removed(self, toxic: Toxic) -> None:
        """Wait until the toxic is no longer active."""

    def hold_response(self, message: int, before: Callable[[], Awaitable[None]]) -> None:
        """Run `before` when the response to request `message` arrives, before it goes on."""

    async def replay(self, raw: bytes) -> str:
        """Send `raw` to the upstream server on a connection of its own; the reply's status line."""


class Cancellable(Protocol):
    def cancel(self) -> None: ...


@dataclass(kw_only=True)
class Toxic:
    """Common attributes (Toxiproxy's): the stream it acts on, its toxicity and its name
    (default `<type>_<stream>`)."""

    type: ClassVar[str]
    stream: Direction = Direction.DOWNSTREAM
    toxicity: float = 1.0
    name: str = ""

    def __post_init__(self) -> None:
        self.stream = Direction(self.stream)
        if not 0.0 <= self.toxicity <= 1.0:
            raise ValueError(f"toxicity is a probability, not {self.toxicity!r}")
        for f in fields(self):
            value, numeric = getattr(self, f.name), isinstance(f.default, int | float)
            if value is None and f.default is None:
                continue
            if (numeric or f.default is None) and (not isinstance(value, int | float) or isinstance(value, bool)):
                raise ValueError(f"{self.type}.{f.name} must be a number, not {value!r}")
            if (numeric or f.default is None) and value < 0:
                raise ValueError(f"{self.type}.{f.name} cannot be negative: {value!r}")
        if not self.name:
            self.name = f"{self.type}_{self.stream}"

    @property
    def per_message(self) -> bool:
        """Whether this toxic acts on HTTP messages (drawn per message) rather than on the stream."""
        return False

    def applies_to(self, direction: Direction) -> bool:
        return direction is self.stream

    def attributes(self) -> dict[str, Any]:
        common = {"stream", "toxicity", "name"}
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name not in common}

    def to_toxiproxy(self) -> dict[str, Any]:
        """This toxic as Toxiproxy's API writes it."""
        return {"name": self.name, "type": self.type, "stream": str(self.stream),
                "toxicity": self.toxicity, "attributes": self.attributes()}

    # --- stream toxics ------------------------------------------------------------------------

    def attach(self, link: Link) -> None:
        """The toxic hit this connection (drawn): arm what does not wait for data."""

    def detach(self, link: Link) -> None:
        """The toxic was removed: disarm."""
        timer = link.state.pop(self.name, None)
        if hasattr(timer, "cancel"):
            timer.cancel()

    async def transform(self, link: Link, stamp: float, data: bytes, emit: Emit) -> None:
        await emit(data)

    # --- HTTP toxics --------------------------------------------------------------------------

    def begin(self, link: Link, head: Segment) -> Any:
        """At a message's head: a plan if this message is hit, else None."""
        return None

    async def segment(self, link: Link, plan: Any, segment: Segment, data: bytes) -> bytes:
        """What goes on of a segment of a message this toxic hit."""
        return data

    def _draw(self, link: Link) -> bool:
        return self.toxicity >= 1.0 or link.rng.random() < self.toxicity


# --- Toxiproxy's toxics ---------------------------------------------------------------------------


@dataclass(kw_only=True)
class Latency(Toxic):
    """Delays each chunk by `latency` ± `jitter` ms (uniform) from its arrival."""

    type: ClassVar[str] = "latency"
    latency: float = 0.0
    jitter: float = 0.0

    async def transform(self, link: Link, stamp: float, data: bytes, emit: Emit) -> None:
        delay = self.latency + (link.rng.uniform(-self.jitter, self.jitter) if self.jitter else 0.0)
        delay = max(0.0, delay)
        link.record(self, "delay", len(data), f"{delay:.3f} ms")
        await link.sleep_until(stamp, delay / 1000.0)
        await emit(data)


@dataclass(kw_only=True)
class Bandwidth(Toxic):
    """Limits the stream to `rate` KB/s (1 KB = 1000 bytes), in slices of a tenth of a second."""

    type: ClassVar[str] = "bandwidth"
    rate: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.rate <= 0:
            raise ValueError("bandwidth.rate must be positive (a stalled stream is the timeout toxic)")

    async def transform(self, link: Link, stamp: float, data: bytes, emit: Emit) -> None:
        per_second = self.rate * 1000.0
        step = max(1, int(per_second / 10))
        link.record(self, "throttle", len(data), f"{len(data) / per_second:.3f} s")
        for start in range(0, len(data), step):
            piece = data[start : start + step]
            await link.sleep(len(piece) / per_second)
            await emit(piece)


@dataclass(kw_only=True)
class Slicer(Toxic):
    """Cuts each chunk into slices of `average_size` ± `size_variation` bytes, with a pause of `delay`
    µs after each."""

    type: ClassVar[str] = "slicer"
    average_size: int = 1
    size_variation: int = 0
    delay: float = 0.0

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.average_size < 1 or self.size_variation >= self.average_size:
            raise ValueError("slicer needs average_size >= 1 and size_variation < average_size")

    async def transform(self, link: Link, stamp: float, data: bytes, emit: Emit) -> None:
        sizes: list[int] = []
        left = len(data)
        while left > 0:
            size = self.average_size + link.rng.randint(-self.size_variation, self.size_variation)
            sizes.append(min(left, size))
            left -= sizes[-1]
        link.record(self, "slice", len(data), f"{len(sizes)} slices")
        start = 0
        for size in sizes:  # a pause after every slice, as in Toxiproxy: chunks never merge either
            await emit(data[start : start + size])
            start += size
            await link.sleep(self.delay / 1e6)


@dataclass(kw_only=True)
class Timeout(Toxic):
    """Drops the stream's data and closes the connection `timeout` ms after the toxic hit it
    (0: never closes, data is dropped until the toxic is removed)."""

    type: ClassVar[str] = "timeout"
    timeout: float = 0.0

    def attach(self, link: Link) -> None:
        if self.timeout > 0:
            def expire() -> None:
                if link.close():
                    link.record(self, "close", 0, f"after {self.timeout:g} ms")

            link.state[self.name] = link.call_later(self.timeout / 1000.0, expire)

    async def transform(self, link: Link, stamp: float, data: bytes, emit: Emit) -> None:
        link.record(self, "drop", len(data))


@dataclass(kw_only=True)
class ResetPeer(Toxic):
    """At the stream's first data, waits `timeout` ms, then resets the connection (TCP RST); the data
    is not passed on."""

    type: ClassVar[str] = "reset_peer"
    timeout: float = 0.0

    async def transform(self, link: Link, stamp: float, data: bytes, emit: Emit) -> None:
        await link.sleep(self.timeout / 1000.0)
        if link.close(reset=True):
            link.record(self, "reset", len(data), f"after {self.timeout:g} ms")


@dataclass(kw_only=True)
class LimitData(Toxic):
    """Closes the connection as soon as `bytes` bytes have gone through on the stream."""

    type: ClassVar[str] = "limit_data"
    bytes: int = 0

    async def transform(self, link: Link, stamp: float, data: builtins.bytes, emit: Emit) -> None:
        sent = link.state.get(self.name, 0)
        allowed = self.bytes - sent
        if len(data) < allowed:
            link.state[self.name] = sent + len(data)
            await emit(data)
            return
        if allowed > 0:
            await emit(data[:allowed])
        link.state[self.name] = self.bytes
        if link.close():
            link.record(self, "close", len(data) - max(allowed, 0), f"after {self.bytes} bytes")


# --- toxics Toxiproxy lacks -----------------------------------------------------------------------


@dataclass(kw_only=True)
class Partition(Toxic):
    """Cuts the link both ways. `refuse`: connections are reset, new ones as soon as they are
    accepted, and never reach the server. `blackhole`: nothing flows and new connections are not
    passed on until the partition ends; then what waited goes through, as after a real partition that
    heals before TCP gives up."""

    type: ClassVar[str] = "partition"
    mode: Literal["refuse", "blackhole"] = "blackhole"

    def __post_init__(self) -> None:
        if self.mode not in ("refuse", "blackhole"):
            raise ValueError(f"partition.mode is 'refuse' or 'blackhole', not {self.mode!r}")
        if not self.name:
            self.name = "partition"
        super().__post_init__()

    def applies_to(self, direction: Direction) -> bool:
        return True

    def to_toxiproxy(self) -> dict[str, Any]:
        return super().to_toxiproxy() | {"stream": "both"}

    def attach(self, link: Link) -> None:
        if self.mode == "refuse" and link.close(reset=True):
            link.record(self, "reset", 0, "partitioned")

    async def transform(self, link: Link, stamp: float, data: bytes, emit: Emit) -> None:
        link.record(self, "stall", len(data))
        await link.until_removed(self)
        await emit(data)


@dataclass(kw_only=True)
class AckLoss(Toxic):
    """HTTP: the request reaches the server, which handles it; its final response is dropped and the
    connection closed, so the client cannot know the outcome (Jepsen's indeterminate case).
    Downstream only."""

    type: ClassVar[str] = "ack_loss"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stream is not Direction.DOWNSTREAM:
            raise ValueError("ack_loss drops responses: its stream is downstream")

    @property
    def per_message(self) -> bool:
        return True

    def begin(self, link: Link, head: Segment) -> Any:
        assert head.head is not None
        if head.head.kind is not Kind.RESPONSE or head.head.interim or not self._draw(link):
            return None
        return [0]  # bytes dropped so far

    async def segment(self, link: Link, plan: Any, segment: Segment, data: bytes) -> bytes:
        plan[0] += len(data)
        if segment.last and segment.head is not None:
            # Count the response before closing: close() ends the task running this.
            link.record(self, "ack_loss", plan[0], f"dropped the {segment.head.status} response "
                        f"to request {segment.message}")
            link.close()
        return b""


@dataclass(kw_only=True)
class DuplicateRequest(Toxic):
    """HTTP: a whole request is sent to the server a second time, on a connection of its own, once the
    first has been answered; the second reply is discarded, and the client gets the first reply only
    after the server has handled both. Upstream only."""

    type: ClassVar[str] = "duplicate_request"
    stream: Direction = Direction.UPSTREAM

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stream is not Direction.UPSTREAM:
            raise ValueError("duplicate_request replays requests: its stream is upstream")

    @property
    def per_message(self) -> bool:
        return True

    def begin(self, link: Link, head: Segment) -> Any:
        assert head.head is not None
        return bytearray() if head.head.kind is Kind.REQUEST and self._draw(link) else None

    async def segment(self, link: Link, plan: Any, segment: Segment, data: bytes) -> bytes:
        plan += segment.data  # the request as the client sent it, whatever later toxics do to it
        if segment.last and segment.head is not None:
            raw, head = bytes(plan), segment.head

            async def replay() -> None:
                status = await link.replay(raw)
                link.record(self, "duplicate", len(raw), f"{head.method} {head.target} again: {status}")

            link.hold_response(segment.message, replay)
        return data


@dataclass(kw_only=True)
class CorruptByte(Toxic):
    """Flips bits (`xor`) of one byte. `target="body"` (HTTP): the byte at `offset` of a message's
    payload (random if None), drawn per message. `target="stream"`: the byte at `offset` of the
    stream (random within its first chunk if None), drawn per connection.

    The default mask flips the lowest bit, which keeps most text printable: the corruption then gets
    past parsers and must be caught by the message authentication."""

    type: ClassVar[str] = "corrupt_byte"
    offset: int | None = None
    xor: int = 0x01
    target: Literal["body", "stream"] = "body"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.xor <= 0xFF or self.target not in ("body", "stream"):
            raise ValueError("corrupt_byte needs 1 <= xor <= 0xFF and target 'body' or 'stream'")

    @property
    def per_message(self) -> bool:
        return self.target == "body"

    def begin(self, link: Link, head: Segment) -> Any:
        assert head.head is not None
        if not self._draw(link):
            return None
        offset = self.offset
        length = head.head.header("content-length")
        if offset is None and length is not None and length.isdigit() and int(length) > 0:
            offset = link.rng.randrange(int(length))
        return _CorruptionPlan(offset)

    async def segment(self, link: Link, plan: Any, segment: Segment, data: bytes) -> bytes:
        if segment.part is not Part.BODY or plan.done or not data:
            return data
        if plan.offset is None:  # chunked: a byte of the first chunk
            plan.offset = segment.body_offset + link.rng.randrange(len(data))
        index = plan.offset - segment.body_offset
        if not 0 <= index < len(data):
            return data
        plan.done = True
        return self._flip(link, data, index, f"body offset {plan.offset} of message {segment.message}")

    async def transform(self, link: Link, stamp: float, data: bytes, emit: Emit) -> None:
        position = link.state.setdefault(self.name, _StreamPosition())
        if not position.done and data:
            if position.target is None:
                position.target = position.seen + (
                    self.offset if self.offset is not None else link.rng.randrange(len(data)))
            index = position.target - position.seen
            if 0 <= index < len(data):
                position.done = True
                data = self._flip(link, data, index, f"stream offset {position.target}")
        position.seen += len(data)
        await emit(data)

    def _flip(self, link: Link, data: bytes, index: int, where: str) -> bytes:
        changed = bytearray(data)
        changed[index] ^= self.xor
        link.record(self, "corrupt", 1, f"{where}: {data[index]:#04x} -> {changed[index]:#04x}")
        return bytes(changed)


@dataclass
class _CorruptionPlan:
    offset: int | None
    done: bool = False


@dataclass
class _StreamPosition:
    seen: int = 0
    target: int | None = None
    done: bool = False


TOXIC_TYPES: dict[str, type[Toxic]] = {
    cls.type: cls
    for cls in (Latency, Bandwidth, Slicer, Timeout, ResetPeer, LimitData, Partition, AckLoss,
                DuplicateRequest, CorruptByte)
}


def toxic_from_spec(spec: Any) -> Toxic:
    """A toxic from Toxiproxy's JSON shape (`{"type", "stream", "toxicity", "name", "attributes"}`),
    as a scenario file writes it. Raises DocumentError for a spec of the wrong shape."""
    if not isinstance(spec, dict) or spec.get("type") not in TOXIC_TYPES:
        raise DocumentError(f"a toxic needs a type among {sorted(TOXIC_TYPES)}", spec)
    cls = TOXIC_TYPES[spec["type"]]
    attributes = spec.get("attributes", {})
    if not isinstance(attributes, dict):
        raise DocumentError("toxic attributes must be an object", attributes)
    known = {f.name for f in fields(cls) if f.init}
    common = {k: spec[k] for k in ("stream", "toxicity", "name") if k in spec and spec[k] != "both"}
    unknown = (set(attributes) | set(common)) - known
    if unknown:
        raise DocumentError(f"unknown {spec['type']} attributes", sorted(unknown))
    try:
        return cls(**common, **attributes)
    except (TypeError, ValueError) as error:
        raise DocumentError(f"bad {spec['type']} toxic: {error}", spec) from None


__all__ = [
    "AckLoss", "Bandwidth", "CorruptByte", "Direction", "DuplicateRequest", "Latency", "LimitData",
    "Link", "Partition", "ResetPeer", "Slicer", "TOXIC_TYPES", "Timeout", "Toxic", "toxic_from_spec",
]
