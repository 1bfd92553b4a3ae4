"""The load client's h2c state machine, wired to the echo server's one in memory."""

from __future__ import annotations

import pytest

from sample_apps.h2client import H2ClientProtocol, Reply, StreamFailed
from sample_apps.httpwire import H2Server, Request, Response
from sample_apps.load_stats import ErrorKind


class Wire:
    """Client and server connected back to back; `pump` moves bytes until both are quiet."""

    def __init__(self) -> None:
        self.client = H2ClientProtocol()
        self.server = H2Server()
        self.client.initiate()
        self.server.initiate()
        self.requests: list[Request] = []
        self.finished: list[Reply | StreamFailed] = []
        self.pump()

    def pump(self) -> None:
        for _ in range(50):
            to_server = self.client.data_to_send()
            if to_server:
                self.requests += self.server.receive_data(to_server)
            to_client = self.server.data_to_send()
            if to_client:
                self.finished += self.client.receive_data(to_client)
            if not to_server and not to_client:
                return
        raise AssertionError("connection never went quiet")


def test_request_reply_round_trip_with_headers_and_body() -> None:
    wire = Wire()
    stream_id = wire.client.send_request("GET", "svc:8080", "/hello")
    wire.pump()
    (request,) = wire.requests
    assert (request.method, request.path, request.header_map()["host"]) == (
        "GET",
        "/hello",
        "svc:8080",
    )
    assert request.header_map()["user-agent"] == "weft-load-client"
    wire.server.send_response(request, Response(200, (("x-weft-pod", "p1"),), b"hi"))
    wire.pump()
    (reply,) = wire.finished
    assert isinstance(reply, Reply)
    assert (reply.stream_id, reply.status, reply.body) == (stream_id, 200, b"hi")
    assert reply.header("x-weft-pod") == "p1" and reply.header("x-weft-version") is None


def test_many_sequential_replies_keep_flow_control_windows_open() -> None:
    wire = Wire()
    for _ in range(40):  # 40 x 4 KiB > the 64 KiB initial window, if it were never returned
        wire.client.send_request("GET", "a", "/")
        wire.pump()
        wire.server.send_response(wire.requests.pop(), Response(200, (), bytes(4096)))
        wire.pump()
    assert len(wire.finished) == 40
    assert all(isinstance(item, Reply) and len(item.body) == 4096 for item in wire.finished)


def test_server_stream_limit_is_respected() -> None:
    wire = Wire()  # the server advertises MAX_CONCURRENT_STREAMS 100
    for _ in range(100):
        assert wire.client.can_open_stream
        wire.client.send_request("GET", "a", "/")
    assert not wire.client.can_open_stream
    assert wire.client.usable
    wire.pump()
    wire.server.send_response(wire.requests[0], Response(200))
    wire.pump()
    assert wire.client.can_open_stream


def test_reset_stream_fails_only_that_request() -> None:
    wire = Wire()
    wire.client.send_request("GET", "a", "/")
    wire.client.send_request("GET", "a", "/")
    wire.pump()
    first, second = wire.requests
    wire.server._conn.reset_stream(first.stream_id or 0)  # what an overloaded proxy would do
    wire.server.send_response(second, Response(200))
    wire.pump()
    kinds = {item.stream_id: getattr(item, "kind", None) for item in wire.finished}
    assert kinds == {first.stream_id: ErrorKind.STREAM_RESET, second.stream_id: None}


def test_goaway_fails_unprocessed_streams_and_stops_new_ones() -> None:
    wire = Wire()
    wire.client.send_request("GET", "a", "/")
    wire.pump()
    (processed,) = wire.requests
    wire.server.close()  # GOAWAY, last_stream_id = the one stream it has seen
    late = wire.client.send_request("GET", "a", "/")  # crosses the GOAWAY on the wire
    wire.finished += wire.client.receive_data(wire.server.data_to_send())
    assert [(i.stream_id, getattr(i, "kind", None)) for i in wire.finished] == [
        (late, ErrorKind.DISCONNECTED)
    ]
    assert not wire.client.usable and not wire.client.can_open_stream
    assert processed.stream_id == 1


def test_connection_loss_fails_everything_in_flight() -> None:
    wire = Wire()
    ids = [wire.client.send_request("GET", "a", "/") for _ in range(3)]
    failed = wire.client.receive_data(b"")
    assert [(f.stream_id, getattr(f, "kind", None)) for f in failed] == [
        (sid, ErrorKind.DISCONNECTED) for sid in ids
    ]
    assert wire.client.closed


def test_garbage_from_server_is_a_protocol_failure() -> None:
    wire = Wire()
    sid = wire.client.send_request("GET", "a", "/")
    data_on_stream_zero = b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x"  # forbidden by RFC 9113
    failed = wire.client.receive_data(data_on_stream_zero)
    assert [(f.stream_id, getattr(f, "kind", None)) for f in failed] == [(sid, ErrorKind.PROTOCOL)]


def test_cancel_resets_the_stream_on_the_server() -> None:
    wire = Wire()
    sid = wire.client.send_request("GET", "a", "/delay/1000")
    wire.pump()
    wire.client.cancel(sid)
    wire.pump()
    (request,) = wire.requests
    wire.server.send_response(request, Response(200))  # answer to a reset stream: dropped
    wire.pump()
    assert wire.finished == []


@pytest.mark.parametrize("method", ["GET", "HEAD"])
def test_body_less_answers_still_complete(method: str) -> None:
    wire = Wire()
    wire.client.send_request(method, "a", "/status/204")
    wire.pump()
    wire.server.send_response(wire.requests[0], Response(204, (), b"{}"))
    wire.pump()
    (reply,) = wire.finished
    assert isinstance(reply, Reply) and reply.status == 204 and reply.body == b""
