"""waypoint.tracing without sockets: reading W3C trace context, replacing it on the way to a
backend, the spans of one request (kept by the SDK's in-memory exporter here; the OTLP path
is tested against a real receiver in tests/integration/waypoint/test_waypoint_tracing.py)."""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from meshcore.meshstate import Workload
from waypoint.telemetry import Peer, RequestRecord
from waypoint.tracing import (
    NO_TRACE,
    Inbound,
    Tracing,
    parent_of,
    request_trace,
    rpc_names,
    upstream_cluster,
    with_context,
)

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ((("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"),), (TRACE_ID, PARENT_ID, True)),
        ((("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-00"),), (TRACE_ID, PARENT_ID, False)),
        # a later version is read as version 00 (W3C: parse what is understood)
        ((("traceparent", f"01-{TRACE_ID}-{PARENT_ID}-01-extra"),), (TRACE_ID, PARENT_ID, True)),
        ((), None),  # absent: a new trace
        ((("traceparent", "garbage"),), None),
        ((("traceparent", f"00-{'0' * 32}-{PARENT_ID}-01"),), None),  # all-zero trace id
        ((("traceparent", f"00-{TRACE_ID}-{'0' * 16}-01"),), None),  # all-zero parent id
        ((("traceparent", f"ff-{TRACE_ID}-{PARENT_ID}-01"),), None),  # version ff is invalid
        ((("traceparent", f"00-{TRACE_ID.upper()}-{PARENT_ID}-01"),), None),  # upper case
        ((("tracestate", "a=b"),), None),  # tracestate alone names no parent
    ],
)
def test_the_parent_is_the_incoming_traceparent_if_valid(
    headers: tuple[tuple[str, str], ...], expected: tuple[str, str, bool] | None
) -> None:
    ctx = trace.get_current_span(parent_of(headers)).get_span_context()
    if expected is None:
        assert not ctx.is_valid
        return
    assert ctx.is_valid and ctx.is_remote
    assert (
        format(ctx.trace_id, "032x"),
        format(ctx.span_id, "016x"),
        ctx.trace_flags.sampled,
    ) == expected


