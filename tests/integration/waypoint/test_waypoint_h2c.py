"""h2c and gRPC through the waypoint at L7: a client h2 connection over HBONE -> waypoint
(h2 server side, routing per stream) -> HBONE as the waypoint -> node-2's ztunnel -> an h2c
backend (sample_apps' HTTP echo, or a gRPC-shaped echo)."""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path

from prometheus_client import REGISTRY

from tests.integration.waypoint.h2_mesh import (
    GRPC_PORT,
    GRPC_VIP,
    H2_PORT,
    H2_VIP,
    add_h2_services,
    h2_client,
)
from tests.integration.waypoint.waypoint_mesh import SNIFFED_PORT, WEB_VIP, Mesh, run
from waypoint.h2wire import MAX_RESETS

GRPC_ROUTES = """
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: grpc, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: grpc, port: 50051}]
  rules:
  - matches: [{method: {service: echo.Echo, method: A}}]
    backendRefs: [{name: grpc-a, port: 50051}]
  - matches: [{method: {service: echo.Echo, method: B}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-filter, value: b}], remove: [x-drop]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {add: [{name: x-routed-by, value: waypoint}]}
    backendRefs: [{name: grpc-b, port: 50051}]
  - matches: [{method: {service: echo.Echo, method: Split}}]
    backendRefs: [{name: grpc-a, port: 50051, weight: 1}, {name: grpc-b, port: 50051, weight: 1}]
  - matches: [{method: {service: echo.Echo, method: Canary}}]
    backendRefs: [{name: grpc-a, port: 50051, weight: 0}, {name: grpc-b, port: 50051, weight: 5}]
  - matches: [{method: {service: echo.Echo, method: Down}}]
    backendRefs: [{name: grpc-empty, port: 50051}]
"""


def grpc_requests(code: str, grpc_status: str) -> float:
    return labelled_total(
        request_protocol="grpc", response_code=code, grpc_response_status=grpc_status
    )


def labelled_total(**labels: str) -> float:
    """Sum of istio_requests_total over the series carrying these labels."""
    total = 0.0
    for metric in REGISTRY.collect():
        if metric.name != "istio_requests":
            continue
        for sample in metric.samples:
            if sample.name.endswith("_total") and all(
                sample.labels.get(k) == v for k, v in labels.items()
            ):
                total += sample.value
    return total


