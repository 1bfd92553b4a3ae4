"""The relay layer on real sockets: TCP legs and HBONE streams over real mTLS on loopback,
joined by Relays exactly as ztunnel joins them (no lab, no eBPF).

    client --TCP--> [leg | stream] ==HBONE/TLS==> [stream | leg] --TCP--> server

Checked: bytes both ways, half-close carried end to end, a reset at either end resets the
other, early data before the relay starts, large transfers under backpressure (tiny socket
buffers, flow-control windows exhausted), and that one broken stream leaves its neighbours
on the same connection alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import uvloop

from controller.ca import CertificateAuthority
from meshcore import hbone
from meshcore.identity.certs import key_to_pem, make_csr, new_private_key
from meshcore.identity.spiffe import SpiffeId
from ztunnel import tls
from ztunnel.hbone_conn import HboneConnection, Stream
from ztunnel.relay import LINGER_ZERO, Relay, TcpLeg, connect_leg

Runner = Callable[[Callable[["Tunnel"], Awaitable[None]]], None]
ServerHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _contexts(folder: Path) -> tuple[object, object]:
    ca = CertificateAuthority.load_or_create(folder / "ca", "cluster.local")
    made = []
    for side, server in (("client", False), ("server", True)):
        ident = SpiffeId.parse(f"spiffe://cluster.local/ns/test/sa/{side}")
        key = new_private_key()
        issued = ca.sign_workload(make_csr(key, ident), {ident})
        made.append(
            tls.context(
                server=server,
                key_pem=key_to_pem(key),
                chain_pem=issued.full_chain_pem,
                roots_pem="".join(ca.trust_bundle).encode(),
            )
        )
    return made[0], made[1]


@dataclass
class Tunnel:
    """A client-side HBONE connection to a server-side one that relays each CONNECT to
    the TCP server at its target."""

    client: HboneConnection
    server_relays: list[Relay]

    async def open(
        self, target: hbone.Target, sndbuf: int | None = None
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Relay]:
        """An app connection through the tunnel: returns the app's reader/writer and the
        client-side relay."""
        loop = asyncio.get_running_loop()
        accepted: asyncio.Future[TcpLeg] = loop.create_future()
        listener = await loop.create_server(
            lambda: TcpLeg(on_made=accepted.set_result), "127.0.0.1", 0
        )
        port = listener.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        if sndbuf:
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, sndbuf)
        leg = await accepted
        listener.close()
        stream = self.client.open(target, {})
        response = await asyncio.wait_for(stream.response, 5)
        assert response.status == 200, response
        relay = Relay(leg, stream)
        relay.start()
        return reader, writer, relay


@contextlib.asynccontextmanager
async def open_tunnel(folder: Path) -> AsyncIterator[Tunnel]:
    client_ctx, server_ctx = _contexts(folder)
    loop = asyncio.get_running_loop()
    server_relays: list[Relay] = []
    tasks: set[asyncio.Task[None]] = set()

    async def serve(stream: Stream, target: hbone.Target) -> None:
        try:
            leg = await connect_leg(target.ip, target.port)
        except OSError as err:
            assert isinstance(stream.conn.proto, hbone.HboneServer)
            stream.conn.proto.refuse(stream.id, 503, str(err))
            stream.conn.flush()
            return
        assert isinstance(stream.conn.proto, hbone.HboneServer)
        stream.conn.proto.accept(stream.id)
        stream.conn.flush()
        relay = Relay(stream, leg)
        server_relays.append(relay)
        await relay.wait()

    def on_connect(stream: Stream, target: hbone.Target, _headers: dict[str, str]) -> None:
        task = asyncio.ensure_future(serve(stream, target))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    def made(conn: HboneConnection) -> None:
        conn.on_connect = on_connect
        conn.start()

    server = await loop.create_server(
        lambda: HboneConnection(hbone.HboneServer(), on_made=made),
        "127.0.0.1",
        0,
        ssl=server_ctx,  # type: ignore[arg-type]
    )
    port = server.sockets[0].getsockname()[1]
    _, client = await loop.create_connection(
        lambda: HboneConnection(hbone.HboneClient()),
        "127.0.0.1",
        port,
        ssl=client_ctx,  # type: ignore[arg-type]
        server_hostname="server.test.sa.weft",
    )
    client.start()
    try:
        yield Tunnel(client, server_relays)
    finally:
        client.close()
        server.close()
        for task in tasks:
            task.cancel()


@pytest.fixture
def in_tunnel(tmp_path: Path) -> Runner:
    """Run a test body against a fresh tunnel on uvloop (as ztunnel runs), bounded in time."""

    def run(body: Callable[[Tunnel], Awaitable[None]]) -> None:
        async def main() -> None:
            async with open_tunnel(tmp_path) as tunnel:
                await asyncio.wait_for(body(tunnel), 90)

        uvloop.run(main())

    return run


async def tcp_server(handler: ServerHandler) -> tuple[asyncio.Server, hbone.Target]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, hbone.Target("127.0.0.1", server.sockets[0].getsockname()[1])


def reset(writer: asyncio.StreamWriter) -> None:
    """Close like a crashing app: an RST, not a FIN."""
    writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_ZERO)
    writer.transport.abort()


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


def test_bytes_cross_both_ways_and_the_relays_end_together(in_tunnel: Runner) -> None:
    async def body(tunnel: Tunnel) -> None:
        server, target = await tcp_server(echo)
        reader, writer, relay = await tunnel.open(target)
        for size in (1, 100, 5000):
            writer.write(b"p" * size)
            assert await reader.readexactly(size) == b"p" * size
        writer.write_eof()
        assert await reader.read() == b""  # the server saw our FIN and closed: FIN back
        assert await asyncio.wait_for(relay.done, 5) is False
        assert relay.a.received == relay.b.sent == 5101
        writer.close()
        server.close()

    in_tunnel(body)


def test_half_close_lets_the_other_direction_finish(in_tunnel: Runner) -> None:
    async def body(tunnel: Tunnel) -> None:
        async def reply_after_eof(
            reader: asyncio.StreamReader, writer: asyncio.StreamWriter
        ) -> None:
            request = await reader.read()  # until our FIN
            writer.write(b"got " + str(len(request)).encode())
            await writer.drain()
            writer.close()

        server, target = await tcp_server(reply_after_eof)
        reader, writer, relay = await tunnel.open(target)
        writer.write(b"x" * 1000)
        writer.write_eof()
        assert await asyncio.wait_for(reader.read(), 5) == b"got 1000"
        assert await asyncio.wait_for(relay.done, 5) is False
        writer.close()
        server.close()

    in_tunnel(body)


def test_a_reset_from_the_server_resets_the_client(in_tunnel: Runner) -> None:
    async def body(tunnel: Tunnel) -> None:
        async def crash(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.read(1)
            reset(writer)

        server, target = await tcp_server(crash)
        reader, writer, relay = await tunnel.open(target)
        writer.write(b"x")
        with pytest.raises(ConnectionResetError):
            await asyncio.wait_for(reader.read(), 5)
        assert await asyncio.wait_for(relay.done, 5) is True
        writer.close()
        server.close()

    in_tunnel(body)


def test_a_reset_from_the_client_resets_the_server(in_tunnel: Runner) -> None:
    async def body(tunnel: Tunnel) -> None:
        seen: asyncio.Future[type[BaseException] | bytes] = (
            asyncio.get_running_loop().create_future()
        )

        async def watch(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                seen.set_result(await reader.read())
            except ConnectionError as err:
                seen.set_result(type(err))

        server, target = await tcp_server(watch)
        _, writer, relay = await tunnel.open(target)
        writer.write(b"x")
        await asyncio.sleep(0.05)
        reset(writer)
        assert await asyncio.wait_for(seen, 5) is ConnectionResetError
        assert await asyncio.wait_for(relay.done, 5) is True
        server.close()

    in_tunnel(body)


def test_a_refused_target_is_a_503_not_a_hang(in_tunnel: Runner) -> None:
    async def body(tunnel: Tunnel) -> None:
        probe = socket.socket()
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()  # nothing listens there now
        stream = tunnel.client.open(hbone.Target("127.0.0.1", port), {})
        response = await asyncio.wait_for(stream.response, 5)
        assert response.status == 503

    in_tunnel(body)


@pytest.mark.parametrize("size", [3 * 1024 * 1024, 24 * 1024 * 1024])
def test_large_transfers_under_backpressure_arrive_intact(in_tunnel: Runner, size: int) -> None:
    """More than a stream window (4 MiB) each way, with a slow reader at the far end: flow
    control must hold data back, never drop or reorder it."""

    async def body(tunnel: Tunnel) -> None:
        async def slow_sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            digest = hashlib.sha256()
            total = 0
            while data := await reader.read(65536):
                digest.update(data)
                total += len(data)
                if total < 2 * 1024 * 1024:
                    await asyncio.sleep(0.001)  # slow at first: the windows fill up
            writer.write(digest.hexdigest().encode())
            writer.write(os.urandom(0))
            await writer.drain()
            writer.close()

        server, target = await tcp_server(slow_sink)
        reader, writer, relay = await tunnel.open(target)
        payload = os.urandom(size)
        writer.write(payload)
        writer.write_eof()
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(), 60)
        assert reply.decode() == hashlib.sha256(payload).hexdigest()
        assert await asyncio.wait_for(relay.done, 5) is False
        writer.close()
        server.close()

    in_tunnel(body)


def test_large_download_through_a_slow_client(in_tunnel: Runner) -> None:
    async def body(tunnel: Tunnel) -> None:
        size = 12 * 1024 * 1024
        payload = os.urandom(size)

        async def source(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            writer.write(payload)
            await writer.drain()
            writer.close()

        server, target = await tcp_server(source)
        reader, writer, relay = await tunnel.open(target)
        leg = relay.a
        assert isinstance(leg, TcpLeg) and leg.transport is not None
        got = bytearray()
        most_buffered = 0
        while data := await asyncio.wait_for(reader.read(65536), 30):
            got += data
            most_buffered = max(most_buffered, leg.transport.get_write_buffer_size())
            if len(got) < 6 * 1024 * 1024:
                await asyncio.sleep(0.002)  # a slow reader: the windows fill up
        assert hashlib.sha256(got).digest() == hashlib.sha256(payload).digest()
        # flow control held the rest back at the server; ztunnel buffered about a window
        assert 0 < most_buffered <= hbone.STREAM_WINDOW + 1024 * 1024
        writer.close()
        server.close()

    in_tunnel(body)


def test_one_reset_stream_leaves_its_neighbours_alone(in_tunnel: Runner) -> None:
    async def body(tunnel: Tunnel) -> None:
        server, target = await tcp_server(echo)
        _, w1, relay1 = await tunnel.open(target)
        r2, w2, _ = await tunnel.open(target)
        reset(w1)
        assert await asyncio.wait_for(relay1.done, 5) is True
        w2.write(b"still here")
        assert await asyncio.wait_for(r2.readexactly(10), 5) == b"still here"
        w2.close()
        server.close()

    in_tunnel(body)
