"""The DATA fast path in meshcore.hbone against h2 itself: same bytes on the wire, same
flow-control accounting, same errors. h2 is the reference; these tests also pin the h2
internals the fast path relies on, so an h2 upgrade that moves them fails here."""

from __future__ import annotations

import h2.config
import h2.connection
import h2.errors
import h2.events
import hyperframe.frame
import pytest

from meshcore.hbone import (
    CONNECTION_WINDOW,
    STREAM_WINDOW,
    ConnectionClosed,
    HboneClient,
    StreamData,
    StreamEnded,
    StreamGone,
    Target,
    data_frame_header,
)
from tests.hbone_pairs import open_stream, pump


def test_a_fast_data_frame_is_byte_for_byte_what_hyperframe_serializes() -> None:
    frame = hyperframe.frame.DataFrame(7, b"hello")
    assert data_frame_header(5, 7) + b"hello" == frame.serialize()
    big = hyperframe.frame.DataFrame(3, b"x" * 300_000)
    assert data_frame_header(300_000, 3) + b"x" * 300_000 == big.serialize()


def test_sending_debits_h2s_windows_as_h2_send_data_does() -> None:
    client, _server, sid = open_stream()
    reference, _, ref_sid = open_stream()
    assert client.window(sid) == reference.window(ref_sid)
    client.send(sid, b"a" * 100_000)
    reference.conn.send_data(ref_sid, b"a" * 100_000)
    assert client.conn.outbound_flow_control_window == reference.conn.outbound_flow_control_window
    assert (
        client.conn.streams[sid].outbound_flow_control_window
        == reference.conn.streams[ref_sid].outbound_flow_control_window
    )
    assert client.window(sid) == STREAM_WINDOW - 100_000


def test_large_frames_are_split_at_the_peers_max_frame_size() -> None:
    client, server, sid = open_stream()
    client.send(sid, b"z" * (2 * client.conn.max_outbound_frame_size + 5))
    _, at_server = pump(client, server)
    sizes = [len(e.data) for e in at_server if isinstance(e, StreamData)]
    assert sizes == [client.conn.max_outbound_frame_size] * 2 + [5]


def test_receiving_debits_h2s_inbound_windows_and_acks_give_the_credit_back() -> None:
    client, server, sid = open_stream()
    conn_before = server.conn.inbound_flow_control_window
    client.send(sid, b"q" * 3_000_000)
    _, at_server = pump(client, server)
    got = sum(e.flow_controlled_length for e in at_server if isinstance(e, StreamData))
    assert got == 3_000_000
    assert server.conn.inbound_flow_control_window == conn_before - 3_000_000
    assert server.conn.streams[sid].inbound_flow_control_window == STREAM_WINDOW - 3_000_000
    server.acknowledge(sid, got)
    pump(client, server)
    assert client.window(sid) == STREAM_WINDOW  # all credit returned, nothing extra


def test_windows_cycle_many_times_without_drifting() -> None:
    """Far more than both windows through one stream: each cycle ends where it began, so
    no window creeps towards h2's 2**31-1 ceiling."""
    client, server, sid = open_stream()
    chunk = b"c" * (1024 * 1024)
    for _ in range(3 * CONNECTION_WINDOW // len(chunk)):
        sent = client.send(sid, chunk)
        assert sent == len(chunk)
        _, at_server = pump(client, server)
        server.acknowledge(sid, sum(len(e.data) for e in at_server if isinstance(e, StreamData)))
        pump(client, server)
    assert client.conn.outbound_flow_control_window <= CONNECTION_WINDOW
    assert client.window(sid) <= STREAM_WINDOW


def test_bytes_split_anywhere_give_the_same_events() -> None:
    client, server, sid = open_stream()
    client.send(sid, b"first")
    client.send(sid, b"second" * 1000)
    client.end(sid)
    wire = bytes(client.data_to_send())
    events = []
    for i in range(0, len(wire), 7):
        events += server.receive(wire[i : i + 7])
    assert b"".join(e.data for e in events if isinstance(e, StreamData)) == (
        b"first" + b"second" * 1000
    )
    assert [type(e) for e in events][-1] is StreamEnded


def test_a_peer_overrunning_its_window_is_a_flow_control_error() -> None:
    client, server, sid = open_stream()
    # a rogue peer: DATA frames past the stream's 4 MiB window, ignoring flow control
    frame = data_frame_header(1024 * 1024, sid) + b"r" * (1024 * 1024)
    events = server.receive(frame * 5)
    closed = [e for e in events if isinstance(e, ConnectionClosed)]
    assert closed and closed[0].error and "flow-control window" in closed[0].reason
    at_client, _ = pump(client, server)
    assert any(
        isinstance(e, ConnectionClosed) and "FLOW_CONTROL_ERROR" in e.reason for e in at_client
    )


def test_data_inside_a_header_block_goes_to_h2_which_refuses_it() -> None:
    _client, server, sid = open_stream()
    # HEADERS without END_HEADERS opens a header block: only CONTINUATION may follow
    headers = hyperframe.frame.HeadersFrame(3, b"\x82")  # no END_HEADERS flag
    data = hyperframe.frame.DataFrame(sid, b"sneaky")
    events = server.receive(headers.serialize() + data.serialize())
    assert any(isinstance(e, ConnectionClosed) and e.error for e in events)


def test_padded_data_and_end_stream_data_take_h2s_path_and_still_arrive() -> None:
    _client, server, sid = open_stream()
    padded = hyperframe.frame.DataFrame(sid, b"padded!", flags=["PADDED"], pad_length=10)
    ending = hyperframe.frame.DataFrame(sid, b"bye", flags=["END_STREAM"])
    events = server.receive(padded.serialize() + ending.serialize())
    assert [(type(e), getattr(e, "data", None)) for e in events] == [
        (StreamData, b"padded!"),
        (StreamData, b"bye"),
        (StreamEnded, None),
    ]
    # padding counts against flow control too (7 bytes + 10 padding + 1 length byte)
    assert [e.flow_controlled_length for e in events if isinstance(e, StreamData)] == [18, 3]


def test_data_on_a_stream_that_never_opened_is_h2s_protocol_error() -> None:
    _client, server, _sid = open_stream()
    events = server.receive(data_frame_header(4, 99) + b"nope")
    assert any(isinstance(e, ConnectionClosed) and e.error for e in events)


def test_sending_after_our_end_of_stream_is_stream_gone() -> None:
    client, _server, sid = open_stream()
    client.end(sid)
    with pytest.raises(StreamGone):
        client.send(sid, b"late")


def test_a_plain_h2_peer_understands_the_fast_frames() -> None:
    """The wire is plain HTTP/2: a stock h2 server sees our DATA as DataReceived events."""
    client = HboneClient()
    peer = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False))
    peer.initiate_connection()
    peer.receive_data(bytes(client.initiate()))
    client.receive(peer.data_to_send())
    sid = client.connect(Target("10.0.0.1", 80))
    peer.receive_data(bytes(client.data_to_send()))
    peer.send_headers(sid, [(":status", "200")])
    client.receive(peer.data_to_send())
    client.send(sid, b"over the fast path")
    events = peer.receive_data(bytes(client.data_to_send()))
    assert [e.data for e in events if isinstance(e, h2.events.DataReceived)] == [
        b"over the fast path"
    ]
