"""The waypoint's spans, exported over OTLP/gRPC to a real receiver (otlp_receiver.py, a gRPC
server from opentelemetry-proto's classes) on loopback: a server span per request, a client
span per upstream try as its child, the backend's `traceparent` naming the client span, the
access log's trace id the spans'. HTTP/1.1, and h2c and gRPC streams (h2_mesh.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.integration.waypoint.h2_mesh import (
    GRPC_PORT,
    GRPC_VIP,
    H2_PORT,
    H2_VIP,
    add_h2_services,
    h2_client,
)
from tests.integration.waypoint.otlp_receiver import OtlpReceiver, ReceivedSpan
from tests.integration.waypoint.test_waypoint_h2c import GRPC_ROUTES
from tests.integration.waypoint.test_waypoint_routes import with_flaky
from tests.integration.waypoint.waypoint_mesh import (
    CLIENT_ID,
    CLIENT_IP,
    DOWN_VIP,
    HTTP_PORT,
    ROUTED_VIP,
    WEB_ID,
    WEB_IP,
    Mesh,
    run,
)
from waypoint.tracing import Tracing

pytestmark = pytest.mark.integration

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"
WEB_CLUSTER = "outbound|80||web.shop.svc.cluster.local"


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    r = OtlpReceiver().start()
    yield r
    r.stop()


def traced(mesh: Mesh, receiver: OtlpReceiver) -> Tracing:
    """The waypoint of the mesh, exporting to the receiver (over OTLP/gRPC, as in a pod)."""
    tracing = Tracing.otlp(receiver.endpoint, "waypoint", "shop")
    mesh.waypoint.tracing = tracing
    return tracing


async def exported(tracing: Tracing, receiver: OtlpReceiver, count: int) -> list[ReceivedSpan]:
    assert await asyncio.to_thread(tracing.flush)
    spans = await asyncio.to_thread(receiver.wait_for, count)
    await asyncio.to_thread(tracing.shutdown)
    return spans


def parse_traceparent(value: str) -> tuple[str, str, str]:
    version, trace_id, parent_id, flags = value.split("-")
    assert version == "00"
    return trace_id, parent_id, flags


def test_spans_continue_the_incoming_trace_and_the_backend_sees_the_client_span(
    tmp_path: Path, receiver: OtlpReceiver
) -> None:
    async def body(mesh: Mesh) -> None:
        tracing = traced(mesh, receiver)
        client = await mesh.http()
        with capture_logs() as logs:
            client.send_raw(
                b"GET /hello?x=1 HTTP/1.1\r\nHost: web.shop:80\r\nUser-Agent: t/1\r\n"
                b"traceparent: " + TRACEPARENT.encode() + b"\r\n"
                b"tracestate: vendor=abc\r\nbaggage: user=42\r\n\r\n"
            )
            response, raw = await client.response()
        assert response.status_code == 200
        sent = json.loads(raw)["request"]["headers"]
        spans = await exported(tracing, receiver, 2)

        (server,) = [s for s in spans if s.is_server]
        (upstream,) = [s for s in spans if s.is_client]
        # one trace, the caller's; the server span a child of the caller's span, the client
        # span of the server span; the backend's parent is the client span
        assert server.trace_id == upstream.trace_id == TRACE_ID
        assert server.parent_span_id == PARENT_ID
        assert upstream.parent_span_id == server.span_id
        assert parse_traceparent(sent["traceparent"]) == (TRACE_ID, upstream.span_id, "01")
        assert sent["tracestate"] == "vendor=abc"
        assert sent["baggage"] == "user=42"
        (line,) = [e for e in logs if e["event"] == "request.completed"]
        assert line["trace_id"] == server.trace_id

        assert server.name == upstream.name == "GET"
        assert server.resource["service.name"] == "waypoint.shop"
        assert (
            server.attributes
            | {
                "http.request.method": "GET",
                "url.path": "/hello",
                "url.query": "x=1",
                "url.scheme": "http",
                "server.address": "web.shop",
                "server.port": 80,
                "client.address": CLIENT_IP,
                "network.peer.address": CLIENT_IP,
                "network.protocol.version": "1.1",
                "user_agent.original": "t/1",
                "http.response.status_code": 200,
                "source_principal": CLIENT_ID,
                "destination_principal": WEB_ID,
                "destination_service": "web.shop.svc.cluster.local",
                "upstream_cluster": WEB_CLUSTER,
                "response_flags": "-",
            }
            == server.attributes
        )
        assert upstream.attributes["url.full"].startswith(f"http://{WEB_IP}:")
        assert (
            upstream.attributes
            | {
                "http.request.method": "GET",
                "server.address": WEB_IP,
                "network.peer.address": WEB_IP,
                "http.response.status_code": 200,
                "upstream_cluster": WEB_CLUSTER,
                "destination_principal": WEB_ID,
                "destination_service": "web.shop.svc.cluster.local",
                "destination_workload": "web",
            }
            == upstream.attributes
        )
        assert server.status_code == upstream.status_code == 0  # unset: not an error

    run(tmp_path, body)


def test_a_request_without_traceparent_starts_a_trace(
    tmp_path: Path, receiver: OtlpReceiver
) -> None:
    async def body(mesh: Mesh) -> None:
        tracing = traced(mesh, receiver)
        client = await mesh.http()
        with capture_logs() as logs:
            client.send_raw(b"GET /new HTTP/1.1\r\nHost: web\r\n\r\n")
            response, raw = await client.response()
        assert response.status_code == 200
        sent = json.loads(raw)["request"]["headers"]
        spans = await exported(tracing, receiver, 2)
        (server,) = [s for s in spans if s.is_server]
        (upstream,) = [s for s in spans if s.is_client]
        assert server.parent_span_id == ""  # a root span
        assert len(server.trace_id) == 32 and server.trace_id != "0" * 32
        assert upstream.trace_id == server.trace_id
        assert upstream.parent_span_id == server.span_id
        trace_id, parent_id, flags = parse_traceparent(sent["traceparent"])
        assert (trace_id, parent_id) == (server.trace_id, upstream.span_id)
        assert int(flags, 16) & 1  # sampled (the SDK also sets W3C level 2's random-id bit)
        assert "tracestate" not in sent
        (line,) = [e for e in logs if e["event"] == "request.completed"]
        assert line["trace_id"] == server.trace_id

    run(tmp_path, body)


def test_each_retry_is_a_client_span_of_its_own(tmp_path: Path, receiver: OtlpReceiver) -> None:
    async def body(mesh: Mesh) -> None:
        flaky = await with_flaky(mesh, failures=2)
        tracing = traced(mesh, receiver)
        client = await mesh.http(vip=ROUTED_VIP)
        client.send_raw(
            b"GET /r HTTP/1.1\r\nHost: routed\r\ntraceparent: " + TRACEPARENT.encode() + b"\r\n\r\n"
        )
        response, _ = await client.response()
        assert response.status_code == 200
        spans = await exported(tracing, receiver, 4)
        (server,) = [s for s in spans if s.is_server]
        tries = sorted(
            (s for s in spans if s.is_client),
            key=lambda s: s.attributes.get("http.request.resend_count", 0),
        )
        assert [s.attributes["http.response.status_code"] for s in tries] == [503, 503, 200]
        assert [s.attributes.get("http.request.resend_count", 0) for s in tries] == [0, 1, 2]
        assert all(s.parent_span_id == server.span_id for s in tries)
        assert [s.status_code for s in tries] == [2, 2, 0]  # ERROR, ERROR, UNSET
        assert (
            tries[0].attributes["upstream_cluster"] == "outbound|80||flaky.shop.svc.cluster.local"
        )
        # each try carried its own client span as the parent
        parents = []
        for raw in flaky.requests:
            (line,) = [x for x in raw.split(b"\r\n") if x.lower().startswith(b"traceparent:")]
            parents.append(parse_traceparent(line.split(b":", 1)[1].strip().decode())[1])
        assert parents == [s.span_id for s in tries]
        assert server.attributes["http.response.status_code"] == 200
        assert server.attributes["retries"] == 2

    run(tmp_path, body)


def test_an_unreachable_backend_is_an_error_server_span_with_its_flag(
    tmp_path: Path, receiver: OtlpReceiver
) -> None:
    async def body(mesh: Mesh) -> None:
        tracing = traced(mesh, receiver)
        client = await mesh.http(vip=DOWN_VIP, port=HTTP_PORT)
        client.send_raw(b"GET / HTTP/1.1\r\nHost: down\r\n\r\n")
        response, _ = await client.response()
        assert response.status_code == 503
        (server,) = await exported(tracing, receiver, 1)
        assert server.is_server
        assert server.attributes["http.response.status_code"] == 503
        assert server.attributes["response_flags"] == "UF"
        assert server.attributes["error.type"] == "503"
        assert server.status_code == 2  # ERROR

    run(tmp_path, body)


def test_an_unsampled_request_exports_nothing_and_keeps_its_flags(
    tmp_path: Path, receiver: OtlpReceiver
) -> None:
    async def body(mesh: Mesh) -> None:
        tracing = traced(mesh, receiver)
        client = await mesh.http()
        client.send_raw(
            b"GET / HTTP/1.1\r\nHost: web\r\ntraceparent: 00-"
            + TRACE_ID.encode()
            + b"-"
            + PARENT_ID.encode()
            + b"-00\r\n\r\n"
        )
        response, raw = await client.response()
        assert response.status_code == 200
        trace_id, parent_id, flags = parse_traceparent(
            json.loads(raw)["request"]["headers"]["traceparent"]
        )
        assert (trace_id, flags) == (TRACE_ID, "00") and parent_id != PARENT_ID
        assert await asyncio.to_thread(tracing.flush)
        await asyncio.to_thread(tracing.shutdown)
        assert receiver.spans == []

    run(tmp_path, body)


def test_an_h2c_stream_gets_a_server_span_and_a_client_span_the_backend_sees(
    tmp_path: Path, receiver: OtlpReceiver
) -> None:
    async def body(mesh: Mesh) -> None:
        await add_h2_services(mesh)
        tracing = traced(mesh, receiver)
        client = await h2_client(mesh, H2_VIP, H2_PORT)
        with capture_logs() as logs:
            reply = await client.request(
                "/h2?y=2",
                method="GET",
                authority="h2.shop:80",
                headers=(
                    ("traceparent", TRACEPARENT),
                    ("tracestate", "vendor=abc"),
                    ("baggage", "user=42"),
                    ("user-agent", "h2t/1"),
                ),
            )
            await asyncio.sleep(0.1)  # the access log follows the last frame
        assert reply.status == 200
        sent = reply.json()["request"]["headers"]  # type: ignore[index]
        spans = await exported(tracing, receiver, 2)
        client.close()

        (server,) = [s for s in spans if s.is_server]
        (upstream,) = [s for s in spans if s.is_client]
        assert server.trace_id == upstream.trace_id == TRACE_ID
        assert server.parent_span_id == PARENT_ID
        assert upstream.parent_span_id == server.span_id
        assert parse_traceparent(sent["traceparent"]) == (TRACE_ID, upstream.span_id, "01")
        assert sent["tracestate"] == "vendor=abc"
        assert sent["baggage"] == "user=42"
        (line,) = [e for e in logs if e["event"] == "request.completed"]
        assert line["trace_id"] == TRACE_ID

        assert server.name == upstream.name == "GET"
        assert (
            server.attributes
            | {
                "http.request.method": "GET",
                "url.path": "/h2",
                "url.query": "y=2",
                "server.address": "h2.shop",
                "server.port": 80,
                "client.address": CLIENT_IP,
                "network.protocol.version": "2",
                "user_agent.original": "h2t/1",
                "http.response.status_code": 200,
                "source_principal": CLIENT_ID,
                "destination_principal": WEB_ID,
                "destination_service": "h2.shop.svc.cluster.local",
                "upstream_cluster": "outbound|80||h2.shop.svc.cluster.local",
                "response_flags": "-",
            }
            == server.attributes
        )
        assert (
            upstream.attributes
            | {
                "server.address": WEB_IP,
                "network.protocol.version": "2",
                "http.response.status_code": 200,
                "upstream_cluster": "outbound|80||h2.shop.svc.cluster.local",
                "destination_workload": "web",
            }
            == upstream.attributes
        )
        assert not any(k.startswith("rpc.") for k in server.attributes | upstream.attributes)
        assert server.status_code == upstream.status_code == 0

    run(tmp_path, body)


def test_grpc_calls_get_rpc_spans_with_their_grpc_status(
    tmp_path: Path, receiver: OtlpReceiver
) -> None:
    async def body(mesh: Mesh) -> None:
        echoes = await add_h2_services(mesh)
        mesh.set_routes(GRPC_ROUTES)
        tracing = traced(mesh, receiver)
        client = await h2_client(mesh, GRPC_VIP, GRPC_PORT)
        with capture_logs() as logs:
            ok = await client.grpc(
                "/echo.Echo/B", headers=(("traceparent", TRACEPARENT), ("baggage", "k=v"))
            )
            not_found = await client.grpc("/echo.Echo/A", headers=(("x-want-status", "5"),))
            unavailable = await client.grpc("/echo.Echo/A", headers=(("x-want-status", "14"),))
            unimplemented = await client.grpc("/echo.Echo/Nope")  # answered by the waypoint
            await asyncio.sleep(0.1)
        assert [r.trailers.get("grpc-status") for r in (ok, not_found, unavailable)] == [
            "0",
            "5",
            "14",
        ]
        assert unimplemented.headers["grpc-status"] == "12"
        assert echoes["a"].calls == 2 and echoes["b"].calls == 1
        spans = await exported(tracing, receiver, 7)  # 4 server spans, 3 client spans
        client.close()

        by_trace: dict[str, list[ReceivedSpan]] = {}
        for span in spans:
            by_trace.setdefault(span.trace_id, []).append(span)
        lines = [e for e in logs if e["event"] == "request.completed"]
        assert len(lines) == 4
        assert {line["trace_id"] for line in lines} == set(by_trace)  # one trace per call
        assert len(by_trace) == 4

        def pair(trace_id: str) -> tuple[ReceivedSpan, ReceivedSpan]:
            (server,) = [s for s in by_trace[trace_id] if s.is_server]
            (upstream,) = [s for s in by_trace[trace_id] if s.is_client]
            assert upstream.parent_span_id == server.span_id
            return server, upstream

        # the caller's trace goes on; the backend's parent is the client span
        server, upstream = pair(TRACE_ID)
        assert server.parent_span_id == PARENT_ID
        seen = json.loads(ok.headers["x-request"])["head"]
        assert parse_traceparent(seen["traceparent"]) == (TRACE_ID, upstream.span_id, "01")
        assert seen["baggage"] == "k=v"
        assert server.name == upstream.name == "echo.Echo/B"
        rpc = {"rpc.system": "grpc", "rpc.service": "echo.Echo", "rpc.method": "B"}
        for span in (server, upstream):
            assert (
                span.attributes
                | rpc
                | {
                    "rpc.grpc.status_code": 0,
                    "network.protocol.version": "2",
                    "http.request.method": "POST",
                    "http.response.status_code": 200,
                    "upstream_cluster": "outbound|50051||grpc-b.shop.svc.cluster.local",
                }
                == span.attributes
            )
        assert server.attributes["url.path"] == "/echo.Echo/B"
        assert server.status_code == upstream.status_code == 0

        def call(grpc_status: int) -> tuple[ReceivedSpan, ...]:
            (found,) = [
                spans_
                for spans_ in by_trace.values()
                if any(s.attributes.get("rpc.grpc.status_code") == grpc_status for s in spans_)
            ]
            return tuple(sorted(found, key=lambda s: s.is_client))

        # NOT_FOUND is the caller's error, not the server's; the client span's, though
        server, upstream = call(5)
        assert server.name == "echo.Echo/A" and server.parent_span_id == ""
        assert server.attributes["rpc.grpc.status_code"] == 5
        assert upstream.attributes["rpc.grpc.status_code"] == 5
        assert (server.status_code, upstream.status_code) == (0, 2)  # UNSET, ERROR
        # UNAVAILABLE is an error on both sides
        server, upstream = call(14)
        assert (server.status_code, upstream.status_code) == (2, 2)
        assert server.attributes["error.type"] == "14"
        # answered here: a server span only, UNIMPLEMENTED, an error
        (server,) = call(12)
        assert server.is_server and server.status_code == 2
        assert server.name == "echo.Echo/Nope"
        assert server.attributes["rpc.method"] == "Nope"
        assert server.attributes["response_flags"] == "NR"
        assert "upstream_cluster" not in server.attributes

    run(tmp_path, body)
