"""An HBONE connection as an asyncio protocol: the I/O around meshcore.hbone.

`HboneConnection` sits on the TLS transport; bytes in become events, each handled in the
callback that received them. Each CONNECT stream is a `Stream`, a relay end
(ztunnel.relay): data for a stream goes straight to the other end of its relay, data from
the other end goes straight into HTTP/2 frames. Flow control is HTTP/2's own: a stream whose
relay partner cannot keep up stops giving window credit back, and a stream without window
(or a TLS transport whose buffer is full) pauses its partner's reading.

A stream's lifecycle is a `StreamState`, moved only by `transition()` (a table, tested
without I/O). The protocol limits live in meshcore.hbone; here they are only acted on:
each `LimitExceeded` is counted (`weft_hbone_limit_exceeded_total{limit=...}`) and logged,
the timed ones are checked by a timer at the protocol's `next_deadline()`, and a connection
closed for an error is aborted if its GOAWAY cannot be delivered within CLOSE_GRACE_S.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import socket
import time
from collections.abc import Callable
from typing import Any, cast

import structlog
from prometheus_client import Counter

from meshcore import hbone
from ztunnel.relay import Chunk, Relay

log = structlog.get_logger("ztunnel.hbone")

# A TLS transport pauses its writers above this much buffered: enough for a few large
# frames in flight, so a fast stream does not stop and start on every chunk.
WRITE_BUFFER_HIGH = 4 * 1024 * 1024
# Streams stop writing above WRITE_BUFFER_HIGH, so only replies the peer provokes (ACKs,
# RST_STREAMs for frames on closed streams) can pile up past it: a peer that makes us queue
# this much while reading nothing is cut off.
WRITE_BUFFER_LIMIT = 4 * WRITE_BUFFER_HIGH
LIMIT_WRITE_BUFFER = "write_buffer"
# A connection closed for an error gets this long to send its GOAWAY, then is aborted (a
# peer that reads nothing would otherwise keep it, and its buffers, forever).
CLOSE_GRACE_S = 2.0

LIMIT_EXCEEDED = Counter(
    "weft_hbone_limit_exceeded",
    "HBONE connections or streams cut off for going past a limit (meshcore.hbone, the "
    "15008 listener).",
    ("limit",),
)


# A flood that trips a limit thousands of times a second must not become a log flood: one
# line per limit per LIMIT_LOG_INTERVAL_S, saying how many were not logged (the counter
# counts them all).
LIMIT_LOG_INTERVAL_S = 1.0
_last_logged: dict[str, tuple[float, int]] = {}  # limit -> (when last logged, not logged since)


def limit_exceeded(limit: str, **fields: object) -> None:
    """Count and log one limit gone past."""
    LIMIT_EXCEEDED.labels(limit=limit).inc()
    now = time.monotonic()
    last, unlogged = _last_logged.get(limit, (-LIMIT_LOG_INTERVAL_S, 0))
    if now - last < LIMIT_LOG_INTERVAL_S:
        _last_logged[limit] = (last, unlogged + 1)
        return
    _last_logged[limit] = (now, 0)
    log.warning("hbone.limit_exceeded", limit=limit, not_logged_before=unlogged, **fields)


class StreamState(enum.Enum):
    PENDING_SETUP = "pending_setup"  # no relay started: what arrives is held
    OPEN = "open"
    HALF_CLOSED_LOCAL = "half_closed_local"  # we sent our end of stream (the TCP FIN)
    HALF_CLOSED_REMOTE = "half_closed_remote"  # the peer's end of stream was passed on
    CLOSED = "closed"  # both ends of stream: done cleanly
    RESET = "reset"  # reset by either side, or its connection went


class StreamEvent(enum.Enum):
    START = "start"  # the relay started: held data is passed on
    LOCAL_EOF = "local_eof"
    REMOTE_EOF = "remote_eof"
    RESET = "reset"


class StreamStateError(RuntimeError):
    """A stream event its state does not allow: a bug in the caller, not the peer."""


_S, _E = StreamState, StreamEvent
TRANSITIONS: dict[tuple[StreamState, StreamEvent], StreamState] = {
    (_S.PENDING_SETUP, _E.START): _S.OPEN,
    (_S.PENDING_SETUP, _E.RESET): _S.RESET,
    (_S.OPEN, _E.LOCAL_EOF): _S.HALF_CLOSED_LOCAL,
    (_S.OPEN, _E.REMOTE_EOF): _S.HALF_CLOSED_REMOTE,
    (_S.OPEN, _E.RESET): _S.RESET,
    (_S.HALF_CLOSED_LOCAL, _E.REMOTE_EOF): _S.CLOSED,
    (_S.HALF_CLOSED_LOCAL, _E.RESET): _S.RESET,
    (_S.HALF_CLOSED_REMOTE, _E.LOCAL_EOF): _S.CLOSED,
    (_S.HALF_CLOSED_REMOTE, _E.RESET): _S.RESET,
    (_S.CLOSED, _E.RESET): _S.CLOSED,  # a reset after both ends of stream changes nothing
    (_S.RESET, _E.RESET): _S.RESET,
}


def transition(state: StreamState, event: StreamEvent) -> StreamState:
    try:
        return TRANSITIONS[state, event]
    except KeyError:
        raise StreamStateError(f"stream event {event.value} in state {state.value}") from None


# the states as module globals: an Enum member looked up on its class costs ~30 ns, and the
# DATA path checks the state per chunk
_PENDING, _OPEN, _RESET = StreamState.PENDING_SETUP, StreamState.OPEN, StreamState.RESET
_HALF_LOCAL, _HALF_REMOTE = StreamState.HALF_CLOSED_LOCAL, StreamState.HALF_CLOSED_REMOTE


# A peer node that vanishes (crash, power loss) sends no FIN: without keepalives its HBONE
# connections, and every stream on them, would stay open forever. Dead after ~60 s.
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_PROBES = 30, 10, 3


def enable_keepalive(sock: Any) -> None:
    """`sock`: a socket or uvloop's socket-like object (anything with setsockopt)."""
    if sock is None:
        return
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_PROBES)


