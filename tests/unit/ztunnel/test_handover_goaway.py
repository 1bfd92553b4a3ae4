"""A draining ztunnel's graceful GOAWAY, in bytes (meshcore.hbone): the streams under way go
on both ways, the client opens no new stream there, an error GOAWAY still closes."""

from __future__ import annotations

import h2.errors

from meshcore.hbone import (
    MAX_STREAM_ID,
    ConnectionClosed,
    ConnectRequested,
    GoingAway,
    StreamData,
    StreamEnded,
    StreamReset,
    Target,
    goaway_frame,
)
from tests.hbone_pairs import open_stream, pump


def test_streams_under_way_carry_bytes_both_ways_after_a_graceful_goaway() -> None:
    client, server, sid = open_stream()
    assert client.can_open_stream
    server.drain()
    at_client, _ = pump(client, server)
    assert GoingAway(MAX_STREAM_ID) in at_client
    assert not any(isinstance(e, (ConnectionClosed, StreamReset)) for e in at_client)
    assert client.draining and not client.closed
    assert not client.can_open_stream

    assert client.send(sid, b"still here") == 10
    _, at_server = pump(client, server)
    assert b"".join(e.data for e in at_server if isinstance(e, StreamData)) == b"still here"
    server.send(sid, b"and here")
    server.end(sid)
    at_client, _ = pump(client, server)
    assert b"".join(e.data for e in at_client if isinstance(e, StreamData)) == b"and here"
    assert any(isinstance(e, StreamEnded) for e in at_client)


def test_a_connect_sent_before_the_goaway_was_read_is_still_served() -> None:
    client, server, _ = open_stream()
    server.drain()
    late = client.connect(Target("10.0.0.2", 81))  # crosses the GOAWAY on the wire
    at_client, at_server = pump(client, server)
    [req] = [e for e in at_server if isinstance(e, ConnectRequested)]
    assert req.stream_id == late
    assert server.accept(late)
    at_client, _ = pump(client, server)
    assert not any(isinstance(e, StreamReset) for e in at_client)


def test_draining_twice_sends_one_goaway() -> None:
    client, server, _ = open_stream()
    server.drain()
    server.drain()
    at_client, _ = pump(client, server)
    assert [e for e in at_client if isinstance(e, GoingAway)] == [GoingAway(MAX_STREAM_ID)]


def test_a_goaway_naming_a_last_stream_is_a_close_as_before() -> None:
    client, _server, first = open_stream()
    at_client = client.receive(goaway_frame(first))
    assert any(isinstance(e, ConnectionClosed) and not e.error for e in at_client)
    assert not any(isinstance(e, GoingAway) for e in at_client)
    assert client.closed


def test_an_error_goaway_still_closes_the_connection() -> None:
    client, _server, _ = open_stream()
    at_client = client.receive(goaway_frame(5, h2.errors.ErrorCodes.ENHANCE_YOUR_CALM))
    assert any(isinstance(e, ConnectionClosed) and e.error for e in at_client)
    assert client.closed


def test_a_goaway_on_a_stream_is_left_to_h2_as_the_protocol_error_it_is() -> None:
    client, _server, sid = open_stream()
    frame = bytearray(goaway_frame(0))
    frame[5:9] = sid.to_bytes(4, "big")
    at_client = client.receive(bytes(frame))
    assert any(isinstance(e, ConnectionClosed) and e.error for e in at_client)