def test_tracestate_is_carried_with_the_parent() -> None:
    headers = (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"), ("tracestate", "v=1,w=2"))
    ctx = trace.get_current_span(parent_of(headers)).get_span_context()
    assert ctx.trace_state.to_header() == "v=1,w=2"


def test_outgoing_trace_context_is_replaced_and_the_rest_kept_in_order() -> None:
    span = trace.NonRecordingSpan(
        trace.SpanContext(
            int(TRACE_ID, 16),
            0x1111111111111111,
            is_remote=False,
            trace_flags=trace.TraceFlags(1),
            trace_state=trace.TraceState([("v", "1")]),
        )
    )
    headers = [
        (b"host", b"web"),
        (b"traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01".encode()),
        (b"baggage", b"user=42"),
        (b"tracestate", b"v=0"),
        (b"traceparent", b"00-duplicate"),
        (b"x-other", b"1"),
    ]
    assert with_context(headers, span) == [
        (b"host", b"web"),
        (b"baggage", b"user=42"),
        (b"x-other", b"1"),
        (b"traceparent", f"00-{TRACE_ID}-1111111111111111-01".encode()),
        (b"tracestate", b"v=1"),
    ]


def test_no_trace_changes_nothing() -> None:
    headers = [(b"host", b"x"), (b"traceparent", b"t")]
    record = RequestRecord("GET", "/", "x", Peer(None, ""), "10.0.0.1")
    assert request_trace(None, inbound(())) is NO_TRACE
    assert NO_TRACE.attempt(headers, record, 80) is headers
    assert NO_TRACE.trace_id == ""


@pytest.mark.parametrize(
    ("service", "upstream_host", "expected"),
    [
        ("web.shop.svc.cluster.local", "10.1.0.5:8080", "outbound|80||web.shop.svc.cluster.local"),
        ("", "10.1.0.5:8080", "outbound|80||10.1.0.5"),  # a pod addressed directly
    ],
)
def test_the_upstream_cluster_is_named_as_envoy_names_it(
    service: str, upstream_host: str, expected: str
) -> None:
    record = RequestRecord("GET", "/", "x", Peer(None, ""), "10.0.0.1")
    record.destination_service = service
    record.upstream_host = upstream_host
    assert upstream_cluster(record, 80) == expected


def inbound(headers: tuple[tuple[str, str], ...]) -> Inbound:
    return Inbound(
        "POST", "/a/b?q=1", "web.shop:8080", headers, "10.0.0.1", "spiffe://td/ns/a/sa/c", 80
    )


def test_a_server_span_and_a_client_span_per_try() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing(exporter, "waypoint.shop", "shop")
    headers = (("traceparent", f"00-{TRACE_ID}-{PARENT_ID}-01"), ("user-agent", "t/1"))
    spans = tracing.request(inbound(headers))
    assert spans.trace_id == TRACE_ID
    record = RequestRecord("POST", "/a/b?q=1", "web.shop:8080", Peer(None, ""), "10.0.0.1")
    record.destination_service = "web.shop.svc.cluster.local"
    record.upstream_host = "10.1.0.5:9000"
    record.destination = Peer(
        Workload(
            uid="u",
            name="web-1",
            namespace="shop",
            service_account="web",
            identity="spiffe://td/ns/shop/sa/web",
            node="n",
            node_address="10.0.0.9",
            addresses=("10.1.0.5",),
            labels={},
            enrolled=True,
            ready=True,
        ),
        "spiffe://td/ns/shop/sa/web",
    )
    request = [(b"host", b"web.shop")]
    first = spans.attempt(request, record, 8080)
    spans.attempt_done(503)
    record.retries = 1
    second = spans.attempt(request, record, 8080)
    spans.attempt_done(200)
    record.response_code = 200
    spans.done(record)
    assert tracing.flush()
    tracing.shutdown()

    done = exporter.get_finished_spans()
    (server,) = [s for s in done if s.kind is SpanKind.SERVER]
    tries = [s for s in done if s.kind is SpanKind.CLIENT]
    assert server.parent is not None and format(server.parent.span_id, "016x") == PARENT_ID
    assert [t.parent.span_id for t in tries if t.parent] == [server.context.span_id] * 2
    for sent, span in zip((first, second), tries, strict=True):
        (traceparent,) = [v for n, v in sent if n == b"traceparent"]
        assert traceparent.decode() == f"00-{TRACE_ID}-{span.context.span_id:016x}-01"
    assert [t.attributes.get("http.response.status_code") for t in tries] == [503, 200]
    assert [t.status.status_code for t in tries] == [StatusCode.ERROR, StatusCode.UNSET]
    assert tries[1].attributes.get("http.request.resend_count") == 1
    assert (
        tries[0].attributes.get("upstream_cluster") == "outbound|8080||web.shop.svc.cluster.local"
    )
    assert tries[0].attributes.get("destination_workload") == "web-1"
    assert server.attributes is not None
    assert dict(server.attributes) | {
        "http.request.method": "POST",
        "url.path": "/a/b",
        "url.query": "q=1",
        "server.address": "web.shop",
        "server.port": 8080,
        "client.address": "10.0.0.1",
        "user_agent.original": "t/1",
        "source_principal": "spiffe://td/ns/a/sa/c",
        "http.response.status_code": 200,
        "upstream_cluster": "outbound|8080||web.shop.svc.cluster.local",
    } == dict(server.attributes)
    assert server.status.status_code is StatusCode.UNSET
    assert server.resource.attributes["service.name"] == "waypoint.shop"


def test_a_try_left_open_ends_as_an_error_with_the_request() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing(exporter, "waypoint.shop", "shop")
    spans = tracing.request(inbound(()))
    record = RequestRecord("POST", "/", "web", Peer(None, ""), "10.0.0.1")
    record.upstream_host = "10.1.0.5:9000"
    spans.attempt([(b"host", b"w")], record, 80)
    record.reason = "the client's stream was reset"
    record.response_flags = "DC"
    spans.done(record)  # no response code: the client went
    assert tracing.flush()
    tracing.shutdown()
    server, client = sorted(exporter.get_finished_spans(), key=lambda s: s.kind is SpanKind.CLIENT)
    assert client.status.status_code is StatusCode.ERROR
    assert client.attributes is not None and client.attributes["error.type"] == "no_response"
    assert server.status.status_code is StatusCode.ERROR
    assert server.status.description == "the client's stream was reset"
    assert server.parent is None  # no traceparent: a new trace


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/echo.Echo/Say", ("echo.Echo", "Say")),
        ("/grpc.health.v1.Health/Check", ("grpc.health.v1.Health", "Check")),
        ("/echo.Echo/Say?x=1", ("echo.Echo", "Say")),
        ("/echo.Echo/", ("", "")),
        ("/echo.Echo", ("", "")),
        ("/a/b/c", ("", "")),
        ("/", ("", "")),
    ],
)
def test_a_grpc_path_names_the_rpc_service_and_method(path: str, expected: tuple[str, str]) -> None:
    assert rpc_names(path) == expected


