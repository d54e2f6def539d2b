"""HTTP/1.1 message framing over a byte stream: where each request and response starts and ends.

The fault proxy acts on whole messages (ack loss, a duplicated request, a corrupted body byte) while
passing every byte on untouched. A `MessageFramer` follows one direction of a connection and cuts what
it is fed into `Segment`s: a message's head, its body payload, the chunked coding's framing lines.
Concatenated, the segments are exactly the bytes fed. (aiohttp's parser decodes bodies into streams and
does not say where a message ends in the raw bytes, hence this small framer.)

Bytes that are not HTTP/1.1 (another protocol, a malformed message) must still reach the server as
they are, so that it can answer 400: the framer then records the typed error in `error` and passes the
rest of the stream on as opaque segments. `parse_messages` is the strict form: whole messages, or
HttpFramingError.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass
from enum import Enum, StrEnum

from protocol.errors import HttpFramingError

MAX_HEAD = 64 * 1024  # aiohttp's own limits are of this order; a larger head is not a client we model
MAX_LINE = 8 * 1024  # a chunk-size or trailer line
MAX_METHOD = 32

_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_TOKEN_BYTES = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
_VERSION = re.compile(r"HTTP/1\.[0-9]")
_HEAD_END = re.compile(rb"\n\r?\n")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_DIGITS = re.compile(r"[0-9]{1,18}")


class Kind(StrEnum):
    REQUEST = "request"
    RESPONSE = "response"


class Part(StrEnum):
    HEAD = "head"
    BODY = "body"  # payload bytes (chunk data when chunked)
    FRAMING = "framing"  # chunk-size lines, the CRLF after each chunk, trailers
    OPAQUE = "opaque"  # not framed: after an upgrade, or after bytes that are not HTTP/1.1


@dataclass(frozen=True)
class MessageHead:
    kind: Kind
    version: str
    headers: tuple[tuple[str, str], ...]
    method: str = ""
    target: str = ""
    status: int = 0
    reason: str = ""

    def header(self, name: str) -> str | None:
        """The field's value (repeated fields joined by ", "), or None when absent."""
        values = [v for k, v in self.headers if k.lower() == name.lower()]
        return ", ".join(values) if values else None

    @property
    def interim(self) -> bool:
        """A 1xx response other than 101: more responses to the same request follow."""
        return self.kind is Kind.RESPONSE and 100 <= self.status < 200 and self.status != 101

    @property
    def start_line(self) -> str:
        if self.kind is Kind.REQUEST:
            return f"{self.method} {self.target} {self.version}"
        return f"{self.version} {self.status} {self.reason}".rstrip()


@dataclass(frozen=True)
class Segment:
    part: Part
    data: bytes
    # Exchange number: requests count 0, 1, 2... on a connection; a response carries the number of the
    # request it answers. -1 for opaque bytes.
    message: int = -1
    head: MessageHead | None = None  # the head of the message this segment belongs to
    body_offset: int = 0  # offset of data[0] in the message's payload (BODY segments)
    last: bool = False  # this segment completes the message


@dataclass(frozen=True)
class HttpMessage:
    head: MessageHead
    body: bytes  # the payload, chunked coding removed
    raw: bytes  # the message exactly as it was on the wire


class _State(Enum):
    HEAD = 0
    LENGTH = 1
    UNTIL_EOF = 2
    CHUNK_SIZE = 3
    CHUNK_DATA = 4
    CHUNK_END = 5
    TRAILER = 6
    OPAQUE = 7


@dataclass(frozen=True)
class _Pending:
    message: int
    method: str
    switches: bool  # an Upgrade or CONNECT request: what follows its answer is not HTTP


