"""The HBONE server's limits, in plain bytes (no sockets): each one pushed past, and what
the peer sees. A fake clock stands in for time."""

from __future__ import annotations

import h2.errors
import h2.events
import hpack
import hyperframe.frame
import pytest

from meshcore import hbone
from meshcore.hbone import (
    BadRequest,
    ConnectionClosed,
    ConnectRequested,
    ConnectResponse,
    HboneClient,
    HboneServer,
    LimitExceeded,
    StreamData,
    StreamReset,
    Target,
)
from tests.hbone_pairs import pump


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def pair(clock: Clock | None = None) -> tuple[HboneClient, HboneServer]:
    client, server = HboneClient(), HboneServer(clock=clock or Clock())
    server.receive(client.initiate())
    client.receive(server.initiate())
    pump(client, server)
    return client, server


def limits(events: list[hbone.Event]) -> list[str]:
    return [e.limit for e in events if isinstance(e, LimitExceeded)]


def goaway(server: HboneServer) -> h2.errors.ErrorCodes | None:
    """The error code of the GOAWAY the server has queued, if any."""
    wire = server.data_to_send()
    buf = memoryview(wire)
    while len(buf) >= 9:
        frame, length = hyperframe.frame.Frame.parse_frame_header(buf[:9])
        frame.parse_body(buf[9 : 9 + length])
        if isinstance(frame, hyperframe.frame.GoAwayFrame):
            return h2.errors.ErrorCodes(frame.error_code)
        buf = buf[9 + length :]
    return None


def connect_headers(authority: str = "10.0.0.1:80") -> bytes:
    return hpack.Encoder().encode([(":method", "CONNECT"), (":authority", authority)])


# --- frame size ------------------------------------------------------------------------


def test_an_oversized_frame_is_refused_when_its_header_arrives_not_its_payload() -> None:
    _client, server = pair()
    header = (16 * 1024 * 1024 - 1).to_bytes(3, "big") + b"\x00\x00" + (1).to_bytes(4, "big")
    events = server.receive(header)  # 9 bytes: no payload was waited for
    assert limits(events) == [hbone.LIMIT_FRAME_SIZE]
    assert any(isinstance(e, ConnectionClosed) and e.error for e in events)
    assert server.closed and server.buffered == 0
    assert goaway(server) == h2.errors.ErrorCodes.FRAME_SIZE_ERROR
    assert server.receive(b"x" * 100_000) == []  # and nothing after it is read


def test_an_oversized_settings_frame_is_refused_at_its_header_too() -> None:
    _client, server = pair()
    frame = hyperframe.frame.SettingsFrame(0)
    raw = bytearray(frame.serialize())
    raw[0:3] = (hbone.MAX_FRAME_SIZE + 1).to_bytes(3, "big")
    assert limits(server.receive(bytes(raw))) == [hbone.LIMIT_FRAME_SIZE]


# --- header blocks (CVE-2024-27316) ------------------------------------------------------


def test_a_header_block_growing_past_its_cap_is_refused_at_the_continuation_header() -> None:
    _client, server = pair()
    first = hyperframe.frame.HeadersFrame(1, b"\x00" * 1000)  # no END_HEADERS
    assert server.receive(first.serialize()) == []
    cont = hyperframe.frame.ContinuationFrame(1, b"\x00" * hbone.MAX_HEADER_BLOCK)
    events = server.receive(cont.serialize()[:9])
    assert limits(events) == [hbone.LIMIT_HEADER_BLOCK_SIZE]
    assert server.closed and server.buffered == 0
    assert goaway(server) == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM


def test_a_single_headers_frame_above_the_block_cap_is_refused() -> None:
    _client, server = pair()
    big = hyperframe.frame.HeadersFrame(1, b"\x00" * (hbone.MAX_HEADER_BLOCK + 1))
    big.flags.add("END_HEADERS")
    assert limits(server.receive(big.serialize()[:9])) == [hbone.LIMIT_HEADER_BLOCK_SIZE]


def test_many_small_continuations_are_capped_in_total() -> None:
    _client, server = pair()
    events = server.receive(hyperframe.frame.HeadersFrame(1, b"\x00" * 100).serialize())
    # 2,000 bytes each: the cap is reached before h2's own limit of 64 CONTINUATION frames
    chunk = hyperframe.frame.ContinuationFrame(1, b"\x00" * 2000).serialize()
    for _ in range(200):
        events += server.receive(chunk)
        if server.closed:
            break
    assert limits(events) == [hbone.LIMIT_HEADER_BLOCK_SIZE]


