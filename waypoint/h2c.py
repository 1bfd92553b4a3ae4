"""h2c and gRPC at L7: one client HTTP/2 connection (an inbound CONNECT stream) served with
h2, each request stream routed and forwarded over HTTP/2 to a backend endpoint.

    client stream (h2 server side) --> routing (GRPCRoute for gRPC when one attaches to the
    Service port, else HTTPRoute) --> Respond: answered here (gRPC: 200 trailers-only with
    grpc-status) | Forward: a ready endpoint of the backend, over an HBONE stream (the
    proxy's `_open`: the waypoint's identity, `forwarded: for=<client>`), speaking h2c

One backend h2 connection per endpoint per client connection, opened on first use, with the
request streams of that client connection multiplexed on it. Bodies and trailers go both
ways as they come, under HTTP/2 flow control: the window is given back to the sender only
once the bytes were passed on (and the peer's window allowed it), so a slow side holds up
its sender, never our memory. Each stream is counted and logged as HTTP/1.1 requests are
(`waypoint.telemetry`: `request_protocol` http or grpc, `grpc_response_status`), and traced
as they are (`waypoint.tracing`): a server span per stream, a client span for its backend
stream whose context the backend gets in `traceparent` (gRPC: the RPC conventions'
attributes, `rpc.grpc.status_code` from the trailers).

Failures: an endpoint that cannot be reached, or a backend that resets before its response,
is a 503 (gRPC: grpc-status 14 UNAVAILABLE) with the reason in the access log; a backend
failing after its response started resets the client's stream; a client resetting a
stream resets the backend's. A client that breaks HTTP/2 (or a bound: `waypoint.h2wire`)
gets GOAWAY and its connection ends; other connections go on.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings
import structlog
from h2.stream import StreamState

from meshcore.meshstate import Workload
from waypoint import (
    authz,
    extauthz,
    h2wire,
    jwtauth,
    pathnorm,
    ratelimit_store,
    routing,
    telemetry,
    tracing,
    trafficpolicy,
    xfcc,
)
from waypoint.extauthz import CheckResult
from waypoint.h2wire import H2Request, H2RequestError
from waypoint.ratelimit import GRPC_RESOURCE_EXHAUSTED, RATE_LIMITED
from waypoint.streamio import BufferedEnd, EndClosed
from waypoint.telemetry import Peer, RequestRecord
from waypoint.tracing import NO_TRACE, RequestTrace
from waypoint.trafficpolicy import ClusterState
from ztunnel.relay import Relay

if TYPE_CHECKING:
    from waypoint.proxy import Client, Destination, Waypoint

log = structlog.get_logger("waypoint.h2c")

# A backend's response head must come within this (the HTTP/1.1 side's RESPONSE_TIMEOUT)
RESPONSE_TIMEOUT = 300.0
# A request body read for an ext_authz check must come within this, frame to frame
BODY_TIMEOUT = 30.0
# Backend h2 connections per client connection (one per endpoint, more where an endpoint's
# MAX_CONCURRENT_STREAMS is reached); past this the least recently used idle one is closed,
# and a stream finding every connection to its endpoint full (none idle to close) is a 503
MAX_BACKENDS = 16


@dataclass
class GrpcRecord(RequestRecord):
    """A request record with gRPC's status for Istio's `grpc_response_status` label."""

    grpc_status: str = ""

    def grpc_response_status(self) -> str:
        return self.grpc_status


class StreamGone(ConnectionError):
    """The peer reset the stream, or its connection ended."""


class _Gone:
    """Put in a stream's queue when its connection ended (or, `client`, when the client
    reset the stream the backend's one serves)."""

    def __init__(self, client: bool = False) -> None:
        self.client = client


GONE = _Gone()
CLIENT_GONE = _Gone(client=True)
StreamEvent = h2.events.Event | _Gone