class StreamClosed(ConnectionError):
    pass


class Stream:
    """One CONNECT stream; a relay end once the CONNECT is answered."""

    def __init__(self, conn: HboneConnection, stream_id: int) -> None:
        self.conn = conn
        self.id = stream_id
        self.relay: Relay | None = None
        self.response: asyncio.Future[hbone.ConnectResponse] = (
            asyncio.get_running_loop().create_future()
        )
        self.received = 0
        self.sent = 0
        self.state = _PENDING
        self._early: list[Chunk] = []  # held while PENDING_SETUP
        self._early_eof = False
        self._pending: list[Chunk] = []  # from the partner, waiting for window
        self._eof_pending = False
        self._acks_paused = False
        self._unacked = 0

    @property
    def was_reset(self) -> bool:
        return self.state is _RESET

    def _move(self, event: StreamEvent) -> None:
        self.state = transition(self.state, event)

    # --- events from the connection --------------------------------------------------------

    def _data(self, chunk: Chunk, flow_length: int) -> None:
        if self.state is _PENDING:
            self._early.append(chunk)
            self._unacked += flow_length
            return
        if self.state is _RESET:  # a reset we sent is still on its way: drop, credit back
            self.conn.proto.acknowledge(self.id, flow_length)
            return
        self.received += len(chunk)
        assert self.relay is not None
        self.relay.other(self).send(chunk)
        # the partner may have paused us while taking that chunk: then it is acknowledged
        # only once the partner drains
        if self._acks_paused:
            self._unacked += flow_length
        else:
            self.conn.proto.acknowledge(self.id, flow_length)

    def _ended(self) -> None:
        if self.state is _PENDING:
            self._early_eof = True
            return
        if self.state not in (_OPEN, _HALF_LOCAL):
            return
        self._move(StreamEvent.REMOTE_EOF)
        assert self.relay is not None
        self.relay.other(self).send_eof()

    def _reset(self) -> None:
        self._move(StreamEvent.RESET)
        if not self.response.done():
            self.response.set_exception(StreamClosed(f"stream {self.id} was reset"))
            self.response.exception()  # nobody may be waiting (server side): not an error
        if self.relay is not None and self.state is _RESET:
            self.relay.failed(self)

    def _window_opened(self) -> None:
        if self._pending or self._eof_pending:
            self._drain()

    # --- End --------------------------------------------------------------------------------

    def start(self) -> None:
        assert self.relay is not None
        if self.relay.done.done():
            return
        if self.state is _RESET:
            self.relay.failed(self)
            return
        self._move(StreamEvent.START)
        other = self.relay.other(self)
        for chunk in self._early:
            self.received += len(chunk)
            other.send(chunk)
        self._early.clear()
        if not self._acks_paused:
            self.resume_reading()
        if self._early_eof:
            self._early_eof = False
            self._ended()
        if self._eof_pending and not self._pending:  # the partner ended before we started
            self._eof_pending = False
            self.send_eof()

    def send(self, data: Chunk) -> None:
        if self.state is _RESET or self.conn.proto.closed:
            return
        if self._pending or self.conn.write_paused:
            self._pending.append(data)
            self._partner_pause()
            return
        sent = self._frame(data)
        if sent is None:
            return
        if sent < len(data):
            self._pending.append(data[sent:])
            self._partner_pause()
        self.conn.flush()

    def send_eof(self) -> None:
        if self._pending or self.state is _PENDING:
            self._eof_pending = True
            return
        if self.state not in (_OPEN, _HALF_REMOTE):
            return  # reset, or already ended
        self._move(StreamEvent.LOCAL_EOF)
        self.conn.proto.end(self.id)
        self.conn.flush()
        if self.relay is not None:
            self.relay.eof_sent()

    def abort(self) -> None:
        if self.state is not _RESET:
            self._move(StreamEvent.RESET)
            self.conn.proto.reset(self.id)
            self.conn.flush()

    def pause_reading(self) -> None:
        self._acks_paused = True

    def resume_reading(self) -> None:
        self._acks_paused = False
        if self._unacked:
            self.conn.proto.acknowledge(self.id, self._unacked)
            self._unacked = 0
            self.conn.flush()

    def close(self) -> None:
        self.conn.forget(self)

    # --- flow control ---------------------------------------------------------------------

    def _frame(self, data: Chunk) -> int | None:
        """Frame as much of `data` as the window allows; how much that was, or None if the
        stream is gone (its relay has then failed)."""
        try:
            sent = self.conn.proto.send(self.id, data)
        except hbone.StreamGone:
            self._gone()
            return None
        self.sent += sent
        return sent

    def _gone(self) -> None:
        self._pending.clear()
        self._move(StreamEvent.RESET)
        if self.relay is not None:
            self.relay.failed(self)

    def _partner_pause(self) -> None:
        if self.relay is not None:
            self.relay.other(self).pause_reading()

    def _drain(self) -> None:
        """Send what waited for window; once all is out, let the partner read again."""
        if self.state is _RESET:
            self._pending.clear()
            return
        while self._pending and not self.conn.write_paused:
            data = self._pending[0]
            sent = self._frame(data)
            if sent is None:
                return
            if not sent:
                break
            if sent < len(data):
                self._pending[0] = data[sent:]
            else:
                self._pending.pop(0)
        self.conn.flush()
        if self._pending:
            return
        if self._eof_pending:
            self._eof_pending = False
            self.send_eof()
        if self.relay is not None:
            self.relay.other(self).resume_reading()


