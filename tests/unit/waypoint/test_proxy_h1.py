"""waypoint.h1: requests and responses parsed from stream chunks however they are cut (and
as h11, the reference, parses them), framing of what we send (length, chunked, until close,
none), keep-alive and pipelining, protocol errors with the status to answer, what we refuse
to send; header editing for a proxy hop; the trace id of a traceparent. No sockets (a
recording end stands for the HBONE stream)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import h11
import pytest

from tests.unit.waypoint.test_proxy_streamio import Recorder
from waypoint import h1
from waypoint.h1 import H1Channel, H1Error, H1LocalError, Role, decode_headers, hop_headers_removed
from waypoint.streamio import BufferedEnd
from waypoint.telemetry import trace_id
from ztunnel.relay import Relay


def run(body: Callable[[], Awaitable[None]]) -> None:
    asyncio.run(asyncio.wait_for(body(), 5))


def channel(role: Role = Role.SERVER) -> tuple[Recorder, H1Channel]:
    stream, end = Recorder(), BufferedEnd("test")
    Relay(stream, end).start()
    return stream, H1Channel(end, role)


async def events_until_end(ch: H1Channel) -> list[h1.Event]:
    out: list[h1.Event] = []
    while True:
        event = await ch.next_event()
        out.append(event)
        if isinstance(event, h1.EndOfMessage | h1.ConnectionClosed):
            return out


def parsed(raw: bytes, cut: int, role: Role = Role.SERVER, method: bytes = b"GET") -> list[object]:
    """Our events for `raw` delivered in pieces of `cut` bytes, then the end of the stream,
    as plain tuples."""
    out: list[object] = []

    async def body() -> None:
        stream, ch = channel(role)
        if role is Role.CLIENT:
            await ch.send(h1.Request(method, b"/", [(b"host", b"x")]))
            await ch.send(h1.EndOfMessage())
        for i in range(0, len(raw), cut):
            stream.deliver(raw[i : i + cut])
        stream.deliver_eof()
        while True:
            event = await ch.next_event()
            if isinstance(event, h1.ConnectionClosed):
                return
            out.append(_plain(event))
            if isinstance(event, h1.EndOfMessage):
                if role is Role.SERVER:  # answer it, to read on (as `reference` does)
                    await ch.send(h1.Response(204, []))
                    await ch.send(h1.EndOfMessage())
                if not ch.reusable():
                    return

    run(body)
    return _merged(out)


def reference(raw: bytes, role: Role = Role.SERVER, method: bytes = b"GET") -> list[object]:
    """h11's events for the same bytes."""
    conn = h11.Connection(h11.SERVER if role is Role.SERVER else h11.CLIENT)
    if role is Role.CLIENT:
        conn.send(h11.Request(method=method, target="/", headers=[("host", "x")]))
        conn.send(h11.EndOfMessage())
    conn.receive_data(raw)
    conn.receive_data(b"")
    out: list[object] = []
    while True:
        event = conn.next_event()
        if event is h11.NEED_DATA or event is h11.PAUSED or isinstance(event, h11.ConnectionClosed):
            break
        out.append(_plain(event))
        if isinstance(event, h11.EndOfMessage):
            if conn.our_state is h11.DONE and conn.their_state is h11.DONE:
                conn.start_next_cycle()
            elif role is Role.SERVER:  # answer it, to let h11 read on
                conn.send(h11.Response(status_code=204, headers=[]))
                conn.send(h11.EndOfMessage())
                if conn.our_state is not h11.DONE or conn.their_state is not h11.DONE:
                    break
                conn.start_next_cycle()
    return _merged(out)


def _plain(event: object) -> object:
    if isinstance(event, h1.Request | h11.Request):
        return ("request", event.method, event.target, list(event.headers), event.http_version)
    if isinstance(event, h1.Response | h11.Response):
        return ("response", event.status_code, list(event.headers), event.http_version)
    if isinstance(event, h1.InformationalResponse | h11.InformationalResponse):
        return ("1xx", event.status_code)
    if isinstance(event, h1.Data | h11.Data):
        return ("data", bytes(event.data))
    if isinstance(event, h1.EndOfMessage | h11.EndOfMessage):
        return ("end",)
    raise AssertionError(event)


def _merged(events: list[object]) -> list[object]:
    """Data events joined: how a body is cut into events is the parser's business."""
    out: list[object] = []
    for event in events:
        if isinstance(event, tuple) and event[0] == "data" and out and out[-1][0] == "data":  # type: ignore[index]
            out[-1] = ("data", out[-1][1] + event[1])  # type: ignore[index]
        else:
            out.append(event)
    return out


REQUESTS = [
    b"GET / HTTP/1.1\r\nHost: web\r\n\r\n",
    b"GET /a?b=c HTTP/1.1\r\nHost: web\r\nX-Multi: 1\r\nx-multi: 2\r\nUser-Agent:  sp ace \r\n\r\n",
    b"POST /up HTTP/1.1\r\nHost: web\r\nContent-Length: 11\r\n\r\nhello world",
    b"POST /up HTTP/1.1\r\nHost: web\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n",
    b"GET /old HTTP/1.0\r\nHost: web\r\n\r\n",
    b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nPOST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nhi"
    b"GET /c HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
]


