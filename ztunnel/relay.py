"""Relaying bytes between two ends, callback style.

An *end* is one side of a proxied connection: a TCP connection to or from a pod (`TcpLeg`)
or an HBONE stream (`ztunnel.hbone_conn.Stream`). A `Relay` joins two ends; from then on
every chunk is passed on inside the event-loop callback that received it, with no task
wakeup and no queue. That is what keeps the latency ztunnel adds low: a task switch per
chunk per hop costs more than the TLS does.

Each end implements `End`:
  - `send(data)` / `send_eof()` / `abort()`: write out of this end (what the other end
    received from its own network peer);
  - `pause_reading()` / `resume_reading()`: stop or restart passing on what this end
    receives (backpressure from the other end);
  - `close()`: the relay is over; release the end.
Half-closes travel end to end; a reset or error on one end resets the other. The relay is
done when both directions have carried their EOF, or at the first reset.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from collections.abc import Callable, Coroutine
from typing import Any, Protocol, cast

import structlog

log = structlog.get_logger("ztunnel.relay")

Chunk = bytes | memoryview  # views into what was received: passed on, never kept
LINGER_ZERO = struct.pack("ii", 1, 0)  # close() sends an RST


class End(Protocol):
    relay: Relay | None
    received: int  # bytes this end received from its network peer and passed on
    sent: int  # bytes written out of this end

    def send(self, data: Chunk) -> None: ...
    def send_eof(self) -> None: ...
    def abort(self) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...
    def start(self) -> None: ...
    def close(self) -> None: ...


class Relay:
    """Two ends joined. `done` resolves to True if the relay ended with a reset/error."""

    def __init__(self, a: End, b: End) -> None:
        self.a, self.b = a, b
        self.done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._eofs = 0
        a.relay = self
        b.relay = self

    def other(self, end: End) -> End:
        return self.b if end is self.a else self.a

    def start(self) -> None:
        """Pass on anything either end received before the relay existed, and start reading."""
        self.a.start()
        self.b.start()

    async def wait(self) -> bool:
        self.start()
        return await self.done

    # --- called by the ends ------------------------------------------------------------

    def eof_sent(self) -> None:
        """One direction carried its half-close through; both done ends the relay."""
        self._eofs += 1
        if self._eofs == 2:
            self._finish(aborted=False)

    def failed(self, end: End) -> None:
        """`end` was reset or broke: reset the other one and end the relay."""
        if self.done.done():
            return
        self.other(end).abort()
        self._finish(aborted=True)

    def _finish(self, aborted: bool) -> None:
        if self.done.done():
            return
        self.done.set_result(aborted)
        self.a.close()
        self.b.close()


class TcpLeg(asyncio.Protocol):
    """A plain TCP connection as a relay end. It starts with reading paused: nothing is read
    from the socket until a relay starts it, so setup can take its time."""

    def __init__(self, on_made: Callable[[TcpLeg], None] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.relay: Relay | None = None
        self.received = 0
        self.sent = 0
        self._on_made = on_made
        self._reading = False
        self._started = False
        self._want_reading = True
        self._early: list[bytes] = []
        self._early_eof = False
        self._lost = False

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but have its methods
        self.transport = cast(asyncio.Transport, transport)
        self.transport.pause_reading()
        if self._on_made is not None:
            self._on_made(self)

    def data_received(self, data: bytes) -> None:
        if self.relay is None or not self._started:
            self._early.append(data)
            return
        self.received += len(data)
        self.relay.other(self).send(data)

    def eof_received(self) -> bool:
        if self.relay is None or not self._started:
            self._early_eof = True
        else:
            self.relay.other(self).send_eof()
        return True  # keep the socket open for the other direction

    def connection_lost(self, exc: Exception | None) -> None:
        self._lost = True
        if self.relay is not None:
            self.relay.failed(self)  # no-op once the relay finished normally

    def pause_writing(self) -> None:
        if self.relay is not None:
            self.relay.other(self).pause_reading()

    def resume_writing(self) -> None:
        if self.relay is not None:
            self.relay.other(self).resume_reading()

    # --- End -------------------------------------------------------------------------------

    def start(self) -> None:
        assert self.relay is not None
        if self.relay.done.done():
            return
        self._started = True
        other = self.relay.other(self)
        for chunk in self._early:
            self.received += len(chunk)
            other.send(chunk)
        self._early.clear()
        if self._lost:
            self.relay.failed(self)
        elif self._early_eof:
            other.send_eof()
        elif self._want_reading:
            self._set_reading(True)

    def send(self, data: Chunk) -> None:
        if self.transport is not None and not self._lost:
            self.sent += len(data)
            self.transport.write(data)

    def send_eof(self) -> None:
        if self.transport is not None and not self._lost and self.transport.can_write_eof():
            self.transport.write_eof()
        if self.relay is not None:
            self.relay.eof_sent()

    def abort(self) -> None:
        """Reset the connection: the peer sees an RST, not a clean FIN."""
        if self.transport is None or self._lost:
            return
        sock = self.transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
        self.transport.abort()

    def pause_reading(self) -> None:
        self._want_reading = False
        self._set_reading(False)

    def resume_reading(self) -> None:
        self._want_reading = True
        if self._started:
            self._set_reading(True)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _set_reading(self, on: bool) -> None:
        if on == self._reading or self.transport is None or self._lost:
            return
        self._reading = on
        if on:
            self.transport.resume_reading()
        else:
            self.transport.pause_reading()

    # --- for setup code ----------------------------------------------------------------

    def extra(self, name: str) -> object:
        return self.transport.get_extra_info(name) if self.transport is not None else None


class SetupTasks:
    """The tasks that set connections up (policy, connect, CONNECT) before they are relayed:
    kept referenced until done. One that fails with a bug is logged and resets its
    connection, which is never left hanging."""

    def __init__(self, event: str) -> None:
        self._event = event
        self._tasks: set[asyncio.Future[None]] = set()

    def spawn(
        self, setup: Coroutine[Any, Any, None], reset: Callable[[], None], **context: str
    ) -> None:
        task = asyncio.ensure_future(self._guarded(setup, reset, context))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _guarded(
        self, setup: Coroutine[Any, Any, None], reset: Callable[[], None], context: dict[str, str]
    ) -> None:
        try:
            await setup
        except Exception as err:
            log.exception(self._event, error=repr(err), **context)
            reset()


async def connect_leg(host: str, port: int) -> TcpLeg:
    _, leg = await asyncio.get_running_loop().create_connection(TcpLeg, host, port)
    return leg