@pytest.mark.parametrize(
    ("grpc_status", "server_error", "client_error"),
    [
        ("0", False, False),  # OK
        ("5", False, True),  # NOT_FOUND: the caller's error, not the server's
        ("3", False, True),  # INVALID_ARGUMENT
        ("2", True, True),  # UNKNOWN
        ("4", True, True),  # DEADLINE_EXCEEDED
        ("12", True, True),  # UNIMPLEMENTED
        ("13", True, True),  # INTERNAL
        ("14", True, True),  # UNAVAILABLE
        ("15", True, True),  # DATA_LOSS
        ("", False, False),  # none (a backend that sent no grpc-status)
    ],
)
def test_grpc_spans_are_errors_as_the_rpc_conventions_say(
    grpc_status: str, server_error: bool, client_error: bool
) -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing(exporter, "waypoint.shop", "shop")
    grpc_call = Inbound(
        "POST", "/echo.Echo/Say", "grpc:50051", (), "10.0.0.1", "", 50051, "2", grpc=True
    )
    spans = tracing.request(grpc_call)
    record = RequestRecord("POST", "/echo.Echo/Say", "grpc", Peer(None, ""), "10.0.0.1")
    record.upstream_host = "10.1.0.5:9000"
    sent = spans.attempt([(b":method", b"POST"), (b":path", b"/echo.Echo/Say")], record, 50051)
    assert [n for n, _ in sent][:2] == [b":method", b":path"]  # pseudo-headers stay first
    spans.attempt_done(200, grpc_status=grpc_status)
    record.response_code = 200
    spans.done(record, grpc_status)
    assert tracing.flush()
    tracing.shutdown()
    server, client = sorted(exporter.get_finished_spans(), key=lambda s: s.kind is SpanKind.CLIENT)
    for span, error in ((server, server_error), (client, client_error)):
        assert span.name == "echo.Echo/Say"
        assert span.attributes is not None
        assert span.attributes["rpc.system"] == "grpc"
        assert (span.attributes["rpc.service"], span.attributes["rpc.method"]) == (
            "echo.Echo",
            "Say",
        )
        assert span.attributes["network.protocol.version"] == "2"
        assert span.attributes.get("rpc.grpc.status_code") == (
            int(grpc_status) if grpc_status else None
        )
        expected = StatusCode.ERROR if error else StatusCode.UNSET
        assert span.status.status_code is expected, span.kind


def test_an_http_request_has_no_rpc_attributes_and_is_named_by_its_method() -> None:
    exporter = InMemorySpanExporter()
    tracing = Tracing(exporter, "waypoint.shop", "shop")
    record = RequestRecord("POST", "/a/b", "web", Peer(None, ""), "10.0.0.1")
    record.response_code = 200
    spans = tracing.request(inbound(()))
    spans.done(record, grpc_status="14")  # ignored: not a gRPC call
    assert tracing.flush()
    tracing.shutdown()
    (server,) = exporter.get_finished_spans()
    assert server.name == "POST"
    assert server.attributes is not None
    assert not [k for k in server.attributes if k.startswith("rpc.")]
    assert server.attributes["network.protocol.version"] == "1.1"
    assert server.status.status_code is StatusCode.UNSET
