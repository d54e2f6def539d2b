"""HTTP/1.1 framing for the fault proxy: whole messages found in a byte stream, bytes never altered, and
bad bytes give HttpFramingError (strict form) or pass on as opaque (streaming form)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.http_framing import Kind, Part, Segment, connection_framers, parse_messages
from protocol.errors import EcoWattError, HttpFramingError

POST = b"POST /process HTTP/1.1\r\nHost: cloud\r\nContent-Length: 5\r\n\r\nhello"
CHUNKED = (b"POST /process HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
           b"4;ext=1\r\nwiki\r\n5\r\npedia\r\n0\r\nX-Trailer: 1\r\n\r\n")
GET = b"GET /health HTTP/1.1\r\nHost: cloud\r\n\r\n"


def _feed_all(framer_kind: Kind, data: bytes, cuts: list[int]) -> list[Segment]:
    requests, responses = connection_framers()
    framer = requests if framer_kind is Kind.REQUEST else responses
    segments: list[Segment] = []
    start = 0
    for cut in sorted(cuts) + [len(data)]:
        segments += framer.feed(data[start:cut])
        start = max(start, cut)
    return segments + framer.feed_eof()


def test_kept_alive_requests_are_cut_into_whole_messages_with_their_payloads() -> None:
    messages = parse_messages(POST + CHUNKED + GET)
    assert [(m.head.method, m.head.target, m.body) for m in messages] == [
        ("POST", "/process", b"hello"), ("POST", "/process", b"wikipedia"), ("GET", "/health", b"")]
    assert [m.raw for m in messages] == [POST, CHUNKED, GET]
    assert messages[0].head.header("content-length") == "5"


def test_body_segments_carry_payload_offsets_and_the_last_segment_ends_the_message() -> None:
    segments = _feed_all(Kind.REQUEST, CHUNKED, [70, 80])
    body = [(s.body_offset, s.data) for s in segments if s.part is Part.BODY]
    assert b"".join(d for _, d in body) == b"wikipedia"
    assert all(offset == sum(len(d) for _, d in body[:i]) for i, (offset, _) in enumerate(body))
    assert [s.last for s in segments] == [False] * (len(segments) - 1) + [True]


def test_responses_are_paired_with_requests_head_and_interim_responses_have_no_body() -> None:
    requests, responses = connection_framers()
    requests.feed(b"HEAD /a HTTP/1.1\r\n\r\n" + GET)
    wire = (b"HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n"  # HEAD: the length is not followed by a body
            b"HTTP/1.1 100 Continue\r\n\r\n"
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
    segments = responses.feed(wire)
    ends = [(s.message, s.head.status) for s in segments if s.last and s.head]
    assert ends == [(0, 200), (1, 100), (1, 200)]
    assert b"".join(s.data for s in segments) == wire


def test_a_response_without_length_ends_with_the_connection() -> None:
    requests, responses = connection_framers()
    requests.feed(GET)
    segments = responses.feed(b"HTTP/1.0 200 OK\r\n\r\nuntil ")
    assert not any(s.last for s in segments)
    segments += responses.feed(b"close") + responses.feed_eof()
    assert segments[-1].last and b"".join(s.data for s in segments if s.part is Part.BODY) == b"until close"


def test_after_a_protocol_switch_the_bytes_are_opaque() -> None:
    requests, responses = connection_framers()
    upgrade = b"GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n"
    assert requests.feed(upgrade + b"\x81\x05hello")[-1].part is Part.OPAQUE
    segments = responses.feed(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n\x81\x02hi")
    assert [s.part for s in segments] == [Part.HEAD, Part.OPAQUE] and requests.error is None


def test_another_protocol_is_recognised_at_its_first_bytes_and_passed_on_unchanged() -> None:
    requests, _ = connection_framers()
    modbus_tcp = bytes.fromhex("000100000006110300000010")  # a Modbus TCP read, no CRLF anywhere
    assert requests.feed(modbus_tcp) == [Segment(Part.OPAQUE, modbus_tcp)]
    assert isinstance(requests.error, HttpFramingError)
    assert requests.feed(b"more") == [Segment(Part.OPAQUE, b"more")]


@pytest.mark.parametrize("wire", [
    b"POST / HTTP/1.1\r\nContent-Length: 5x\r\n\r\nhello",
    b"POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello!",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip\r\n\r\n",
    b"POST / HTTP/1.1\r\n folded: header\r\n\r\n",
    b"GET / HTTP/2.0\r\n\r\n",
    b"GET /\r\n\r\n",
    b"POST / HTTP/1.1\r\nContent-Length: 10\r\n\r\nshort",
    b"GET / HTTP/1.1\r\nX: " + b"a" * 70_000,
])
def test_bad_framing_is_a_typed_error(wire: bytes) -> None:
    with pytest.raises(HttpFramingError):
        parse_messages(wire)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=600), st.sampled_from(list(Kind)))
def test_arbitrary_bytes_give_messages_or_a_typed_error(data: bytes, kind: Kind) -> None:
    try:
        messages = parse_messages(data, kind)
    except EcoWattError as error:
        assert isinstance(error, HttpFramingError)
    else:
        assert b"".join(m.raw for m in messages) == data


_prefixes = st.sampled_from([b"", POST, GET, b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nabc"])


@settings(max_examples=300, deadline=None)
@given(_prefixes, st.binary(max_size=400), st.lists(st.integers(0, 1000), max_size=6), st.sampled_from(list(Kind)))
def test_the_framer_passes_any_bytes_on_unchanged_however_they_are_cut(
    prefix: bytes, tail: bytes, cuts: list[int], kind: Kind
) -> None:
    data = prefix + tail
    segments = _feed_all(kind, data, [min(c, len(data)) for c in cuts])
    assert b"".join(s.data for s in segments) == data


@st.composite
def _requests(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    wire, bodies = b"", []
    for _ in range(draw(st.integers(1, 4))):
        body = draw(st.binary(max_size=300))
        method = draw(st.sampled_from(["POST", "PUT", "GET"]))
        head = f"{method} /p{len(bodies)} HTTP/1.1\r\nHost: x\r\n".encode()
        if draw(st.booleans()):
            wire += head + f"Content-Length: {len(body)}\r\n\r\n".encode() + body
        else:
            sizes = draw(st.lists(st.integers(1, 50), max_size=8))
            chunks, rest = [], body
            for size in sizes:
                if rest:
                    chunks.append(rest[:size])
                    rest = rest[size:]
            if rest:
                chunks.append(rest)
            coded = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks)
            wire += head + b"Transfer-Encoding: chunked\r\n\r\n" + coded + b"0\r\n\r\n"
        bodies.append(body)
    return wire, bodies


@settings(max_examples=200, deadline=None)
@given(_requests(), st.lists(st.integers(0, 3000), max_size=8))
def test_generated_requests_are_found_whole_however_the_stream_is_cut(
    sample: tuple[bytes, list[bytes]], cuts: list[int]
) -> None:
    wire, bodies = sample
    assert [m.body for m in parse_messages(wire)] == bodies
    segments = _feed_all(Kind.REQUEST, wire, [min(c, len(wire)) for c in cuts])
    ends = [s.message for s in segments if s.last]
    assert ends == list(range(len(bodies)))
    for number, body in enumerate(bodies):
        assert b"".join(s.data for s in segments if s.message == number and s.part is Part.BODY) == body