OnConnect = Callable[[Stream, hbone.Target, dict[str, str]], None]


class HboneConnection(asyncio.Protocol):
    """An HBONE connection on a TLS transport. `start()` sends our preface; until then
    (while the caller checks the peer's identity) what arrives is held."""

    def __init__(
        self,
        proto: hbone.HboneClient | hbone.HboneServer,
        *,
        on_connect: OnConnect | None = None,
        on_made: Callable[[HboneConnection], None] | None = None,
        label: str = "",
    ) -> None:
        self.proto = proto
        self.on_connect = on_connect
        self.on_made = on_made
        self.label = label
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, Stream] = {}
        self.closed = asyncio.Event()
        self.write_paused = False
        self.last_used = asyncio.get_running_loop().time()
        self._started = False
        self._held: list[bytes] = []
        self._in_receive = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0.0
        self._grace: asyncio.TimerHandle | None = None

    # --- asyncio.Protocol ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods
        self.transport = cast(asyncio.Transport, transport)
        self.transport.set_write_buffer_limits(high=WRITE_BUFFER_HIGH)
        enable_keepalive(self.transport.get_extra_info("socket"))
        if self.on_made is not None:
            self.on_made(self)

    def data_received(self, data: bytes) -> None:
        if not self._started:
            self._held.append(data)
            return
        self._receive(data)

    def eof_received(self) -> bool:
        return False  # the peer is done: close, which resets what is still open

    def connection_lost(self, exc: Exception | None) -> None:
        if exc is not None:
            log.debug("hbone.connection_lost", connection=self.label, error=str(exc))
        self.proto.closed = True
        for handle in (self._timer, self._grace):
            if handle is not None:
                handle.cancel()
        self._timer = self._grace = None
        for stream in list(self.streams.values()):
            stream._reset()
        self.streams.clear()
        self.closed.set()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._windows_opened()

    def _windows_opened(self) -> None:
        """Every stream may send again (connection window, or the TLS buffer drained)."""
        for stream in list(self.streams.values()):
            stream._window_opened()

    # --- ours ----------------------------------------------------------------------------

    def peer_info(self, name: str) -> object:
        return self.transport.get_extra_info(name) if self.transport is not None else None

    def start(self) -> None:
        assert self.transport is not None
        self._started = True
        self.transport.write(self.proto.initiate())
        held, self._held = self._held, []
        for data in held:
            self._receive(data)
        self._arm_timer()

    def flush(self) -> None:
        if self._in_receive:
            return  # _receive flushes once at its end
        chunks = self.proto.chunks_to_send()
        if chunks and self.transport is not None and not self.transport.is_closing():
            if len(chunks) == 1:
                self.transport.write(chunks[0])
            else:
                self.transport.writelines(chunks)

    def open(self, target: hbone.Target, headers: dict[str, str]) -> Stream:
        assert isinstance(self.proto, hbone.HboneClient)
        stream_id = self.proto.connect(target, headers)
        stream = Stream(self, stream_id)
        self.streams[stream_id] = stream
        self.last_used = asyncio.get_running_loop().time()
        self.flush()
        return stream

    def forget(self, stream: Stream) -> None:
        """The stream is done with (answered and relayed, refused, or failed): it leaves
        the connection, and credit for data it held back goes back to the peer."""
        self.streams.pop(stream.id, None)
        self.proto.forget(stream.id)
        stream._early.clear()
        if stream._unacked:
            self.proto.acknowledge(stream.id, stream._unacked)
            stream._unacked = 0
            self.flush()
        self.last_used = asyncio.get_running_loop().time()

    def close(self) -> None:
        self.proto.close()
        self.flush()
        self._close_transport()

    def drain(self) -> None:
        """A graceful GOAWAY: the peer opens no new stream here, those under way go on."""
        self.proto.drain()
        self.flush()

    def _close_transport(self) -> None:
        """Close after what is queued (the GOAWAY) is written, or abort after CLOSE_GRACE_S
        if the peer reads nothing."""
        if self.transport is None or self._grace is not None or self.closed.is_set():
            return
        self.transport.close()
        self._grace = asyncio.get_running_loop().call_later(CLOSE_GRACE_S, self._abort)

    def _abort(self) -> None:
        self._grace = None
        if self.transport is not None and not self.closed.is_set():
            self.transport.abort()

    def _receive(self, data: bytes) -> None:
        self._in_receive = True
        try:
            for event in self.proto.receive(data):
                self._dispatch(event)
        finally:
            self._in_receive = False
        self._after_events()

    def _after_events(self) -> None:
        """After each batch of events (on the hot path: keep it to a few checks)."""
        self.flush()
        proto, transport = self.proto, self.transport
        if proto.closed:
            self._close_transport()
            return
        if transport is not None and (proto.acks_pending or self.write_paused):
            buffered = transport.get_write_buffer_size()
            if not buffered:
                proto.output_drained()
            elif buffered > WRITE_BUFFER_LIMIT:  # (only ever while write_paused)
                limit_exceeded(LIMIT_WRITE_BUFFER, connection=self.label, buffered=buffered)
                proto.closed = True
                transport.abort()
                return
        if proto.deadline != self._timer_at:
            self._arm_timer()

    # --- the protocol's timed limits ----------------------------------------------------

    def _arm_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        deadline = self.proto.next_deadline()
        self._timer_at = deadline or 0.0
        if deadline is not None and not self.closed.is_set():
            delay = max(0.0, deadline - time.monotonic())
            self._timer = asyncio.get_running_loop().call_later(delay, self._expire)

    def _expire(self) -> None:
        self._timer, self._timer_at = None, 0.0
        self._in_receive = True
        try:
            for event in self.proto.expire():
                self._dispatch(event)
        finally:
            self._in_receive = False
        self._after_events()

    def _dispatch(self, event: hbone.Event) -> None:
        if isinstance(event, hbone.StreamData):
            stream = self.streams.get(event.stream_id)
            if stream is not None:
                stream._data(event.data, event.flow_controlled_length)
            else:  # a stream we refused or finished: drop it, but give the credit back
                self.proto.acknowledge(event.stream_id, event.flow_controlled_length)
            return
        if isinstance(event, hbone.WindowOpened):
            if event.stream_id == 0:
                self._windows_opened()
            elif (opened := self.streams.get(event.stream_id)) is not None:
                opened._window_opened()
            return
        if isinstance(event, hbone.ConnectRequested):
            self.last_used = asyncio.get_running_loop().time()
            new_stream = Stream(self, event.stream_id)
            self.streams[event.stream_id] = new_stream
            if self.on_connect is not None:
                self.on_connect(new_stream, event.target, event.headers)
            return
        if isinstance(event, hbone.BadRequest):
            log.warning("hbone.bad_request", connection=self.label, reason=event.reason)
            return
        if isinstance(event, hbone.GoingAway):  # the peer drains: the pool opens no stream here
            log.info("hbone.going_away", connection=self.label, last_stream=event.last_stream_id)
            return
        if isinstance(event, hbone.ConnectionClosed):
            if event.error:
                log.warning("hbone.connection_error", connection=self.label, reason=event.reason)
            return
        if isinstance(event, hbone.LimitExceeded):
            limit_exceeded(
                event.limit, connection=self.label, detail=event.detail, stream=event.stream_id
            )
            return
        stream = self.streams.get(event.stream_id)
        if stream is None:
            return
        if isinstance(event, hbone.StreamEnded):
            stream._ended()
        elif isinstance(event, hbone.StreamReset):
            self.streams.pop(event.stream_id, None)
            stream._reset()
        elif isinstance(event, hbone.ConnectResponse) and not stream.response.done():
            stream.response.set_result(event)
