"""HTTP/1.1 and HTTP/2 server-side parsing, fed with plain bytes."""

from __future__ import annotations

from dataclasses import dataclass

import h2.config
import h2.connection
import h2.events
import pytest

from sample_apps.httpwire import (
    H2_PREFACE,
    H1Server,
    H2Server,
    HttpProtocolError,
    HttpTarget,
    Protocol,
    Request,
    Response,
    sniff_protocol,
)

JSON_OK = Response(200, (("content-type", "application/json"),), b'{"ok": true}')


@pytest.mark.parametrize(
    ("prefix", "expected"),
    [
        (b"", None),
        (b"P", None),
        (b"PRI * HTTP/2.0\r\n", None),
        (H2_PREFACE, Protocol.HTTP2),
        (H2_PREFACE + b"\x00\x00", Protocol.HTTP2),
        (b"POST / HTTP/1.1\r\n", Protocol.HTTP1),
        (b"GET", Protocol.HTTP1),
        (b"PRI * HTTP/1.1\r\n", Protocol.HTTP1),
    ],
)
def test_sniff_protocol_waits_for_full_preface_before_choosing_h2(
    prefix: bytes, expected: Protocol | None
) -> None:
    assert sniff_protocol(prefix) == expected


# --- HTTP/1.1 ---------------------------------------------------------------------------


def h1_request(server: H1Server, data: bytes) -> Request | None:
    server.receive_data(data)
    return server.next_request()


def test_h1_get_becomes_typed_request_with_lowercased_headers() -> None:
    server = H1Server()
    request = h1_request(
        server, b"GET /a/b?x=1 HTTP/1.1\r\nHost: svc:8080\r\nX-Trace: 1\r\nx-trace: 2\r\n\r\n"
    )
    assert request == Request(
        method="GET",
        path="/a/b?x=1",
        headers=(("host", "svc:8080"), ("x-trace", "1"), ("x-trace", "2")),
        body_bytes=0,
        protocol="HTTP/1.1",
    )
    assert request.header_map() == {"host": "svc:8080", "x-trace": "1, 2"}


def test_h1_request_split_across_reads_waits_for_the_rest() -> None:
    server = H1Server()
    assert h1_request(server, b"GET / HTTP/1.1\r\nHo") is None
    assert h1_request(server, b"st: a\r\n") is None
    request = h1_request(server, b"\r\n")
    assert request is not None and request.path == "/"


def test_h1_counts_content_length_and_chunked_bodies() -> None:
    server = H1Server()
    request = h1_request(server, b"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello")
    assert request is not None and request.body_bytes == 5
    server.send_response(request, JSON_OK)
    chunked = (
        b"PUT /c HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
    )
    request = h1_request(server, chunked)
    assert request is not None and request.method == "PUT" and request.body_bytes == 3


def test_h1_keep_alive_serves_second_request_after_first_response() -> None:
    server = H1Server()
    two = b"GET /1 HTTP/1.1\r\nHost: a\r\n\r\nGET /2 HTTP/1.1\r\nHost: a\r\n\r\n"
    first = h1_request(server, two)
    assert first is not None and first.path == "/1"
    assert server.next_request() is None  # no pipelining: the second waits for our answer
    server.send_response(first, JSON_OK)
    wire = server.data_to_send()
    assert wire.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"content-length: 12\r\n" in wire and wire.endswith(b'{"ok": true}')
    second = server.next_request()
    assert second is not None and second.path == "/2"
    assert not server.closed


