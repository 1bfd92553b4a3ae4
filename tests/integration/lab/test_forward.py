"""lab.forward: a port of another network namespace, offered on this one's loopback."""

from __future__ import annotations

import asyncio
import socket
import subprocess
from collections.abc import Iterator

import pytest

from lab import netns
from lab.forward import NetnsForward
from tests.conftest import RUN_ID

pytestmark = pytest.mark.integration


@pytest.fixture
def namespace() -> Iterator[str]:
    name = f"weft-fwd-{RUN_ID}"
    netns.create(name)
    try:
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
        yield name
    finally:
        netns.delete(name)


def test_bytes_cross_both_ways_and_a_closed_target_is_refused(namespace: str) -> None:
    async def scenario() -> None:
        # an echo server that exists only inside the namespace
        listener = netns.run_in(
            namespace, lambda: socket.create_server(("127.0.0.1", 0), backlog=8)
        )
        port = listener.getsockname()[1]
        listener.setblocking(False)

        async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
            writer.close()

        server = await asyncio.start_server(echo, sock=listener)
        forward = NetnsForward(netns.NETNS_DIR / namespace, "127.0.0.1", port)
        local = await forward.start()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", local)
            payload = bytes(range(256)) * 4096  # 1 MiB
            writer.write(payload)
            await writer.drain()
            got = await asyncio.wait_for(reader.readexactly(len(payload)), 10)
            assert got == payload
            writer.close()
            # the target stops listening: a new connection is closed, not hung
            server.close()
            await server.wait_closed()
            reader, writer = await asyncio.open_connection("127.0.0.1", local)
            assert await asyncio.wait_for(reader.read(), 10) == b""
            writer.close()
        finally:
            await forward.stop()

    asyncio.run(scenario())
