"""HTTP echo server: HTTP/1.1 and h2c (prior knowledge) on one port, answering with who it is.

    python -m sample_apps.http_echo [--port 8080] [--host 0.0.0.0] [--upstream URL] [--version V]
                               [--body-bytes N]

Identity comes from POD_NAME, POD_NAMESPACE, POD_IP, NODE_NAME, VERSION, SERVICE_ACCOUNT.
Routes: /healthz, /status/<code>, /delay/<ms>, anything else echoes. Any echoed request can
also fail or wait on demand, as the Gateway API conformance echo does: `?codes=503:2,200:1`
(this pod answers 503 twice, then 200 once, and again), `?delay=200ms` (or `1s`, or a bare
number of milliseconds); with `&pod=echo-b` (names, comma-separated) only those pods do, so
one of a Service's pods can be made to fail. With --upstream, each
request (but /healthz) also GETs the upstream and embeds the answer; a failed or non-2xx
upstream turns the answer into 502. Protocol handling lives in `httpwire`, answers in
`echo_core`; this module only moves bytes and waits.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import re
import sys
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import parse_qs

import click
from structlog.typing import FilteringBoundLogger

from sample_apps.echo_core import (
    MAX_DELAY_MS,
    Endpoint,
    Identity,
    Route,
    RouteKind,
    UpstreamResult,
    echo_response,
    health_response,
    parse_upstream_body,
    route_for,
)
from sample_apps.httpwire import (
    H1Server,
    H2Server,
    HttpProtocolError,
    HttpTarget,
    Protocol,
    Request,
    Response,
    sniff_protocol,
)
from sample_apps.runtime import configure_logging, run

if TYPE_CHECKING:
    import aiohttp

READ_SIZE = 65536
# Long enough for the slowest answer (30 s delay + 5 s upstream), short enough to shed
# connections a client forgot about.
IDLE_TIMEOUT_S = 120.0
UPSTREAM_TIMEOUT_S = 5.0
MAX_UPSTREAM_BODY = 1 << 20
# Shutdown must finish within a second: answers in progress get this long to complete
# (a rolling restart should not cost quick requests), then everything is cancelled.
DRAIN_GRACE_S = 0.4
CANCEL_GRACE_S = 0.2


MAX_CODE_CYCLES = 64  # distinct ?codes= specs whose position a pod remembers
_DELAY = re.compile(r"(\d{1,6})(ms|s)?")


@dataclass(frozen=True)
class FailureSpec:
    """What a request's query asks of this pod: a cycle of status codes, a delay."""

    codes: tuple[int, ...] = ()  # one entry per answer of the cycle: 503:2,200:1 -> 503 503 200
    delay_ms: int = 0
    pods: tuple[str, ...] = ()  # only these pods fail or wait; empty: every pod
    error: str | None = None  # a malformed query: answered 400 with this message


def failure_spec(path: str) -> FailureSpec:
    """`?codes=503:2,200:1` and `?delay=200ms` of a request target (either may be absent)."""
    _, _, query = path.partition("?")
    if not query:
        return FailureSpec()
    params = parse_qs(query)
    codes: list[int] = []
    for item in ",".join(params.get("codes", [])).split(","):
        if not item:
            continue
        code, _, times = item.partition(":")
        if not code.isdigit() or not 200 <= int(code) <= 599:
            return FailureSpec(error=f"codes: {code!r} is not a status code 200-599")
        if times and (not times.isdigit() or not 1 <= int(times) <= 1000):
            return FailureSpec(error=f"codes: {item!r}: the count must be 1-1000")
        codes.extend([int(code)] * (int(times) if times else 1))
    delay_ms = 0
    delays = params.get("delay", [])
    if delays:
        match = _DELAY.fullmatch(delays[-1])
        if match is None:
            return FailureSpec(error="delay: write milliseconds as 200ms, 200, or seconds as 1s")
        delay_ms = int(match[1]) * (1000 if match[2] == "s" else 1)
    pods = tuple(p for v in params.get("pod", []) for p in v.split(",") if p)
    return FailureSpec(tuple(codes), min(delay_ms, MAX_DELAY_MS), pods)


class CodeCycles:
    """Where this pod is in each `?codes=` cycle (per spec, so different tests do not mix);
    bounded: the least recently used spec is forgotten."""

    def __init__(self, limit: int = MAX_CODE_CYCLES) -> None:
        self._limit = limit
        self._next: OrderedDict[tuple[int, ...], int] = OrderedDict()

    def next(self, codes: tuple[int, ...]) -> int:
        i = self._next.pop(codes, 0)
        self._next[codes] = (i + 1) % len(codes)
        if len(self._next) > self._limit:
            self._next.popitem(last=False)
        return codes[i]


