"""`acknowledge`'s fast path (count the bytes as h2 would, when no WINDOW_UPDATE is due)
against h2's own `acknowledge_received_data`: after every acknowledgement both window
managers hold the same figures and the same bytes go out, in every stream state. These
also pin the h2 internals the fast path reads (WindowManager's fields and its update rule),
so an h2 upgrade that moves them fails here."""

from __future__ import annotations

import h2.errors
import pytest

from meshcore.hbone import STREAM_WINDOW, HboneClient, HboneServer, StreamData
from tests.hbone_pairs import open_stream, pump

Pair = tuple[HboneClient, HboneServer, int]


def windows(server: HboneServer, sid: int) -> tuple[tuple[int, int, int], ...]:
    managers = [server.conn._inbound_flow_control_window_manager]
    if sid in server.conn.streams:
        managers.append(server.conn.streams[sid]._inbound_window_manager)
    return tuple((m._bytes_processed, m.current_window_size, m.max_window_size) for m in managers)


def received(pair: Pair, size: int) -> int:
    """`size` bytes from the client, through the server's receive: their flow length."""
    client, server, sid = pair
    client.send(sid, b"d" * size)
    _, at_server = pump(client, server)
    return sum(e.flow_controlled_length for e in at_server if isinstance(e, StreamData))


def both_ways(pair: Pair, reference: Pair, size: int) -> bytes:
    """Ack `size` through the fast path on `pair` and through h2 itself on `reference`;
    what the server sends for it."""
    pair[1].acknowledge(pair[2], size)
    reference[1].conn.acknowledge_received_data(size, reference[2])
    assert windows(pair[1], pair[2]) == windows(reference[1], reference[2])
    out = pair[1].data_to_send()
    assert out == reference[1].data_to_send()
    return out


@pytest.mark.parametrize(
    "chunks",
    [
        [1100] * 50,  # small requests: h2 only counts them
        [700_000, 700_000, 700_000],  # the third crosses half the stream window: an update
        [STREAM_WINDOW // 2 - 1, 1],  # one byte short of half, then exactly half
        [1] * 10 + [64 * 1024] * 40,
    ],
)
def test_acks_leave_windows_and_output_exactly_as_h2s_own(chunks: list[int]) -> None:
    pair, reference = open_stream(), open_stream()
    for size in chunks:
        assert received(pair, size) == received(reference, size) == size
        both_ways(pair, reference, size)


def test_an_exhausted_window_gets_its_update_after_1024_bytes_as_with_h2() -> None:
    """h2's other rule: with the window at 0, an update once more than 1024 bytes are in."""
    pair, reference = open_stream(), open_stream()
    for p in (pair, reference):
        assert received(p, STREAM_WINDOW) == STREAM_WINDOW
        assert p[1].conn.streams[p[2]]._inbound_window_manager.current_window_size == 0
    sent = [both_ways(pair, reference, size) for size in (512, 512, 1, 1)]
    assert [bool(out) for out in sent] == [False, False, True, False]
    client, _server, sid = pair
    client.receive(sent[2])
    assert client.window(sid) == 1025  # that WINDOW_UPDATE: the client may send again


def test_acks_on_streams_no_longer_open_for_data_take_h2s_path() -> None:
    pair, reference = open_stream(), open_stream()
    for p in (pair, reference):
        received(p, 5000)
        p[0].end(p[2])  # the client's end of stream: half-closed (remote) at the server
        pump(p[0], p[1])
    both_ways(pair, reference, 5000)
    for p in (pair, reference):
        p[1].reset(p[2], h2.errors.ErrorCodes.CANCEL)
    both_ways(pair, reference, 100)  # a reset stream: only the connection window counts
    pair[1].acknowledge(99, 10)  # a stream that never was: no error, as before
    assert pair[1].data_to_send() == b""


def test_a_closed_connection_acknowledges_nothing() -> None:
    client, server, sid = open_stream()
    received((client, server, sid), 3000)
    before = windows(server, sid)
    server.close()
    server.data_to_send()
    server.acknowledge(sid, 3000)
    assert windows(server, sid) == before
    assert server.data_to_send() == b""
