"""An HBONE stream's lifecycle (ztunnel.hbone_conn): the transition table itself, without
I/O, and the states a Stream object walks through when driven with plain calls."""

from __future__ import annotations

import asyncio
import itertools

import pytest

from meshcore import hbone
from ztunnel.hbone_conn import (
    TRANSITIONS,
    HboneConnection,
    Stream,
    StreamEvent,
    StreamState,
    StreamStateError,
    transition,
)
from ztunnel.relay import Relay

S, E = StreamState, StreamEvent


@pytest.mark.parametrize(
    ("events", "end"),
    [
        ([E.START], S.OPEN),
        ([E.START, E.LOCAL_EOF], S.HALF_CLOSED_LOCAL),
        ([E.START, E.REMOTE_EOF], S.HALF_CLOSED_REMOTE),
        ([E.START, E.LOCAL_EOF, E.REMOTE_EOF], S.CLOSED),
        ([E.START, E.REMOTE_EOF, E.LOCAL_EOF], S.CLOSED),
        ([E.RESET], S.RESET),  # reset while being set up
        ([E.START, E.RESET], S.RESET),
        ([E.START, E.LOCAL_EOF, E.RESET], S.RESET),
        ([E.START, E.REMOTE_EOF, E.RESET], S.RESET),
        ([E.START, E.LOCAL_EOF, E.REMOTE_EOF, E.RESET], S.CLOSED),
        ([E.RESET, E.RESET], S.RESET),
    ],
)
def test_a_stream_walks_its_lifecycle(events: list[StreamEvent], end: StreamState) -> None:
    state = S.PENDING_SETUP
    for event in events:
        state = transition(state, event)
    assert state is end


@pytest.mark.parametrize(
    ("state", "event"),
    [
        (S.PENDING_SETUP, E.LOCAL_EOF),  # held until the relay starts (Stream does that)
        (S.PENDING_SETUP, E.REMOTE_EOF),
        (S.OPEN, E.START),
        (S.HALF_CLOSED_LOCAL, E.LOCAL_EOF),
        (S.HALF_CLOSED_REMOTE, E.REMOTE_EOF),
        (S.CLOSED, E.START),
        (S.RESET, E.START),
        (S.RESET, E.LOCAL_EOF),
    ],
)
def test_impossible_events_are_errors_naming_both(state: StreamState, event: StreamEvent) -> None:
    with pytest.raises(StreamStateError, match=f"{event.value} in state {state.value}"):
        transition(state, event)


def test_every_pair_is_either_in_the_table_or_an_error() -> None:
    for state, event in itertools.product(S, E):
        if (state, event) in TRANSITIONS:
            assert transition(state, event) is TRANSITIONS[state, event]
        else:
            with pytest.raises(StreamStateError):
                transition(state, event)


def test_reset_is_final_and_reachable_from_every_live_state() -> None:
    for state in S:
        after = transition(state, E.RESET)
        assert after is (S.CLOSED if state is S.CLOSED else S.RESET)
    assert {e for (s, e) in TRANSITIONS if s is S.RESET} == {E.RESET}


class FakeEnd:
    """The other end of a relay, recording what the stream passes on."""

    def __init__(self) -> None:
        self.relay = None
        self.received = self.sent = 0
        self.got: list[bytes] = []
        self.eof = False
        self.aborted = False

    def send(self, data: bytes) -> None:
        self.got.append(bytes(data))

    def send_eof(self) -> None:
        self.eof = True
        assert self.relay is not None
        self.relay.eof_sent()

    def abort(self) -> None:
        self.aborted = True

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass


def run(body) -> None:  # type: ignore[no-untyped-def]
    asyncio.run(body())


def server_stream() -> tuple[HboneConnection, Stream]:
    conn = HboneConnection(hbone.HboneServer())
    conn._started = True
    return conn, Stream(conn, 1)


def test_held_data_and_eof_pass_on_at_start_in_order() -> None:
    async def body() -> None:
        _conn, stream = server_stream()
        stream._data(b"early", 5)
        stream._ended()
        assert stream.state is S.PENDING_SETUP and stream._unacked == 5
        other = FakeEnd()
        Relay(stream, other)  # type: ignore[arg-type]
        stream.start()
        assert other.got == [b"early"] and other.eof
        assert stream.state is S.HALF_CLOSED_REMOTE

    run(body)


def test_an_eof_from_the_partner_before_start_waits_for_it() -> None:
    async def body() -> None:
        _conn, stream = server_stream()
        other = FakeEnd()
        Relay(other, stream)  # type: ignore[arg-type]
        stream.send_eof()  # the partner started first and had an early EOF
        assert stream.state is S.PENDING_SETUP
        stream.start()
        assert stream.state is S.HALF_CLOSED_LOCAL

    run(body)


def test_a_reset_while_pending_fails_the_relay_at_start() -> None:
    async def body() -> None:
        _conn, stream = server_stream()
        stream._reset()
        assert stream.was_reset and stream.state is S.RESET
        other = FakeEnd()
        relay = Relay(stream, other)  # type: ignore[arg-type]
        stream.start()
        assert relay.done.done() and relay.done.result() is True
        assert other.aborted

    run(body)


def test_forgetting_a_stream_gives_back_the_credit_it_held() -> None:
    async def body() -> None:
        conn, stream = server_stream()
        conn.streams[1] = stream
        stream._data(b"x" * 1000, 1000)
        conn.forget(stream)
        assert stream._unacked == 0 and not stream._early and 1 not in conn.streams

    run(body)