class H2Link:
    """One h2 connection on a `BufferedEnd` (either side): a reader feeds h2 and hands each
    stream's events to its queue; writers send under the peer's flow-control windows."""

    def __init__(self, end: BufferedEnd, *, client_side: bool, name: str) -> None:
        config = h2.config.H2Configuration(
            client_side=client_side, header_encoding=None, validate_inbound_headers=True
        )
        self.end = end
        self.name = name
        self.conn = h2.connection.H2Connection(config=config)
        self.conn.local_settings = h2.settings.Settings(
            client=client_side, initial_values=h2wire.local_settings()
        )
        self.streams: dict[int, asyncio.Queue[StreamEvent]] = {}
        self.closed = False
        self._window = asyncio.Event()
        self.last_used = time.monotonic()

    def initiate(self) -> None:
        self.conn.initiate_connection()
        self.conn.increment_flow_control_window(h2wire.CONNECTION_WINDOW - 65535)
        self.flush()

    def flush(self) -> None:
        data = self.conn.data_to_send()
        if data and not self.closed:
            try:
                self.end.write(data)
            except EndClosed:
                self.fail()

    async def drain(self) -> None:
        self.flush()
        try:
            await self.end.drain()
        except EndClosed:
            self.fail()
            raise StreamGone(f"the {self.name} connection ended") from None

    def fail(self) -> None:
        if self.closed:
            return
        self.closed = True
        self._window.set()
        for queue in self.streams.values():
            queue.put_nowait(GONE)

    def dispatch(self, events: list[h2.events.Event]) -> list[h2.events.Event]:
        """Events for known streams go to their queues; the rest are returned."""
        rest: list[h2.events.Event] = []
        for ev in events:
            if isinstance(ev, h2.events.StreamReset):
                self._window.set()  # a sender waiting on that stream finds it gone
            if isinstance(ev, (h2.events.WindowUpdated, h2.events.RemoteSettingsChanged)):
                self._window.set()
                rest.append(ev)
                continue
            if isinstance(ev, h2.events.RequestReceived) and ev.stream_id:
                # a queue now, so the events after it in this batch reach the stream
                self.streams[ev.stream_id] = asyncio.Queue()
                rest.append(ev)
                continue
            stream_id = getattr(ev, "stream_id", None)
            queue = self.streams.get(stream_id) if stream_id else None
            if queue is not None:
                queue.put_nowait(ev)
                if isinstance(ev, h2.events.StreamReset):
                    rest.append(ev)  # counted by the connection too (rapid reset)
            else:
                if isinstance(ev, h2.events.DataReceived) and ev.stream_id:
                    # nobody reads this stream any more: give the window back
                    self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                rest.append(ev)
        return rest

    def forget(self, stream_id: int) -> None:
        """Nobody reads this stream any more: body bytes still queued (a request answered
        here, a response cut short) give their window back, or the connection's would
        shrink for good."""
        queue = self.streams.pop(stream_id, None)
        while queue is not None and not queue.empty():
            ev = queue.get_nowait()
            if isinstance(ev, h2.events.DataReceived):
                self.ack(stream_id, ev.flow_controlled_length or 0)

    def ack(self, stream_id: int, length: int) -> None:
        if length and not self.closed:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.conn.acknowledge_received_data(length, stream_id)
            self.flush()

    async def send_headers(
        self, stream_id: int, headers: list[tuple[str, str]], end_stream: bool = False
    ) -> None:
        if self.closed:
            raise StreamGone(f"the {self.name} connection ended")
        self.last_used = time.monotonic()
        try:
            self.conn.send_headers(stream_id, h2wire.encode(headers), end_stream=end_stream)
        except h2.exceptions.ProtocolError:  # closed, or gone from h2's table
            raise StreamGone(f"the {self.name} stream was reset") from None
        await self.drain()

    async def send_data(self, stream_id: int, data: bytes, end_stream: bool = False) -> None:
        view = memoryview(data)
        while view:
            if self.closed:
                raise StreamGone(f"the {self.name} connection ended")
            stream = self.conn.streams.get(stream_id)
            if stream is None or stream.closed:  # reset meanwhile: h2 says window 0
                raise StreamGone(f"the {self.name} stream was reset")
            try:
                room = min(
                    self.conn.local_flow_control_window(stream_id),
                    self.conn.max_outbound_frame_size,
                    len(view),
                )
            except h2.exceptions.ProtocolError:  # closed, or gone from h2's table
                raise StreamGone(f"the {self.name} stream was reset") from None
            if room <= 0:
                self._window.clear()
                await self._window.wait()
                continue
            self.conn.send_data(stream_id, bytes(view[:room]))
            view = view[room:]
            await self.drain()
        if end_stream:
            await self.end_stream(stream_id)

    async def end_stream(self, stream_id: int) -> None:
        if self.closed:
            raise StreamGone(f"the {self.name} connection ended")
        try:
            self.conn.end_stream(stream_id)
        except h2.exceptions.ProtocolError:  # closed, or gone from h2's table
            raise StreamGone(f"the {self.name} stream was reset") from None
        await self.drain()

    def reset(self, stream_id: int, code: int = h2.errors.ErrorCodes.CANCEL) -> None:
        if self.closed:
            return
        with contextlib.suppress(h2.exceptions.ProtocolError):
            self.conn.reset_stream(stream_id, code)
        self.flush()

    def peer_sending(self, stream_id: int) -> bool:
        """Whether the peer may still send on a stream whose our half is closed."""
        stream = self.conn.streams.get(stream_id)
        return stream is not None and stream.state_machine.state is StreamState.HALF_CLOSED_LOCAL

    def close(self, code: int = h2.errors.ErrorCodes.NO_ERROR) -> None:
        if not self.closed:
            with contextlib.suppress(h2.exceptions.ProtocolError):
                self.conn.close_connection(code)
            self.flush()
            self.fail()