def apply_failures(route: Route, spec: FailureSpec, cycles: CodeCycles, pod: str = "") -> Route:
    """The route with the query's status and delay for pod `pod` (a route already in error
    is kept)."""
    if route.kind is not RouteKind.ECHO or route.error is not None:
        return route
    if spec.pods and pod not in spec.pods:
        return route
    if spec.error is not None:
        return dataclasses.replace(route, status=400, error=spec.error)
    if not spec.codes and not spec.delay_ms:
        return route
    status = cycles.next(spec.codes) if spec.codes else route.status
    return dataclasses.replace(route, status=status, delay_ms=route.delay_ms + spec.delay_ms)


@dataclass(frozen=True)
class EchoConfig:
    host: str
    port: int
    identity: Identity
    upstream: str | None = None
    min_body_bytes: int = 0


class Upstream:
    """The backend behind --upstream: one kept-alive aiohttp session for the whole process."""

    def __init__(self, url: str) -> None:
        self._url = url
        self._session: aiohttp.ClientSession | None = None

    async def fetch(self) -> UpstreamResult:
        # Imported here: aiohttp's client is a third of this app's start-up time, and only
        # a server with --upstream needs it (a lab starts many echo pods at once).
        import aiohttp

        if self._session is None:
            # Created lazily so it binds to the running loop.
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=UPSTREAM_TIMEOUT_S)
            )
        try:
            async with self._session.get(self._url, allow_redirects=False) as resp:
                raw = bytearray()
                async for chunk in resp.content.iter_chunked(READ_SIZE):
                    raw += chunk
                    if len(raw) >= MAX_UPSTREAM_BODY:
                        break
                return UpstreamResult(status=resp.status, body=parse_upstream_body(bytes(raw)))
        except TimeoutError:
            return UpstreamResult(error=f"timeout after {UPSTREAM_TIMEOUT_S:g}s")
        except (aiohttp.ClientError, OSError) as exc:
            return UpstreamResult(error=f"{type(exc).__name__}: {exc}")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class EchoServer:
    def __init__(self, config: EchoConfig, log: FilteringBoundLogger) -> None:
        self._config = config
        self._log = log
        self._upstream = Upstream(config.upstream) if config.upstream else None
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self._answering = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._cycles = CodeCycles()

    async def start(self) -> Endpoint:
        self._server = await asyncio.start_server(
            self._on_connection, self._config.host, self._config.port, reuse_address=True
        )
        return Endpoint.from_sockaddr(self._server.sockets[0].getsockname())

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_GRACE_S):
                await self._idle.wait()
        connections = list(self._connections)
        for task in connections:
            task.cancel()
        if connections:
            await asyncio.wait(connections, timeout=CANCEL_GRACE_S)
        if self._upstream is not None:
            await self._upstream.close()

    async def _on_connection(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        client = Endpoint.from_sockaddr(writer.get_extra_info("peername"))
        server = Endpoint.from_sockaddr(writer.get_extra_info("sockname"))
        try:
            prefix, protocol = await self._sniff(reader)
            if protocol is Protocol.HTTP2:
                await self._serve_h2(reader, writer, prefix, client, server)
            elif protocol is Protocol.HTTP1:
                await self._serve_h1(reader, writer, prefix, client, server)
        except TimeoutError:
            self._log.info("connection.idle_timeout", client=f"{client.ip}:{client.port}")
        except OSError as exc:  # resets and broken pipes: the client went away
            self._log.info(
                "connection.aborted", client=f"{client.ip}:{client.port}", error=str(exc)
            )
        finally:
            self._connections.discard(task)
            writer.close()

    async def _read(self, reader: asyncio.StreamReader) -> bytes:
        async with asyncio.timeout(IDLE_TIMEOUT_S):
            return await reader.read(READ_SIZE)

    async def _sniff(self, reader: asyncio.StreamReader) -> tuple[bytes, Protocol | None]:
        """Read just enough to tell the h2c preface from an HTTP/1.1 request line."""
        prefix = b""
        while (protocol := sniff_protocol(prefix)) is None:
            chunk = await self._read(reader)
            if not chunk:
                return prefix, None
            prefix += chunk
        return prefix, protocol

    async def _serve_h1(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        prefix: bytes,
        client: Endpoint,
        server: Endpoint,
    ) -> None:
        proto = H1Server()
        proto.receive_data(prefix)
        while True:
            try:
                request = proto.next_request()
            except HttpProtocolError as exc:
                self._log.warning(
                    "http.protocol_error",
                    protocol="HTTP/1.1",
                    client=f"{client.ip}:{client.port}",
                    error=str(exc),
                )
                proto.send_error(exc.status)
                writer.write(proto.data_to_send())
                await writer.drain()
                return
            if request is None:
                writer.write(proto.data_to_send())  # a "100 Continue", if the client waits for it
                if proto.closed:
                    return
                proto.receive_data(await self._read(reader))
                continue
            response = await self._answer(request, client, server)
            proto.send_response(request, response)
            writer.write(proto.data_to_send())
            await writer.drain()
            if proto.closed:
                return

    async def _serve_h2(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        prefix: bytes,
        client: Endpoint,
        server: Endpoint,
    ) -> None:
        proto = H2Server()
        proto.initiate()
        streams: set[asyncio.Task[None]] = set()

        async def answer(request: Request) -> None:
            response = await self._answer(request, client, server)
            proto.send_response(request, response)
            writer.write(proto.data_to_send())
            # A dead connection is noticed (and logged once) by the read loop.
            with contextlib.suppress(OSError):
                await writer.drain()

        try:
            data = prefix
            while True:
                try:
                    requests = proto.receive_data(data)
                except HttpProtocolError as exc:
                    self._log.warning(
                        "http.protocol_error",
                        protocol="HTTP/2",
                        client=f"{client.ip}:{client.port}",
                        error=str(exc),
                    )
                    requests = []
                # Settings acks, window updates and GOAWAYs go out before anything else.
                writer.write(proto.data_to_send())
                for request in requests:
                    # Streams are independent: a /delay must not hold up its neighbours.
                    task = asyncio.create_task(answer(request))
                    streams.add(task)
                    task.add_done_callback(streams.discard)
                if proto.closed:
                    return
                await writer.drain()
                data = await self._read(reader)
        finally:
            for task in streams:
                task.cancel()
            proto.close()
            if not writer.is_closing():
                writer.write(proto.data_to_send())

    async def _answer(self, request: Request, client: Endpoint, server: Endpoint) -> Response:
        self._answering += 1
        self._idle.clear()
        try:
            return await self._build_answer(request, client, server)
        finally:
            self._answering -= 1
            if not self._answering:
                self._idle.set()

    async def _build_answer(self, request: Request, client: Endpoint, server: Endpoint) -> Response:
        loop = asyncio.get_running_loop()
        started = loop.time()
        route = route_for(request.path)
        if "?" in request.path:
            spec = failure_spec(request.path)
            route = apply_failures(route, spec, self._cycles, self._config.identity.pod)
        upstream: UpstreamResult | None = None
        if route.kind is RouteKind.HEALTH:
            response = health_response(self._config.identity)
        else:
            if route.delay_ms:
                await asyncio.sleep(route.delay_ms / 1000)
            if self._upstream is not None:
                upstream = await self._upstream.fetch()
            response = echo_response(
                self._config.identity,
                route,
                request,
                client,
                server,
                upstream,
                self._config.min_body_bytes,
            )
        self._log.info(
            "http.request",
            protocol=request.protocol,
            method=request.method,
            path=request.path,
            status=response.status,
            client=f"{client.ip}:{client.port}",
            duration_ms=round((loop.time() - started) * 1000, 3),
            **_upstream_fields(upstream),
        )
        return response


def _upstream_fields(upstream: UpstreamResult | None) -> dict[str, object]:
    if upstream is None:
        return {}
    if upstream.error is not None:
        return {"upstream_error": upstream.error}
    return {"upstream_status": upstream.status}


async def serve(config: EchoConfig, log: FilteringBoundLogger, stop: asyncio.Event) -> int:
    server = EchoServer(config, log)
    try:
        bound = await server.start()
    except OSError as exc:
        log.error("server.failed", host=config.host, port=config.port, error=str(exc))
        return 1
    log.info(
        "server.listening",
        host=bound.ip,
        port=bound.port,
        protocols=["HTTP/1.1", "h2c"],
        upstream=config.upstream,
        pod=config.identity.pod,
        version=config.identity.version,
    )
    await stop.wait()
    log.info("server.stopping")
    await server.stop()
    log.info("server.stopped")
    return 0


def _check_upstream(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    if value is not None:
        try:
            HttpTarget.parse(value)
        except ValueError as exc:
            raise click.BadParameter(str(exc)) from exc
    return value


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--port",
    type=click.IntRange(0, 65535),
    envvar="PORT",
    default=8080,
    show_default=True,
    help="Port to listen on (env PORT).",
)
@click.option("--host", default="0.0.0.0", show_default=True, help="Address to bind.")
@click.option(
    "--upstream",
    metavar="URL",
    callback=_check_upstream,
    help="Also GET this http:// URL for every request and embed the answer.",
)
@click.option("--version", "version", envvar="VERSION", help="Version to report (env VERSION).")
@click.option(
    "--body-bytes",
    type=click.IntRange(0, 1 << 20),
    default=0,
    show_default=True,
    help="Pad echo bodies with spaces to at least this many bytes (for benchmarks).",
)
def main(port: int, host: str, upstream: str | None, version: str | None, body_bytes: int) -> None:
    """Echo HTTP/1.1 and h2c requests back as JSON, with this pod's identity."""
    log = configure_logging("http_echo")
    config = EchoConfig(
        host=host,
        port=port,
        identity=Identity.from_env(os.environ, version),
        upstream=upstream,
        min_body_bytes=body_bytes,
    )
    sys.exit(run(lambda stop: serve(config, log, stop), log))


if __name__ == "__main__":
    main(prog_name="python -m sample_apps.http_echo")
