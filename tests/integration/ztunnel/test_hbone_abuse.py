"""HTTP/2 abuse on a real HBONE server (15008's listener, TLS with real certificates, on
loopback, in-process): a raw client that misbehaves, and a well-behaved bystander on its
own connection that must keep working. After each attack the server's file descriptors and
memory come back to about where they were.

    attacker (raw h2 frames over TLS) --\\
                                         >-- HboneListener -> HboneConnection(HboneServer)
    bystander (HboneClient) ------------/        each CONNECT relayed to an echo server
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import h2.config
import h2.connection
import h2.errors
import hpack
import hyperframe.frame
import pytest
import uvloop
from prometheus_client import REGISTRY

from meshcore import hbone
from tests.integration.ztunnel.test_hbone_relay_io import _contexts
from ztunnel import hbone_conn, listeners
from ztunnel.hbone_conn import CLOSE_GRACE_S, LIMIT_WRITE_BUFFER, HboneConnection, Stream
from ztunnel.relay import Relay, connect_leg

ATTACKER_IP = "127.0.0.2"  # its own source address, as a pod has


def fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def limit_count(limit: str) -> float:
    return REGISTRY.get_sample_value("weft_hbone_limit_exceeded_total", {"limit": limit}) or 0.0


@dataclass
class Mesh:
    """The server side, its echo target, and how to reach them."""

    port: int
    target: hbone.Target
    client_ctx: ssl.SSLContext
    listener: listeners.HboneListener
    connections: list[HboneConnection] = field(default_factory=list)
    hold: asyncio.Event = field(default_factory=asyncio.Event)  # setups wait for it if clear
    answered: list[bool] = field(default_factory=list)
    server_sndbuf: int = 0  # a small kernel send buffer at the server: its own buffer fills

    async def bystander(self) -> HboneConnection:
        loop = asyncio.get_running_loop()
        _, conn = await loop.create_connection(
            lambda: HboneConnection(hbone.HboneClient()),
            "127.0.0.1",
            self.port,
            ssl=self.client_ctx,
            server_hostname="server.test.sa.weft",
        )
        conn.start()
        return conn

    async def attacker(
        self, rcvbuf: int | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        sock = socket.socket()
        sock.bind((ATTACKER_IP, 0))
        if rcvbuf:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", self.port))
        reader, writer = await asyncio.open_connection(
            sock=sock, ssl=self.client_ctx, server_hostname="server.test.sa.weft"
        )
        h2c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
        h2c.initiate_connection()
        writer.write(h2c.data_to_send())
        return reader, writer


async def round_trip(conn: HboneConnection, target: hbone.Target) -> float:
    """Seconds for a new stream's CONNECT and one echoed message."""
    started = time.monotonic()
    stream = conn.open(target, {})
    response = await asyncio.wait_for(stream.response, 10)
    assert response.status == 200
    got: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    class Sink:
        relay = None
        received = sent = 0

        def send(self, data: bytes) -> None:
            if not got.done():
                got.set_result(bytes(data))

        def send_eof(self) -> None:
            assert self.relay is not None
            self.relay.eof_sent()

        def abort(self) -> None: ...
        def pause_reading(self) -> None: ...
        def resume_reading(self) -> None: ...
        def start(self) -> None: ...
        def close(self) -> None: ...

    relay = Relay(stream, Sink())  # type: ignore[arg-type]
    relay.start()
    stream.send(b"ping")
    assert await asyncio.wait_for(got, 10) == b"ping"
    stream.abort()
    conn.forget(stream)
    return time.monotonic() - started


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    writer.close()