class Backend:
    """An h2c connection to one endpoint over HBONE, shared by the request streams of one
    client connection."""

    def __init__(self, host: str, end: BufferedEnd, relay: Relay, peer: Peer) -> None:
        self.host = host
        self.relay = relay
        self.peer = peer
        self.link = H2Link(end, client_side=True, name="backend")
        self.link.initiate()
        self.reader = asyncio.ensure_future(self._read())

    @property
    def usable(self) -> bool:
        link = self.link
        return not link.closed and link.conn.state_machine.state.name != "CLOSED"

    def can_open(self) -> bool:
        conn = self.link.conn
        return (
            self.usable and conn.open_outbound_streams < conn.remote_settings.max_concurrent_streams
        )

    async def _read(self) -> None:
        link = self.link
        try:
            while not link.closed:
                data = await link.end.read()
                if not data:
                    break
                try:
                    events = link.conn.receive_data(data)
                except h2.exceptions.ProtocolError as err:
                    log.info("waypoint.backend_protocol_error", endpoint=self.host, error=str(err))
                    link.flush()
                    break
                for ev in link.dispatch(events):
                    if isinstance(ev, h2.events.ConnectionTerminated):
                        link.flush()
                        link.fail()
                link.flush()
        except EndClosed:
            pass
        finally:
            link.fail()

    def close(self) -> None:
        self.link.close()
        self.reader.cancel()
        if not self.relay.done.done():
            self.link.end.write_eof()


