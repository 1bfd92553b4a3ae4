"""DestinationRules applied by the waypoint on real traffic: round robin over two pods, a
subset reaching only its pods, the circuit breaker's 503 + x-weft-overloaded (flag UO), an
undefined subset (NC), and outlier detection ejecting a failing pod and bringing it back."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import structlog
from structlog.testing import capture_logs

from meshcore.meshstate import ServiceMembership, ServicePort
from meshcore.resources import ResourceKey
from sample_apps.echo_core import Identity
from sample_apps.http_echo import EchoConfig, EchoServer
from tests.integration.waypoint.h2_mesh import h2_client
from tests.integration.waypoint.waypoint_mesh import (
    HTTP_PORT,
    NS,
    WEB_ID,
    HttpClient,
    Mesh,
    headers_of,
    run,
    service,
    workload,
)

pytestmark = pytest.mark.integration

PAIR_VIP = "10.96.0.30"
PODS = {"pair-a": ("127.0.0.2", "v1"), "pair-b": ("127.0.0.3", "v2")}


async def add_pair(mesh: Mesh, rules: str, port_name: str = "http") -> list[EchoServer]:
    """Service `pair` with two pods (pair-a v1, pair-b v2), and these DestinationRules."""
    echoes: list[EchoServer] = []
    state: dict[ResourceKey, object] = {}
    for pod, (ip, version) in PODS.items():
        echo = EchoServer(
            EchoConfig(ip, 0, Identity(pod=pod, namespace=NS, version=version)),
            structlog.get_logger("echo"),
        )
        port = (await echo.start()).port
        echoes.append(echo)
        w = workload(pod, ip, WEB_ID, (ServiceMembership(NS, "pair", {HTTP_PORT: port}),))
        w = dataclasses.replace(w, labels={"app": "pair", "version": version})
        state[w.key] = w
    svc = service("pair", PAIR_VIP, (ServicePort(port_name, HTTP_PORT),))
    state[svc.key] = svc
    mesh.state.update(state)
    mesh.inbound.view.update(mesh.state)  # type: ignore[arg-type]
    mesh.set_routes(rules)
    return echoes


async def stop(echoes: list[EchoServer]) -> None:
    for echo in echoes:
        await echo.stop()


async def get(client: HttpClient, path: str, extra: str = "") -> tuple[int, dict[str, str], str]:
    client.send_raw(f"GET {path} HTTP/1.1\r\nHost: pair\r\n{extra}\r\n".encode())
    response, raw = await client.response()
    pod = json.loads(raw).get("pod", "") if raw.startswith(b"{") else ""
    return response.status_code, headers_of(response), pod


def rule(spec: str) -> str:
    body = textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ")
    return (
        "apiVersion: networking.weft.dev/v1\nkind: DestinationRule\n"
        f"metadata: {{name: pair, namespace: {NS}}}\nspec:\n{body}\n"
    )


SUBSETS = """
apiVersion: networking.weft.dev/v1
kind: VirtualService
metadata: {name: pair, namespace: shop}
spec:
  hosts: [pair]
  http:
  - match: [{uri: {prefix: /v2}}]
    route: [{destination: {host: pair, subset: v2}}]
  - match: [{uri: {prefix: /v9}}]
    route: [{destination: {host: pair, subset: v9}}]
  - route: [{destination: {host: pair}}]