@contextlib.asynccontextmanager
async def serving(folder: Path, **listener_args: float) -> AsyncIterator[Mesh]:
    client_ctx, server_ctx = _contexts(folder)
    assert isinstance(client_ctx, ssl.SSLContext) and isinstance(server_ctx, ssl.SSLContext)
    echo_server = await asyncio.start_server(echo, "127.0.0.1", 0)
    target = hbone.Target("127.0.0.1", echo_server.sockets[0].getsockname()[1])
    tasks: set[asyncio.Task[None]] = set()
    mesh: Mesh

    async def setup(stream: Stream, to: hbone.Target) -> None:
        await mesh.hold.wait()
        proto = stream.conn.proto
        assert isinstance(proto, hbone.HboneServer)
        leg = await connect_leg(to.ip, to.port)
        accepted = proto.accept(stream.id)
        mesh.answered.append(accepted)
        stream.conn.flush()
        if not accepted:  # reset meanwhile: nothing to relay
            leg.abort()
            stream.conn.forget(stream)
            return
        await Relay(stream, leg).wait()

    def made(conn: HboneConnection) -> None:
        def on_connect(stream: Stream, to: hbone.Target, _h: dict[str, str]) -> None:
            task = asyncio.ensure_future(setup(stream, to))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        peer = conn.peer_info("peername")
        assert isinstance(peer, tuple)
        conn.label = peer[0]  # the client's address, to tell the attacker's apart
        mesh.connections.append(conn)
        if mesh.server_sndbuf:
            sock = conn.peer_info("socket")
            assert isinstance(sock, socket.socket) or hasattr(sock, "setsockopt")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, mesh.server_sndbuf)  # type: ignore[union-attr]
        conn.on_connect = on_connect
        conn.start()

    listener = await listeners.serve_hbone(
        lambda: HboneConnection(hbone.HboneServer(), on_made=made),
        "127.0.0.1",
        0,
        server_ctx,
        **listener_args,  # type: ignore[arg-type]
    )
    mesh = Mesh(listener.sockets[0].getsockname()[1], target, client_ctx, listener)
    mesh.hold.set()
    try:
        yield mesh
    finally:
        listener.close()
        for conn in mesh.connections:
            if conn.transport is not None:
                conn.transport.abort()
        for task in tasks:
            task.cancel()
        echo_server.close()


Body = Callable[[Mesh], Awaitable[None]]


@pytest.fixture
def attacked(tmp_path: Path) -> Callable[..., None]:
    def run(body: Body, **listener_args: float) -> None:
        async def main() -> None:
            async with serving(tmp_path, **listener_args) as mesh:
                await asyncio.wait_for(body(mesh), 30)

        uvloop.run(main())

    return run


async def closed_by_server(reader: asyncio.StreamReader, within: float) -> bytes:
    """Read until the server closes; everything it sent."""
    got = bytearray()
    deadline = time.monotonic() + within
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while data := await asyncio.wait_for(reader.read(65536), deadline - time.monotonic()):
            got += data
    return bytes(got)


def goaway_code(wire: bytes) -> int | None:
    view = memoryview(wire)
    code = None
    while len(view) >= 9:
        frame, length = hyperframe.frame.Frame.parse_frame_header(view[:9])
        if len(view) < 9 + length:
            break
        frame.parse_body(view[9 : 9 + length])
        if isinstance(frame, hyperframe.frame.GoAwayFrame):
            code = frame.error_code
        view = view[9 + length :]
    return code


async def settle(baseline_fds: int) -> int:
    for _ in range(50):
        if fds() <= baseline_fds + 2:
            break
        await asyncio.sleep(0.1)
    return fds()


def connect_headers(encoder: hpack.Encoder, stream_id: int, target: hbone.Target) -> bytes:
    block = encoder.encode([(":method", "CONNECT"), (":authority", str(target))])
    return hyperframe.frame.HeadersFrame(stream_id, block, flags=["END_HEADERS"]).serialize()


# --- the attacks ------------------------------------------------------------------------


def test_a_rapid_reset_flood_is_cut_off_and_a_bystander_keeps_its_latency(
    attacked: Callable[..., None],
) -> None:
    async def body(mesh: Mesh) -> None:
        bystander = await mesh.bystander()
        assert await round_trip(bystander, mesh.target) < 1.0
        before_fds, before_count = fds(), limit_count(hbone.LIMIT_RESETS)
        reader, writer = await mesh.attacker()
        encoder = hpack.Encoder()
        sid = 1
        worst = 0.0
        with contextlib.suppress(ConnectionError):
            for _ in range(20):  # 20 x 200 pairs, far past MAX_RESETS
                batch = bytearray()
                for _ in range(200):
                    batch += connect_headers(encoder, sid, mesh.target)
                    batch += hyperframe.frame.RstStreamFrame(sid, error_code=8).serialize()
                    sid += 2
                writer.write(bytes(batch))
                await writer.drain()
                worst = max(worst, await round_trip(bystander, mesh.target))
                if reader.at_eof():
                    break
        wire = await closed_by_server(reader, 10)
        assert goaway_code(wire) == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        assert limit_count(hbone.LIMIT_RESETS) == before_count + 1
        assert sid // 2 < 20 * 200  # cut off before the flood was through
        assert worst < 1.0
        writer.close()
        assert await round_trip(bystander, mesh.target) < 1.0
        assert await settle(before_fds) <= before_fds + 2
        bystander.close()

    attacked(body)


