"""A relay end the waypoint's own code reads and writes: the HTTP side of an HBONE stream.

ztunnel's relay (ztunnel.relay) joins two network ends and passes every chunk on inside the
callback that received it. The waypoint has to look at the bytes: it sniffs them, and parses
HTTP out of them with h11. `BufferedEnd` is the end that sits where a second network end would:
joined to a `Stream` (or a `TcpLeg`) by an ordinary `Relay`, it keeps what the stream receives
for `await read()`, and `write()` goes out through the stream.

Backpressure is the relay's: past READ_HIGH unread bytes the stream stops giving HTTP/2
window credit back (`pause_reading` on the partner) until the reader catches up; a stream
that cannot send pauses us, and `await drain()` waits until it can.

For TCP passthrough, `splice()` hands the end over to a second relay (with an outbound
HBONE stream): from then on chunks go straight through in callbacks, as in ztunnel, and
what was already read for sniffing goes first.
"""

from __future__ import annotations

import asyncio

from ztunnel.relay import Chunk, End, Relay

READ_HIGH = 1024 * 1024  # unread bytes above which the partner stops reading


class EndClosed(ConnectionError):
    """The stream was reset, or the relay is over."""


class BufferedEnd:
    """An `End` for code: `read()`, `write()`, `drain()`, `write_eof()`, `abort()`."""

    def __init__(self, name: str = "") -> None:
        self.name = name
        self.relay: Relay | None = None
        self.received = 0  # bytes the partner received from the network and gave us
        self.sent = 0  # bytes we wrote out through the partner
        self._buffer = bytearray()
        self._eof = False  # the partner's peer half-closed
        self._failed = False  # reset, or the relay is over
        # read() waits on a bare future of the loop it first ran in, not an asyncio.Event:
        # Event.wait() and asyncio.timeout() look the loop up (a getpid() syscall each on
        # Python 3.11), several times a request
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._writable = asyncio.Event()
        self._writable.set()
        self._partner_paused = False
        self._splice: _SpliceEnd | None = None  # TCP passthrough: where chunks go instead

    # --- End (called by the relay and the partner) ------------------------------------

    def send(self, data: Chunk) -> None:
        if self._splice is not None:
            self._splice.forward(data)
            return
        self.received += len(data)
        self._buffer += data
        self._wake()
        if len(self._buffer) > READ_HIGH and not self._partner_paused:
            self._partner_paused = True
            self._partner().pause_reading()

    def send_eof(self) -> None:
        if self._splice is not None:
            self._splice.forward_eof()
        else:
            self._eof = True
            self._wake()
        if self.relay is not None:
            self.relay.eof_sent()

    def abort(self) -> None:
        """The partner was reset or failed (called by the relay)."""
        self._fail()
        if self._splice is not None:
            self._splice.forward_abort()

    def pause_reading(self) -> None:
        """The partner cannot send more for now: writers wait in `drain()`."""
        if self._splice is not None:
            self._splice.pause_other()
        self._writable.clear()

    def resume_reading(self) -> None:
        if self._splice is not None:
            self._splice.resume_other()
        self._writable.set()

    def start(self) -> None:
        pass

    def close(self) -> None:
        self._fail()

    # --- for the waypoint's code -------------------------------------------------------

    @property
    def at_eof(self) -> bool:
        return self._eof and not self._buffer

    @property
    def failed(self) -> bool:
        return self._failed

    def time(self) -> float:
        """The event loop's clock (deadlines for `read`)."""
        if self._loop is None:
            self._loop = asyncio.get_running_loop()
        return self._loop.time()

    async def read(self, deadline: float | None = None) -> bytes:
        """What arrived since the last read; b"" once the peer half-closed and all is read.
        EndClosed if the stream was reset (or the relay ended) first; TimeoutError if
        nothing came by `deadline` (the loop's time, `time()`)."""
        while not self._buffer:
            if self._eof:
                return b""
            if self._failed:
                raise EndClosed(f"{self.name or 'stream'} was reset")
            if self._loop is None:
                self._loop = asyncio.get_running_loop()
            waiter = self._waiter = self._loop.create_future()
            timer = None if deadline is None else self._loop.call_at(deadline, _expire, waiter)
            try:
                await waiter
            finally:
                self._waiter = None
                if timer is not None:
                    timer.cancel()
        data = bytes(self._buffer)
        self._buffer.clear()
        if self._partner_paused:
            self._partner_paused = False
            self._partner().resume_reading()
        return data

    def unread(self, data: bytes) -> None:
        """Put bytes back in front (what a parser read but did not use)."""
        if data:
            self._buffer[:0] = data

    def write(self, data: bytes) -> None:
        if self._failed:
            raise EndClosed(f"{self.name or 'stream'} was reset")
        if data:
            self.sent += len(data)
            self._partner().send(data)

    async def drain(self) -> None:
        """Wait until the partner can send again (EndClosed if the stream went meanwhile)."""
        while not self._writable.is_set():
            await self._writable.wait()
        if self._failed:
            raise EndClosed(f"{self.name or 'stream'} was reset")

    def write_eof(self) -> None:
        """Half-close towards the peer (the HBONE END_STREAM, a TCP FIN)."""
        if not self._failed:
            self._partner().send_eof()

    def reset(self) -> None:
        """Reset the stream (and so the relay)."""
        if self.relay is not None and not self._failed:
            self._fail()
            self.relay.failed(self)

    def splice(self, other: End) -> Relay:
        """TCP passthrough: join our partner to `other` (an outbound stream), byte for byte.
        What was read already and not used goes to `other` first; returns the second relay
        (the first one, ours, ends with it)."""
        end = _SpliceEnd(self)
        relay = Relay(other, end)
        self._splice = end
        relay.start()
        held, self._buffer = bytes(self._buffer), bytearray()
        if held:
            end.forward(held)
        if self._partner_paused:
            self._partner_paused = False
            self._partner().resume_reading()
        if self._failed:
            end.forward_abort()
        elif self._eof:
            end.forward_eof()
        if not self._writable.is_set():
            other.pause_reading()
        return relay

    # --- ours ----------------------------------------------------------------------------

    def _partner(self) -> End:
        if self.relay is None:
            raise EndClosed(f"{self.name or 'stream'} is not joined to a relay")
        return self.relay.other(self)

    def _fail(self) -> None:
        self._failed = True
        self._writable.set()  # writers wake up and find out
        self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


