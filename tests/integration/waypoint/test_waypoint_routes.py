"""HTTPRoutes (GAMMA) applied by the waypoint on real traffic: the decision comes from
waypoint.routing, the waypoint carries it out (backend Service, rewritten path and headers,
response header modifiers, redirects, 404 for a routed port no rule matches)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from meshcore.meshstate import ServiceMembership, ServicePort, Workload
from meshcore.resources import ResourceKey
from tests.integration.waypoint.waypoint_mesh import (
    NS,
    ROUTED_VIP,
    WEB_IP,
    Mesh,
    headers_of,
    run,
    service,
)

pytestmark = pytest.mark.integration

ROUTES = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: routed, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: routed, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /v2}}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-canary, value: "yes"}], remove: [x-drop]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {add: [{name: x-routed-by, value: waypoint}]}
    - type: URLRewrite
      urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /api}}
    backendRefs: [{name: web-v2, port: 80}]
  - matches: [{path: {type: Exact, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {path: {type: ReplaceFullPath, replaceFullPath: /new}, statusCode: 301}
  - matches: [{path: {type: PathPrefix, value: /v1}}]
    backendRefs: [{name: routed, port: 80}]
"""


def test_routes_pick_the_backend_and_rewrite_the_request(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        mesh.set_routes(ROUTES)
        client = await mesh.http(vip=ROUTED_VIP)
        client.send_raw(b"GET /v2/items?q=1 HTTP/1.1\r\nHost: routed\r\nX-Drop: 1\r\n\r\n")
        response, raw = await client.response()
        assert response.status_code == 200
        echoed = json.loads(raw)
        assert echoed["pod"] == "web-2"  # web-v2's endpoint
        assert echoed["request"]["path"] == "/api/items?q=1"
        assert echoed["request"]["headers"]["x-canary"] == "yes"
        assert "x-drop" not in echoed["request"]["headers"]
        assert headers_of(response)["x-routed-by"] == "waypoint"
        # the same client connection, another rule: the Service itself
        client.send_raw(b"GET /v1/x HTTP/1.1\r\nHost: routed\r\n\r\n")
        response, raw = await client.response()
        assert json.loads(raw)["pod"] == "web-1"

    run(tmp_path, body)


def test_a_redirect_and_an_unmatched_path_are_answered_by_the_waypoint(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        mesh.set_routes(ROUTES)
        client = await mesh.http(vip=ROUTED_VIP)
        client.send_raw(b"GET /old?x=1 HTTP/1.1\r\nHost: routed.shop\r\n\r\n")
        response, _ = await client.response()
        assert response.status_code == 301
        assert headers_of(response)["location"] == "http://routed.shop/new?x=1"
        client.send_raw(b"GET /nowhere HTTP/1.1\r\nHost: routed\r\n\r\n")
        response, _ = await client.response()
        assert response.status_code == 404

    run(tmp_path, body)


TIMEOUT_ROUTE = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: slow, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: routed, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /delay}}]
    timeouts: {request: 200ms}
    backendRefs: [{name: routed, port: 80}]
  - backendRefs: [{name: routed, port: 80}]
"""


def test_a_route_timeout_is_a_504_and_the_connection_goes_on(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        mesh.set_routes(TIMEOUT_ROUTE)
        client = await mesh.http(vip=ROUTED_VIP)
        with capture_logs() as logs:
            started = asyncio.get_running_loop().time()
            client.send_raw(b"GET /delay/2000 HTTP/1.1\r\nHost: routed\r\n\r\n")
            response, _ = await client.response()
            took = asyncio.get_running_loop().time() - started
        assert response.status_code == 504
        assert 0.15 < took < 1.5
        (line,) = [e for e in logs if e["event"] == "request.completed"]
        assert line["response_flags"] == "UT"
        assert line["reason"] == "route timeout (0.2 s)"
        client.send_raw(b"GET /delay/10 HTTP/1.1\r\nHost: routed\r\n\r\n")
        response, _ = await client.response()
        assert response.status_code == 200  # within the timeout, on a new backend stream

    run(tmp_path, body)


MIRROR_ROUTE = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mirrored, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: routed, port: 80}]
  rules:
  - filters:
    - type: RequestMirror
      requestMirror: {backendRef: {name: mirror, port: 80}}
    backendRefs: [{name: routed, port: 80}]
"""


class Recorder:
    """A pod that records each request it gets (head and body) and answers 200."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.got = asyncio.Event()

    async def start(self) -> int:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                body = await reader.readexactly(length)
                self.requests.append(head + body)
                self.got.set()
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            writer.close()

        self.server = await asyncio.start_server(serve, WEB_IP, 0)
        return int(self.server.sockets[0].getsockname()[1])


def test_a_mirror_gets_a_copy_of_the_request_and_its_answer_is_ignored(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        recorder = Recorder()
        port = await recorder.start()
        web = mesh.state[ResourceKey("Workload", NS, "web")]
        assert isinstance(web, Workload)
        web = dataclasses.replace(
            web, services=(*web.services, ServiceMembership(NS, "mirror", {80: port}))
        )
        mirror = service("mirror", "10.96.0.16", (ServicePort("http", 80),), bound=False)
        mesh.state = {**mesh.state, web.key: web, mirror.key: mirror}
        mesh.set_routes(MIRROR_ROUTE)
        client = await mesh.http(vip=ROUTED_VIP)
        client.send_raw(
            b"POST /m HTTP/1.1\r\nHost: routed\r\nContent-Length: 5\r\nX-Trace: 1\r\n\r\nhello"
        )
        response, raw = await client.response()
        assert response.status_code == 200 and json.loads(raw)["pod"] == "web-1"
        await asyncio.wait_for(recorder.got.wait(), 5)
        (copy,) = recorder.requests
        assert copy.startswith(b"POST /m HTTP/1.1\r\n")
        assert b"host: routed-shadow\r\n" in copy.lower()
        assert b"x-trace: 1\r\n" in copy.lower()
        assert copy.endswith(b"\r\n\r\nhello")

    run(tmp_path, body)


RETRY_ROUTE = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: retried, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: routed, port: 80}]
  rules:
  - retry: {codes: [503], attempts: 2, backoff: 10ms}
    backendRefs: [{name: flaky, port: 80}]
"""


