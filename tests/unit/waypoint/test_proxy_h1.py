"""The h11 adapter: requests parsed from stream chunks however they are cut, responses
framed out, protocol errors with the status to answer; header editing for a proxy hop; the
trace id of a traceparent. No sockets (a recording end stands for the HBONE stream)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import h11
import pytest

from tests.unit.waypoint.test_proxy_streamio import Recorder
from waypoint.h1 import H1Channel, H1Error, decode_headers, hop_headers_removed
from waypoint.streamio import BufferedEnd
from waypoint.telemetry import trace_id
from ztunnel.relay import Relay


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), 5))


def channel(role: type[h11.CLIENT] | type[h11.SERVER] = h11.SERVER) -> tuple[Recorder, H1Channel]:
    stream, end = Recorder(), BufferedEnd("test")
    Relay(stream, end).start()
    return stream, H1Channel(end, role)


async def events_until_end(ch: H1Channel) -> list[object]:
    out: list[object] = []
    while True:
        event = await ch.next_event()
        out.append(event)
        if isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            return out


CHUNKED = (
    b"POST /up HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n"
)


@pytest.mark.parametrize("cut", [1, 2, 7, 64, len(CHUNKED)])
def test_a_chunked_request_is_parsed_however_the_stream_cuts_it(cut: int) -> None:
    async def body() -> None:
        stream, ch = channel()
        for i in range(0, len(CHUNKED), cut):
            stream.deliver(CHUNKED[i : i + cut])
        events = await events_until_end(ch)
        request = events[0]
        assert isinstance(request, h11.Request)
        assert request.method == b"POST" and request.target == b"/up"
        data = b"".join(e.data for e in events if isinstance(e, h11.Data))
        assert data == b"hello world"

    run(body)


def test_keep_alive_requests_follow_one_another() -> None:
    async def body() -> None:
        stream, ch = channel()
        stream.deliver(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        first = await events_until_end(ch)
        await ch.send(h11.Response(status_code=204, headers=[]))
        await ch.send(h11.EndOfMessage())
        assert ch.reusable()
        second = await events_until_end(ch)
        assert [e.target for e in (first[0], second[0]) if isinstance(e, h11.Request)] == [
            b"/a",
            b"/b",
        ]
        assert bytes(stream.out).startswith(b"HTTP/1.1 204 ")

    run(body)


def test_a_response_without_length_is_chunked_for_an_http11_client() -> None:
    async def body() -> None:
        stream, ch = channel()
        stream.deliver(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await events_until_end(ch)
        await ch.send(h11.Response(status_code=200, headers=[]))
        await ch.send(h11.Data(data=b"abc"))
        await ch.send(h11.EndOfMessage())
        out = bytes(stream.out)
        assert b"transfer-encoding: chunked" in out.lower()
        assert out.endswith(b"3\r\nabc\r\n0\r\n\r\n")

    run(body)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", 400),
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 70_000, 431),  # head too big
    ],
)
def test_malformed_http_is_an_error_with_the_status_to_answer(raw: bytes, status: int) -> None:
    async def body() -> None:
        stream, ch = channel()
        stream.deliver(raw)
        with pytest.raises(H1Error) as caught:
            await events_until_end(ch)
        assert caught.value.status == status

    run(body)


def test_the_stream_ending_mid_request_is_an_error() -> None:
    async def body() -> None:
        stream, ch = channel()
        stream.deliver(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\nabc")
        stream.deliver_eof()
        with pytest.raises(H1Error):
            await events_until_end(ch)

    run(body)


def test_the_stream_ending_between_requests_is_a_clean_close() -> None:
    async def body() -> None:
        stream, ch = channel()
        stream.deliver_eof()
        assert isinstance(await ch.next_event(), h11.ConnectionClosed)

    run(body)


def test_the_client_side_reads_a_response() -> None:
    async def body() -> None:
        stream, ch = channel(h11.CLIENT)
        await ch.send(h11.Request(method="GET", target="/", headers=[("host", "x")]))
        await ch.send(h11.EndOfMessage())
        assert bytes(stream.out).startswith(b"GET / HTTP/1.1\r\n")
        stream.deliver(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        events = await events_until_end(ch)
        assert isinstance(events[0], h11.Response) and events[0].status_code == 200
        assert ch.reusable()

    run(body)


@pytest.mark.parametrize(
    ("headers", "kept"),
    [
        ((("host", "a"), ("connection", "keep-alive"), ("keep-alive", "5")), ("host",)),
        (
            (("connection", "close, x-private"), ("x-private", "1"), ("x-public", "2")),
            ("x-public",),
        ),
        ((("te", "trailers"), ("upgrade", "websocket"), ("proxy-authorization", "b")), ()),
        (
            (("transfer-encoding", "chunked"), ("content-length", "3")),
            ("transfer-encoding", "content-length"),
        ),
        (
            (("expect", "100-continue"), ("traceparent", "00-..."), ("baggage", "a=1")),
            ("traceparent", "baggage"),
        ),
    ],
)
def test_hop_by_hop_headers_are_dropped(
    headers: tuple[tuple[str, str], ...], kept: tuple[str, ...]
) -> None:
    assert tuple(n for n, _ in hop_headers_removed(headers)) == kept


def test_header_bytes_decode_without_loss() -> None:
    assert decode_headers([(b"x-raw", b"caf\xe9")]) == (("x-raw", "caf\xe9"),)


@pytest.mark.parametrize(
    ("traceparent", "expected"),
    [
        (
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "4bf92f3577b34da6a3ce929d0e0e4736",
        ),
        (
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-00",
            "4bf92f3577b34da6a3ce929d0e0e4736",
        ),
        ("00-00000000000000000000000000000000-00f067aa0ba902b7-01", ""),  # invalid: all zeros
        ("ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", ""),  # version ff
        ("00-4bf92f35-00f067aa0ba902b7-01", ""),
        ("", ""),
        (None, ""),
    ],
)
def test_the_trace_id_comes_from_traceparent(traceparent: str | None, expected: str) -> None:
    assert trace_id(traceparent) == expected