def test_h1_connection_close_request_closes_after_response() -> None:
    server = H1Server()
    request = h1_request(server, b"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    assert request is not None
    server.send_response(request, JSON_OK)
    assert server.closed
    assert b"connection: close" in server.data_to_send().lower()


def test_h1_http10_client_is_reported_and_not_kept_alive() -> None:
    server = H1Server()
    request = h1_request(server, b"GET / HTTP/1.0\r\n\r\n")
    assert request is not None and request.protocol == "HTTP/1.0"
    server.send_response(request, JSON_OK)
    assert server.closed


def test_h1_head_answer_has_length_but_no_body() -> None:
    server = H1Server()
    request = h1_request(server, b"HEAD / HTTP/1.1\r\nHost: a\r\n\r\n")
    assert request is not None
    server.send_response(request, JSON_OK)
    wire = server.data_to_send()
    assert b"content-length: 12\r\n" in wire and wire.endswith(b"\r\n\r\n")


def test_h1_204_has_neither_length_nor_body() -> None:
    server = H1Server()
    request = h1_request(server, b"GET /status/204 HTTP/1.1\r\nHost: a\r\n\r\n")
    assert request is not None
    server.send_response(request, Response(204, (), b"{}"))
    wire = server.data_to_send()
    assert wire.startswith(b"HTTP/1.1 204 No Content\r\n")
    assert b"content-length" not in wire and wire.endswith(b"\r\n\r\n")


def test_h1_answers_expect_100_continue_before_body() -> None:
    server = H1Server()
    head = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nExpect: 100-continue\r\n\r\n"
    assert h1_request(server, head) is None
    assert server.data_to_send().startswith(b"HTTP/1.1 100 ")
    request = h1_request(server, b"ok")
    assert request is not None and request.body_bytes == 2


def test_h1_garbage_raises_protocol_error_and_can_answer_400() -> None:
    server = H1Server()
    server.receive_data(b"NOT HTTP AT ALL\r\n\r\n")
    with pytest.raises(HttpProtocolError) as caught:
        server.next_request()
    assert caught.value.status == 400
    server.send_error(caught.value.status)
    assert server.data_to_send().startswith(b"HTTP/1.1 400 Bad Request\r\n")


def test_h1_peer_eof_between_requests_closes_quietly() -> None:
    server = H1Server()
    assert h1_request(server, b"") is None
    assert server.closed


def test_h1_peer_eof_mid_request_is_a_protocol_error() -> None:
    server = H1Server()
    assert h1_request(server, b"GET / HTTP/1.1\r\nHost") is None
    server.receive_data(b"")
    with pytest.raises(HttpProtocolError):
        server.next_request()


# --- HTTP/2 -----------------------------------------------------------------------------


@dataclass
class H2Answer:
    headers: dict[str, str]
    body: bytes = b""
    ended: bool = False


class H2TestClient:
    """The h2 library as a client, to produce and consume real frames."""

    def __init__(self) -> None:
        config = h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.initiate_connection()
        self.responses: dict[int, H2Answer] = {}

    def request(
        self,
        path: str,
        method: str = "GET",
        body: bytes = b"",
        extra: tuple[tuple[str, str], ...] = (),
    ) -> int:
        stream_id = self.conn.get_next_available_stream_id()
        headers = [(":method", method), (":scheme", "http"), (":authority", "svc:80")]
        self.conn.send_headers(stream_id, [*headers, (":path", path), *extra], end_stream=not body)
        for offset in range(0, len(body), 16_384):  # the default max frame size
            last = offset + 16_384 >= len(body)
            self.conn.send_data(stream_id, body[offset : offset + 16_384], end_stream=last)
        return stream_id

    def receive(self, data: bytes) -> None:
        for event in self.conn.receive_data(data):
            if isinstance(event, h2.events.ResponseReceived):
                assert event.stream_id is not None
                headers = {str(k): str(v) for k, v in event.headers or []}
                self.responses[event.stream_id] = H2Answer(headers)
            elif isinstance(event, h2.events.DataReceived):
                assert event.stream_id is not None
                self.responses[event.stream_id].body += event.data or b""
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, h2.events.StreamEnded):
                assert event.stream_id is not None
                self.responses[event.stream_id].ended = True


def h2_pair() -> tuple[H2TestClient, H2Server]:
    server = H2Server()
    server.initiate()
    client = H2TestClient()
    client.receive(server.data_to_send())
    return client, server


def test_h2_requests_are_parsed_with_host_from_authority_and_no_pseudo_headers() -> None:
    client, server = h2_pair()
    stream_id = client.request("/echo?q=1", extra=(("x-trace", "7"),))
    (request,) = server.receive_data(client.conn.data_to_send())
    assert request == Request(
        method="GET",
        path="/echo?q=1",
        headers=(("host", "svc:80"), ("x-trace", "7")),
        body_bytes=0,
        protocol="HTTP/2",
        stream_id=stream_id,
    )


