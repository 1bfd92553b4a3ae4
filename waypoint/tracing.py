"""OpenTelemetry spans of the waypoint: a server span per request (as received) and a client
span per upstream try (child of the server span; a retry is another client span), exported
over OTLP/gRPC with a batch span processor whose queue is bounded.

The header side is plain functions over header tuples (`parent_of`, `with_context`): W3C
`traceparent`/`tracestate` are read from the request and, on the way to the backend,
replaced by the client span's; `baggage` goes through untouched. Sampling is the parent's
(`ParentBased(ALWAYS_ON)`): a request that came with `-00` flags is not recorded, a request
without `traceparent` starts a new, sampled trace.

With no OTLP endpoint there is no `Tracing`: the proxy uses `NO_TRACE`, which makes no spans
and leaves trace context exactly as it came (the access log's trace id is then the one the
request's `traceparent` carries).

Attribute names: OpenTelemetry's stable HTTP semantic conventions, plus Istio's telemetry
label names (`upstream_cluster` as Envoy names clusters, `source_principal`,
`destination_principal`, `destination_service`, `response_flags`). HTTP/1.1 and h2c requests
alike (`network.protocol.version` "1.1" or "2"); a gRPC call's spans are also named and
described as OpenTelemetry's RPC conventions say: named `<service>/<method>`, with
`rpc.system` grpc, `rpc.service`, `rpc.method` and `rpc.grpc.status_code`; a server span is
an error for the gRPC codes the conventions name (GRPC_SERVER_ERRORS), a client span for any
code but OK.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from waypoint import telemetry
from waypoint.telemetry import RequestRecord

log = structlog.get_logger("waypoint.tracing")

Headers = tuple[tuple[str, str], ...]
RawHeaders = Iterable[tuple[bytes, bytes]]
RawHeaderList = list[tuple[bytes, bytes]]  # lower-case names, as HTTP/1.1 and h2 give them

# The batch span processor: spans past this many waiting are dropped (counted by the SDK),
# never held in memory; sent in batches of up to EXPORT_BATCH, at least every EXPORT_DELAY.
MAX_QUEUE = 2048
EXPORT_BATCH = 512
EXPORT_DELAY_MS = 1000
EXPORT_TIMEOUT_MS = 10_000

TRACE_HEADERS = ("traceparent", "tracestate")
# gRPC status codes that make a server span an error (OpenTelemetry's gRPC conventions):
# UNKNOWN, DEADLINE_EXCEEDED, UNIMPLEMENTED, INTERNAL, UNAVAILABLE, DATA_LOSS
GRPC_SERVER_ERRORS = frozenset({2, 4, 12, 13, 14, 15})
_PROPAGATOR = TraceContextTextMapPropagator()
_SCOPE = "weft.waypoint"


def parent_of(headers: Headers) -> Context:
    """The context a request's `traceparent`/`tracestate` name (an empty one, a new trace,
    when absent or malformed)."""
    carrier = {name: value for name, value in headers if name in TRACE_HEADERS}
    return _PROPAGATOR.extract(carrier)


def trace_headers(span: Span) -> dict[str, str]:
    """`traceparent` (and `tracestate`, when there is one) naming `span` as the parent."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, trace.set_span_in_context(span))
    return carrier


def with_context(headers: RawHeaders, span: Span) -> list[tuple[bytes, bytes]]:
    """Request headers (lower-case names, bytes) with the trace context replaced by
    `span`'s; everything else (`baggage` included) as it was, in order."""
    ours = trace_headers(span)
    out = [(n, v) for n, v in headers if n.decode("latin-1") not in TRACE_HEADERS]
    out += [(n.encode(), v.encode("latin-1")) for n, v in ours.items()]
    return out


def hex_trace_id(span: Span) -> str:
    ctx = span.get_span_context()
    return format(ctx.trace_id, "032x") if ctx.is_valid else ""


def rpc_names(path: str) -> tuple[str, str]:
    """A gRPC :path `/pkg.Service/Method` as (`pkg.Service`, `Method`); ("", "") when it is
    not of that shape."""
    service, _, method = path.partition("?")[0].removeprefix("/").partition("/")
    if not service or not method or "/" in method:
        return "", ""
    return service, method


def _grpc_code(text: str) -> int | None:
    return int(text) if text.isascii() and text.isdigit() else None


def upstream_cluster(record: RequestRecord, service_port: int) -> str:
    """Envoy's cluster name for the backend Service port, `outbound|80||web.shop.svc...`
    (a pod addressed directly: its address in place of the Service's name)."""
    host = record.destination_service or record.upstream_host.rpartition(":")[0]
    return f"outbound|{service_port}||{host}"


