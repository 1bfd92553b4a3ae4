"""A TCP port of another network namespace, offered on this one's loopback.

The lab's API server listens in the control plane's namespace (where the controller and the
nodes reach it over the underlay). The lab daemon, and a user's `kubectl` on the host, reach
it here through a forward: each connection accepted on 127.0.0.1 is matched by one made from
inside the control namespace (`meshcore.nsenter`), and bytes are relayed both ways, as
`kubectl port-forward` does. TLS passes through untouched: the client still checks the API
server's certificate.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

import structlog

from meshcore.nsenter import run_in_netns

log = structlog.get_logger("lab.forward")

CHUNK = 64 << 10
MAX_CONNECTIONS = 256  # more at once is refused (each holds two sockets)


def _connect_in(netns: Path, host: str, port: int) -> socket.socket:
    def connect() -> socket.socket:
        sock = socket.create_connection((host, port), timeout=5)
        sock.setblocking(False)
        return sock

    return run_in_netns(netns, connect)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


class NetnsForward:
    """127.0.0.1:<port> here -> host:port in the namespace at `netns`."""

    def __init__(self, netns: Path, host: str, port: int) -> None:
        self.netns = netns
        self.host = host
        self.port = port
        self.local_port = 0
        self._server: asyncio.Server | None = None
        self._active: set[asyncio.Task[None]] = set()

    async def start(self, local_port: int = 0) -> int:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", local_port)
        self.local_port = self._server.sockets[0].getsockname()[1]
        log.info(
            "forward.started",
            local=f"127.0.0.1:{self.local_port}",
            target=f"{self.host}:{self.port}",
            netns=str(self.netns),
        )
        return self.local_port

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._active) >= MAX_CONNECTIONS:
            writer.close()
            return
        self._active.add(task)
        try:
            sock = await asyncio.to_thread(_connect_in, self.netns, self.host, self.port)
        except OSError as err:
            log.warning("forward.connect_failed", target=f"{self.host}:{self.port}", error=str(err))
            self._active.discard(task)
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(sock=sock)
        try:
            await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        finally:
            for w in (writer, up_writer):
                w.close()
            self._active.discard(task)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._active):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._server is not None:
            await self._server.wait_closed()