def test_h2_body_is_counted_across_data_frames() -> None:
    client, server = h2_pair()
    client.request("/up", method="POST", body=b"x" * 40_000)
    requests = server.receive_data(client.conn.data_to_send())
    assert [r.body_bytes for r in requests] == [40_000]


def test_h2_cookie_crumbs_are_rejoined_with_semicolons() -> None:
    client, server = h2_pair()
    client.request("/", extra=(("cookie", "a=1"), ("cookie", "b=2"), ("accept", "x")))
    (request,) = server.receive_data(client.conn.data_to_send())
    assert request.header_map()["cookie"] == "a=1; b=2"


def test_h2_concurrent_streams_can_be_answered_out_of_order() -> None:
    client, server = h2_pair()
    first = client.request("/slow")
    second = client.request("/fast")
    slow, fast = server.receive_data(client.conn.data_to_send())
    server.send_response(fast, Response(201, (("x-n", "2"),), b"fast"))
    server.send_response(slow, Response(200, (("x-n", "1"),), b"slow"))
    client.receive(server.data_to_send())
    assert client.responses[second].body == b"fast"
    assert client.responses[first].body == b"slow"
    headers = client.responses[second].headers
    assert headers == {":status": "201", "x-n": "2", "content-length": "4"}


def test_h2_large_body_waits_for_window_update() -> None:
    client, server = h2_pair()
    stream_id = client.request("/big")
    (request,) = server.receive_data(client.conn.data_to_send())
    body = bytes(200_000)  # above the default 65,535-byte initial window
    server.send_response(request, Response(200, (), body))
    for _ in range(20):
        client.receive(server.data_to_send())
        if client.responses[stream_id].ended:
            break
        assert server.receive_data(client.conn.data_to_send()) == []
    assert client.responses[stream_id].ended
    assert len(client.responses[stream_id].body) == 200_000


def test_h2_head_answer_ends_stream_without_data() -> None:
    client, server = h2_pair()
    stream_id = client.request("/", method="HEAD")
    (request,) = server.receive_data(client.conn.data_to_send())
    server.send_response(request, JSON_OK)
    client.receive(server.data_to_send())
    assert client.responses[stream_id].body == b""
    assert client.responses[stream_id].ended


def test_h2_answer_to_reset_stream_is_dropped_silently() -> None:
    client, server = h2_pair()
    stream_id = client.request("/delay/100")
    (request,) = server.receive_data(client.conn.data_to_send())
    client.conn.reset_stream(stream_id)
    server.receive_data(client.conn.data_to_send())
    server.send_response(request, JSON_OK)
    assert not server.closed


def test_h2_garbage_after_preface_is_protocol_error_with_goaway() -> None:
    server = H2Server()
    server.initiate()
    server.data_to_send()
    with pytest.raises(HttpProtocolError):
        server.receive_data(H2_PREFACE + b"\x00\x00\x04\x01\x00\x00\x00\x00\x00garbage-garbage")
    assert server.closed
    assert b"\x07" in server.data_to_send()[:10]  # a GOAWAY frame header (type 0x7)


def test_h2_close_sends_goaway_and_peer_eof_closes() -> None:
    client, server = h2_pair()
    server.close()
    assert server.closed
    events = client.conn.receive_data(server.data_to_send())
    assert any(isinstance(e, h2.events.ConnectionTerminated) for e in events)
    other = H2Server()
    assert other.receive_data(b"") == [] and other.closed


# --- URLs -------------------------------------------------------------------------------


def test_http_target_fills_in_defaults_and_keeps_the_query() -> None:
    target = HttpTarget.parse("http://backend.ns.svc")
    assert (target.host, target.port, target.path, target.authority) == (
        "backend.ns.svc",
        80,
        "/",
        "backend.ns.svc",
    )
    target = HttpTarget.parse("http://[::1]:8080/a?b=c")
    assert (target.host, target.port, target.path) == ("::1", 8080, "/a?b=c")
    assert target.url == "http://[::1]:8080/a?b=c"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("https://a/", "only http://"),
        ("backend:8080", "only http://"),
        ("http:///path", "no host"),
        ("http://a:99999/", "bad port"),
        ("http://u:p@a/", "user info"),
    ],
)
def test_http_target_rejects_what_the_clients_cannot_do(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HttpTarget.parse(url)