def test_connects_past_the_pending_setup_cap_are_refused_and_the_rest_answered(
    attacked: Callable[..., None],
) -> None:
    async def body(mesh: Mesh) -> None:
        mesh.hold.clear()  # setups hang until released
        conn = await mesh.bystander()
        streams = [conn.open(mesh.target, {}) for _ in range(hbone.MAX_PENDING_SETUP + 20)]
        await asyncio.sleep(0.5)
        refused = [s for s in streams if s.was_reset]
        assert len(refused) == 20
        mesh.hold.set()
        waiting = [s for s in streams if not s.was_reset]
        responses = await asyncio.wait_for(asyncio.gather(*(s.response for s in waiting)), 10)
        assert [r.status for r in responses] == [200] * hbone.MAX_PENDING_SETUP
        assert await round_trip(conn, mesh.target) < 1.0
        conn.close()

    attacked(body)


def test_a_continuation_flood_is_cut_off_at_the_header_block_cap(
    attacked: Callable[..., None],
) -> None:
    async def body(mesh: Mesh) -> None:
        bystander = await mesh.bystander()
        before_rss, before_fds = rss(), fds()
        reader, writer = await mesh.attacker()
        writer.write(hyperframe.frame.HeadersFrame(1, b"\x00" * 1000).serialize())
        chunk = hyperframe.frame.ContinuationFrame(1, b"\x00" * 16000).serialize()
        with contextlib.suppress(ConnectionError):
            for _ in range(10):  # 160 kB: past the 64 KiB cap
                writer.write(chunk)
                await writer.drain()
        wire = await closed_by_server(reader, 5)
        assert goaway_code(wire) == h2.errors.ErrorCodes.ENHANCE_YOUR_CALM
        writer.close()
        assert await round_trip(bystander, mesh.target) < 1.0
        assert rss() - before_rss < 16 * 1024 * 1024
        assert await settle(before_fds) <= before_fds + 2
        bystander.close()

    attacked(body)


def test_an_oversized_frame_header_closes_the_connection_at_once(
    attacked: Callable[..., None],
) -> None:
    async def body(mesh: Mesh) -> None:
        reader, writer = await mesh.attacker()
        header = (16 * 1024 * 1024 - 1).to_bytes(3, "big") + b"\x00\x00" + (1).to_bytes(4, "big")
        started = time.monotonic()
        writer.write(header)  # the 16 MiB announced never come
        wire = await closed_by_server(reader, 5)
        assert time.monotonic() - started < 3
        assert goaway_code(wire) == h2.errors.ErrorCodes.FRAME_SIZE_ERROR
        writer.close()

    attacked(body)


def test_a_ping_flood_from_a_client_that_reads_nothing_is_cut_off(
    attacked: Callable[..., None],
) -> None:
    async def body(mesh: Mesh) -> None:
        bystander = await mesh.bystander()
        before_fds, before_rss = fds(), rss()
        before = limit_count(hbone.LIMIT_PENDING_ACKS) + limit_count(LIMIT_WRITE_BUFFER)
        _reader, writer = await mesh.attacker(rcvbuf=4096)  # and never read
        ping = hyperframe.frame.PingFrame(0, b"12345678").serialize() * 1000
        sent = 0
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            while sent < 1_000_000 and not writer.transport.is_closing():
                writer.write(ping)
                await asyncio.wait_for(writer.drain(), 5)
                sent += 1000
        [server_side] = [c for c in mesh.connections if c.label == ATTACKER_IP]
        await asyncio.wait_for(server_side.closed.wait(), CLOSE_GRACE_S + 2)
        assert limit_count(hbone.LIMIT_PENDING_ACKS) + limit_count(LIMIT_WRITE_BUFFER) > before
        assert sent < 1_000_000
        assert rss() - before_rss < 32 * 1024 * 1024
        writer.transport.abort()
        assert await round_trip(bystander, mesh.target) < 1.0
        assert await settle(before_fds) <= before_fds + 2
        bystander.close()

    attacked(body)