class RequestTrace(Protocol):
    """The spans of one request, as the proxy sees them."""

    trace_id: str

    def attempt(
        self, headers: RawHeaderList, record: RequestRecord, service_port: int
    ) -> RawHeaderList:
        """A client span for one upstream try (ending the previous try's, if still open);
        the request headers to send on it (their trace context the client span's)."""
        ...

    def attempt_done(self, status: int = 0, error: str = "", grpc_status: str = "") -> None:
        """The try's end: the backend's HTTP status (0: none), what went wrong, and for
        gRPC the backend's grpc-status."""
        ...

    def done(self, record: RequestRecord, grpc_status: str = "") -> None:
        """The request's end, as the access log has it (and the grpc-status answered)."""
        ...


class _NoTrace:
    """Tracing off: no spans, trace context untouched."""

    trace_id = ""

    def attempt(
        self, headers: RawHeaderList, record: RequestRecord, service_port: int
    ) -> RawHeaderList:
        return headers

    def attempt_done(self, status: int = 0, error: str = "", grpc_status: str = "") -> None:
        pass

    def done(self, record: RequestRecord, grpc_status: str = "") -> None:
        pass


NO_TRACE: RequestTrace = _NoTrace()


@dataclass(frozen=True)
class Inbound:
    """What the server span says about the request as received."""

    method: str
    path: str  # the request target
    authority: str  # Host
    headers: Headers
    client_address: str
    source_principal: str
    service_port: int  # the port of the Service (or pod) the CONNECT named
    protocol_version: str = "1.1"  # "2" for an h2c stream (the backend is spoken to in kind)
    grpc: bool = False  # a gRPC call (content-type application/grpc...)


class _Spans:
    """A server span, and the client span of the try in flight."""

    def __init__(self, tracing: Tracing, inbound: Inbound) -> None:
        self._tracing = tracing
        path, _, query = inbound.path.partition("?")
        host, _, port = inbound.authority.rpartition(":")
        if not host or not port.isdigit():  # no port (or an IPv6 literal without one)
            host, port = inbound.authority, ""
        attributes: dict[str, Any] = {
            "http.request.method": inbound.method,
            "url.path": path,
            "url.scheme": "http",
            "server.address": host,
            "server.port": int(port) if port else inbound.service_port,
            "client.address": inbound.client_address,
            "network.peer.address": inbound.client_address,
            "network.protocol.name": "http",
            "network.protocol.version": inbound.protocol_version,
            "source_principal": inbound.source_principal,
            "component": "proxy",
        }
        self._version = inbound.protocol_version
        self._name = inbound.method
        self._rpc: dict[str, Any] = {}
        if inbound.grpc:
            self._rpc = {"rpc.system": "grpc"}
            service, method = rpc_names(inbound.path)
            if service:
                self._rpc |= {"rpc.service": service, "rpc.method": method}
                self._name = f"{service}/{method}"
            attributes |= self._rpc
        if query:
            attributes["url.query"] = query
        for name, attribute in (
            ("user-agent", "user_agent.original"),
            ("x-request-id", "guid:x-request-id"),
        ):
            value = next((v for n, v in inbound.headers if n == name), None)
            if value:
                attributes[attribute] = value
        self._server = tracing.tracer.start_span(
            self._name,
            context=parent_of(inbound.headers),
            kind=SpanKind.SERVER,
            attributes=attributes,
        )
        self._method = inbound.method
        self._path = inbound.path
        self._client: Span | None = None
        self._cluster = ""  # the last try's
        self.trace_id = hex_trace_id(self._server)

    def attempt(
        self, headers: RawHeaderList, record: RequestRecord, service_port: int
    ) -> RawHeaderList:
        self.attempt_done(error="superseded by another try")
        self._cluster = upstream_cluster(record, service_port)
        host, _, port = record.upstream_host.rpartition(":")
        attributes: dict[str, Any] = {
            "http.request.method": self._method,
            "url.full": f"http://{record.upstream_host}{self._path}",
            "server.address": host,
            "server.port": int(port) if port.isdigit() else 0,
            "network.peer.address": host,
            "network.peer.port": int(port) if port.isdigit() else 0,
            "network.protocol.version": self._version,
            "upstream_cluster": self._cluster,
            "destination_service": record.destination_service or "unknown",
            "destination_principal": record.destination.principal or "unknown",
            "destination_workload": (
                record.destination.workload.name if record.destination.workload else "unknown"
            ),
            "component": "proxy",
            **self._rpc,
        }
        if record.retries:
            attributes["http.request.resend_count"] = record.retries
        self._client = self._tracing.tracer.start_span(
            self._name,
            context=trace.set_span_in_context(self._server),
            kind=SpanKind.CLIENT,
            attributes=attributes,
        )
        return with_context(headers, self._client)

    def attempt_done(self, status: int = 0, error: str = "", grpc_status: str = "") -> None:
        span, self._client = self._client, None
        if span is None:
            return
        if status:
            span.set_attribute("http.response.status_code", status)
        code = _grpc_code(grpc_status) if self._rpc else None
        if code is not None:
            span.set_attribute("rpc.grpc.status_code", code)
        if error or status >= 500:
            kind = str(status) if status >= 500 else "incomplete" if status else "no_response"
            span.set_attribute("error.type", kind)
            span.set_status(Status(StatusCode.ERROR, error or None))
        elif code:  # a client span is an error for any gRPC code but OK
            span.set_attribute("error.type", str(code))
            span.set_status(Status(StatusCode.ERROR))
        span.end()

    def done(self, record: RequestRecord, grpc_status: str = "") -> None:
        self.attempt_done(status=0, error=record.reason or "the request ended")
        span = self._server
        status = record.response_code
        if status:
            span.set_attribute("http.response.status_code", status)
        span.set_attribute("response_flags", record.response_flags)
        span.set_attribute("http.request.body.size", record.request_bytes)
        span.set_attribute("http.response.body.size", record.response_bytes)
        if record.destination_service:
            span.set_attribute("destination_service", record.destination_service)
        if self._cluster:
            span.set_attribute("upstream_cluster", self._cluster)
            span.set_attribute("destination_principal", record.destination.principal or "unknown")
        if record.retries:
            span.set_attribute("retries", record.retries)
        code = _grpc_code(grpc_status) if self._rpc else None
        if code is not None:
            span.set_attribute("rpc.grpc.status_code", code)
        if status >= 500 or not status:
            # a server span is an error for 5xx only (4xx are the client's), or no answer
            span.set_attribute("error.type", str(status) if status else telemetry.DOWNSTREAM_RESET)
            span.set_status(Status(StatusCode.ERROR, record.reason or None))
        elif code in GRPC_SERVER_ERRORS:
            span.set_attribute("error.type", str(code))
            span.set_status(Status(StatusCode.ERROR, record.reason or None))
        span.end()


