"""A TCP fault proxy on loopback: Toxiproxy's toxics, and HTTP-aware ones, between the DUT and a server.

The harness puts one in front of the cloud (HTTP) or of the simulator (its HTTP frame API, or Modbus TCP
with `http=False`) and points the DUT at `proxy.url`. Faults are toxics (harness.toxics): added now or
scheduled in device time (`add(toxic, after=, duration=)`), per direction, with a toxicity drawn from
generators seeded by `seed`, so a run replays the same faults. Everything is scheduled on the running
loop (`loop.time()`, `call_later`, `asyncio.sleep`), so the proxy runs on the harness's virtual time.

Every injected fault is logged (`log`: device time, toxic, action, direction, connection, bytes
affected), with the start and stop of each toxic, as evidence for reports and invariant checkers.

Each accepted connection gets its own upstream connection. Per direction, a reader task stamps chunks
with their arrival time (latency counts from arrival, as in Toxiproxy) and a forwarder passes them
through the HTTP framer and message toxics, then the chain of stream toxics, to the other side. When
the server side ends, or a toxic closes, both sockets are closed: a half-open connection would hide the
fault from the client.

While no toxic is active on the proxy and nothing is queued in a direction, a chunk is framed and
written to the other side in the socket's own callback, without the two task hops: the common case of
a healthy link then costs one loop iteration per chunk, not three (on virtual time every poll crosses
two proxied links). The framer still sees every byte, so a toxic added at any moment finds the
message boundaries where they are.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

from harness.http_framing import MessageFramer, Part, Segment, connection_framers
from harness.toxics import Direction, Partition, Toxic

HOST = "127.0.0.1"
CHUNK = 64 * 1024
QUEUE_CHUNKS = 8  # read ahead per direction; beyond that the sender feels TCP backpressure


@dataclass(frozen=True)
class FaultRecord:
    time: float  # device seconds (the proxy's clock)
    toxic: str  # the toxic's name
    type: str  # the toxic's type
    action: str  # start, stop, delay, throttle, slice, drop, close, reset, stall, refuse, ack_loss, duplicate, corrupt
    direction: str  # upstream, downstream or both
    connection: int | None  # None for a toxic's start and stop
    nbytes: int  # bytes affected
    detail: str = ""

    def without_time(self) -> tuple[str, str, str, str, int | None, int, str]:
        """What must be identical between two runs with the same seed (times depend on the loop)."""
        return (self.toxic, self.type, self.action, self.direction, self.connection, self.nbytes, self.detail)


@dataclass
class _Entry:
    toxic: Toxic
    active: bool = False
    start: asyncio.TimerHandle | None = None
    stop: asyncio.TimerHandle | None = None


class FaultProxy:
    """`FaultProxy(upstream_host, upstream_port, listen_port=0, seed=0)`; `await start()`, then point the
    client at `url`. `time_scale` is device seconds per loop second (scaled time); `clock` gives the
    device time written in the log (default: the loop's time times `time_scale`)."""

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        listen_port: int = 0,
        listen_host: str = HOST,
        seed: int = 0,
        http: bool = True,
        time_scale: float = 1.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.listen_host = listen_host  # loopback, unless a board elsewhere on the bench must reach it
        if time_scale <= 0:
            raise ValueError(f"time_scale must be positive, not {time_scale!r}")
        self.upstream = (upstream_host, upstream_port)
        self.seed = seed
        self.http = http
        self.time_scale = time_scale
        self.log: list[FaultRecord] = []
        self.port = 0
        self._listen_port = listen_port
        self._clock = clock
        self._server: asyncio.Server | None = None
        self._entries: dict[str, _Entry] = {}
        self._active: list[Toxic] = []  # in activation order: the order of the stream chain
        self._connections: set[_Connection] = set()
        self._serving: set[asyncio.Task[Any]] = set()
        self._next_connection = 0
        self._changed: asyncio.Event | None = None

    # --- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        loop = asyncio.get_running_loop()

        def protocol() -> asyncio.StreamReaderProtocol:
            return asyncio.StreamReaderProtocol(_TapReader(loop=loop), self._serve, loop=loop)

        self._server = await loop.create_server(protocol, self.listen_host, self._listen_port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _open_upstream(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """asyncio.open_connection, with a reader that can hand chunks straight on."""
        loop = asyncio.get_running_loop()
        reader = _TapReader(loop=loop)
        transport, protocol = await loop.create_connection(
            lambda: asyncio.StreamReaderProtocol(reader, loop=loop), *self.upstream)
        return reader, asyncio.StreamWriter(transport, protocol, reader, loop)

    async def stop(self) -> None:
        """Close the listener and every connection; toxics are dropped."""
        for entry in self._entries.values():
            _cancel(entry.start, entry.stop)
        self._entries.clear()
        self._active.clear()
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.close()
        self._notify()  # wakes connections held by a partition: they see they are closed
        # Not cancelled: asyncio's stream callback would log a cancelled handler as an error.
        await asyncio.gather(*self._serving, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> FaultProxy:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def url(self) -> str:
        return f"{'http' if self.http else 'tcp'}://{self.listen_host}:{self.port}"

    # --- toxics -------------------------------------------------------------------------------

    def add(self, toxic: Toxic, *, after: float = 0.0, duration: float | None = None) -> str:
        """Activate `toxic` `after` device seconds from now (at once by default), for `duration`
        device seconds (until removed by default). Returns its name."""
        if toxic.per_message and not self.http:
            raise ValueError(f"{toxic.type} acts on HTTP messages: this proxy was made with http=False")
        if toxic.name in self._entries:
            raise ValueError(f"a toxic named {toxic.name!r} is already on this proxy")
        if after < 0 or (duration is not None and duration < 0):
            raise ValueError("after and duration are device seconds, not negative")
        entry = self._entries[toxic.name] = _Entry(toxic)
        loop = asyncio.get_running_loop()
        if after > 0:
            entry.start = loop.call_later(after / self.time_scale, self._activate, entry, duration)
        else:
            self._activate(entry, duration)
        return toxic.name

    def remove(self, name: str) -> None:
        """Remove a toxic, active or scheduled (KeyError if there is none of that name)."""
        entry = self._entries.pop(name)
        _cancel(entry.start, entry.stop)
        if not entry.active:
            return
        toxic = entry.toxic
        self._active.remove(toxic)
        self._record(toxic, "stop", _stream_of(toxic), None, 0)
        for conn in self._connections:
            conn.forget(toxic)
        self._notify()

    def clear(self) -> None:
        """Remove every toxic, active or scheduled."""
        for name in list(self._entries):
            self.remove(name)

    def partition(self, mode: Literal["refuse", "blackhole"] = "blackhole", *, after: float = 0.0,
                  duration: float | None = None, name: str = "partition") -> str:
        """Cut the link both ways (see harness.toxics.Partition) until `heal()` or `duration`."""
        return self.add(Partition(mode=mode, name=name), after=after, duration=duration)

    def heal(self) -> None:
        """End every partition, active or scheduled."""
        for name, entry in list(self._entries.items()):
            if isinstance(entry.toxic, Partition):
                self.remove(name)

    @property
    def toxics(self) -> list[Toxic]:
        """The active toxics, in chain order."""
        return list(self._active)

    @property
    def scheduled(self) -> list[Toxic]:
        return [e.toxic for e in self._entries.values() if not e.active]

    @property
    def connections(self) -> int:
        """Connections accepted so far."""
        return self._next_connection

    def _activate(self, entry: _Entry, duration: float | None) -> None:
        entry.start, entry.active = None, True
        toxic = entry.toxic
        self._active.append(toxic)
        self._record(toxic, "start", _stream_of(toxic), None, 0)
        if duration is not None:
            loop = asyncio.get_running_loop()
            entry.stop = loop.call_later(duration / self.time_scale, self._expire, toxic.name)
        for conn in list(self._connections):
            conn.meet(toxic)
        self._notify()

    def _expire(self, name: str) -> None:
        if name in self._entries:
            self.remove(name)

    # --- plumbing shared by the connections ---------------------------------------------------

    def _now(self) -> float:
        if self._clock is not None:
            return self._clock()
        return asyncio.get_running_loop().time() * self.time_scale

    def _record(self, toxic: Toxic, action: str, direction: str, connection: int | None, nbytes: int,
                detail: str = "") -> None:
        self.log.append(FaultRecord(self._now(), toxic.name, toxic.type, action, direction, connection,
                                    nbytes, detail))

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
        self._changed = None

    async def _next_change(self) -> None:
        if self._changed is None:
            self._changed = asyncio.Event()
        await self._changed.wait()

    async def _until_removed(self, toxic: Toxic) -> None:
        while toxic in self._active:
            await self._next_change()

    async def _replay(self, raw: bytes) -> str:
        """Send a request again on a connection of its own; its final response's status line."""
        try:
            reader, writer = await asyncio.open_connection(*self.upstream)
        except OSError as error:
            return f"not delivered ({error.strerror or error})"
        requests, responses = connection_framers()
        requests.feed(raw)  # pairs the response with the request's method (HEAD has no body)
        status = "no response"
        try:
            writer.write(raw)
            await writer.drain()
            while True:
                data = await reader.read(CHUNK)
                for segment in responses.feed(data) if data else responses.feed_eof():
                    if segment.head is None or segment.head.interim:
                        continue
                    status = segment.head.start_line
                    if segment.last:
                        return status
                if not data or responses.error is not None:
                    return status
        except OSError as error:
            return f"{status} ({error.strerror or error})"
        finally:
            writer.close()

    # --- connections --------------------------------------------------------------------------

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._serving.add(task)
        conn = _Connection(self, self._next_connection, client_writer)
        self._next_connection += 1
        self._connections.add(conn)
        try:
            for toxic in list(self._active):
                conn.meet(toxic)
            if not await self._admit(conn):
                return
            try:
                upstream_reader, upstream_writer = await self._open_upstream()
            except OSError:
                conn.close(reset=True)  # as the client would see an unreachable server
                return
            conn.upstream = upstream_writer
            if conn.closed:
                upstream_writer.close()
                return
            requests, responses = connection_framers() if self.http else (None, None)
            conn.links = [
                _Link(conn, Direction.UPSTREAM, client_reader, upstream_writer, requests),
                _Link(conn, Direction.DOWNSTREAM, upstream_reader, client_writer, responses),
            ]
            for toxic in list(self._active):
                conn.attach(toxic)
            if not conn.closed:
                conn.tasks = [asyncio.create_task(work()) for link in conn.links for work in (link.read, link.forward)]
                await asyncio.gather(*conn.tasks, return_exceptions=True)
        finally:
            conn.close()
            self._connections.discard(conn)
            self._serving.discard(task)

    async def _admit(self, conn: _Connection) -> bool:
        """Hold or refuse a new connection while a partition hits it; whether to connect it."""
        held: set[str] = set()
        while not conn.closed:
            blocking = [t for t in self._active if isinstance(t, Partition) and conn.hits.get(t.name)]
            if not blocking:
                return True
            for toxic in blocking:
                if toxic.mode == "refuse":
                    conn.close(reset=True)
                    self._record(toxic, "refuse", "both", conn.id, 0, "new connection")
                    return False
                if toxic.name not in held:
                    held.add(toxic.name)
                    self._record(toxic, "stall", "both", conn.id, 0, "new connection held")
            await self._next_change()
        return False


class _Connection:
    def __init__(self, proxy: FaultProxy, number: int, client: asyncio.StreamWriter) -> None:
        self.proxy = proxy
        self.id = number
        self.client = client
        self.upstream: asyncio.StreamWriter | None = None
        self.rng = random.Random(f"{proxy.seed}:{number}")  # per-connection toxicity draws
        self.hits: dict[str, bool] = {}
        self.links: list[_Link] = []
        self.tasks: list[asyncio.Task[None]] = []
        self.closed = False
        self.holds: dict[int, Callable[[], Awaitable[None]]] = {}
        self.answered = 0  # requests whose final response has started

    def meet(self, toxic: Toxic) -> None:
        """A toxic became active, or this connection was accepted: draw whether it hits."""
        if toxic.per_message or toxic.name in self.hits:
            return
        self.hits[toxic.name] = toxic.toxicity >= 1.0 or self.rng.random() < toxic.toxicity
        self.attach(toxic)

    def attach(self, toxic: Toxic) -> None:
        if not self.hits.get(toxic.name):
            return
        for link in self.links:
            if toxic.applies_to(link.direction) and toxic.name not in link.attached:
                link.attached.add(toxic.name)
                toxic.attach(link)

    def forget(self, toxic: Toxic) -> None:
        self.hits.pop(toxic.name, None)
        for link in self.links:
            if toxic.name in link.attached:
                link.attached.discard(toxic.name)
                toxic.detach(link)

    def hold_response(self, message: int, before: Callable[[], Awaitable[None]]) -> None:
        if message < self.answered:  # the server answered before the request was whole
            self.tasks.append(asyncio.create_task(_run(before)))
        else:
            self.holds[message] = before

    def close(self, *, reset: bool = False) -> bool:
        if self.closed:
            return False
        self.closed = True
        for writer in (self.client, self.upstream):
            if writer is None:
                continue
            if reset:
                _reset(writer)
            else:
                writer.close()
        for task in self.tasks:
            task.cancel()
        return True


class _Link:
    """One direction of a connection: what toxics see (harness.toxics.Link)."""

    def __init__(self, conn: _Connection, direction: Direction, source: asyncio.StreamReader,
                 sink: asyncio.StreamWriter, framer: MessageFramer | None) -> None:
        self.conn = conn
        self.proxy = conn.proxy
        self.direction = direction
        self.connection = conn.id
        self.rng = random.Random(f"{self.proxy.seed}:{conn.id}:{direction}")
        self.state: dict[str, Any] = {}
        self.attached: set[str] = set()
        self._source = source
        self._sink = sink
        self._framer = framer
        self._plans: list[tuple[Toxic, Any]] = []  # HTTP toxics hitting the current message
        self._queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(QUEUE_CHUNKS)
        self._loop = asyncio.get_running_loop()
        self._parked = False  # the reader waits in read() on an empty buffer
        self._forwarding = False  # the forwarder holds a chunk
        if isinstance(source, _TapReader):
            source.tap = self._pass_through

    async def read(self) -> None:
        try:
            while True:
                self._parked = True
                try:
                    data = await self._source.read(CHUNK)
                finally:
                    self._parked = False
                await self._queue.put((self._loop.time(), data))
                if not data:
                    return
        except ConnectionResetError:
            self.conn.close(reset=True)  # pass the peer's reset on
        except OSError:
            self.conn.close()

    def _pass_through(self, data: bytes) -> bool:
        """The fast path (see the module docstring), run in the source's data_received: frame `data` and
        write it on when nothing can act on it and nothing before it is still on its way; False leaves
        it to the reader and forwarder."""
        passes = (
            self._parked
            and not self._forwarding
            and self._queue.empty()
            and not self.proxy._active
            and not self._plans
            and not (self.direction is Direction.DOWNSTREAM and self.conn.holds)
            and not self.conn.closed
            and not self._sink.transport.is_closing()
            and self._sink.transport.get_write_buffer_size() == 0  # else drain() in the slow path
        )
        if not passes:
            self._parked = False  # the chunk is buffered: whatever follows it must queue behind it
            return False
        segments = self._framer.feed(data) if self._framer else [Segment(Part.OPAQUE, data)]
        out = []
        for segment in segments:
            if segment.part is Part.HEAD:
                self._answered(segment)
            out.append(segment.data)
        self._sink.write(b"".join(out))
        return True

    async def forward(self) -> None:
        try:
            while True:
                self._forwarding = False
                stamp, data = await self._queue.get()
                self._forwarding = True
                if not data:
                    break
                await self._segments(stamp, self._framer.feed(data) if self._framer else [Segment(Part.OPAQUE, data)])
            if self._framer is not None:
                await self._segments(self._loop.time(), self._framer.feed_eof())
        except ConnectionResetError:
            self.conn.close(reset=True)
            return
        except OSError:
            self.conn.close()
            return
        if self.direction is Direction.UPSTREAM and self._sink.can_write_eof():
            with contextlib.suppress(OSError):
                self._sink.write_eof()  # the client half-closed: the server may still answer
        else:
            self.conn.close()

    async def _segments(self, stamp: float, segments: list[Segment]) -> None:
        for segment in segments:
            data = segment.data
            if segment.part is Part.HEAD:
                await self._message_starts(segment)
            for toxic, plan in self._plans:
                data = await toxic.segment(self, plan, segment, data)
            if segment.last:
                self._plans = []
            if data:
                await self._through(self._chain(), 0, stamp, data)

    def _answered(self, segment: Segment) -> bool:
        """At a head: whether it starts the final response to a request (which is then answered)."""
        assert segment.head is not None
        if self.direction is Direction.DOWNSTREAM and not segment.head.interim:
            self.conn.answered = max(self.conn.answered, segment.message + 1)
            return True
        return False

    async def _message_starts(self, segment: Segment) -> None:
        if self._answered(segment):
            before = self.conn.holds.pop(segment.message, None)
            if before is not None:
                await before()
        self._plans = []
        for toxic in list(self.proxy._active):
            if toxic.per_message and toxic.applies_to(self.direction):
                plan = toxic.begin(self, segment)
                if plan is not None:
                    self._plans.append((toxic, plan))

    def _chain(self) -> list[Toxic]:
        return [t for t in self.proxy._active if t.name in self.attached and not t.per_message]

    async def _through(self, chain: list[Toxic], index: int, stamp: float, data: bytes) -> None:
        if index == len(chain):
            self._sink.write(data)
            await self._sink.drain()
            return
        await chain[index].transform(self, stamp, data, partial(self._through, chain, index + 1, stamp))

    # --- harness.toxics.Link ------------------------------------------------------------------

    def record(self, toxic: Toxic, action: str, nbytes: int, detail: str = "") -> None:
        self.proxy._record(toxic, action, str(self.direction), self.connection, nbytes, detail)

    async def sleep(self, seconds: float) -> None:
        if seconds > 0:
            await asyncio.sleep(seconds / self.proxy.time_scale)

    async def sleep_until(self, stamp: float, seconds: float) -> None:
        delay = stamp + seconds / self.proxy.time_scale - self._loop.time()
        if delay > 0:
            await asyncio.sleep(delay)

    def call_later(self, seconds: float, callback: Callable[[], object]) -> asyncio.TimerHandle:
        return self._loop.call_later(seconds / self.proxy.time_scale, callback)

    def close(self, *, reset: bool = False) -> bool:
        return self.conn.close(reset=reset)

    async def until_removed(self, toxic: Toxic) -> None:
        await self.proxy._until_removed(toxic)

    def hold_response(self, message: int, before: Callable[[], Awaitable[None]]) -> None:
        self.conn.hold_response(message, before)

    async def replay(self, raw: bytes) -> str:
        return await self.proxy._replay(raw)


class _TapReader(asyncio.StreamReader):
    """A StreamReader whose `tap` may take a chunk as it arrives (True: taken, not buffered)."""

    tap: Callable[[bytes], bool] | None = None

    def feed_data(self, data: bytes) -> None:
        if self.tap is not None and data and self.tap(data):
            return
        super().feed_data(data)


async def _run(work: Callable[[], Awaitable[None]]) -> None:
    await work()


def _stream_of(toxic: Toxic) -> str:
    return "both" if isinstance(toxic, Partition) else str(toxic.stream)


def _cancel(*handles: asyncio.TimerHandle | None) -> None:
    for handle in handles:
        if handle is not None:
            handle.cancel()


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with a TCP RST (SO_LINGER 0), as a peer that resets the connection does."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()
