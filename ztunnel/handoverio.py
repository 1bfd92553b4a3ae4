"""The handover's I/O (protocol: ztunnel.handover): a unix SOCK_SEQPACKET socket, messages
with the listening sockets attached by SCM_RIGHTS.

The old side (`HandoverServer`) serves one session at a time; a second client is told it is
busy. The socket file is the node's own (mode 0600 in a 0700 directory) and a client whose
uid is not ours (SO_PEERCRED) is refused: only root on the node can take the listeners.
What a client sends is bounded (MAX_MESSAGE bytes and MAX_FDS descriptors a message, a
deadline for each), and whatever it does, this process goes on serving until a Ready.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import struct
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import structlog
from prometheus_client import Counter

from ztunnel.handover import (
    DRAINING_TIMEOUT_S,
    HELLO_TIMEOUT_S,
    MAX_FDS,
    MAX_MESSAGE,
    READY_TIMEOUT_S,
    Draining,
    HandoverError,
    Hello,
    Message,
    Offer,
    Phase,
    Ready,
    Refused,
    decode,
    encode,
    judge_offer,
    old_side,
)

log = structlog.get_logger("ztunnel.handover")

HANDOVERS = Counter(
    "weft_ztunnel_handovers",
    "Handover sessions on this ztunnel's handover socket, by result: taken (a successor "
    "took the listeners, this one drains), refused (bad hello or message, wrong node or "
    "uid), aborted (the successor went away or timed out before Ready), busy.",
    ("result",),
)
_UCRED = struct.Struct("iII")  # pid, uid, gid
MAX_BUSY_REPLIES = 4  # clients told "busy" at once; past it they are just closed
BUSY_REPLY_TIMEOUT_S = 1.0


class _Closed(ConnectionError):
    """The peer closed the handover socket."""


async def _readable(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def readable() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), readable)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


async def receive(sock: socket.socket, timeout: float) -> tuple[Message, list[int]]:
    """One message and the descriptors that came with it (the caller owns them). TimeoutError,
    _Closed, or HandoverError for an oversized or garbled one (its descriptors closed)."""
    async with asyncio.timeout(timeout):
        while True:
            await _readable(sock)
            try:
                data, fds, flags, _ = socket.recv_fds(sock, MAX_MESSAGE + 1, MAX_FDS)
            except BlockingIOError:
                continue
            break
    try:
        if not data and not fds:
            raise _Closed("the peer closed the handover socket")
        if flags & socket.MSG_CTRUNC:
            raise HandoverError(f"more than {MAX_FDS} descriptors attached")
        if flags & socket.MSG_TRUNC or len(data) > MAX_MESSAGE:
            raise HandoverError(f"a message over {MAX_MESSAGE} bytes")
        return decode(data), fds
    except BaseException:
        close_fds(fds)
        raise


def send(sock: socket.socket, msg: Message, fds: Sequence[int] = ()) -> None:
    """Messages are small and few per session: the socket buffer always has room."""
    socket.send_fds(sock, [encode(msg)], list(fds))


def close_fds(fds: Sequence[int]) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


def peer_uid(sock: socket.socket) -> int:
    return int(
        _UCRED.unpack(sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size))[1]
    )


# --- the old side ----------------------------------------------------------------------------


class HandoverServer:
    """Listens for this ztunnel's successor. `listeners()` gives the sockets to hand over;
    `drain(timeout)` is called on Ready (stop accepting, let the HTTP listeners go, relay
    what is open for at most the timeout the successor asks) and returns the Draining
    reply. `taken` is set once a successor has the listeners."""

    def __init__(
        self,
        path: Path,
        node: str,
        version: str,
        listeners: Callable[[], dict[str, socket.socket]],
        drain: Callable[[float], Awaitable[Draining]],
        *,
        hello_timeout: float = HELLO_TIMEOUT_S,
        ready_timeout: float = READY_TIMEOUT_S,
    ) -> None:
        self.path = path
        self.node = node
        self.version = version
        self._listeners = listeners
        self._drain = drain
        self.hello_timeout = hello_timeout
        self.ready_timeout = ready_timeout
        self.taken = asyncio.Event()
        self.successor: Hello | None = None
        self._sock: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._session: asyncio.Task[None] | None = None
        self._busy: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.path.unlink(missing_ok=True)  # a predecessor's, which has let go of it
            old_umask = os.umask(0o177)
            try:
                sock.bind(str(self.path))
            finally:
                os.umask(old_umask)
            sock.listen(4)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._accepting = asyncio.create_task(self._accept_forever())
        log.info("handover.listening", socket=str(self.path))

    def close(self) -> None:
        """Stop listening (the file stays: a successor binds it anew)."""
        for task in (self._accepting, self._session, *self._busy):
            if task is not None and task is not asyncio.current_task():
                task.cancel()
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    async def _accept_forever(self) -> None:
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self._sock)
            except OSError as err:
                log.warning("handover.accept_failed", error=str(err))
                await asyncio.sleep(0.1)
                continue
            conn.setblocking(False)
            if self._session is not None and not self._session.done():
                HANDOVERS.labels("busy").inc()
                log.warning("handover.refused", reason="busy: a handover is under way")
                if len(self._busy) < MAX_BUSY_REPLIES:
                    task = asyncio.create_task(self._busy_reply(conn))
                    self._busy.add(task)
                    task.add_done_callback(self._busy.discard)
                else:
                    conn.close()
                continue
            self._session = asyncio.create_task(self._serve(conn))

    async def _busy_reply(self, conn: socket.socket) -> None:
        """Read its hello first (closing on an unread one would reset the reply away)."""
        with conn, contextlib.suppress(OSError, TimeoutError, HandoverError, _Closed):
            _, fds = await receive(conn, BUSY_REPLY_TIMEOUT_S)
            close_fds(fds)
            send(conn, Refused("busy: another handover is under way"))

    async def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:
                await self._session_steps(conn)
            except asyncio.CancelledError:
                raise
            except (TimeoutError, _Closed, OSError) as err:
                HANDOVERS.labels("aborted").inc()
                log.warning(
                    "handover.aborted",
                    reason=str(err) or type(err).__name__,
                    successor=self.successor.pid if self.successor else None,
                )
                self.successor = None

    async def _session_steps(self, conn: socket.socket) -> None:
        uid = peer_uid(conn)
        if uid != os.getuid():
            self._refuse(conn, Refused(f"uid {uid} may not take this ztunnel's listeners"))
            return
        phase = Phase.HELLO
        timeout = self.hello_timeout
        while True:
            try:
                msg, fds = await receive(conn, timeout)
            except HandoverError as err:
                self._refuse(conn, Refused(f"bad message in phase {phase.value}: {err}"))
                return
            close_fds(fds)  # a client hands us no sockets
            step = old_side(phase, msg, self.node)
            if step.phase is Phase.CLOSED:
                if step.reply is not None:
                    self._refuse(conn, step.reply)
                else:
                    HANDOVERS.labels("aborted").inc()
                    log.warning("handover.aborted", reason=f"successor said: {msg}")
                return
            if step.offer:
                assert isinstance(msg, Hello)
                self.successor = msg
                socks = self._listeners()
                names = tuple(socks)
                offer = Offer(self.node, self.version, os.getpid(), names)
                send(conn, offer, [s.fileno() for s in socks.values()])
                log.info(
                    "handover.offered",
                    successor_pid=msg.pid,
                    successor_version=msg.version,
                    listeners=list(names),
                )
                timeout = self.ready_timeout
            if step.drain:
                assert isinstance(msg, Ready)
                reply = await self._drain(float(msg.drain_timeout_s))
                send(conn, reply)
                self.taken.set()
                HANDOVERS.labels("taken").inc()
                log.info(
                    "handover.taken",
                    successor_pid=self.successor.pid if self.successor else None,
                    connections=reply.connections,
                )
                self.close()
                return
            phase = step.phase

    def _refuse(self, conn: socket.socket, refusal: Message) -> None:
        assert isinstance(refusal, Refused)
        HANDOVERS.labels("refused").inc()
        log.warning("handover.refused", reason=refusal.reason)
        with contextlib.suppress(OSError):
            send(conn, refusal)


# --- the new side ----------------------------------------------------------------------------


@dataclass
class Takeover:
    """The listeners taken from the running ztunnel; `complete()` once this one serves."""

    sock: socket.socket
    offer: Offer
    listeners: dict[str, socket.socket] = field(default_factory=dict)

    async def complete(self, drain_timeout: float) -> Draining:
        """Ready: the old ztunnel stops accepting, lets go of its HTTP listeners and relays
        its open connections for at most `drain_timeout` seconds."""
        try:
            send(self.sock, Ready(drain_timeout))
            msg, fds = await receive(self.sock, DRAINING_TIMEOUT_S)
            close_fds(fds)
        except (OSError, TimeoutError, _Closed) as err:
            raise HandoverError(f"the old ztunnel did not confirm its drain: {err!r}") from None
        finally:
            self.sock.close()
        if not isinstance(msg, Draining):
            raise HandoverError(f"expected draining, got {msg}")
        return msg

    async def hand_over(self, drain_timeout: float) -> dict[str, object]:
        """complete(), then what /config_dump says of the ztunnel taken over from."""
        draining = await self.complete(drain_timeout)
        return {
            "pid": self.offer.pid,
            "version": self.offer.version,
            "connections": draining.connections,
        }

    def abandon(self, reason: str) -> None:
        with contextlib.suppress(OSError):
            send(self.sock, Refused(reason))
        self.sock.close()


def listening_socket_from(fd: int, name: str) -> socket.socket:
    """A received descriptor as a socket, checked to be a listening TCP socket (if not, the
    descriptor is left to the caller to close)."""
    sock = socket.socket(fileno=fd)
    if sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
        sock.detach()
        raise HandoverError(f"{name}: not a TCP socket")
    if not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
        sock.detach()
        raise HandoverError(f"{name}: not listening")
    sock.setblocking(False)
    return sock


async def take_over(path: Path, node: str, version: str, wanted: frozenset[str]) -> Takeover | None:
    """Take the listeners of the ztunnel listening at `path`; None if none is (start afresh).
    HandoverError if one is but refuses, or offers something unusable."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.setblocking(False)
    try:
        await asyncio.get_running_loop().sock_connect(sock, str(path))
    except (FileNotFoundError, ConnectionRefusedError) as err:
        sock.close()
        log.info("handover.nothing_to_take", socket=str(path), reason=str(err))
        return None
    try:
        send(sock, Hello(node, version, os.getpid()))
        msg, fds = await receive(sock, HELLO_TIMEOUT_S * 2)
        listeners: dict[str, socket.socket] = {}
        try:
            offer = judge_offer(msg, node, len(fds), wanted)
            for name, fd in zip(offer.listeners, fds, strict=True):
                listeners[name] = listening_socket_from(fd, name)
        except BaseException:
            for made in listeners.values():
                made.close()
            close_fds(fds[len(listeners) :])
            raise
    except (TimeoutError, _Closed, OSError) as err:
        sock.close()
        raise HandoverError(f"the ztunnel at {path} did not answer: {err!r}") from None
    except BaseException:
        sock.close()
        raise
    log.info(
        "handover.received",
        predecessor_pid=offer.pid,
        predecessor_version=offer.version,
        listeners=list(listeners),
    )
    return Takeover(sock, offer, listeners)