def test_concurrent_h2c_requests_share_one_client_connection(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        await add_h2_services(mesh)
        client = await h2_client(mesh, H2_VIP, H2_PORT)
        started = time.monotonic()
        replies = await asyncio.gather(
            *(client.request(f"/delay/300?i={i}", method="GET") for i in range(6))
        )
        elapsed = time.monotonic() - started
        assert [r.status for r in replies] == [200] * 6
        assert elapsed < 1.5, elapsed  # six 300 ms answers, multiplexed, not one by one
        echoed = replies[0].json()
        assert echoed["pod"] == "web-1"
        assert echoed["protocol"] == "HTTP/2"  # h2c to the backend too
        assert len(mesh.waypoint.stats()) == 1  # one client HBONE connection
        client.close()

    run(tmp_path, body)


def test_a_sniffed_h2_preface_is_served_at_l7(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        before = labelled_total(destination_service_name="web", request_protocol="http")
        client = await h2_client(mesh, WEB_VIP, SNIFFED_PORT)
        reply = await client.request("/hello", method="GET")
        await asyncio.sleep(0.1)
        assert reply.status == 200
        assert reply.json()["request"]["path"] == "/hello"  # type: ignore[index]
        after = labelled_total(destination_service_name="web", request_protocol="http")
        assert after == before + 1  # counted per request: L7, not passthrough
        client.close()

    run(tmp_path, body)


def test_grpc_method_matches_route_to_two_backends_with_filters_and_trailers(
    tmp_path: Path,
) -> None:
    async def body(mesh: Mesh) -> None:
        await add_h2_services(mesh)
        mesh.set_routes(GRPC_ROUTES)
        ok_before = grpc_requests("200", "0")
        client = await h2_client(mesh, GRPC_VIP, GRPC_PORT)
        a, b = await asyncio.gather(
            client.grpc("/echo.Echo/A"),
            client.grpc(
                "/echo.Echo/B",
                headers=(("x-drop", "1"), ("x-keep", "1")),
                trailers=(("x-client-trailer", "t"),),
            ),
        )
        assert a.status == 200 and a.headers["x-backend"] == "a"
        assert a.trailers["grpc-status"] == "0" and a.trailers["x-trailer"] == "a"
        assert a.body == b"\x00\x00\x00\x00\x00"  # the message, echoed
        assert b.headers["x-backend"] == "b"
        assert b.headers["x-routed-by"] == "waypoint"
        seen = json.loads(b.headers["x-request"])
        assert seen["head"]["x-filter"] == "b"
        assert "x-drop" not in seen["head"] and seen["head"]["x-keep"] == "1"
        assert seen["head"][":path"] == "/echo.Echo/B"
        assert seen["head"]["te"] == "trailers"
        assert seen["trailers"] == {"x-client-trailer": "t"}  # request trailers go on
        assert b.trailers["grpc-status"] == "0" and b.trailers["x-trailer"] == "b"
        await asyncio.sleep(0.1)  # the access log and metrics follow the last frame
        assert grpc_requests("200", "0") == ok_before + 2
        client.close()

    run(tmp_path, body)


def test_an_unmatched_grpc_method_is_answered_unimplemented_by_the_waypoint(
    tmp_path: Path,
) -> None:
    async def body(mesh: Mesh) -> None:
        echoes = await add_h2_services(mesh)
        mesh.set_routes(GRPC_ROUTES)
        before = grpc_requests("200", "12")
        client = await h2_client(mesh, GRPC_VIP, GRPC_PORT)
        reply = await client.grpc("/echo.Echo/Nope")
        assert reply.status == 200
        assert reply.headers["grpc-status"] == "12"  # trailers-only
        assert reply.headers["content-type"] == "application/grpc"
        assert "grpc-message" in reply.headers
        assert reply.body == b"" and reply.trailers == {}
        assert echoes["a"].calls == echoes["b"].calls == 0
        await asyncio.sleep(0.1)
        assert grpc_requests("200", "12") == before + 1
        # the connection goes on
        again = await client.grpc("/echo.Echo/A")
        assert again.trailers["grpc-status"] == "0"
        # a backend's own grpc-status is what is counted
        failed = await client.grpc("/echo.Echo/A", headers=(("x-want-status", "5"),))
        assert failed.trailers["grpc-status"] == "5"
        await asyncio.sleep(0.1)
        assert grpc_requests("200", "5") >= 1
        client.close()

    run(tmp_path, body)


def test_grpc_weights_split_calls_and_weight_zero_gets_none(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        await add_h2_services(mesh)
        mesh.set_routes(GRPC_ROUTES)
        client = await h2_client(mesh, GRPC_VIP, GRPC_PORT)
        split = await asyncio.gather(*(client.grpc("/echo.Echo/Split") for _ in range(40)))
        seen = Counter(r.headers["x-backend"] for r in split)
        assert seen["a"] >= 8 and seen["b"] >= 8, seen
        canary = await asyncio.gather(*(client.grpc("/echo.Echo/Canary") for _ in range(10)))
        assert {r.headers["x-backend"] for r in canary} == {"b"}
        client.close()

    run(tmp_path, body)


def test_without_grpc_routes_httproutes_apply_to_grpc_calls(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        await add_h2_services(mesh)
        mesh.set_routes(
            """
            apiVersion: gateway.networking.k8s.io/v1
            kind: HTTPRoute
            metadata: {name: grpc-http, namespace: shop}
            spec:
              parentRefs: [{group: "", kind: Service, name: grpc, port: 50051}]
              rules:
              - matches: [{path: {type: PathPrefix, value: /echo.Echo}}]
                backendRefs: [{name: grpc-b, port: 50051}]
            """
        )
        client = await h2_client(mesh, GRPC_VIP, GRPC_PORT)
        reply = await client.grpc("/echo.Echo/Any")
        assert reply.headers["x-backend"] == "b"
        missing = await client.grpc("/other.Svc/Any")  # HTTPRoute's 404, in gRPC's words
        assert missing.status == 200 and missing.headers["grpc-status"] == "12"
        client.close()

    run(tmp_path, body)


def test_large_bodies_stream_both_ways_under_flow_control(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        await add_h2_services(mesh)
        client = await h2_client(mesh, GRPC_VIP, GRPC_PORT)
        payload = bytes(range(256)) * 12 * 1024  # 3 MiB, past every window
        echoed, big = await asyncio.gather(
            client.request("/echo.Echo/Up", body=payload, trailers=(("x-t", "1"),)),
            client.request("/echo.Echo/Down", headers=(("x-size", str(5 * 1024 * 1024)),)),
        )
        assert bytes(echoed.body) == payload
        assert echoed.trailers["grpc-status"] == "0"
        assert len(big.body) == 5 * 1024 * 1024
        assert big.trailers["x-trailer"] == "a"
        client.close()

    run(tmp_path, body)


def test_a_malformed_h2_client_gets_goaway_and_only_its_connection_ends(
    tmp_path: Path,
) -> None:
    async def body(mesh: Mesh) -> None:
        await add_h2_services(mesh)
        good = await h2_client(mesh, GRPC_VIP, GRPC_PORT)
        bad = await h2_client(mesh, GRPC_VIP, GRPC_PORT)
        await asyncio.sleep(0.1)
        # a DATA frame on stream 0: a connection error (PROTOCOL_ERROR)
        bad.end.write(b"\x00\x00\x01\x00\x00\x00\x00\x00\x00x")
        await asyncio.wait_for(bad.closed.wait(), 5)
        assert bad.goaway == 1  # PROTOCOL_ERROR
        reply = await good.grpc("/echo.Echo/A")
        assert reply.trailers["grpc-status"] == "0"
        good.close()

    run(tmp_path, body)


def test_an_oversized_header_block_gets_goaway_enhance_your_calm(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        await add_h2_services(mesh)
        bad = await h2_client(mesh, GRPC_VIP, GRPC_PORT)
        await asyncio.sleep(0.1)
        # HEADERS without END_HEADERS, then CONTINUATIONs past 64 KiB (CVE-2024-27316)
        chunk = b"\x00" * 16384
        frames = b"\x00\x40\x00\x01\x00\x00\x00\x00\x01" + chunk
        frames += (b"\x00\x40\x00\x09\x00\x00\x00\x00\x01" + chunk) * 4
        bad.end.write(frames)
        await asyncio.wait_for(bad.closed.wait(), 5)
        assert bad.goaway == 11  # ENHANCE_YOUR_CALM

    run(tmp_path, body)


def test_a_backend_without_endpoints_is_grpc_unavailable(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        await add_h2_services(mesh)
        mesh.set_routes(GRPC_ROUTES)
        before = labelled_total(request_protocol="grpc", response_flags="UH")
        client = await h2_client(mesh, GRPC_VIP, GRPC_PORT)
        reply = await client.grpc("/echo.Echo/Down")
        assert reply.status == 200 and reply.headers["grpc-status"] == "14"
        await asyncio.sleep(0.1)
        assert labelled_total(request_protocol="grpc", response_flags="UH") == before + 1
        client.close()

    run(tmp_path, body)


def test_a_client_reset_mid_request_resets_the_backend_stream(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        echoes = await add_h2_services(mesh)
        before = labelled_total(request_protocol="grpc", response_flags="DC")
        client = await h2_client(mesh, GRPC_VIP, GRPC_PORT)
        sid = client.conn.get_next_available_stream_id()
        client.conn.send_headers(
            sid,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":authority", "grpc"),
                (":path", "/echo.Echo/A"),
                ("content-type", "application/grpc"),
            ],
        )
        client.conn.send_data(sid, b"\x00\x00\x00\x00\x01")  # the body goes on...
        client.flush()
        await asyncio.sleep(0.2)
        client.conn.reset_stream(sid)  # ...and stops
        client.flush()
        for _ in range(50):
            if echoes["a"].resets:
                break
            await asyncio.sleep(0.05)
        assert echoes["a"].resets == 1
        await asyncio.sleep(0.1)
        assert labelled_total(request_protocol="grpc", response_flags="DC") == before + 1
        # the connection goes on
        assert (await client.grpc("/echo.Echo/A")).trailers["grpc-status"] == "0"
        client.close()

    run(tmp_path, body)


def test_a_rapid_reset_flood_gets_goaway_enhance_your_calm(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        await add_h2_services(mesh)
        mesh.set_routes(GRPC_ROUTES)
        client = await h2_client(mesh, GRPC_VIP, GRPC_PORT)
        await asyncio.sleep(0.1)
        head = [
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "grpc"),
            (":path", "/echo.Echo/Nope"),
            ("content-type", "application/grpc"),
        ]
        for _ in range(MAX_RESETS + 1):  # CVE-2023-44487
            sid = client.conn.get_next_available_stream_id()
            client.conn.send_headers(sid, head)
            client.conn.reset_stream(sid)
        client.flush()
        await asyncio.wait_for(client.closed.wait(), 10)
        assert client.goaway == 11  # ENHANCE_YOUR_CALM
        other = await h2_client(mesh, GRPC_VIP, GRPC_PORT)  # others are served
        assert (await other.grpc("/echo.Echo/A")).trailers["grpc-status"] == "0"
        other.close()

    run(tmp_path, body)


def test_bodies_of_streams_answered_here_give_their_window_back(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        await add_h2_services(mesh)
        mesh.set_routes(GRPC_ROUTES)
        client = await h2_client(mesh, GRPC_VIP, GRPC_PORT)
        big = b"\x00" * (300 * 1024)
        for _ in range(8):  # 8 x 256 KiB unread: past the 1 MiB connection window
            reply = await client.grpc("/echo.Echo/Nope", body=big)
            assert reply.headers["grpc-status"] == "12"
        ok = await client.grpc("/echo.Echo/A", body=big)
        assert ok.trailers["grpc-status"] == "0" and len(ok.body) == len(big)
        client.close()

    run(tmp_path, body)


def test_a_route_timeout_is_deadline_exceeded_for_grpc(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        await add_h2_services(mesh)
        mesh.set_routes(
            """
            apiVersion: gateway.networking.k8s.io/v1
            kind: HTTPRoute
            metadata: {name: grpc-http, namespace: shop}
            spec:
              parentRefs: [{group: "", kind: Service, name: grpc, port: 50051}]
              rules:
              - backendRefs: [{name: grpc-a, port: 50051}]
                timeouts: {request: 200ms}
            """
        )
        client = await h2_client(mesh, GRPC_VIP, GRPC_PORT)
        started = time.monotonic()
        slow = await client.grpc("/echo.Echo/A", headers=(("x-delay-ms", "2000"),))
        assert time.monotonic() - started < 1.5
        assert slow.status == 200 and slow.headers["grpc-status"] == "4"
        fast = await client.grpc("/echo.Echo/A")  # the connection goes on
        assert fast.trailers["grpc-status"] == "0"
        client.close()

    run(tmp_path, body)


def test_streams_past_a_backends_stream_limit_go_on_another_connection(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        echoes = await add_h2_services(mesh)
        client = await h2_client(mesh, GRPC_VIP, GRPC_PORT)
        # the echo advertises h2's default of 100 concurrent streams
        replies = await asyncio.gather(
            *(client.grpc("/echo.Echo/A", body=b"\x00" * 20000) for _ in range(250))
        )
        assert all(r.trailers.get("grpc-status") == "0" for r in replies)
        assert all(len(r.body) == 20000 for r in replies)
        assert echoes["a"].calls == 250
        client.close()

    run(tmp_path, body)