"""


def test_round_robin_alternates_and_a_subset_gets_only_its_pods(tmp_path: Path) -> None:
    dr = rule(
        """
        host: pair
        subsets:
        - {name: v1, labels: {version: v1}}
        - {name: v2, labels: {version: v2}}
        """
    )

    async def body(mesh: Mesh) -> None:
        echoes = await add_pair(mesh, dr + "---\n" + textwrap.dedent(SUBSETS))
        try:
            client = await mesh.http(vip=PAIR_VIP)
            pods = [(await get(client, "/x"))[2] for _ in range(6)]
            assert sorted(Counter(pods).values()) == [3, 3]
            assert all(a != b for a, b in itertools.pairwise(pods)), pods
            v2 = {(await get(client, "/v2"))[2] for _ in range(6)}
            assert v2 == {"pair-b"}
            with capture_logs() as logs:
                status, _, _ = await get(client, "/v9")
            assert status == 503
            (done,) = [e for e in logs if e["event"] == "request.completed"]
            assert done["response_flags"] == "NC"
        finally:
            await stop(echoes)

    run(tmp_path, body)


def test_requests_over_the_limit_fail_fast_with_503_and_x_weft_overloaded(tmp_path: Path) -> None:
    dr = rule(
        """
        host: pair
        trafficPolicy:
          connectionPool:
            tcp: {maxConnections: 1}
            http: {http1MaxPendingRequests: 1}
        """
    )

    async def body(mesh: Mesh) -> None:
        echoes = await add_pair(mesh, dr)
        try:
            clients = [await mesh.http(vip=PAIR_VIP) for _ in range(4)]
            with capture_logs() as logs:
                results = await asyncio.gather(*(get(c, "/slow?delay=400ms") for c in clients))
            statuses = sorted(status for status, _, _ in results)
            assert statuses == [200, 200, 503, 503], statuses  # 1 in flight + 1 pending
            for status, headers, _ in results:
                if status == 503:
                    assert headers.get("x-weft-overloaded") == "true"
            flags = sorted(
                str(e["response_flags"]) for e in logs if e["event"] == "request.completed"
            )
            assert flags == ["-", "-", "UO", "UO"]
            # the breaker closes again once they are done
            assert (await get(clients[0], "/x"))[0] == 200
        finally:
            await stop(echoes)

    run(tmp_path, body)


def test_a_failing_pod_is_ejected_then_comes_back(tmp_path: Path) -> None:
    dr = rule(
        """
        host: pair
        trafficPolicy:
          outlierDetection:
            consecutive5xxErrors: 2
            interval: 1s
            baseEjectionTime: 1s
            maxEjectionPercent: 50
        """
    )

    async def body(mesh: Mesh) -> None:
        echoes = await add_pair(mesh, dr)
        try:
            client = await mesh.http(vip=PAIR_VIP)
            seen = [await get(client, "/x?codes=503&pod=pair-b") for _ in range(8)]
            # round robin: a, b (503), a, b (503: the second in a row, ejected), then only a
            assert [(s, p) for s, _, p in seen[:4]] == [
                (200, "pair-a"),
                (503, "pair-b"),
                (200, "pair-a"),
                (503, "pair-b"),
            ] or [(s, p) for s, _, p in seen[:4]] == [
                (503, "pair-b"),
                (200, "pair-a"),
                (503, "pair-b"),
                (200, "pair-a"),
            ], seen
            assert [(s, p) for s, _, p in seen[4:]] == [(200, "pair-a")] * 4
            ((service, hosts),) = mesh.waypoint.traffic.ejected().items()
            assert service == "pair.shop.svc.cluster.local"
            assert [h.rsplit(":", 1)[0] for h in hosts] == [PODS["pair-b"][0]]
            await asyncio.sleep(1.1)  # baseEjectionTime
            assert mesh.waypoint.traffic.ejected() == {"pair.shop.svc.cluster.local": []}
            pods = Counter([(await get(client, "/x"))[2] for _ in range(4)])
            assert pods == {"pair-a": 2, "pair-b": 2}
        finally:
            await stop(echoes)

    run(tmp_path, body)


def test_h2c_requests_share_the_breaker_and_the_outlier_detection(tmp_path: Path) -> None:
    dr = rule(
        """
        host: pair
        trafficPolicy:
          connectionPool: {http: {http2MaxRequests: 1}}
          outlierDetection: {consecutive5xxErrors: 2, baseEjectionTime: 30s, maxEjectionPercent: 50}
        """
    )

    async def body(mesh: Mesh) -> None:
        echoes = await add_pair(mesh, dr, port_name="http2-web")
        try:
            client = await h2_client(mesh, PAIR_VIP, HTTP_PORT)
            slow = await asyncio.gather(
                *(client.request("/slow?delay=300ms", method="GET") for _ in range(2))
            )
            assert sorted(r.status for r in slow) == [200, 503]
            (over,) = [r for r in slow if r.status == 503]
            assert over.headers.get("x-weft-overloaded") == "true"
            replies = [
                await client.request("/x?codes=503&pod=pair-b", method="GET") for _ in range(8)
            ]
            assert [r.json()["pod"] for r in replies[4:]] == ["pair-a"] * 4
            assert [r.status for r in replies[4:]] == [200] * 4
            ((_, hosts),) = mesh.waypoint.traffic.ejected().items()
            assert [h.rsplit(":", 1)[0] for h in hosts] == [PODS["pair-b"][0]]
            client.close()
        finally:
            await stop(echoes)

    run(tmp_path, body)


def test_consistent_hash_keeps_a_user_on_one_pod(tmp_path: Path) -> None:
    dr = rule(
        """
        host: pair
        trafficPolicy:
          loadBalancer: {consistentHash: {httpHeaderName: x-user}}
        """
    )

    async def body(mesh: Mesh) -> None:
        echoes = await add_pair(mesh, dr)
        try:
            client = await mesh.http(vip=PAIR_VIP)
            pods_of: dict[str, set[str]] = {}
            for user in [f"user-{i}" for i in range(12)] * 3:
                _, _, pod = await get(client, "/x", f"x-user: {user}\r\n")
                pods_of.setdefault(user, set()).add(pod)
            assert all(len(pods) == 1 for pods in pods_of.values()), pods_of
            assert {p for pods in pods_of.values() for p in pods} == {"pair-a", "pair-b"}
        finally:
            await stop(echoes)

    run(tmp_path, body)


def test_a_hash_cookie_is_set_when_missing_and_then_keeps_the_client_on_one_pod(
    tmp_path: Path,
) -> None:
    dr = rule(
        """
        host: pair
        trafficPolicy:
          loadBalancer: {consistentHash: {httpCookie: {name: sticky, path: /, ttl: 60s}}}
        """
    )

    async def body(mesh: Mesh) -> None:
        echoes = await add_pair(mesh, dr)
        try:
            client = await mesh.http(vip=PAIR_VIP)
            sticky: dict[str, set[str]] = {}
            for _ in range(6):
                _, headers, first = await get(client, "/x")
                set_cookie = headers["set-cookie"]
                assert set_cookie.startswith("sticky=") and "Max-Age=60" in set_cookie
                value = set_cookie.split(";", 1)[0]
                pods = {(await get(client, "/x", f"cookie: {value}\r\n"))[2] for _ in range(4)}
                _, again, _ = await get(client, "/x", f"cookie: {value}\r\n")
                assert "set-cookie" not in again
                assert first in pods
                sticky[value] = pods
            assert all(len(p) == 1 for p in sticky.values()), sticky
        finally:
            await stop(echoes)

    run(tmp_path, body)