@pytest.mark.parametrize("raw", REQUESTS)
@pytest.mark.parametrize("cut", [1, 3, 16, 10_000])
def test_requests_parse_as_h11_parses_them_however_the_stream_cuts_them(
    raw: bytes, cut: int
) -> None:
    assert parsed(raw, cut) == reference(raw)


def test_an_empty_line_before_a_request_line_is_ignored_as_rfc_9112_asks() -> None:
    # (h11 refuses it: the one place we knowingly differ)
    raw = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n"
    targets = [e[2] for e in parsed(raw, 10_000) if isinstance(e, tuple) and e[0] == "request"]
    assert targets == [b"/a", b"/b"]


RESPONSES = [
    (b"GET", b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    (b"GET", b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"),
    (b"GET", b"HTTP/1.1 200 OK\r\n\r\nuntil the end"),  # framed by the close
    (b"GET", b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\nold"),
    (b"GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
    (b"GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"),
    (b"HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 1024\r\n\r\n"),
    (b"GET", b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nx"),
]


@pytest.mark.parametrize(("method", "raw"), RESPONSES)
@pytest.mark.parametrize("cut", [1, 5, 10_000])
def test_responses_parse_as_h11_parses_them(method: bytes, raw: bytes, cut: int) -> None:
    assert parsed(raw, cut, Role.CLIENT, method) == reference(raw, Role.CLIENT, method)


def test_keep_alive_requests_follow_one_another_and_a_pipelined_one_waits_its_turn() -> None:
    async def body() -> None:
        stream, ch = channel()
        stream.deliver(b"GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        first = await events_until_end(ch)
        assert ch.their_state is h1.DONE and ch.our_state is h1.SEND_RESPONSE
        assert not ch.ready()  # /b is parsed, but not this exchange's
        await ch.send(h1.Response(204, [], b"No Content"))
        await ch.send(h1.EndOfMessage())
        assert ch.reusable()
        second = await events_until_end(ch)
        targets = [e.target for e in (first[0], second[0]) if isinstance(e, h1.Request)]
        assert targets == [b"/a", b"/b"]
        assert bytes(stream.out) == b"HTTP/1.1 204 No Content\r\n\r\n"

    run(body)


@pytest.mark.parametrize(
    ("request_line", "response", "wire", "reusable"),
    [
        # no length from the backend: chunked for an HTTP/1.1 client...
        (
            b"GET / HTTP/1.1",
            [],
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
            True,
        ),
        # ...the close for an HTTP/1.0 one, which knows no chunks
        (b"GET / HTTP/1.0", [], b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nabc", False),
        (
            b"GET / HTTP/1.0",
            [(b"transfer-encoding", b"chunked")],
            b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nabc",
            False,
        ),
        (
            b"GET / HTTP/1.1",
            [(b"content-length", b"3")],
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nabc",
            True,
        ),
        # the client asked to close: we say so, and do
        (
            b"GET / HTTP/1.1\r\nConnection: close",
            [(b"content-length", b"3")],
            b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\nconnection: close\r\n\r\nabc",
            False,
        ),
    ],
)
def test_a_response_is_framed_for_the_client_that_asked(
    request_line: bytes,
    response: list[tuple[bytes, bytes]],
    wire: bytes,
    reusable: bool,
) -> None:
    async def body() -> None:
        stream, ch = channel()
        stream.deliver(request_line + b"\r\nHost: x\r\n\r\n")
        await events_until_end(ch)
        await ch.send(h1.Response(200, response, b"OK"))
        await ch.send(h1.Data(b"abc"))
        await ch.send(h1.EndOfMessage())
        assert bytes(stream.out) == wire
        assert ch.reusable() is reusable

    run(body)


def test_a_head_request_gets_the_head_only_and_a_head_response_is_not_waited_on() -> None:
    async def body() -> None:
        stream, ch = channel()
        stream.deliver(b"HEAD / HTTP/1.1\r\nHost: x\r\n\r\n")
        await events_until_end(ch)
        await ch.send(h1.Response(200, [(b"content-length", b"1024")], b"OK"))
        with pytest.raises(H1LocalError):
            await ch.send(h1.Data(b"no body for a HEAD"))
        await ch.send(h1.EndOfMessage())
        assert bytes(stream.out) == b"HTTP/1.1 200 OK\r\ncontent-length: 1024\r\n\r\n"

        stream, backend = channel(Role.CLIENT)
        await backend.send(h1.Request(b"HEAD", b"/", [(b"host", b"x")]))
        await backend.send(h1.EndOfMessage())
        stream.deliver(b"HTTP/1.1 200 OK\r\nContent-Length: 1024\r\n\r\n")
        events = await events_until_end(backend)
        assert [type(e) for e in events] == [h1.Response, h1.EndOfMessage]
        assert not backend.reusable()  # (what followed the head was not looked at)

    run(body)


def test_100_continue_is_owed_until_the_body_or_an_answer_comes() -> None:
    async def body() -> None:
        stream, ch = channel()
        stream.deliver(
            b"PUT / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 2\r\n\r\n"
        )
        assert isinstance(await ch.next_event(), h1.Request)
        assert ch.they_are_waiting_for_100_continue
        await ch.send(h1.InformationalResponse(100, [], b"Continue"))
        assert not ch.they_are_waiting_for_100_continue
        stream.deliver(b"ok")
        assert [type(e) for e in await events_until_end(ch)] == [h1.Data, h1.EndOfMessage]
        assert bytes(stream.out) == b"HTTP/1.1 100 Continue\r\n\r\n"

    run(body)


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"GET / HTTP/1.1\r\nBad Header: x\r\n\r\n", 400),
        (b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03\r\n\r\n", 400),  # TLS on a plain port
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: nope\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400),
        # request smuggling: both framings, or an obsolete line fold
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
            400,
        ),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-Long: " + b"a" * 70_000, 431),  # head too big
        (b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n", 501),
        (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 501),
    ],
)
def test_malformed_http_is_an_error_with_the_status_to_answer(raw: bytes, status: int) -> None:
    async def body() -> None:
        stream, ch = channel()
        stream.deliver(raw)
        with pytest.raises(H1Error) as caught:
            await events_until_end(ch)
            await events_until_end(ch)
        assert caught.value.status == status

    run(body)


def test_a_head_arriving_in_small_pieces_is_bounded_too() -> None:
    async def body() -> None:
        stream, ch = channel()
        stream.deliver(b"GET / HTTP/1.1\r\nHost: x\r\n")
        with pytest.raises(H1Error) as caught:
            for _ in range(2000):
                stream.deliver(b"X-Filler: " + b"f" * 40 + b"\r\n")
                task = asyncio.ensure_future(ch.next_event())
                await asyncio.sleep(0)
                if task.done():
                    task.result()
                task.cancel()
        assert caught.value.status == 431

    run(body)


def test_a_large_pipelined_body_is_not_counted_as_the_next_head() -> None:
    async def body() -> None:
        stream, ch = channel()
        big = b"b" * 100_000
        stream.deliver(
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n%bGET /next HTTP/1.1\r\n"
            % (len(big), big)
        )
        events = await events_until_end(ch)
        assert b"".join(e.data for e in events if isinstance(e, h1.Data)) == big
        await ch.send(h1.Response(204, []))
        await ch.send(h1.EndOfMessage())
        assert ch.reusable()
        stream.deliver(b"Host: x\r\n\r\n")
        assert isinstance(await ch.next_event(), h1.Request)

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
        assert isinstance(await ch.next_event(), h1.ConnectionClosed)

    run(body)


def test_the_client_side_sends_a_request_and_reads_its_response() -> None:
    async def body() -> None:
        stream, ch = channel(Role.CLIENT)
        await ch.send(h1.Request(b"GET", b"/", [(b"host", b"x")]))
        await ch.send(h1.EndOfMessage())
        assert bytes(stream.out) == b"GET / HTTP/1.1\r\nhost: x\r\n\r\n"
        stream.deliver(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        events = await events_until_end(ch)
        assert isinstance(events[0], h1.Response) and events[0].status_code == 200
        assert ch.reusable()

    run(body)


@pytest.mark.parametrize(
    "request_",
    [
        h1.Request(b"GET", b"/", [(b"host", b"x"), (b"x-evil", b"1\r\nx-injected: 2")]),
        h1.Request(b"GET", b"/", [(b"x-evil\n", b"1")]),
        h1.Request(b"GET", b"/a b", [(b"host", b"x")]),
        h1.Request(b"GET", b"/\r\nHost: y", [(b"host", b"x")]),
        h1.Request(b"GET", b"/", [(b"host", b"x"), (b"x-bare-cr", b"1\r2")]),
    ],
)
def test_a_head_that_would_split_into_more_lines_is_never_sent(request_: h1.Request) -> None:
    async def body() -> None:
        stream, ch = channel(Role.CLIENT)
        with pytest.raises(H1LocalError):
            await ch.send(request_)
        assert bytes(stream.out) == b""

    run(body)


def test_more_body_than_content_length_is_refused_and_less_is_caught() -> None:
    async def body() -> None:
        _stream, ch = channel(Role.CLIENT)
        await ch.send(h1.Request(b"POST", b"/", [(b"content-length", b"3")]))
        with pytest.raises(H1LocalError):
            await ch.send(h1.Data(b"four"))
        await ch.send(h1.Data(b"tw"))
        with pytest.raises(H1LocalError):
            await ch.send(h1.EndOfMessage())

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