class Front:
    """One client connection: h2's server side on the client's `BufferedEnd`."""

    def __init__(
        self, waypoint: Waypoint, end: BufferedEnd, client: Client, dest: Destination
    ) -> None:
        self.waypoint = waypoint
        self.client = client
        self.dest = dest
        self.link = H2Link(end, client_side=False, name="client")
        self.guard = h2wire.FrameGuard()
        self.resets = h2wire.ResetBudget(time.monotonic)
        self.calls: dict[int, asyncio.Task[None]] = {}
        self.backends: dict[str, list[Backend]] = {}  # endpoint ip:port -> connections
        self._opening = asyncio.Lock()

    async def serve(self) -> None:
        link = self.link
        link.initiate()
        try:
            while not link.closed:
                idle = None if self.calls else self.waypoint.config.idle_timeout
                try:
                    data = await asyncio.wait_for(link.end.read(), idle)
                except TimeoutError:
                    log.info("waypoint.idle_closed", source_principal=self.client.principal)
                    link.close()
                    return
                if not data:
                    return
                refusal = self.guard.feed(data)
                if refusal is not None:
                    self._refuse(refusal)
                    return
                try:
                    events = link.conn.receive_data(data)
                except h2.exceptions.ProtocolError as err:
                    # h2 has queued its GOAWAY
                    self._bad_client(str(err) or type(err).__name__)
                    link.flush()
                    return
                for ev in link.dispatch(events):
                    if isinstance(ev, h2.events.RequestReceived) and ev.stream_id:
                        self._start(ev.stream_id, ev.headers or [])
                    elif isinstance(ev, h2.events.StreamReset) and self.resets.count():
                        self._refuse(
                            f"more than {h2wire.MAX_RESETS} streams reset within "
                            f"{h2wire.RESET_WINDOW_S:g} s"
                        )
                        return
                    elif isinstance(ev, h2.events.ConnectionTerminated):
                        link.flush()
                        return
                await link.drain()
        except (EndClosed, StreamGone):
            pass
        finally:
            link.fail()
            for task in list(self.calls.values()):
                task.cancel()
            if self.calls:
                await asyncio.gather(*self.calls.values(), return_exceptions=True)
            for conns in self.backends.values():
                for backend in conns:
                    backend.close()

    def _refuse(self, reason: str) -> None:
        log.warning(
            "waypoint.h2_limit",
            source_principal=self.client.principal,
            source_address=self.client.address,
            reason=reason,
        )
        self.link.close(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM)

    def _bad_client(self, reason: str) -> None:
        record = RequestRecord(
            "", "", "", Peer(self.client.workload, self.client.principal), self.client.address
        )
        record.protocol = "http"
        record.response_flags = telemetry.DOWNSTREAM_PROTOCOL_ERROR
        record.reason = f"HTTP/2: {reason}"
        record.done(0.0)

    def _start(self, stream_id: int, raw: list[tuple[bytes, bytes]]) -> None:
        task = asyncio.ensure_future(self._call(stream_id, raw))
        self.calls[stream_id] = task

        def done(_: asyncio.Future[None]) -> None:
            self.calls.pop(stream_id, None)
            self.link.forget(stream_id)

        task.add_done_callback(done)

    # --- one request stream ------------------------------------------------------------

    async def _call(self, stream_id: int, raw: list[tuple[bytes, bytes]]) -> None:
        started = time.monotonic()
        client = self.client
        try:
            request = h2wire.parse_request(raw)
            # who called, set here and never taken from the client (waypoint/xfcc.py)
            request = dataclasses.replace(
                request,
                # routed, authorised and forwarded as normalised (waypoint.pathnorm.forwarded)
                path=pathnorm.forwarded(request.path, self.waypoint.config.path_normalization),
                headers=xfcc.sanitize_set(
                    request.headers, self.waypoint.config.identity, client.principal
                ),
            )
        except H2RequestError as err:
            record = GrpcRecord("", "", "", Peer(client.workload, client.principal), client.address)
            record.response_flags = telemetry.DOWNSTREAM_PROTOCOL_ERROR
            record.reason = str(err)
            with contextlib.suppress(StreamGone):
                await self._answer(stream_id, None, 400, None, str(err), (), record)
            record.done((time.monotonic() - started) * 1000)
            return
        record = GrpcRecord(
            request.method,
            request.path,
            request.authority,
            Peer(client.workload, client.principal),
            client.address,
            protocol="grpc" if request.grpc else "http",
            trace_id=telemetry.trace_id(h2wire.header(request.headers, "traceparent")),
            user_agent=h2wire.header(request.headers, "user-agent") or "",
            request_id=h2wire.header(request.headers, "x-request-id") or "",
            target=str(self.dest.target),
        )
        trace = tracing.request_trace(
            self.waypoint.tracing,
            tracing.Inbound(
                request.method,
                request.path,
                request.authority,
                request.headers,
                client.address,
                client.principal,
                self.dest.target.port,
                protocol_version="2",
                grpc=request.grpc,
            ),
        )
        record.trace_id = trace.trace_id or record.trace_id
        try:
            await self._route_and_forward(stream_id, request, record, trace)
        except StreamGone:
            record.response_flags = telemetry.DOWNSTREAM_RESET
            record.reason = record.reason or "the client's stream was reset"
        except asyncio.CancelledError:
            record.response_flags = telemetry.DOWNSTREAM_RESET
            record.reason = record.reason or "the client's connection ended"
            raise
        finally:
            record.done((time.monotonic() - started) * 1000)
            trace.done(record, record.grpc_status)

    def _decide(self, request: H2Request) -> routing.Forward | routing.Respond:
        dest = self.dest
        if dest.service is None or dest.port is None:  # a pod addressed directly
            return routing.Forward(
                "", "", dest.target.port, request.path, request.authority, request.headers
            )
        workload = self.client.workload
        route_request = request.route_request(
            self.client.namespace, workload.labels if workload is not None else None
        )
        if request.grpc:
            tables = self.waypoint.grpc_tables
            table = tables.table(dest.service, dest.port)
            if not table.empty:
                return routing.route_grpc(table, route_request, tables.rand)
        return self.waypoint.router.decide(dest.service, dest.port, route_request)

    async def _route_and_forward(
        self,
        stream_id: int,
        request: H2Request,
        record: GrpcRecord,
        trace: RequestTrace = NO_TRACE,
    ) -> None:
        request_auth = None
        authn = await self.waypoint.authenticate(
            self.dest, self.client, request.path, request.headers
        )
        if authn is not None:  # (Envoy: jwt_authn before RBAC)
            if authn.failure:
                self.waypoint.unauthenticated(record, authn)
                await self._unauthenticated(stream_id, request, record)
                return
            request = dataclasses.replace(request, headers=authn.headers)
            request_auth = authn.auth
        access = self.waypoint.authorize(
            self.dest, self.client, request.method, request.path, request.authority,
            request.headers, request_auth=request_auth,
        )  # fmt: skip
        allowed_headers: routing.Headers = ()  # (ext_authz: added to the response)
        if access is not None and access.custom:  # (Envoy: ext_authz, then RBAC)
            body: bytes | None = None
            complete = True
            wanted = extauthz.body_wanted(self.waypoint.custom_providers(access))
            if wanted is not None:
                try:
                    body, complete = await self._peek_body(stream_id, wanted.limit)
                except TimeoutError:
                    record.reason = f"the request body stalled for {BODY_TIMEOUT:g} s"
                    grpc = h2wire.GRPC_DEADLINE_EXCEEDED if request.grpc else None
                    await self._answer(stream_id, request, 408, grpc, record.reason, (), record)
                    return
                if not complete and not wanted.partial:
                    record.reason = f"request body over {wanted.limit} B for ext_authz"
                    grpc = _grpc_for_http(413) if request.grpc else None
                    await self._answer(stream_id, request, 413, grpc, record.reason, (), record)
                    return
            checked = await self.waypoint.check_custom(
                access, self.dest, self.client, record, request.headers, "HTTP/2", body,
                not complete,
            )  # fmt: skip
            if not checked.allowed:
                await self._custom_deny(stream_id, request, record, checked)
                return
            request = dataclasses.replace(request, headers=checked.request_headers(request.headers))
            allowed_headers = checked.downstream
        if access is not None and not access.allowed:  # (Envoy: RBAC before the router)
            self.waypoint.denied(record, access)
            await self._deny(stream_id, request, record)
            return
        decision = self._decide(request)
        if isinstance(decision, routing.Respond):
            record.response_flags = telemetry.NO_ROUTE if decision.status == 404 else "-"
            record.reason = decision.reason
            grpc = decision.grpc_status if request.grpc else None
            if request.grpc and grpc is None:
                grpc = _grpc_for_http(decision.status)
            await self._answer(
                stream_id, request, decision.status, grpc, decision.reason, decision.headers, record
            )
            return
        if allowed_headers:
            ops = (*decision.response_header_ops, routing.HeaderOps(set=allowed_headers))
            decision = dataclasses.replace(decision, response_header_ops=ops)
        limiter = self.waypoint.rate_limits.for_request(self.dest.service, decision.route_key)
        if limiter is not None:  # (no await at all when no policy applies)
            verdict = await ratelimit_store.check(
                limiter,
                self.waypoint.ratelimit_store,
                request.path,
                request.headers,
                self.client.principal,
            )
            if verdict is not None and not verdict.allowed:
                record.response_flags = RATE_LIMITED
                record.reason = f"rate limited by RateLimitPolicy {limiter.name}"
                await self._answer(
                    stream_id,
                    request,
                    429,
                    GRPC_RESOURCE_EXHAUSTED if request.grpc else None,
                    record.reason,
                    verdict.headers(),
                    record,
                )
                return
        if decision.fault is not None:  # a VirtualService fault, drawn by the router
            fault = decision.fault
            record.response_flags = telemetry.fault_flags(fault)
            if fault.delay:
                await asyncio.sleep(fault.delay)
            if fault.abort_status is not None:
                record.reason = "fault injected (abort)"
                grpc = None
                if request.grpc:
                    grpc = fault.abort_grpc
                    if grpc is None:
                        grpc = _grpc_for_http(fault.abort_status)
                await self._answer(
                    stream_id, request, fault.abort_status, grpc, record.reason, (), record
                )
                return
        decision = self.waypoint._with_hash_cookie(decision)
        state = _Exchange()
        # A DestinationRule's state for the Service: circuit breakers, outlier detection
        state.cluster = self.waypoint._cluster(decision)
        candidates = self.waypoint._backend_candidates(decision, self.dest, record, state.cluster)
        budget = decision.timeouts.request if decision.timeouts else None
        timeout = asyncio.timeout(budget or None)
        try:
            async with timeout:
                breaker = state.cluster if state.cluster and state.cluster.breaker else None
                if breaker is not None and not await self.waypoint._admit(breaker):
                    record.response_flags = trafficpolicy.UPSTREAM_OVERFLOW
                    record.reason = f"circuit breaker open for {breaker.hostname}"
                    grpc = h2wire.GRPC_UNAVAILABLE if request.grpc else None
                    overloaded = ((trafficpolicy.OVERLOADED_HEADER, "true"),)
                    await self._answer(
                        stream_id, request, 503, grpc, record.reason, overloaded, record
                    )
                    return
                try:
                    await self._exchange(
                        stream_id, request, decision, candidates, record, state, trace
                    )
                finally:
                    if breaker is not None:
                        self.waypoint._release(breaker)
        except TimeoutError:
            if not timeout.expired():
                raise
            record.response_flags = telemetry.UPSTREAM_TIMEOUT
            record.reason = f"route timeout ({budget:g} s)"
            if state.backend is not None and state.backend_stream:
                state.backend.link.reset(state.backend_stream)
            if state.responded:
                self.link.reset(stream_id)
            else:
                grpc = h2wire.GRPC_DEADLINE_EXCEEDED if request.grpc else None
                await self._answer(stream_id, request, 504, grpc, record.reason, (), record)

    async def _exchange(
        self,
        stream_id: int,
        request: H2Request,
        decision: routing.Forward,
        candidates: list[tuple[Workload, int]],
        record: GrpcRecord,
        state: _Exchange,
        trace: RequestTrace = NO_TRACE,
    ) -> None:
        from waypoint.proxy import BackendError

        try:
            backend = await self._backend_for(candidates)
        except BackendError as err:
            record.response_flags = err.flags
            record.reason = str(err)
            grpc = h2wire.GRPC_UNAVAILABLE if request.grpc else None
            await self._answer(stream_id, request, 503, grpc, str(err), (), record)
            return
        record.upstream_host = backend.host
        record.destination = backend.peer
        state.backend = backend
        link = backend.link
        out_id = link.conn.get_next_available_stream_id()
        queue: asyncio.Queue[StreamEvent] = asyncio.Queue()
        link.streams[out_id] = queue
        state.backend_stream = out_id
        head = h2wire.backend_request(request.method, decision)
        if trace is not NO_TRACE:  # a client span for the backend stream, in its traceparent
            sent = trace.attempt(h2wire.encode(head), record, decision.backend_port)
            head = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in sent]
        if state.cluster is not None:
            state.cluster.attempt_started(backend.host)
        abandoned = False
        try:
            try:
                await link.send_headers(out_id, head)
            except (StreamGone, h2.exceptions.ProtocolError) as err:
                record.response_flags = telemetry.UPSTREAM_FAILURE
                record.reason = f"sending the request: {err}"
                trace.attempt_done(0, record.reason)
                grpc = h2wire.GRPC_UNAVAILABLE if request.grpc else None
                await self._answer(stream_id, request, 503, grpc, record.reason, (), record)
                return
            upload = asyncio.ensure_future(self._upload(stream_id, backend, out_id, record))
            try:
                await self._download(
                    stream_id, request, decision, backend, out_id, queue, record, state
                )
                if record.response_flags == telemetry.UPSTREAM_RESET:
                    trace.attempt_done(state.status, record.reason)
                else:
                    trace.attempt_done(state.status, grpc_status=state.grpc_status)
            finally:
                if not upload.done():
                    upload.cancel()
                with contextlib.suppress(asyncio.CancelledError, StreamGone):
                    await upload
        except BaseException:
            abandoned = True
            link.reset(out_id)
            raise
        finally:
            link.forget(out_id)
            if state.cluster is not None and abandoned:
                state.cluster.attempt_abandoned(backend.host)
            elif state.cluster is not None:  # (least request, outlier detection)
                state.cluster.attempt_done(backend.host, state.status or None)

    async def _upload(
        self, stream_id: int, backend: Backend, out_id: int, record: GrpcRecord
    ) -> None:
        """The client's body (and trailers) to the backend, window by window."""
        queue = self.link.streams.get(stream_id)
        if queue is None:
            return
        link = backend.link
        while True:
            ev = await queue.get()
            if isinstance(ev, h2.events.DataReceived):
                data = ev.data or b""
                record.request_bytes += len(data)
                try:
                    await link.send_data(out_id, data)
                finally:
                    self.link.ack(stream_id, ev.flow_controlled_length or 0)
                if ev.stream_ended is not None:
                    await link.end_stream(out_id)
                    return
            elif isinstance(ev, h2.events.TrailersReceived):
                await link.send_headers(out_id, h2wire.trailers(ev.headers or []), end_stream=True)
                return
            elif isinstance(ev, h2.events.StreamEnded):
                await link.end_stream(out_id)
                return
            elif isinstance(ev, (h2.events.StreamReset, _Gone)):
                link.reset(out_id)
                backend_queue = link.streams.get(out_id)
                if backend_queue is not None:  # the response side stops too
                    backend_queue.put_nowait(CLIENT_GONE)
                raise StreamGone("the client reset its stream")

    async def _download(
        self,
        stream_id: int,
        request: H2Request,
        decision: routing.Forward,
        backend: Backend,
        out_id: int,
        queue: asyncio.Queue[StreamEvent],
        record: GrpcRecord,
        state: _Exchange,
    ) -> None:
        """The backend's response to the client: head (with the route's response header
        operations), body, trailers."""
        front = self.link
        while True:
            try:
                ev = await asyncio.wait_for(
                    queue.get(), None if state.responded else RESPONSE_TIMEOUT
                )
            except TimeoutError:
                ev = GONE
                record.reason = f"no response within {RESPONSE_TIMEOUT:g} s"
            if isinstance(ev, h2.events.ResponseReceived):
                try:
                    status, head = h2wire.client_response(
                        ev.headers or [], decision.response_header_ops
                    )
                except H2RequestError as err:
                    ev = GONE
                    record.reason = f"bad response from the backend: {err}"
                else:
                    record.response_code = state.status = status
                    if request.grpc:
                        record.grpc_status = state.grpc_status = h2wire.grpc_status(head)
                    ended = ev.stream_ended is not None
                    await front.send_headers(stream_id, head, end_stream=ended)
                    state.responded = True
                    if ended:
                        return
                    continue
            if isinstance(ev, h2.events.InformationalResponseReceived):
                continue
            if isinstance(ev, h2.events.DataReceived):
                data = ev.data or b""
                record.response_bytes += len(data)
                try:
                    await front.send_data(stream_id, data)
                finally:
                    backend.link.ack(out_id, ev.flow_controlled_length or 0)
                if ev.stream_ended is not None:
                    await front.end_stream(stream_id)
                    return
                continue
            if isinstance(ev, h2.events.TrailersReceived):
                tail = h2wire.trailers(ev.headers or [])
                if request.grpc:
                    state.grpc_status = h2wire.grpc_status(tail) or state.grpc_status
                    record.grpc_status = state.grpc_status
                await front.send_headers(stream_id, tail, end_stream=True)
                return
            if isinstance(ev, h2.events.StreamEnded):
                await front.end_stream(stream_id)
                return
            if isinstance(ev, _Gone) and ev.client:
                raise StreamGone("the client reset its stream")
            # reset by the backend, its connection gone, or no response in time
            record.response_flags = telemetry.UPSTREAM_RESET
            if isinstance(ev, h2.events.StreamReset):
                record.reason = f"the backend reset the stream ({ev.error_code!s})"
            else:
                record.reason = record.reason or "the backend's connection ended"
            if state.responded:
                front.reset(stream_id, h2.errors.ErrorCodes.INTERNAL_ERROR)
            else:
                grpc = h2wire.GRPC_UNAVAILABLE if request.grpc else None
                await self._answer(stream_id, request, 503, grpc, record.reason, (), record)
            return

    async def _backend_for(self, candidates: list[tuple[Workload, int]]) -> Backend:
        from waypoint.proxy import BackendError

        if not candidates:
            raise BackendError("no ready endpoint", telemetry.NO_HEALTHY_UPSTREAM)
        last: BackendError | None = None
        async with self._opening:
            for workload, port in candidates:
                host = f"{workload.addresses[0]}:{port}"
                conns = self.backends.setdefault(host, [])
                for gone in [b for b in conns if not b.usable]:
                    conns.remove(gone)
                    gone.close()
                for kept in conns:
                    if kept.can_open():
                        return kept
                if conns:  # all full: another connection, if the bound allows
                    self._bound_backends()
                if conns and self._connection_count() >= MAX_BACKENDS:
                    last = BackendError(
                        f"the backend's stream limit is reached on {len(conns)} connections",
                        telemetry.UPSTREAM_FAILURE,
                    )
                    continue
                try:
                    end = await self.waypoint._open(workload, port, self.client)
                except BackendError as err:
                    log.info("waypoint.endpoint_failed", endpoint=host, error=str(err))
                    last = err
                    continue
                buffered = BufferedEnd("backend")
                relay = Relay(end, buffered)
                relay.start()
                principal = workload.identity if workload.enrolled else ""
                backend = Backend(host, buffered, relay, Peer(workload, principal))
                self._bound_backends()
                conns.append(backend)
                return backend
        assert last is not None
        raise last

    def _connection_count(self) -> int:
        return sum(len(conns) for conns in self.backends.values())

    def _bound_backends(self) -> None:
        """Past MAX_BACKENDS connections, the least recently used idle ones are closed."""
        while self._connection_count() >= MAX_BACKENDS:
            idle = [b for conns in self.backends.values() for b in conns if not b.link.streams]
            if not idle:
                return
            oldest = min(idle, key=lambda b: b.link.last_used)
            self.backends[oldest.host].remove(oldest)
            oldest.close()

    async def _unauthenticated(
        self, stream_id: int, request: H2Request, record: GrpcRecord
    ) -> None:
        """Envoy's jwt_authn refusal: 401 "Jwt verification fails", or for gRPC
        grpc-status 16 UNAUTHENTICATED trailers-only."""
        message = jwtauth.UNAUTHORIZED_BODY.decode()
        if request.grpc:
            await self._answer(
                stream_id, request, 401, jwtauth.GRPC_UNAUTHENTICATED, message, (), record
            )
            return
        body = jwtauth.UNAUTHORIZED_BODY
        head = [(":status", "401"), *jwtauth.UNAUTHORIZED_HEADERS]
        head.append(("content-length", str(len(body))))
        record.response_code = 401
        no_body = request.method == "HEAD"
        await self.link.send_headers(stream_id, head, end_stream=no_body)
        if not no_body:
            record.response_bytes = len(body)
            await self.link.send_data(stream_id, body, end_stream=True)
        if self.link.peer_sending(stream_id):
            self.link.reset(stream_id, h2.errors.ErrorCodes.NO_ERROR)

    async def _deny(self, stream_id: int, request: H2Request, record: GrpcRecord) -> None:
        """Envoy's RBAC denial: 403 "RBAC: access denied", or for gRPC grpc-status 7
        PERMISSION_DENIED trailers-only."""
        if request.grpc:
            message = authz.DENIED_BODY.decode()
            await self._answer(
                stream_id, request, 403, authz.GRPC_PERMISSION_DENIED, message, (), record
            )
            return
        body = authz.DENIED_BODY
        head = [(":status", "403"), ("content-type", "text/plain")]
        head.append(("content-length", str(len(body))))
        record.response_code = 403
        no_body = request.method == "HEAD"
        await self.link.send_headers(stream_id, head, end_stream=no_body)
        if not no_body:
            record.response_bytes = len(body)
            await self.link.send_data(stream_id, body, end_stream=True)
        if self.link.peer_sending(stream_id):
            self.link.reset(stream_id, h2.errors.ErrorCodes.NO_ERROR)

    async def _peek_body(self, stream_id: int, limit: int) -> tuple[bytes, bool]:
        """The request body up to `limit` bytes (a frame more, at most), for an ext_authz
        check, and whether that is all of it; its events are put back in front of the
        stream's queue (not acknowledged: flow control holds the client meanwhile), so the
        body is forwarded as if never read. TimeoutError: a frame took over BODY_TIMEOUT."""
        queue = self.link.streams.get(stream_id)
        if queue is None:
            return b"", True
        taken: list[StreamEvent] = []
        data = bytearray()
        complete = False
        try:
            while len(data) <= limit:
                ev = await asyncio.wait_for(queue.get(), BODY_TIMEOUT)
                taken.append(ev)
                if isinstance(ev, h2.events.DataReceived):
                    data += ev.data or b""
                    if ev.stream_ended is not None:
                        complete = True
                        break
                elif isinstance(ev, (h2.events.StreamEnded, h2.events.TrailersReceived)):
                    complete = True
                    break
                elif isinstance(ev, (h2.events.StreamReset, _Gone)):
                    break
        finally:
            again: asyncio.Queue[StreamEvent] = asyncio.Queue()
            for ev in taken:
                again.put_nowait(ev)
            while not queue.empty():
                again.put_nowait(queue.get_nowait())
            if self.link.streams.get(stream_id) is queue:
                self.link.streams[stream_id] = again
        return bytes(data), complete

    async def _custom_deny(
        self, stream_id: int, request: H2Request, record: GrpcRecord, result: CheckResult
    ) -> None:
        """An ext_authz denial: the provider's status, headers and body; for gRPC, the status
        mapped to a grpc-status (403: PERMISSION_DENIED) with the body as the message, as
        Envoy's local replies to gRPC requests do."""
        if request.grpc:
            message = result.body.decode("utf-8", "replace") or record.reason
            grpc = _grpc_for_http(result.status)
            await self._answer(
                stream_id, request, result.status, grpc, message[:1024], result.downstream, record
            )
            return
        head = [(":status", str(result.status)), *result.downstream]
        head.append(("content-length", str(len(result.body))))
        record.response_code = result.status
        no_body = not result.body or request.method == "HEAD"
        await self.link.send_headers(stream_id, head, end_stream=no_body)
        if not no_body:
            record.response_bytes = len(result.body)
            await self.link.send_data(stream_id, result.body, end_stream=True)
        if self.link.peer_sending(stream_id):
            self.link.reset(stream_id, h2.errors.ErrorCodes.NO_ERROR)

    async def _answer(
        self,
        stream_id: int,
        request: H2Request | None,
        status: int,
        grpc: int | None,
        reason: str,
        headers: routing.Headers,
        record: GrpcRecord,
    ) -> None:
        """Answer a stream here; its request body, if still coming, is not wanted (the
        stream is then reset with NO_ERROR, as RFC 9113 8.1 allows)."""
        if grpc is not None:
            record.response_code = 200
            record.grpc_status = str(grpc)
            await self.link.send_headers(
                stream_id, h2wire.grpc_answer(grpc, reason, headers), end_stream=True
            )
        else:
            record.response_code = status
            head, body = h2wire.http_answer(status, reason, headers)
            no_body = not body or (request is not None and request.method == "HEAD")
            await self.link.send_headers(stream_id, head, end_stream=no_body)
            if not no_body:
                record.response_bytes = len(body)
                await self.link.send_data(stream_id, body, end_stream=True)
        if self.link.peer_sending(stream_id):
            self.link.reset(stream_id, h2.errors.ErrorCodes.NO_ERROR)


@dataclass
class _Exchange:
    backend: Backend | None = None
    backend_stream: int = 0
    responded: bool = False  # the response head went to the client
    status: int = 0  # the backend's response status (0: none yet)
    grpc_status: str = ""  # the backend's grpc-status (trailers, or a trailers-only head)
    cluster: ClusterState | None = None  # the Service's DestinationRule state


def _grpc_for_http(status: int) -> int:
    """gRPC's mapping of an HTTP status to a grpc-status (grpc/doc/http-grpc-status-mapping)."""
    return {
        400: 13,
        401: 16,
        403: 7,
        404: 12,
        429: 14,
        502: 14,
        503: 14,
        504: 14,
    }.get(status, 2)


async def serve(waypoint: Waypoint, end: BufferedEnd, client: Client, dest: Destination) -> None:
    """Serve one client connection (an inbound CONNECT stream) that speaks h2c or gRPC."""
    await Front(waypoint, end, client, dest).serve()
