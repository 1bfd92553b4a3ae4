"""An HBONE connection as an asyncio protocol: the I/O around meshcore.hbone.

`HboneConnection` sits on the TLS transport; bytes in become events, each handled in the
callback that received them. Each CONNECT stream is a `Stream`, a relay end
(ztunnel.relay): data for a stream goes straight to the other end of its relay, data from
the other end goes straight into HTTP/2 frames. Flow control is HTTP/2's own: a stream whose
relay partner cannot keep up stops giving window credit back, and a stream without window
(or a TLS transport whose buffer is full) pauses its partner's reading.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Callable
from typing import Any, cast

import structlog

from meshcore import hbone
from ztunnel.relay import Chunk, Relay

log = structlog.get_logger("ztunnel.hbone")

# A TLS transport pauses its writers above this much buffered: enough for a few large
# frames in flight, so a fast stream does not stop and start on every chunk.
WRITE_BUFFER_HIGH = 4 * 1024 * 1024


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
        self.was_reset = False
        self._started = False
        self._early: list[Chunk] = []
        self._early_eof = False
        self._pending: list[Chunk] = []  # from the partner, waiting for window
        self._eof_pending = False
        self._acks_paused = False
        self._unacked = 0

    # --- events from the connection --------------------------------------------------------

    def _data(self, chunk: Chunk, flow_length: int) -> None:
        if not self._started:
            self._early.append(chunk)
            self._unacked += flow_length
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
        if not self._started:
            self._early_eof = True
            return
        assert self.relay is not None
        self.relay.other(self).send_eof()

    def _reset(self) -> None:
        self.was_reset = True
        if not self.response.done():
            self.response.set_exception(StreamClosed(f"stream {self.id} was reset"))
            self.response.exception()  # nobody may be waiting (server side): not an error
        if self.relay is not None and self._started:
            self.relay.failed(self)

    def _window_opened(self) -> None:
        if self._pending or self._eof_pending:
            self._drain()

    # --- End --------------------------------------------------------------------------------

    def start(self) -> None:
        assert self.relay is not None
        if self.relay.done.done():
            return
        self._started = True
        if self.was_reset:
            self.relay.failed(self)
            return
        other = self.relay.other(self)
        for chunk in self._early:
            self.received += len(chunk)
            other.send(chunk)
        self._early.clear()
        if not self._acks_paused:
            self.resume_reading()
        if self._early_eof:
            other.send_eof()

    def send(self, data: Chunk) -> None:
        if self.was_reset or self.conn.proto.closed:
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
        if self._pending:
            self._eof_pending = True
            return
        self.conn.proto.end(self.id)
        self.conn.flush()
        if self.relay is not None:
            self.relay.eof_sent()

    def abort(self) -> None:
        if not self.was_reset:
            self.was_reset = True
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
        self.was_reset = True
        if self.relay is not None:
            self.relay.failed(self)

    def _partner_pause(self) -> None:
        if self.relay is not None:
            self.relay.other(self).pause_reading()

    def _drain(self) -> None:
        """Send what waited for window; once all is out, let the partner read again."""
        if self.was_reset:
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
        self.streams.pop(stream.id, None)
        self.last_used = asyncio.get_running_loop().time()

    def close(self) -> None:
        self.proto.close()
        self.flush()
        if self.transport is not None:
            self.transport.close()

    def _receive(self, data: bytes) -> None:
        self._in_receive = True
        try:
            for event in self.proto.receive(data):
                self._dispatch(event)
        finally:
            self._in_receive = False
        self.flush()
        if self.proto.closed and self.transport is not None:
            self.transport.close()

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
        if isinstance(event, hbone.ConnectionClosed):
            if event.error:
                log.warning("hbone.connection_error", connection=self.label, reason=event.reason)
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