def _expire(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


class _SpliceEnd:
    """The second relay's end: what its partner (the outbound stream) receives goes out
    through the first relay's partner (the client's stream), and the other way round."""

    def __init__(self, front: BufferedEnd) -> None:
        self.front = front
        self.relay: Relay | None = None
        self.received = 0
        self.sent = 0
        self.forwarded = 0  # client -> outbound, bytes

    def _client(self) -> End:
        return self.front._partner()

    def _outbound(self) -> End:
        assert self.relay is not None
        return self.relay.other(self)

    # client side -> outbound (called by the front end)
    def forward(self, data: Chunk) -> None:
        self.forwarded += len(data)
        self._outbound().send(data)

    def forward_eof(self) -> None:
        self._outbound().send_eof()

    def forward_abort(self) -> None:
        if self.relay is not None:
            self.relay.failed(self)

    def pause_other(self) -> None:
        self._outbound().pause_reading()

    def resume_other(self) -> None:
        self._outbound().resume_reading()

    # End: outbound side -> client
    def send(self, data: Chunk) -> None:
        self.received += len(data)
        self.front.sent += len(data)
        self._client().send(data)

    def send_eof(self) -> None:
        self._client().send_eof()
        assert self.relay is not None
        self.relay.eof_sent()

    def abort(self) -> None:
        front = self.front
        if front.relay is not None and not front._failed:
            front._fail()
            front.relay.failed(front)

    def pause_reading(self) -> None:
        self._client().pause_reading()

    def resume_reading(self) -> None:
        self._client().resume_reading()

    def start(self) -> None:
        pass

    def close(self) -> None:
        pass