class Flaky(Recorder):
    """Answers 503 to the first `failures` requests, then 200, echoing the body's length."""

    def __init__(self, failures: int) -> None:
        super().__init__()
        self.failures = failures

    async def start(self) -> int:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                while True:
                    head = await reader.readuntil(b"\r\n\r\n")
                    length = 0
                    for line in head.split(b"\r\n"):
                        if line.lower().startswith(b"content-length:"):
                            length = int(line.split(b":")[1])
                    body = await reader.readexactly(length)
                    self.requests.append(head + body)
                    status = b"503 Service Unavailable" if self.failures > 0 else b"200 OK"
                    self.failures -= 1
                    answer = b"%d" % len(body)
                    writer.write(
                        b"HTTP/1.1 %s\r\nContent-Length: %d\r\n\r\n%s"
                        % (status, len(answer), answer)
                    )
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            writer.close()

        self.server = await asyncio.start_server(serve, WEB_IP, 0)
        return int(self.server.sockets[0].getsockname()[1])


async def with_flaky(mesh: Mesh, failures: int) -> Flaky:
    flaky = Flaky(failures)
    port = await flaky.start()
    web = mesh.state[ResourceKey("Workload", NS, "web")]
    assert isinstance(web, Workload)
    web = dataclasses.replace(
        web, services=(*web.services, ServiceMembership(NS, "flaky", {80: port}))
    )
    svc = service("flaky", "10.96.0.17", (ServicePort("http", 80),), bound=False)
    mesh.state = {**mesh.state, web.key: web, svc.key: svc}
    mesh.set_routes(RETRY_ROUTE)
    return flaky


def test_a_listed_code_is_retried_with_the_body_kept(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        flaky = await with_flaky(mesh, failures=2)
        client = await mesh.http(vip=ROUTED_VIP)
        with capture_logs() as logs:
            client.send_raw(b"PUT /r HTTP/1.1\r\nHost: routed\r\nContent-Length: 4\r\n\r\nabcd")
            response, raw = await client.response()
        assert response.status_code == 200 and raw == b"4"  # the body went again, whole
        assert len(flaky.requests) == 3 and all(r.endswith(b"abcd") for r in flaky.requests)
        (line,) = [e for e in logs if e["event"] == "request.completed"]
        assert line["retries"] == 2

    run(tmp_path, body)


def test_a_non_idempotent_request_that_reached_the_backend_is_not_tried_again(
    tmp_path: Path,
) -> None:
    async def body(mesh: Mesh) -> None:
        flaky = await with_flaky(mesh, failures=2)
        client = await mesh.http(vip=ROUTED_VIP)
        client.send_raw(b"POST /r HTTP/1.1\r\nHost: routed\r\nContent-Length: 4\r\n\r\nabcd")
        response, _ = await client.response()
        assert response.status_code == 503  # the backend's own answer, passed on
        assert len(flaky.requests) == 1

    run(tmp_path, body)


def test_past_its_attempts_the_last_answer_goes_to_the_client(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        flaky = await with_flaky(mesh, failures=5)
        client = await mesh.http(vip=ROUTED_VIP)
        client.send_raw(b"GET /r HTTP/1.1\r\nHost: routed\r\n\r\n")
        response, _ = await client.response()
        assert response.status_code == 503
        assert len(flaky.requests) == 3  # the first try and two attempts

    run(tmp_path, body)


PER_TRY_ROUTE = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: per-try, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: routed, port: 80}]
  rules:
  - timeouts: {request: 3s, backendRequest: 200ms}
    retry: {attempts: 1}
    backendRefs: [{name: routed, port: 80}]
"""


def test_each_try_is_bounded_by_the_backend_request_timeout(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        mesh.set_routes(PER_TRY_ROUTE)
        client = await mesh.http(vip=ROUTED_VIP)
        with capture_logs() as logs:
            started = asyncio.get_running_loop().time()
            client.send_raw(b"GET /delay/2000 HTTP/1.1\r\nHost: routed\r\n\r\n")
            response, _ = await client.response()
            took = asyncio.get_running_loop().time() - started
        assert response.status_code == 504
        assert 0.35 < took < 1.5  # two tries of 200 ms, well within the 3 s request timeout
        (line,) = [e for e in logs if e["event"] == "request.completed"]
        assert line["retries"] == 1 and line["response_flags"] == "UT"
        client.send_raw(b"GET /fast HTTP/1.1\r\nHost: routed\r\n\r\n")
        response, _ = await client.response()
        assert response.status_code == 200

    run(tmp_path, body)
