"""TCP echo server: sends every chunk back, after an optional prefix that names the replica.

    python -m sample_apps.tcp_echo [--port 9000] [--host 0.0.0.0] [--prefix "v1 "]

When the client shuts down its write side, everything received has already been echoed,
so the server closes its side too (half-close works as `nc -N` expects).
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import dataclass

import click
from structlog.typing import FilteringBoundLogger

from sample_apps.runtime import configure_logging, run

READ_SIZE = 65536
SHUTDOWN_GRACE_S = 0.5


@dataclass(frozen=True)
class TcpEchoConfig:
    host: str
    port: int
    prefix: bytes = b""


class TcpEchoServer:
    def __init__(self, config: TcpEchoConfig, log: FilteringBoundLogger) -> None:
        self._config = config
        self._log = log
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def start(self) -> tuple[str, int]:
        self._server = await asyncio.start_server(
            self._on_connection, self._config.host, self._config.port, reuse_address=True
        )
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        connections = list(self._connections)
        for task in connections:
            task.cancel()
        if connections:
            await asyncio.wait(connections, timeout=SHUTDOWN_GRACE_S)

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        peer = writer.get_extra_info("peername")
        client = f"{peer[0]}:{peer[1]}" if isinstance(peer, tuple) else str(peer)
        self._log.info("tcp.connection.opened", client=client)
        received = 0
        reason = "client_closed"
        try:
            while chunk := await reader.read(READ_SIZE):
                received += len(chunk)
                writer.write(self._config.prefix + chunk)
                # Backpressure: stop reading while the client is not reading its echo.
                await writer.drain()
        except OSError as exc:
            reason = f"error: {exc}"
        except asyncio.CancelledError:
            reason = "server_stopping"
            raise
        finally:
            self._connections.discard(task)
            writer.close()
            self._log.info("tcp.connection.closed", client=client, bytes=received, reason=reason)


async def serve(config: TcpEchoConfig, log: FilteringBoundLogger, stop: asyncio.Event) -> int:
    server = TcpEchoServer(config, log)
    try:
        host, port = await server.start()
    except OSError as exc:
        log.error("server.failed", host=config.host, port=config.port, error=str(exc))
        return 1
    log.info(
        "server.listening", host=host, port=port, protocol="tcp", prefix=config.prefix.decode()
    )
    await stop.wait()
    log.info("server.stopping")
    await server.stop()
    log.info("server.stopped")
    return 0


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    envvar="PORT",
    default=9000,
    show_default=True,
    help="Port to listen on (env PORT).",
)
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to bind.")
@click.option("--prefix", default="", help='Text sent before each echoed chunk, e.g. "v1 ".')
def main(port: int, host: str, prefix: str) -> None:
    """Echo TCP bytes back, optionally prefixed so replicas can be told apart."""
    log = configure_logging("tcp_echo")
    config = TcpEchoConfig(host=host, port=port, prefix=prefix.encode())
    sys.exit(run(lambda stop: serve(config, log, stop), log))


if __name__ == "__main__":
    main(prog_name="python -m sample_apps.tcp_echo")
