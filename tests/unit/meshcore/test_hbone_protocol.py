"""HBONE client and server talking through memory: no sockets, every edge case in bytes."""

from __future__ import annotations

import pytest

from meshcore.hbone import (
    BadRequest,
    ConnectionClosed,
    ConnectRequested,
    ConnectResponse,
    HboneError,
    HboneServer,
    StreamData,
    StreamEnded,
    StreamReset,
    Target,
    parse_authority,
)
from tests.hbone_pairs import connected, open_stream, pump


@pytest.mark.parametrize(
    ("authority", "target"),
    [
        ("10.0.0.1:8080", Target("10.0.0.1", 8080)),
        ("[fd00::1]:443", Target("fd00::1", 443)),
        ("198.18.128.4:1", Target("198.18.128.4", 1)),
    ],
)
def test_a_connect_authority_is_an_ip_and_a_port(authority: str, target: Target) -> None:
    assert parse_authority(authority) == target


@pytest.mark.parametrize(
    "authority",
    [
        "",
        "10.0.0.1",
        "example.com:80",
        "10.0.0.1:0",
        "10.0.0.1:65536",
        "10.0.0.1:http",
        ":80",
        "10.0.0.256:80",
    ],
)
def test_a_bad_authority_is_refused_naming_it(authority: str) -> None:
    with pytest.raises(HboneError, match="CONNECT authority"):
        parse_authority(authority)


def test_a_connect_is_accepted_and_bytes_flow_both_ways_with_half_close() -> None:
    client, server = connected()
    sid = client.connect(Target("10.1.2.3", 9000), {"baggage": "k=v"})
    _, at_server = pump(client, server)
    [req] = [e for e in at_server if isinstance(e, ConnectRequested)]
    assert req.target == Target("10.1.2.3", 9000)
    assert req.headers["baggage"] == "k=v"
    server.accept(req.stream_id)
    at_client, _ = pump(client, server)
    [resp] = [e for e in at_client if isinstance(e, ConnectResponse)]
    assert (resp.stream_id, resp.status) == (sid, 200)

    assert client.send(sid, b"ping") == 4
    client.end(sid)
    _, at_server = pump(client, server)
    data = b"".join(e.data for e in at_server if isinstance(e, StreamData))
    assert data == b"ping"
    assert any(isinstance(e, StreamEnded) for e in at_server)

    server.send(req.stream_id, b"pong")
    server.end(req.stream_id)
    at_client, _ = pump(client, server)
    assert b"".join(e.data for e in at_client if isinstance(e, StreamData)) == b"pong"
    assert any(isinstance(e, StreamEnded) for e in at_client)


def test_many_streams_share_one_connection() -> None:
    client, server = connected()
    ids = [client.connect(Target("10.0.0.1", 1000 + i)) for i in range(50)]
    _, at_server = pump(client, server)
    reqs = [e for e in at_server if isinstance(e, ConnectRequested)]
    assert sorted(r.target.port for r in reqs) == list(range(1000, 1050))
    assert len(set(ids)) == 50
    assert client.open_streams == 50


def test_a_refused_connect_reaches_the_client_as_a_status_with_a_reason() -> None:
    client, server = connected()
    sid = client.connect(Target("10.0.0.9", 80))
    _, at_server = pump(client, server)
    [req] = [e for e in at_server if isinstance(e, ConnectRequested)]
    server.refuse(req.stream_id, 403, "denied by DENY policy demo/no-foo")
    at_client, _ = pump(client, server)
    [resp] = [e for e in at_client if isinstance(e, ConnectResponse)]
    assert (resp.stream_id, resp.status) == (sid, 403)
    assert resp.headers["weft-reason"] == "denied by DENY policy demo/no-foo"


def test_a_get_instead_of_connect_is_answered_405_and_the_connection_lives_on() -> None:
    client, server = connected()
    sid = int(client.conn.get_next_available_stream_id())
    client.conn.send_headers(
        sid,
        [(":method", "GET"), (":path", "/"), (":scheme", "https"), (":authority", "10.0.0.1:80")],
        end_stream=True,
    )
    at_client, at_server = pump(client, server)
    [bad] = [e for e in at_server if isinstance(e, BadRequest)]
    assert "is not CONNECT" in bad.reason
    assert [e.status for e in at_client if isinstance(e, ConnectResponse)] == [405]
    # other streams still work
    client.connect(Target("10.0.0.1", 80))
    _, at_server = pump(client, server)
    assert any(isinstance(e, ConnectRequested) for e in at_server)


def test_a_connect_to_a_hostname_is_answered_400() -> None:
    client, server = connected()
    sid = int(client.conn.get_next_available_stream_id())
    client.conn.send_headers(sid, [(":method", "CONNECT"), (":authority", "example.com:80")])
    at_client, at_server = pump(client, server)
    assert any(isinstance(e, BadRequest) and "not an IP" in e.reason for e in at_server)
    assert [e.status for e in at_client if isinstance(e, ConnectResponse)] == [400]


def test_garbage_bytes_close_the_connection_with_a_reason() -> None:
    server = HboneServer()
    server.initiate()
    events = server.receive(b"this is not HTTP/2 at all\r\n\r\n" * 4)
    [closed] = events
    assert isinstance(closed, ConnectionClosed) and closed.error
    assert "protocol error" in closed.reason
    assert server.receive(b"more") == []  # closed stays closed


def test_an_oversized_frame_closes_the_connection() -> None:
    _client, server = connected()
    # A DATA frame header claiming 4 MiB, above the 1 MiB frames we accept.
    header = (4 * 1024 * 1024).to_bytes(3, "big") + b"\x00" + b"\x00" + (1).to_bytes(4, "big")
    events = server.receive(header + b"x" * (4 * 1024 * 1024))
    assert any(isinstance(e, ConnectionClosed) and e.error for e in events)


def test_a_reset_stream_reaches_the_other_side() -> None:
    client, server, sid = open_stream()
    server.reset(sid)
    at_client, _ = pump(client, server)
    assert [e.stream_id for e in at_client if isinstance(e, StreamReset)] == [sid]


def test_flow_control_limits_sends_until_data_is_acknowledged() -> None:
    client, server, sid = open_stream()
    window = client.window(sid)
    assert window >= 4 * 1024 * 1024 - 1  # large windows: full speed on one stream
    payload = b"x" * (window + 1000)
    sent = client.send(sid, payload)
    assert sent == window
    _, at_server = pump(client, server)
    received = sum(e.flow_controlled_length for e in at_server if isinstance(e, StreamData))
    assert received == window
    assert client.window(sid) == 0
    server.acknowledge(sid, received)
    pump(client, server)
    assert client.window(sid) > 0
    assert client.send(sid, payload[sent:]) == 1000


def test_goaway_is_reported_as_the_connection_closing() -> None:
    client, server = connected()
    server.close()
    at_client, _ = pump(client, server)
    assert any(isinstance(e, ConnectionClosed) and not e.error for e in at_client)