class MessageFramer:
    """Frames one direction of a connection (see the module docstring). Responses are paired with the
    requests they answer through `answering`, the framer of the other direction."""

    def __init__(self, kind: Kind, *, answering: MessageFramer | None = None) -> None:
        if (kind is Kind.RESPONSE) != (answering is not None):
            raise ValueError("a response framer needs the request framer it answers, a request framer none")
        self.kind = kind
        self.error: HttpFramingError | None = None
        self._answering = answering
        self._pending: deque[_Pending] = deque()  # requests framed, final response not yet seen
        self._buf = bytearray()  # bytes fed and not yet emitted
        self._state = _State.HEAD
        self._count = 0  # messages started (requests) / final responses started
        self._message = -1
        self._head: MessageHead | None = None
        self._remaining = 0
        self._offset = 0  # payload bytes emitted for the current message
        self._trailer = 0
        self._after_message = _State.HEAD
        self._answered: _Pending | None = None  # the request the current response answers

    @property
    def opaque(self) -> bool:
        return self._state is _State.OPAQUE

    def feed(self, data: bytes) -> list[Segment]:
        """The segments `data` completes (bytes of an unfinished head are held until it is whole)."""
        out: list[Segment] = []
        if self._state is _State.OPAQUE:
            return [Segment(Part.OPAQUE, bytes(data))] if data else out
        self._buf += data
        try:
            while self._step(out):
                pass
        except HttpFramingError as error:
            self._give_up(error, out)
        return out

    def feed_eof(self) -> list[Segment]:
        """The stream ended: completes a body delimited by the end of the connection."""
        out: list[Segment] = []
        if self._state is _State.UNTIL_EOF:
            self._end_message(out, Part.BODY, b"")
        elif self._state is not _State.OPAQUE and (self._buf or self._state is not _State.HEAD):
            self._give_up(HttpFramingError("the stream ended inside an HTTP message", bytes(self._buf)), out)
        return out

    # --- state machine -------------------------------------------------------------------------

    def _step(self, out: list[Segment]) -> bool:
        """Emit what the buffer allows for the current state; False when more bytes are needed."""
        if not self._buf or self._state is _State.OPAQUE:
            return False
        state = self._state
        if state is _State.HEAD:
            return self._step_head(out)
        if state in (_State.LENGTH, _State.CHUNK_DATA):
            n = min(self._remaining, len(self._buf))
            data = self._take(n)
            self._remaining -= n
            if self._remaining:
                self._emit(out, Part.BODY, data)
            elif state is _State.LENGTH:
                self._end_message(out, Part.BODY, data)
            else:
                self._emit(out, Part.BODY, data)
                self._state = _State.CHUNK_END
            return True
        if state is _State.UNTIL_EOF:
            self._emit(out, Part.BODY, self._take(len(self._buf)))
            return False
        if state is _State.CHUNK_END:
            if self._buf.startswith(b"\r\n") or self._buf.startswith(b"\n"):
                self._emit(out, Part.FRAMING, self._take(2 if self._buf[0] == 0x0D else 1))
                self._state = _State.CHUNK_SIZE
                return True
            if self._buf == b"\r":
                return False
            raise HttpFramingError("chunk data not followed by CRLF", bytes(self._buf[:16]))
        line = self._line()
        if line is None:
            return False
        if state is _State.CHUNK_SIZE:
            size = self._chunk_size(line)
            if size:
                self._emit(out, Part.FRAMING, line)
                self._remaining, self._state = size, _State.CHUNK_DATA
            else:
                self._emit(out, Part.FRAMING, line)
                self._state, self._trailer = _State.TRAILER, 0
            return True
        # TRAILER: fields until an empty line, which ends the message
        if line in (b"\r\n", b"\n"):
            self._end_message(out, Part.FRAMING, line)
            return True
        self._trailer += len(line)
        if self._trailer > MAX_HEAD or b":" not in line:
            raise HttpFramingError("bad chunked trailer", line[:80])
        self._emit(out, Part.FRAMING, line)
        return True

    def _step_head(self, out: list[Segment]) -> bool:
        if self._kind_prefix_ok() is False:
            raise HttpFramingError(f"not the start of an HTTP/1.1 {self.kind}", bytes(self._buf[:32]))
        found = _HEAD_END.search(self._buf)
        if found is None:
            if len(self._buf) > MAX_HEAD:
                raise HttpFramingError("HTTP head too large", bytes(self._buf[:80]))
            return False
        end = found.end()
        if end > MAX_HEAD:
            raise HttpFramingError("HTTP head too large", bytes(self._buf[:80]))
        raw = bytes(self._buf[:end])
        head = self._parse_head(raw)
        self._after_message = _State.HEAD
        self._start_message(head)
        del self._buf[:end]
        state = self._body_state(head)
        if state is _State.HEAD:
            self._end_message(out, Part.HEAD, raw)
        else:
            self._emit(out, Part.HEAD, raw)
            self._state = state
        return True

    def _start_message(self, head: MessageHead) -> None:
        self._head, self._offset = head, 0
        if self.kind is Kind.REQUEST:
            self._message = self._count
            self._count += 1
            switches = head.method == "CONNECT" or head.header("upgrade") is not None
            self._pending.append(_Pending(self._message, head.method, switches))
            return
        requests = self._answering
        assert requests is not None
        pending = self._answered = requests._pending[0] if requests._pending else None
        self._message = pending.message if pending else self._count
        if not head.interim:
            self._count += 1
            if pending:
                requests._pending.popleft()
            # After a switch of protocols, or once the requests are no longer framed, what follows
            # cannot be paired with anything: pass it on as it is.
            if (pending and pending.switches) or (requests.opaque and not requests._pending):
                self._after_message = _State.OPAQUE

    def _body_state(self, head: MessageHead) -> _State:
        if self.kind is Kind.RESPONSE:
            method = self._answered.method if self._answered else ""
            status = head.status
            if status == 101 or (method == "CONNECT" and 200 <= status < 300):
                self._after_message = _State.OPAQUE
                return _State.HEAD
            if status < 200 or status in (204, 304) or method == "HEAD":
                return _State.HEAD
        elif head.method == "CONNECT" or head.header("upgrade") is not None:
            self._after_message = _State.OPAQUE  # the requests that follow are another protocol's bytes
        coding = head.header("transfer-encoding")
        if coding is not None:
            codings = [c.strip().lower() for c in coding.split(",")]
            if codings[-1] == "chunked":
                return _State.CHUNK_SIZE
            if self.kind is Kind.REQUEST:
                raise HttpFramingError("a request body whose length cannot be known", coding)
            return _State.UNTIL_EOF
        length = head.header("content-length")
        if length is not None:
            values = {v.strip() for v in length.split(",")}
            if len(values) != 1 or not _DIGITS.fullmatch(next(iter(values))):
                raise HttpFramingError("bad Content-Length", length)
            self._remaining = int(values.pop())
            return _State.LENGTH if self._remaining else _State.HEAD
        return _State.HEAD if self.kind is Kind.REQUEST else _State.UNTIL_EOF

    def _parse_head(self, raw: bytes) -> MessageHead:
        lines = [line.rstrip("\r") for line in raw.decode("latin-1").split("\n")]
        while lines and not lines[-1]:
            lines.pop()
        if not lines:
            raise HttpFramingError("empty HTTP head", raw[:80])
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon or not _TOKEN.fullmatch(name):
                raise HttpFramingError("bad HTTP header line", line.encode("latin-1")[:80])
            value = value.strip(" \t")
            if any(c in value for c in "\r\x00"):
                raise HttpFramingError("bad HTTP header value", line.encode("latin-1")[:80])
            headers.append((name, value))
        start = lines[0]
        if self.kind is Kind.REQUEST:
            parts = start.split(" ")
            if len(parts) != 3 or not _TOKEN.fullmatch(parts[0]) or not parts[1] or not _VERSION.fullmatch(parts[2]):
                raise HttpFramingError("bad HTTP request line", start.encode("latin-1")[:80])
            return MessageHead(Kind.REQUEST, parts[2], tuple(headers), method=parts[0], target=parts[1])
        version, _, rest = start.partition(" ")
        code, _, reason = rest.partition(" ")
        if not _VERSION.fullmatch(version) or len(code) != 3 or not code.isdigit() or code[0] == "0":
            raise HttpFramingError("bad HTTP status line", start.encode("latin-1")[:80])
        return MessageHead(Kind.RESPONSE, version, tuple(headers), status=int(code), reason=reason)

    def _kind_prefix_ok(self) -> bool | None:
        """Whether the buffered start of a head can still be HTTP (None: cannot tell yet).

        Checked before a whole head is in, so that another protocol's bytes (Modbus TCP, TLS) are
        recognised at once instead of being held while waiting for a blank line that never comes."""
        buf = self._buf
        if self.kind is Kind.RESPONSE:
            prefix = bytes(buf[:5])
            return b"HTTP/".startswith(prefix) if len(prefix) < 5 else prefix == b"HTTP/"
        space = buf.find(b" ", 0, MAX_METHOD + 1)
        method = bytes(buf[: space if space >= 0 else MAX_METHOD + 1])
        if not all(b in _TOKEN_BYTES for b in method) or (space < 0 and len(buf) > MAX_METHOD):
            return False
        return None if space < 0 else space > 0

    def _chunk_size(self, line: bytes) -> int:
        size = line.split(b";", 1)[0].strip(b" \t\r\n")
        if not _HEX.fullmatch(size):
            raise HttpFramingError("bad chunk size", line[:80])
        return int(size, 16)

    def _line(self) -> bytes | None:
        end = self._buf.find(b"\n")
        if end < 0:
            if len(self._buf) > MAX_LINE:
                raise HttpFramingError("line too long in a chunked body", bytes(self._buf[:80]))
            return None
        if end >= MAX_LINE:
            raise HttpFramingError("line too long in a chunked body", bytes(self._buf[:80]))
        return self._take(end + 1)

    def _take(self, n: int) -> bytes:
        data = bytes(self._buf[:n])
        del self._buf[:n]
        return data

    def _emit(self, out: list[Segment], part: Part, data: bytes, *, last: bool = False) -> None:
        out.append(Segment(part, data, self._message, self._head, self._offset if part is Part.BODY else 0, last))
        if part is Part.BODY:
            self._offset += len(data)

    def _end_message(self, out: list[Segment], part: Part, data: bytes) -> None:
        self._emit(out, part, data, last=True)
        self._state = self._after_message
        if self._state is _State.OPAQUE and self._buf:
            out.append(Segment(Part.OPAQUE, self._take(len(self._buf))))

    def _give_up(self, error: HttpFramingError, out: list[Segment]) -> None:
        self.error = error
        self._state = _State.OPAQUE
        if self._buf:
            out.append(Segment(Part.OPAQUE, self._take(len(self._buf))))


def connection_framers() -> tuple[MessageFramer, MessageFramer]:
    """The framers of one connection: (requests, responses), paired."""
    requests = MessageFramer(Kind.REQUEST)
    return requests, MessageFramer(Kind.RESPONSE, answering=requests)


def parse_messages(data: bytes, kind: Kind = Kind.REQUEST) -> list[HttpMessage]:
    """The complete messages `data` holds (responses as answers to GET requests).

    Raises HttpFramingError for bytes that are not a sequence of whole HTTP/1.1 messages."""
    requests, responses = connection_framers()
    framer = requests if kind is Kind.REQUEST else responses
    segments = framer.feed(data) + framer.feed_eof()
    if framer.error is not None:
        raise framer.error
    messages: list[HttpMessage] = []
    raw, body = bytearray(), bytearray()
    for segment in segments:
        raw += segment.data
        if segment.part is Part.BODY:
            body += segment.data
        if segment.last and segment.head is not None:
            messages.append(HttpMessage(segment.head, bytes(body), bytes(raw)))
            raw.clear()
            body.clear()
    if raw:  # what follows a protocol switch is not HTTP
        raise HttpFramingError("bytes after a protocol switch", bytes(raw[:80]))
    return messages
