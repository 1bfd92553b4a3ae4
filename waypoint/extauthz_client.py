"""Asking an ext_authz provider (the I/O around `waypoint.extauthz`).

The provider is a Service like any upstream: a ready endpoint of `service_namespace/
service_name:port` in the waypoint's view, reached the way the waypoint reaches backends
(`Waypoint._open`: HBONE with the waypoint's own identity to an enrolled endpoint, plain TCP
to one outside the mesh). HTTP providers get HTTP/1.1 (`waypoint.h1`), gRPC providers a unary
call over h2c (`waypoint.h2c`'s client link: length-prefixed message, `te: trailers`,
grpc-status from the trailers). Connections are kept and reused: HTTP/1.1 ones idle in a small
pool per provider, gRPC ones multiplex checks, a few per provider.

Bounds, each an error (failOpen / statusOnError decide) counted in
`weft_waypoint_ext_authz_overflows_total{provider,bound}`: checks in flight per waypoint
(MAX_IN_FLIGHT), the answer's size (`extauthz.MAX_ANSWER`), the provider's `timeout`.
Every check is counted in `weft_waypoint_ext_authz_checks_total{provider,result}` (allow, deny,
error) and timed in `weft_waypoint_ext_authz_check_duration_seconds{provider}`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import h2.events
import structlog
from prometheus_client import Counter, Gauge, Histogram

from meshcore.meshstate import Workload
from meshcore.resources.meshconfig import ExtAuthzProvider
from waypoint import extauthz, h1, h2wire
from waypoint.extauthz import CheckInput, CheckResult, Outcome
from waypoint.h1 import H1Channel, H1Error, H1LocalError, decode_headers, encode_headers
from waypoint.h2c import GONE, Backend, StreamEvent, StreamGone, _Gone
from waypoint.streamio import BufferedEnd, EndClosed
from waypoint.telemetry import Peer
from ztunnel.relay import End, Relay, connect_leg

log = structlog.get_logger("waypoint.extauthz")

# Checks waiting for an answer at once, all providers together; past it a check is an error
MAX_IN_FLIGHT = 1024
# Idle HTTP/1.1 connections kept per provider; gRPC connections per provider
MAX_IDLE_HTTP = 16
MAX_GRPC_CONNECTIONS = 4
GRPC_PATH = "/envoy.service.auth.v3.Authorization/Check"

CHECKS = Counter(
    "weft_waypoint_ext_authz_checks",
    "ext_authz checks (AuthorizationPolicy CUSTOM) by provider and result.",
    ("provider", "result"),
)
DURATION = Histogram(
    "weft_waypoint_ext_authz_check_duration_seconds",
    "Time to an ext_authz answer (or error), by provider.",
    ("provider",),
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0),
)
OVERFLOWS = Counter(
    "weft_waypoint_ext_authz_overflows",
    "ext_authz checks that hit a bound (in_flight, answer_size, timeout), by provider.",
    ("provider", "bound"),
)
IN_FLIGHT = Gauge("weft_waypoint_ext_authz_in_flight", "ext_authz checks waiting for an answer.")

Endpoint = tuple[Workload, int]
# The ready endpoints of a provider's Service port (the waypoint's view)
Resolve = Callable[[ExtAuthzProvider], list[Endpoint]]
# A relay end to one endpoint, as the waypoint reaches backends; raises CheckError or OSError
Open = Callable[[Workload, int], Awaitable[End]]


class CheckError(Exception):
    """No usable answer from the provider (the message says why)."""


class _Oversize(CheckError):
    pass


@dataclass
class _H1Conn:
    host: str
    end: BufferedEnd
    relay: Relay
    channel: H1Channel

    @property
    def usable(self) -> bool:
        return not (self.end.failed or self.end.at_eof or self.relay.done.done())

    def close(self) -> None:
        if not self.relay.done.done():
            self.end.reset()


@dataclass
class _Pools:
    """Connections by provider (the value: a provider changed in the mesh config is another
    pool, and `retain` closes the old one)."""

    http: dict[ExtAuthzProvider, list[_H1Conn]] = field(default_factory=dict)  # idle ones
    grpc: dict[ExtAuthzProvider, list[Backend]] = field(default_factory=dict)
    opening: dict[ExtAuthzProvider, asyncio.Lock] = field(default_factory=dict)


class ExtAuthzClient:
    def __init__(self, resolve: Resolve, open_end: Open, max_in_flight: int = MAX_IN_FLIGHT):
        self.resolve = resolve
        self.open_end = open_end
        self.max_in_flight = max_in_flight
        self.in_flight = 0
        self._pools = _Pools()

    async def check(self, provider: ExtAuthzProvider, check: CheckInput) -> CheckResult:
        """Ask `provider` about a request; never raises for the provider's failings (they are
        failOpen's to decide). Cancelling the caller cancels the check."""
        started = time.monotonic()
        if self.in_flight >= self.max_in_flight:
            OVERFLOWS.labels(provider.name, "in_flight").inc()
            result = extauthz.failure(
                provider, f"{self.max_in_flight} checks in flight already (MAX_IN_FLIGHT)"
            )
        else:
            self.in_flight += 1
            IN_FLIGHT.inc()
            try:
                async with asyncio.timeout(provider.timeout):
                    if extauthz.is_grpc(provider):
                        result = await self._grpc(provider, check)
                    else:
                        result = await self._http(provider, check)
            except TimeoutError:
                OVERFLOWS.labels(provider.name, "timeout").inc()
                result = extauthz.failure(provider, f"no answer within {provider.timeout:g} s")
            except _Oversize as err:
                OVERFLOWS.labels(provider.name, "answer_size").inc()
                result = extauthz.failure(provider, str(err))
            except CheckError as err:
                result = extauthz.failure(provider, str(err))
            finally:
                self.in_flight -= 1
                IN_FLIGHT.dec()
        elapsed = time.monotonic() - started
        CHECKS.labels(provider.name, result.outcome.value).inc()
        DURATION.labels(provider.name).observe(elapsed)
        if result.outcome is Outcome.ERROR:
            log.warning("extauthz.error", provider=provider.name, reason=result.reason)
        return result

    def close(self) -> None:
        for conns in self._pools.http.values():
            for conn in conns:
                conn.close()
        for backends in self._pools.grpc.values():
            for backend in backends:
                backend.close()
        self._pools = _Pools()

    # --- connections ----------------------------------------------------------------------

    async def _connect(self, provider: ExtAuthzProvider) -> tuple[str, BufferedEnd, Relay]:
        endpoints = self.resolve(provider)
        where = f"{provider.service_namespace}/{provider.service_name}:{provider.port}"
        if not endpoints:
            raise CheckError(f"no ready endpoint of Service {where}")
        last = ""
        for workload, port in endpoints:
            host = f"{workload.addresses[0]}:{port}"
            try:
                end = await self.open_end(workload, port)
            except (CheckError, OSError) as err:
                last = f"{host}: {err}"
                continue
            buffered = BufferedEnd("ext_authz")
            relay = Relay(end, buffered)
            relay.start()
            return host, buffered, relay
        raise CheckError(f"no endpoint of Service {where} reachable ({last})")

    def _live_hosts(self, provider: ExtAuthzProvider) -> set[str]:
        """The provider's ready endpoints now: a kept connection to another is closed."""
        return {f"{w.addresses[0]}:{port}" for w, port in self.resolve(provider)}

    def retain(self, providers: Iterable[ExtAuthzProvider]) -> None:
        """Close the connections of providers no longer in the mesh config (or changed)."""
        keep = set(providers)
        pools = self._pools
        for provider in [p for p in pools.http if p not in keep]:
            for conn in pools.http.pop(provider):
                conn.close()
        for provider in [p for p in pools.grpc if p not in keep]:
            for backend in pools.grpc.pop(provider):
                backend.close()
        for provider in [p for p in pools.opening if p not in keep]:
            del pools.opening[provider]

    def _lock(self, provider: ExtAuthzProvider) -> asyncio.Lock:
        return self._pools.opening.setdefault(provider, asyncio.Lock())

    # --- HTTP -------------------------------------------------------------------------------

    async def _h1_conn(self, provider: ExtAuthzProvider) -> _H1Conn:
        idle = self._pools.http.setdefault(provider, [])
        live = self._live_hosts(provider) if idle else set()
        while idle:
            conn = idle.pop()
            if conn.usable and conn.host in live:
                return conn
            conn.close()
        host, end, relay = await self._connect(provider)
        return _H1Conn(host, end, relay, H1Channel(end, h1.Role.CLIENT))

    def _h1_done(self, provider: ExtAuthzProvider, conn: _H1Conn) -> None:
        idle = self._pools.http.setdefault(provider, [])
        if conn.channel.reusable() and conn.usable and len(idle) < MAX_IDLE_HTTP:
            idle.append(conn)
        else:
            conn.close()

    async def _http(self, provider: ExtAuthzProvider, check: CheckInput) -> CheckResult:
        request = extauthz.http_check_request(provider, check)
        conn = await self._h1_conn(provider)
        done = False
        try:
            channel = conn.channel
            head = h1.Request(
                method=request.method.encode("latin-1"),
                target=request.target.encode("latin-1"),
                headers=encode_headers(request.headers),
            )
            await channel.send(head, flush=not request.body)
            if request.body:
                await channel.send(h1.Data(data=request.body), flush=False)
            await channel.send(h1.EndOfMessage())
            while True:
                event = await channel.next_event()
                if isinstance(event, h1.Response):
                    break
                if not isinstance(event, h1.InformationalResponse):
                    raise CheckError(f"{conn.host} closed the connection before answering")
            body = bytearray()
            while True:
                piece = await channel.next_event()
                if isinstance(piece, h1.Data):
                    body += piece.data
                    if len(body) > extauthz.MAX_ANSWER:
                        raise _Oversize(f"answer over {extauthz.MAX_ANSWER} bytes")
                elif isinstance(piece, h1.EndOfMessage):
                    break
                else:
                    raise CheckError(f"{conn.host} closed the connection mid-answer")
            done = True
        except H1Error as err:
            if err.status == 431:  # (the answer's head is over h1.MAX_HEAD)
                raise _Oversize(f"HTTP to {conn.host}: {err}") from None
            raise CheckError(f"HTTP to {conn.host}: {err}") from None
        except (EndClosed, H1LocalError) as err:
            raise CheckError(f"HTTP to {conn.host}: {err or type(err).__name__}") from None
        finally:
            if done:
                self._h1_done(provider, conn)
            else:
                conn.close()
        headers = decode_headers(event.headers)
        return extauthz.from_http(provider, event.status_code, headers, bytes(body))

    # --- gRPC -------------------------------------------------------------------------------

    async def _h2_conn(self, provider: ExtAuthzProvider) -> Backend:
        async with self._lock(provider):
            conns = self._pools.grpc.setdefault(provider, [])
            live = self._live_hosts(provider) if conns else set()
            for gone in [b for b in conns if not b.usable or b.host not in live]:
                conns.remove(gone)
                gone.close()
            for backend in conns:
                if backend.can_open():
                    return backend
            if len(conns) >= MAX_GRPC_CONNECTIONS:
                raise CheckError(
                    f"{len(conns)} gRPC connections to the provider are full (MAX_GRPC_CONNECTIONS)"
                )
            host, end, relay = await self._connect(provider)
            backend = Backend(host, end, relay, Peer(None, ""))
            conns.append(backend)
            return backend

    async def _grpc(self, provider: ExtAuthzProvider, check: CheckInput) -> CheckResult:
        message = extauthz.grpc_check_request(provider, check).SerializeToString()
        backend = await self._h2_conn(provider)
        link = backend.link
        stream_id = link.conn.get_next_available_stream_id()
        queue: asyncio.Queue[StreamEvent] = asyncio.Queue()
        link.streams[stream_id] = queue
        authority = f"{provider.service_name}.{provider.service_namespace}:{provider.port}"
        head = [
            (":method", "POST"),
            (":scheme", "http"),
            (":path", GRPC_PATH),
            (":authority", authority),
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("grpc-timeout", f"{max(1, int(provider.timeout * 1000))}m"),
        ]
        finished = False
        try:
            try:
                await link.send_headers(stream_id, head)
                framed = b"\x00" + len(message).to_bytes(4, "big") + message
                await link.send_data(stream_id, framed, end_stream=True)
                status, trailers, payload = await self._grpc_answer(backend, stream_id, queue)
            except StreamGone as err:
                raise CheckError(f"gRPC to {backend.host}: {err}") from None
            finished = True
        finally:
            if not finished:
                link.reset(stream_id)
            link.forget(stream_id)
        if status != 200:
            raise CheckError(f"gRPC to {backend.host}: HTTP status {status}")
        grpc_status = h2wire.grpc_status(trailers)
        if grpc_status != "0":
            text = h2wire.header(tuple(trailers), "grpc-message") or ""
            raise CheckError(
                f"gRPC to {backend.host}: grpc-status {grpc_status or 'missing'} {text[:200]}"
            )
        if len(payload) < 5 or payload[0] != 0:
            raise CheckError(f"gRPC to {backend.host}: not one uncompressed message")
        length = int.from_bytes(payload[1:5], "big")
        if len(payload) != 5 + length:
            raise CheckError(f"gRPC to {backend.host}: message framing does not add up")
        return extauthz.from_grpc(provider, bytes(payload[5:]), check.headers)

    @staticmethod
    async def _grpc_answer(
        backend: Backend, stream_id: int, queue: asyncio.Queue[StreamEvent]
    ) -> tuple[int, list[tuple[str, str]], bytearray]:
        """The answer's :status, trailers (the head of a trailers-only answer) and body."""
        status = 0
        trailers: list[tuple[str, str]] = []
        payload = bytearray()
        while True:
            event = await queue.get()
            if isinstance(event, h2.events.ResponseReceived):
                head = h2wire.decode(event.headers or [])
                found = h2wire.header(head, ":status") or "0"
                status = int(found) if found.isdigit() else 0
                if event.stream_ended is not None:  # trailers-only
                    return status, list(head), payload
            elif isinstance(event, h2.events.InformationalResponseReceived):
                continue
            elif isinstance(event, h2.events.DataReceived):
                payload += event.data or b""
                backend.link.ack(stream_id, event.flow_controlled_length or 0)
                if len(payload) > extauthz.MAX_ANSWER + 5:
                    raise _Oversize(f"answer over {extauthz.MAX_ANSWER} bytes")
                if event.stream_ended is not None:
                    return status, trailers, payload
            elif isinstance(event, h2.events.TrailersReceived):
                return status, list(h2wire.decode(event.headers or [])), payload
            elif isinstance(event, h2.events.StreamEnded):
                return status, trailers, payload
            elif isinstance(event, h2.events.StreamReset):
                raise CheckError(f"gRPC to {backend.host}: stream reset ({event.error_code!s})")
            elif isinstance(event, _Gone) or event is GONE:
                raise CheckError(f"gRPC to {backend.host}: the connection ended")


async def tcp_open(workload: Workload, port: int) -> End:
    """Plain TCP to an endpoint's first address (a provider outside the mesh, and tests)."""
    return await connect_leg(workload.addresses[0], port)


__all__ = ["MAX_IN_FLIGHT", "CheckError", "ExtAuthzClient", "tcp_open"]