class Tracing:
    """The waypoint's tracer: its own TracerProvider (not the process-wide one), a batch
    span processor with a bounded queue, and the exporter given (OTLP/gRPC in a pod)."""

    def __init__(self, exporter: SpanExporter, service_name: str, namespace: str) -> None:
        resource = Resource.create(
            {
                "service.name": service_name,
                "k8s.namespace.name": namespace,
                "istio.namespace": namespace,
                "istio.canonical_service": service_name.partition(".")[0],
            }
        )
        self.provider = TracerProvider(resource=resource)
        self.provider.add_span_processor(
            BatchSpanProcessor(
                exporter,
                max_queue_size=MAX_QUEUE,
                max_export_batch_size=EXPORT_BATCH,
                schedule_delay_millis=EXPORT_DELAY_MS,
                export_timeout_millis=EXPORT_TIMEOUT_MS,
            )
        )
        self.tracer = self.provider.get_tracer(_SCOPE)

    @classmethod
    def otlp(cls, endpoint: str, gateway_name: str, namespace: str) -> Tracing:
        """Spans to an OTLP/gRPC collector at `endpoint` (`host:port`, or `http://` /
        `https://` URL; plaintext unless https). The service is named as Istio names a
        waypoint's: `<gateway>.<namespace>`."""
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        insecure = not endpoint.startswith("https://")
        exporter = OTLPSpanExporter(endpoint=endpoint, insecure=insecure)
        log.info("tracing.enabled", otlp_endpoint=endpoint)
        return cls(exporter, f"{gateway_name}.{namespace}", namespace)

    def request(self, inbound: Inbound) -> RequestTrace:
        return _Spans(self, inbound)

    def flush(self, timeout_ms: int = 5000) -> bool:
        return self.provider.force_flush(timeout_ms)

    def shutdown(self) -> None:
        """Export what is queued, then stop the processor's thread."""
        self.provider.shutdown()


def request_trace(tracing: Tracing | None, inbound: Inbound) -> RequestTrace:
    """The proxy's hook: spans when tracing is on, else NO_TRACE."""
    return NO_TRACE if tracing is None else tracing.request(inbound)