def test_an_unfinished_header_block_times_out() -> None:
    clock = Clock()
    _client, server = pair(clock)
    assert server.next_deadline() is None
    server.receive(hyperframe.frame.HeadersFrame(1, b"\x00").serialize())
    deadline = server.next_deadline()
    assert deadline == clock.now + hbone.HEADER_BLOCK_TIMEOUT_S
    clock.now += hbone.HEADER_BLOCK_TIMEOUT_S - 0.1
    assert server.expire() == []
    clock.now += 0.2
    events = server.expire()
    assert limits(events) == [hbone.LIMIT_HEADER_BLOCK_TIME]
    assert server.closed and server.next_deadline() is None


def test_a_finished_header_block_clears_its_deadline() -> None:
    _client, server = pair()
    block = connect_headers()
    first = hyperframe.frame.HeadersFrame(1, block[:3])
    rest = hyperframe.frame.ContinuationFrame(1, block[3:], flags=["END_HEADERS"])
    events = server.receive(first.serialize())
    assert server.next_deadline() is not None
    events += server.receive(rest.serialize())
    assert [type(e) for e in events] == [ConnectRequested]
    assert server.next_deadline() is None


# --- preface -------------------------------------------------------------------------------


def test_a_client_that_never_sends_its_preface_times_out() -> None:
    clock = Clock()
    server = HboneServer(clock=clock)
    server.initiate()
    assert server.next_deadline() == clock.now + hbone.PREFACE_TIMEOUT_S
    server.receive(b"PRI * HTTP/2.0\r\n")  # half a preface, then silence
    clock.now += hbone.PREFACE_TIMEOUT_S
    assert limits(server.expire()) == [hbone.LIMIT_PREFACE_TIME]
    assert server.closed


def test_a_client_preface_and_settings_clear_the_preface_deadline() -> None:
    _client, server = pair()
    assert server.next_deadline() is None


# --- rapid reset (CVE-2023-44487) ------------------------------------------------------


def test_a_rapid_reset_flood_is_cut_off_with_enhance_your_calm() -> None:
    client, server = pair()
    events: list[hbone.Event] = []
    for _ in range(hbone.MAX_RESETS + 10):
        sid = client.connect(Target("10.0.0.1", 80))
        client.reset(sid)
        events += server.receive(client.data_to_send())
        server.data_to_send()
        server.output_drained()
        if server.closed:
            break
    assert limits(events)[-1] == hbone.LIMIT_RESETS
    assert sum(isinstance(e, ConnectRequested) for e in events) <= hbone.MAX_RESETS + 1
    assert server.closed


