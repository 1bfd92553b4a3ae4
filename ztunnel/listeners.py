"""15008's accept loop: TLS handshakes bounded per source address and in total.

Any pod can open TCP connections to a node's 15008, and each one in its TLS handshake holds
memory (an SSL object, buffers) until it completes or times out. `asyncio.create_server`
would take them all; here sockets are accepted by hand and one over a bound is reset at
once, so a flood of silent connections costs a bounded amount. What passes goes to
`loop.connect_accepted_socket` with the handshake timeout, and from there to the HBONE
protocol as before (the protocol bounds the rest: meshcore.hbone, ztunnel.hbone_conn).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import Callable

import structlog

from ztunnel.hbone_conn import limit_exceeded
from ztunnel.relay import LINGER_ZERO

log = structlog.get_logger("ztunnel.listeners")

# TLS handshakes under way at once: from one source address, and in total. A handshake
# takes a few milliseconds, so a node's pool opening connections for many identities at
# once stays well below; one holds ~60 KB until done or timed out, so a flood holds at most
# ~4 MB per source and ~30 MB in all.
MAX_HANDSHAKES_PER_IP = 64
MAX_HANDSHAKES = 512
HANDSHAKE_TIMEOUT_S = 10.0
BACKLOG = 1024

LIMIT_HANDSHAKES_PER_IP = "handshakes_per_ip"
LIMIT_HANDSHAKES = "handshakes"
LIMIT_HANDSHAKE_TIME = "handshake_time"


class HboneListener(asyncio.AbstractServer):
    """A TLS listener whose handshakes are bounded. `serve_hbone` makes and starts one."""

    def __init__(
        self,
        protocol_factory: Callable[[], asyncio.BaseProtocol],
        sock: socket.socket,
        context: ssl.SSLContext,
        *,
        handshake_timeout: float = HANDSHAKE_TIMEOUT_S,
        max_handshakes: int = MAX_HANDSHAKES,
        max_per_ip: int = MAX_HANDSHAKES_PER_IP,
    ) -> None:
        self._factory = protocol_factory
        self._sock = sock
        self._context = context
        self._timeout = handshake_timeout
        self._max = max_handshakes
        self._max_per_ip = max_per_ip
        self.handshaking: dict[str, int] = {}  # source address -> handshakes under way
        self.in_handshake = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._accepting: asyncio.Task[None] | None = None
        self._closed = asyncio.Event()

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        return () if self._closed.is_set() else (self._sock,)

    # --- asyncio.AbstractServer ------------------------------------------------------

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return asyncio.get_running_loop()

    def is_serving(self) -> bool:
        return self._accepting is not None and not self._accepting.done()

    async def start_serving(self) -> None:
        if self._accepting is None:
            self._accepting = asyncio.create_task(self._accept_forever())

    async def serve_forever(self) -> None:
        await self.start_serving()
        await self._closed.wait()

    def close(self) -> None:
        """Stop accepting and drop handshakes under way (established connections stay)."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._accepting is not None:
            self._accepting.cancel()
        for task in list(self._tasks):
            task.cancel()
        self._sock.close()

    def stop_accepting(self) -> None:
        """Draining (a successor took the socket): accept no more, but let the handshakes
        under way finish; they become connections like any other."""
        if self._closed.is_set():
            return
        self._closed.set()
        if self._accepting is not None:
            self._accepting.cancel()
        self._sock.close()  # our descriptor only: the successor's keeps the socket listening

    async def wait_closed(self) -> None:
        await self._closed.wait()
        if self._accepting is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting

    # --- ours ----------------------------------------------------------------------

    async def _accept_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, addr = await loop.sock_accept(self._sock)
            except OSError as err:  # EMFILE and friends: back off rather than spin
                log.warning("listener.accept_failed", error=str(err))
                await asyncio.sleep(0.1)
                continue
            self._admit(conn, str(addr[0]))

    def _admit(self, conn: socket.socket, ip: str) -> None:
        per_ip = self.handshaking.get(ip, 0)
        if per_ip >= self._max_per_ip or self.in_handshake >= self._max:
            limit = LIMIT_HANDSHAKES_PER_IP if per_ip >= self._max_per_ip else LIMIT_HANDSHAKES
            limit_exceeded(limit, source=ip, handshaking=per_ip, total=self.in_handshake)
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
            conn.close()  # an RST: no TIME_WAIT kept for it
            return
        self.handshaking[ip] = per_ip + 1
        self.in_handshake += 1
        task = asyncio.create_task(self._handshake(conn, ip))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _handshake(self, conn: socket.socket, ip: str) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            conn.setblocking(False)
            with contextlib.suppress(OSError):
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await loop.connect_accepted_socket(
                self._factory, sock=conn, ssl=self._context, ssl_handshake_timeout=self._timeout
            )
        except OSError as err:  # the peer went, or failed the handshake, or timed out
            if loop.time() - started >= self._timeout * 0.99:
                limit_exceeded(LIMIT_HANDSHAKE_TIME, source=ip, timeout_s=self._timeout)
            else:
                log.debug("listener.handshake_failed", source=ip, error=str(err) or repr(err))
        finally:
            conn.close()  # a no-op once the transport owns (detached) it
            self.in_handshake -= 1
            left = self.handshaking.pop(ip) - 1
            if left:
                self.handshaking[ip] = left


def listening_socket(host: str, port: int, *, reuse_port: bool = False) -> socket.socket:
    """`reuse_port`: one of a SO_REUSEPORT group (a worker's own socket, ztunnel.supervisor)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        sock.bind((host, port))
        sock.listen(BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def serve_hbone(
    protocol_factory: Callable[[], asyncio.BaseProtocol],
    host: str,
    port: int,
    context: ssl.SSLContext,
    *,
    handshake_timeout: float = HANDSHAKE_TIMEOUT_S,
    max_handshakes: int = MAX_HANDSHAKES,
    max_per_ip: int = MAX_HANDSHAKES_PER_IP,
) -> HboneListener:
    """Listen on host:port and serve TLS connections with `protocol_factory`, started."""
    listener = HboneListener(
        protocol_factory,
        listening_socket(host, port),
        context,
        handshake_timeout=handshake_timeout,
        max_handshakes=max_handshakes,
        max_per_ip=max_per_ip,
    )
    await listener.start_serving()
    return listener
