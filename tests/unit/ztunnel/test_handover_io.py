"""The handover over a real unix socket (ztunnel/handoverio.py), with real listening sockets
passed by SCM_RIGHTS: a connection waiting in the accept queue is the successor's; a bad,
busy, silent or crashing client leaves the old side serving and waiting for the next."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from ztunnel.handover import (
    MAX_FDS,
    MAX_MESSAGE,
    Draining,
    HandoverError,
    Hello,
    Offer,
    Refused,
    encode,
)
from ztunnel.handoverio import (
    HANDOVERS,
    HandoverServer,
    receive,
    send,
    take_over,
)

WANTED = frozenset({"outbound"})


def count(result: str) -> float:
    return HANDOVERS.labels(result)._value.get()  # type: ignore[attr-defined,no-any-return]


class Old:
    """An old side with one real TCP listener on loopback."""

    def __init__(self, path: Path, **timeouts: float) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.setblocking(False)
        self.port = self.listener.getsockname()[1]
        self.drained = 0
        self.server = HandoverServer(
            path, "node-1", "old", lambda: {"outbound": self.listener}, self._drain, **timeouts
        )

    async def _drain(self, timeout: float) -> Draining:
        self.drained += 1
        return Draining(timeout, 3)

    def close(self) -> None:
        self.server.close()
        self.listener.close()


def run(path: Path, body: Callable[[Old], Awaitable[None]], **timeouts: float) -> None:
    async def main() -> None:
        old = Old(path, **timeouts)
        await old.server.start()
        try:
            await asyncio.wait_for(body(old), 20)
        finally:
            old.close()

    asyncio.run(main())


async def raw_client(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, str(path))
    return sock


def test_the_successor_gets_the_socket_and_what_waits_in_its_accept_queue(
    tmp_path: Path,
) -> None:
    path = tmp_path / "handover.sock"

    async def body(old: Old) -> None:
        waiting = socket.create_connection(("127.0.0.1", old.port))  # queued, not accepted
        taken = await take_over(path, "node-1", "new", WANTED)
        assert taken is not None
        assert taken.offer == Offer("node-1", "old", os.getpid(), ("outbound",))
        assert old.drained == 0  # both serve until Ready
        draining = await taken.complete(30.0)
        assert draining == Draining(30.0, 3)  # the successor's drain timeout
        assert old.server.taken.is_set() and old.drained == 1
        old.listener.close()  # the old one lets go: the socket stays the successor's
        sock = taken.listeners["outbound"]
        conn, _ = await asyncio.get_running_loop().sock_accept(sock)
        waiting.sendall(b"queued before the handover")
        assert conn.recv(100) == b"queued before the handover"
        for s in (conn, waiting, sock):
            s.close()

    run(path, body)
    assert path.stat().st_mode & 0o777 == 0o600


def test_a_hello_for_another_node_is_refused_and_the_old_side_serves_on(tmp_path: Path) -> None:
    path = tmp_path / "handover.sock"

    async def body(old: Old) -> None:
        with pytest.raises(HandoverError, match="node 'node-2', this is node 'node-1'"):
            await take_over(path, "node-2", "new", WANTED)
        assert not old.server.taken.is_set() and old.drained == 0
        taken = await take_over(path, "node-1", "new", WANTED)  # the next one is served
        assert taken is not None
        await taken.complete(30.0)
        for s in taken.listeners.values():
            s.close()

    before = count("refused")
    run(path, body)
    assert count("refused") == before + 1


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"\x00garbage", "not a JSON message"),
        (b"{" + b" " * MAX_MESSAGE + b"}", f"a message over {MAX_MESSAGE} bytes"),
        (b'{"type": "ready", "drain_timeout_s": 1}', "expected hello, got ready"),
    ],
)
def test_garbage_gets_a_refusal_naming_it(tmp_path: Path, data: bytes, says: str) -> None:
    path = tmp_path / "handover.sock"

    async def body(old: Old) -> None:
        client = await raw_client(path)
        await asyncio.get_running_loop().sock_sendall(client, data)
        reply, fds = await receive(client, 5)
        assert isinstance(reply, Refused) and says in reply.reason and not fds
        client.close()
        assert not old.server.taken.is_set()

    run(path, body)


def test_a_second_client_is_told_a_handover_is_under_way(tmp_path: Path) -> None:
    path = tmp_path / "handover.sock"

    async def body(old: Old) -> None:
        first = await take_over(path, "node-1", "new", WANTED)
        assert first is not None
        second = await raw_client(path)
        send(second, Hello("node-1", "newer", 2))
        reply, _ = await receive(second, 5)
        assert reply == Refused("busy: another handover is under way")
        second.close()
        await first.complete(30.0)
        for s in first.listeners.values():
            s.close()

    before = count("busy")
    run(path, body)
    assert count("busy") == before + 1


def test_a_successor_that_dies_before_ready_leaves_the_old_side_serving(tmp_path: Path) -> None:
    path = tmp_path / "handover.sock"

    async def body(old: Old) -> None:
        crashed = await take_over(path, "node-1", "new", WANTED)
        assert crashed is not None
        crashed.sock.close()  # as a SIGKILL would
        for s in crashed.listeners.values():
            s.close()
        for _ in range(50):
            if count("aborted") > before:
                break
            await asyncio.sleep(0.02)
        assert old.drained == 0 and not old.server.taken.is_set()
        # the old listener still accepts
        client = socket.create_connection(("127.0.0.1", old.port))
        conn, _ = await asyncio.get_running_loop().sock_accept(old.listener)
        conn.close()
        client.close()
        retry = await take_over(path, "node-1", "new", WANTED)
        assert retry is not None
        await retry.complete(30.0)
        for s in retry.listeners.values():
            s.close()

    before = count("aborted")
    run(path, body)
    assert count("aborted") == before + 1


def test_a_silent_client_is_dropped_after_the_hello_timeout(tmp_path: Path) -> None:
    path = tmp_path / "handover.sock"

    async def body(old: Old) -> None:
        client = await raw_client(path)
        data = await asyncio.wait_for(asyncio.get_running_loop().sock_recv(client, 10), 5)
        assert data == b""  # closed on us
        client.close()

    before = count("aborted")
    run(path, body, hello_timeout=0.2)
    assert count("aborted") == before + 1


def test_nothing_listening_means_a_fresh_start(tmp_path: Path) -> None:
    async def body() -> None:
        assert await take_over(tmp_path / "none.sock", "node-1", "new", WANTED) is None
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        stale.bind(str(tmp_path / "stale.sock"))
        stale.close()  # a file left by a process that is gone
        assert await take_over(tmp_path / "stale.sock", "node-1", "new", WANTED) is None

    asyncio.run(body())


def test_descriptors_past_the_bound_are_refused_and_closed(tmp_path: Path) -> None:
    path = tmp_path / "handover.sock"
    extra = [os.open(os.devnull, os.O_RDONLY) for _ in range(MAX_FDS + 1)]

    async def body(old: Old) -> None:
        client = await raw_client(path)
        socket.send_fds(client, [encode(Hello("node-1", "new", 1))], extra)
        reply, _ = await receive(client, 5)
        assert isinstance(reply, Refused) and f"more than {MAX_FDS} descriptors" in reply.reason
        client.close()
        assert not old.server.taken.is_set()

    try:
        run(path, body)
    finally:
        for fd in extra:
            os.close(fd)


def test_a_successor_that_never_says_ready_is_given_up_on(tmp_path: Path) -> None:
    path = tmp_path / "handover.sock"

    async def body(old: Old) -> None:
        slow = await take_over(path, "node-1", "new", WANTED)
        assert slow is not None
        for _ in range(100):  # the old side closes the session after ready_timeout
            if count("aborted") > before:
                break
            await asyncio.sleep(0.02)
        assert count("aborted") == before + 1 and old.drained == 0
        with pytest.raises(HandoverError):
            await slow.complete(30.0)
        for s in slow.listeners.values():
            s.close()

    before = count("aborted")
    run(path, body, ready_timeout=0.3)
