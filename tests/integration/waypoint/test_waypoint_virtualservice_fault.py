"""VirtualServices applied by the waypoint on real traffic: weighted destinations, fault
abort (HTTP/1.1 and gRPC, never reaching a backend) and delay, and an HTTPRoute on the same
Service port winning over a VirtualService."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from tests.integration.waypoint.h2_mesh import GRPC_PORT, GRPC_VIP, add_h2_services, h2_client
from tests.integration.waypoint.waypoint_mesh import ROUTED_VIP, Mesh, run

pytestmark = pytest.mark.integration

WEIGHTS = """
apiVersion: networking.weft.dev/v1
kind: VirtualService
metadata: {name: routed, namespace: shop}
spec:
  hosts: [routed]
  http:
  - match: [{uri: {prefix: /abort}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: routed}}]
  - match: [{uri: {prefix: /delay}}]
    fault: {delay: {fixedDelay: 300ms, percentage: {value: 100}}}
    route: [{destination: {host: routed}}]
  - route:
    - {destination: {host: routed}, weight: 50}
    - {destination: {host: web-v2.shop.svc.cluster.local, port: {number: 80}}, weight: 50}
    headers: {response: {set: {x-routed-by: vs}}}
"""


def _completed(logs: list[dict[str, object]]) -> list[dict[str, object]]:
    return [e for e in logs if e["event"] == "request.completed"]


def test_a_virtual_service_splits_by_weight(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        mesh.set_routes(WEIGHTS)
        client = await mesh.http(vip=ROUTED_VIP)
        pods: Counter[str] = Counter()
        for _ in range(60):
            client.send_raw(b"GET /x HTTP/1.1\r\nHost: routed\r\n\r\n")
            response, raw = await client.response()
            assert response.status_code == 200
            assert (b"x-routed-by", b"vs") in response.headers
            pods[json.loads(raw)["pod"]] += 1
        assert pods["web-1"] >= 10 and pods["web-2"] >= 10, pods

    run(tmp_path, body)


def test_an_abort_fault_answers_here_and_never_reaches_the_backend(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        mesh.set_routes(WEIGHTS)
        client = await mesh.http(vip=ROUTED_VIP)
        with capture_logs() as logs:
            client.send_raw(b"POST /abort HTTP/1.1\r\nHost: routed\r\nContent-Length: 3\r\n\r\nabc")
            response, _ = await client.response()
            assert response.status_code == 418
            # the connection goes on
            client.send_raw(b"GET /x HTTP/1.1\r\nHost: routed\r\n\r\n")
            response, _ = await client.response()
            assert response.status_code == 200
        aborted, forwarded = _completed(logs)
        assert aborted["response_flags"] == "FI"
        assert aborted["upstream_host"] in ("", "-", None)
        assert forwarded["response_flags"] == "-"

    run(tmp_path, body)


def test_a_delay_fault_waits_then_forwards(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        mesh.set_routes(WEIGHTS)
        client = await mesh.http(vip=ROUTED_VIP)
        with capture_logs() as logs:
            started = asyncio.get_running_loop().time()
            client.send_raw(b"GET /delay HTTP/1.1\r\nHost: routed\r\n\r\n")
            response, raw = await client.response()
            took = asyncio.get_running_loop().time() - started
        assert response.status_code == 200 and json.loads(raw)["pod"] == "web-1"
        assert took >= 0.3
        (line,) = _completed(logs)
        assert line["response_flags"] == "DI"

    run(tmp_path, body)


def test_an_httproute_on_the_same_port_wins_over_a_virtual_service(tmp_path: Path) -> None:
    route = """
    apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata: {name: routed, namespace: shop}
    spec:
      parentRefs: [{group: "", kind: Service, name: routed, port: 80}]
      rules: [{backendRefs: [{name: web-v2, port: 80}]}]
    """

    async def body(mesh: Mesh) -> None:
        mesh.set_routes(WEIGHTS + "---\n" + route.replace("\n    ", "\n"))
        client = await mesh.http(vip=ROUTED_VIP)
        client.send_raw(b"GET /abort HTTP/1.1\r\nHost: routed\r\n\r\n")
        response, raw = await client.response()
        assert response.status_code == 200  # the VirtualService's abort does not apply
        assert json.loads(raw)["pod"] == "web-2"

    run(tmp_path, body)


def test_a_grpc_abort_is_a_trailers_only_answer_and_no_call(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        echoes = await add_h2_services(mesh)
        mesh.set_routes(
            """
            apiVersion: networking.weft.dev/v1
            kind: VirtualService
            metadata: {name: grpc, namespace: shop}
            spec:
              hosts: [grpc]
              http:
              - match: [{uri: {prefix: /echo.Echo/Fail}}]
                fault: {abort: {grpcStatus: UNAVAILABLE, percentage: {value: 100}}}
                route: [{destination: {host: grpc-a}}]
              - route: [{destination: {host: grpc-a}}]
            """
        )
        client = await h2_client(mesh, GRPC_VIP, GRPC_PORT)
        reply = await client.grpc("/echo.Echo/Fail")
        assert reply.status == 200 and reply.headers["grpc-status"] == "14"
        assert echoes["a"].calls == 0
        ok = await client.grpc("/echo.Echo/A")
        assert ok.trailers["grpc-status"] == "0" and echoes["a"].calls == 1
        client.close()

    run(tmp_path, body)