def test_resets_spread_over_time_are_fine() -> None:
    clock = Clock()
    client, server = pair(clock)
    for i in range(3 * hbone.MAX_RESETS):
        if i % (hbone.MAX_RESETS // 2) == 0:
            clock.now += hbone.RESET_WINDOW_S + 0.1
        sid = client.connect(Target("10.0.0.1", 80))
        client.reset(sid)
        events = server.receive(client.data_to_send())
        [req] = [e for e in events if isinstance(e, ConnectRequested)]
        server.refuse(req.stream_id, 503, "gone")  # our setup answers each one (a no-op)
        server.output_drained()
    assert not server.closed


def test_a_busy_client_whose_apps_reset_their_connections_is_not_cut_off() -> None:
    """Resets of answered streams (an app's RST after using its connection) do not count:
    only streams reset before we answered them do (that is the attack)."""
    client, server = pair()
    for _ in range(3 * hbone.MAX_RESETS):
        sid = client.connect(Target("10.0.0.1", 80))
        _, at_server = pump(client, server)
        [req] = [e for e in at_server if isinstance(e, ConnectRequested)]
        assert server.accept(req.stream_id)
        pump(client, server)
        client.send(sid, b"request")
        client.reset(sid)
        _, at_server = pump(client, server)
        server.output_drained()
    assert not server.closed and not limits(at_server)


# --- streams pending setup -------------------------------------------------------------


def test_connects_past_the_pending_setup_cap_are_refused_and_the_rest_live_on() -> None:
    client, server = pair()
    for _ in range(hbone.MAX_PENDING_SETUP + 5):
        client.connect(Target("10.0.0.1", 80))
    at_client, at_server = pump(client, server)
    requested = [e for e in at_server if isinstance(e, ConnectRequested)]
    assert len(requested) == hbone.MAX_PENDING_SETUP
    assert limits(at_server) == [hbone.LIMIT_PENDING_SETUP] * 5
    refused = [e for e in at_client if isinstance(e, StreamReset)]
    assert [e.error_code for e in refused] == [h2.errors.ErrorCodes.REFUSED_STREAM] * 5
    assert not server.closed
    # answering one frees a place
    assert server.accept(requested[0].stream_id)
    client.connect(Target("10.0.0.1", 81))
    _, at_server = pump(client, server)
    assert [type(e) for e in at_server] == [ConnectRequested]


def test_a_stream_reset_by_the_peer_during_setup_still_counts_until_answered() -> None:
    client, server = pair()
    for _ in range(hbone.MAX_PENDING_SETUP):
        client.reset(client.connect(Target("10.0.0.1", 80)))
    _, at_server = pump(client, server)
    requested = [e for e in at_server if isinstance(e, ConnectRequested)]
    assert len(server.pending_setup) == hbone.MAX_PENDING_SETUP
    client.connect(Target("10.0.0.1", 80))
    _, at_server = pump(client, server)
    assert limits(at_server) == [hbone.LIMIT_PENDING_SETUP]
    # our setups finish: each answer is a no-op that says so
    assert not any(server.accept(r.stream_id) for r in requested)
    assert server.pending_setup == set()


# --- PING / SETTINGS floods --------------------------------------------------------------


def test_pings_from_a_peer_that_reads_nothing_are_capped() -> None:
    _client, server = pair()
    server.data_to_send()
    ping = hyperframe.frame.PingFrame(0, b"12345678").serialize()
    events = server.receive(ping * (hbone.MAX_PENDING_ACKS + 1))
    assert limits(events) == [hbone.LIMIT_PENDING_ACKS]
    assert server.queued < (hbone.MAX_PENDING_ACKS + 10) * 17 + 100  # ACKs and one GOAWAY


def test_settings_count_too_and_drained_output_resets_the_count() -> None:
    _client, server = pair()
    settings = hyperframe.frame.SettingsFrame(0, {}).serialize()
    for _ in range(5):
        events = server.receive(settings * (hbone.MAX_PENDING_ACKS // 2))
        assert not limits(events)
        server.data_to_send()
        server.output_drained()  # the peer reads: its ACKs went out
    assert not server.closed


def test_ping_acks_from_the_peer_do_not_count() -> None:
    _client, server = pair()
    ack = hyperframe.frame.PingFrame(0, b"12345678", flags=["ACK"]).serialize()
    assert not limits(server.receive(ack * (2 * hbone.MAX_PENDING_ACKS)))


# --- answering streams ------------------------------------------------------------------


def connect_one(client: HboneClient, server: HboneServer) -> int:
    client.connect(Target("10.0.0.1", 80))
    _, at_server = pump(client, server)
    [req] = [e for e in at_server if isinstance(e, ConnectRequested)]
    return req.stream_id


def test_accept_and_refuse_say_whether_they_sent_anything() -> None:
    client, server = pair()
    assert server.accept(connect_one(client, server)) is True
    assert server.refuse(connect_one(client, server), 403, "no") is True
    sid = connect_one(client, server)
    client.reset(sid)
    pump(client, server)
    assert server.accept(sid) is False
    assert server.refuse(sid, 503, "late") is False
    sid = connect_one(client, server)
    server.close()
    assert server.accept(sid) is False
    assert server.refuse(sid, 503, "late") is False


def test_a_refused_stream_frees_its_slot_and_its_late_data_returns_connection_credit() -> None:
    """A client that sends before it hears the refusal: its data is dropped but credited, so
    refused streams never eat the connection window (here: more than the whole window)."""
    client, server = pair()
    for _ in range(2 * hbone.CONNECTION_WINDOW // hbone.STREAM_WINDOW):
        sid = connect_one(client, server)
        before = server.conn.open_inbound_streams
        assert client.send(sid, b"e" * hbone.STREAM_WINDOW) == hbone.STREAM_WINDOW
        early = client.data_to_send()
        assert server.refuse(sid, 503, "connecting timed out")
        assert server.conn.open_inbound_streams == before - 1  # the slot is free at once
        events = server.receive(early)
        assert not any(isinstance(e, StreamData) for e in events)  # dropped by h2...
        at_client, _ = pump(client, server)
        assert [e.status for e in at_client if isinstance(e, ConnectResponse)] == [503]
    # ...but credited: the client can still send a whole stream window on a new stream
    assert client.conn.outbound_flow_control_window >= hbone.STREAM_WINDOW
    assert server.conn.open_inbound_streams == 0


@pytest.mark.parametrize(
    ("authority", "why"),
    [
        ("10.0.0.1:８０８０", "bad port"),  # noqa: RUF001 (fullwidth digits on purpose)
        ("10.0.0.1:²", "bad port"),
        ("10.0.0.1:-1", "bad port"),
    ],
)
def test_a_bad_connect_port_is_a_400_on_that_stream_only(authority: str, why: str) -> None:
    client, server = pair()
    sid = int(client.conn.get_next_available_stream_id())
    client.conn.send_headers(sid, [(":method", "CONNECT"), (":authority", authority)])
    at_client, at_server = pump(client, server)
    assert any(isinstance(e, BadRequest) and why in e.reason for e in at_server)
    assert [e.status for e in at_client if isinstance(e, ConnectResponse)] == [400]
    assert not server.closed
    connect_one(client, server)  # the connection lives on


def test_a_non_utf8_header_value_is_a_400_on_that_stream_only() -> None:
    client, server = pair()
    sid = int(client.conn.get_next_available_stream_id())
    client.conn.send_headers(
        sid, [(b":method", b"CONNECT"), (b":authority", b"10.0.0.1:80"), (b"x-bad", b"\xff\xfe")]
    )
    at_client, at_server = pump(client, server)
    assert any(isinstance(e, BadRequest) and "UTF-8" in e.reason for e in at_server)
    assert [e.status for e in at_client if isinstance(e, ConnectResponse)] == [400]
    assert not server.closed
    connect_one(client, server)


def test_a_reason_with_control_characters_is_sent_as_printable_ascii() -> None:
    client, server = pair()
    server.refuse(connect_one(client, server), 403, "bad\r\nthing é")
    at_client, _ = pump(client, server)
    [resp] = [e for e in at_client if isinstance(e, ConnectResponse)]
    assert resp.headers["weft-reason"] == "bad??thing ?"


# --- garbage: both parsers stop together ---------------------------------------------


def test_garbage_after_a_good_stream_closes_with_protocol_error_and_relays_nothing_more() -> None:
    client, server = pair()
    sid = connect_one(client, server)
    server.accept(sid)
    pump(client, server)
    client.send(sid, b"before")
    wire = client.data_to_send()
    client.send(sid, b"after")
    events = server.receive(wire + b"\x00\x00\x08\xfe" + b"garbage!" * 3 + client.data_to_send())
    data = b"".join(bytes(e.data) for e in events if isinstance(e, StreamData))
    assert data.startswith(b"before") and b"after" not in data
    # the garbage's second "frame header" announces megabytes: refused at once
    assert server.closed
    assert goaway(server) == h2.errors.ErrorCodes.FRAME_SIZE_ERROR


def test_a_frame_on_stream_zero_that_needs_a_stream_closes_both_parsers() -> None:
    client, server = pair()
    sid = connect_one(client, server)
    server.accept(sid)
    pump(client, server)
    bad = hyperframe.frame.DataFrame(sid, b"x").serialize()
    bad = bad[:5] + (0).to_bytes(4, "big") + bad[9:]  # DATA on stream 0
    client.send(sid, b"late")
    events = server.receive(bad + client.data_to_send())
    assert any(isinstance(e, ConnectionClosed) and e.error for e in events)
    assert not any(isinstance(e, StreamData) for e in events)
    assert goaway(server) == h2.errors.ErrorCodes.PROTOCOL_ERROR
    # and once closed, a CONNECT is not answered either: the connection is over for both
    client.connect(Target("10.0.0.1", 80))
    assert server.receive(client.data_to_send()) == []


def test_a_burst_of_connects_before_our_settings_are_acked_is_not_a_connection_error() -> None:
    """h2 alone would allow 100 streams until the client ACKs our SETTINGS; a client may
    open up to what we advertise as soon as it has read them."""
    client, server = HboneClient(), HboneServer()
    server.receive(client.initiate())
    client.receive(server.initiate())  # the client has our SETTINGS; we have no ACK yet
    for _ in range(hbone.MAX_PENDING_SETUP):
        client.connect(Target("10.0.0.1", 80))
    events = server.receive(client.data_to_send())
    assert not server.closed
    assert sum(isinstance(e, ConnectRequested) for e in events) == hbone.MAX_PENDING_SETUP


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        ([(":method", "CONNECT"), (":authority", "10.0.0.1:80"), (":path", "/")], ":path"),
        ([(":method", "CONNECT")], "not <ip>:<port>"),  # no :authority
        ([(":method", "CONNECT"), (":authority", "10.0.0.1:80"), (":bogus", "x")], "unknown"),
        ([(":method", "CONNECT"), ("x", "1"), (":authority", "10.0.0.1:80")], "after a regular"),
        ([(":method", "CONNECT"), (":method", "CONNECT"), (":authority", "1.2.3.4:5")], "twice"),
        ([(":method", "CONNECT"), (":authority", "10.0.0.1:80"), ("Upper", "x")], "lowercase"),
        (
            [(":method", "CONNECT"), (":authority", "10.0.0.1:80"), ("connection", "x")],
            "connection",
        ),
    ],
)
def test_a_malformed_request_is_a_400_on_its_stream_not_a_connection_error(
    headers: list[tuple[str, str]], why: str
) -> None:
    _client, server = pair()
    block = hpack.Encoder().encode(headers)
    frame = hyperframe.frame.HeadersFrame(1, block, flags=["END_HEADERS"]).serialize()
    events = server.receive(frame)
    assert any(isinstance(e, BadRequest) and why in e.reason for e in events), events
    assert not server.closed
    assert responses(server.data_to_send()) == {1: "400"}


def responses(wire: bytes) -> dict[int, str]:
    """:status of each response in `wire`, by stream (the server's first header blocks)."""
    decoder = hpack.Decoder()
    out = {}
    view = memoryview(wire)
    while len(view) >= 9:
        frame, length = hyperframe.frame.Frame.parse_frame_header(view[:9])
        frame.parse_body(view[9 : 9 + length])
        if isinstance(frame, hyperframe.frame.HeadersFrame):
            out[frame.stream_id] = dict(decoder.decode(frame.data))[":status"]
        view = view[9 + length :]
    return out


def test_a_stream_past_max_concurrent_streams_is_refused_alone() -> None:
    """RFC 9113 5.1.2: a stream error (REFUSED_STREAM), not a GOAWAY for the streams
    already open, which live on."""
    client, server = pair()
    accepted = []
    while len(accepted) < hbone.MAX_CONCURRENT_STREAMS:
        for _ in range(min(100, hbone.MAX_CONCURRENT_STREAMS - len(accepted))):
            client.conn.send_headers(
                client.conn.get_next_available_stream_id(),
                [(":method", "CONNECT"), (":authority", "10.0.0.1:80")],
            )
        _, at_server = pump(client, server)
        for e in at_server:
            if isinstance(e, ConnectRequested):
                assert server.accept(e.stream_id)
                accepted.append(e.stream_id)
        pump(client, server)
    # a client that ignores the limit it was told (h2's own would not send this)
    extra = client.conn.highest_outbound_stream_id + 2
    block = client.conn.encoder.encode([(":method", "CONNECT"), (":authority", "10.0.0.1:80")])
    frame = hyperframe.frame.HeadersFrame(extra, block, flags=["END_HEADERS"])
    assert limits(server.receive(frame.serialize())) == [hbone.LIMIT_STREAMS]
    assert resets(server.data_to_send()) == {extra: h2.errors.ErrorCodes.REFUSED_STREAM}
    assert not server.closed
    client.send(accepted[0], b"still here")
    _, at_server = pump(client, server)
    assert [bytes(e.data) for e in at_server if isinstance(e, StreamData)] == [b"still here"]
    assert goaway(server) is None


def resets(wire: bytes) -> dict[int, int]:
    """The error code of each RST_STREAM in `wire`, by stream."""
    out = {}
    view = memoryview(wire)
    while len(view) >= 9:
        frame, length = hyperframe.frame.Frame.parse_frame_header(view[:9])
        frame.parse_body(view[9 : 9 + length])
        if isinstance(frame, hyperframe.frame.RstStreamFrame):
            out[frame.stream_id] = frame.error_code
        view = view[9 + length :]
    return out


def test_a_frame_header_is_counted_once_even_when_its_payload_comes_later() -> None:
    """Records may end right after a frame header: its limits are checked once, not again
    each time more of its payload arrives."""
    _client, server = pair()
    server.output_drained()
    ping = hyperframe.frame.PingFrame(0, b"12345678").serialize()
    for _ in range(hbone.MAX_PENDING_ACKS):
        server.receive(ping[:9])
        server.receive(ping[9:13])
        server.receive(ping[13:])
    assert not server.closed and server.acks_pending == hbone.MAX_PENDING_ACKS