def test_replies_a_client_provokes_but_never_reads_are_cut_off_at_the_write_buffer_limit(
    attacked: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    """DATA on a stream the client reset: each gets an RST_STREAM back (RFC 9113), which a
    client that reads nothing leaves in our buffer. (Limits lowered so it takes a second.)"""
    monkeypatch.setattr(hbone_conn, "WRITE_BUFFER_HIGH", 64 * 1024)
    monkeypatch.setattr(hbone_conn, "WRITE_BUFFER_LIMIT", 256 * 1024)

    async def body(mesh: Mesh) -> None:
        mesh.server_sndbuf = 4096
        before = limit_count(LIMIT_WRITE_BUFFER)
        _reader, writer = await mesh.attacker(rcvbuf=4096)  # and never read
        encoder = hpack.Encoder()
        writer.write(connect_headers(encoder, 1, mesh.target))
        writer.write(hyperframe.frame.RstStreamFrame(1, error_code=8).serialize())
        data = hyperframe.frame.DataFrame(1, b"x").serialize() * 1000
        sent = 0
        with contextlib.suppress(ConnectionError, ssl.SSLError, TimeoutError):
            while sent < 500_000 and not writer.transport.is_closing():
                writer.write(data)
                await asyncio.wait_for(writer.drain(), 5)
                sent += 1000
        [server_side] = [c for c in mesh.connections if c.label == ATTACKER_IP]
        await asyncio.wait_for(server_side.closed.wait(), 5)
        assert limit_count(LIMIT_WRITE_BUFFER) == before + 1
        assert sent < 500_000
        writer.transport.abort()

    attacked(body)


def test_a_client_that_never_sends_its_preface_is_closed(
    attacked: Callable[..., None], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(hbone, "PREFACE_TIMEOUT_S", 1.0)

    async def body(mesh: Mesh) -> None:
        before_count = limit_count(hbone.LIMIT_PREFACE_TIME)
        sock = socket.socket()
        sock.bind((ATTACKER_IP, 0))
        sock.setblocking(False)
        await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", mesh.port))
        reader, writer = await asyncio.open_connection(
            sock=sock, ssl=mesh.client_ctx, server_hostname="server.test.sa.weft"
        )
        started = time.monotonic()
        await closed_by_server(reader, 5)  # TLS is up, and we say nothing
        assert 0.9 < time.monotonic() - started < 4
        assert limit_count(hbone.LIMIT_PREFACE_TIME) == before_count + 1
        writer.close()

    attacked(body)


def test_silent_tcp_connections_are_bounded_and_released(
    attacked: Callable[..., None],
) -> None:
    async def body(mesh: Mesh) -> None:
        before_fds = fds()
        before = limit_count(listeners.LIMIT_HANDSHAKES_PER_IP)
        socks = []
        for _ in range(200):
            s = socket.socket()
            s.bind((ATTACKER_IP, 0))
            s.connect(("127.0.0.1", mesh.port))
            socks.append(s)
        await asyncio.sleep(0.5)
        assert mesh.listener.handshaking == {ATTACKER_IP: 8}
        assert limit_count(listeners.LIMIT_HANDSHAKES_PER_IP) == before + 192
        # a bystander from another address still gets in, while the flood holds its 8
        bystander = await mesh.bystander()
        assert await round_trip(bystander, mesh.target) < 1.0
        await asyncio.sleep(1.5)  # the handshake timeout: the 8 are dropped too
        assert mesh.listener.handshaking == {}
        for s in socks:
            s.close()
        bystander.close()
        assert await settle(before_fds) <= before_fds + 2

    attacked(body, handshake_timeout=1.0, max_per_ip=8, max_handshakes=64)


def test_handshakes_are_bounded_in_total_too(attacked: Callable[..., None]) -> None:
    async def body(mesh: Mesh) -> None:
        before = limit_count(listeners.LIMIT_HANDSHAKES)
        socks = []
        for _ in range(20):
            s = socket.socket()
            s.bind((ATTACKER_IP, 0))
            s.connect(("127.0.0.1", mesh.port))
            socks.append(s)
        await asyncio.sleep(0.5)
        assert mesh.listener.in_handshake == 4
        assert limit_count(listeners.LIMIT_HANDSHAKES) == before + 16
        for s in socks:
            s.close()
        await asyncio.sleep(0.5)  # the peers went: their handshakes end at once
        assert mesh.listener.in_handshake == 0 and mesh.listener.handshaking == {}

    attacked(body, handshake_timeout=5.0, max_per_ip=100, max_handshakes=4)
