"""RateLimitPolicy on real traffic through the in-process waypoint: HTTP/1.1 requests over the
limit get 429 with x-ratelimit-limit, x-ratelimit-remaining and retry-after and never reach
the backend; a gRPC call gets RESOURCE_EXHAUSTED (trailers-only); a Global policy counts in a
real redis-server."""

from __future__ import annotations

import json
from pathlib import Path

import h11
import pytest

from tests.integration.redis_server import RedisServer, redis_server  # noqa: F401
from tests.integration.waypoint.h2_mesh import GRPC_PORT, GRPC_VIP, add_h2_services, h2_client
from tests.integration.waypoint.waypoint_mesh import WEB_VIP, HttpClient, Mesh, headers_of, run
from waypoint.ratelimit import DECISIONS
from waypoint.ratelimit_store import RedisStore

pytestmark = pytest.mark.integration


def policy(target_kind: str, target: str, kind: str, requests: int, extra: str = "") -> str:
    group = "" if target_kind == "Service" else "gateway.networking.k8s.io"
    return f"""
apiVersion: policy.weft.dev/v1
kind: RateLimitPolicy
metadata: {{name: limit-{target}, namespace: shop}}
spec:
  targetRefs: [{{group: "{group}", kind: {target_kind}, name: {target}}}]
  type: {kind}
  rules:
  - limit: {{requests: {requests}, unit: Hour}}
    {extra}
"""


async def get(
    mesh: Mesh, client: HttpClient, path: str = "/", extra: bytes = b""
) -> tuple[h11.Response, bytes]:
    client.send_raw(b"GET " + path.encode() + b" HTTP/1.1\r\nHost: web\r\n" + extra + b"\r\n")
    return await client.response()


def test_requests_over_a_local_limit_get_429_with_the_limit_headers(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        mesh.set_routes(policy("Service", "web", "Local", 3))
        client = await mesh.http(vip=WEB_VIP)
        before = DECISIONS.labels("shop/limit-web", "limited")._value.get()
        codes = []
        for _ in range(3):
            response, raw = await get(mesh, client)
            codes.append(response.status_code)
            assert json.loads(raw)["pod"] == "web-1"
        assert codes == [200, 200, 200]
        response, raw = await get(mesh, client)
        assert response.status_code == 429
        headers = headers_of(response)
        assert headers["x-ratelimit-limit"] == "3"
        assert headers["x-ratelimit-remaining"] == "0"
        assert 1 <= int(headers["retry-after"]) <= 1200  # a token back in 20 minutes
        assert b"rate limited by RateLimitPolicy shop/limit-web" in raw
        assert DECISIONS.labels("shop/limit-web", "limited")._value.get() == before + 1
        # the same connection carries on (the 429 keeps it alive)
        response, _ = await get(mesh, client)
        assert response.status_code == 429

    run(tmp_path, body)


def test_a_request_no_rule_matches_is_not_limited(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        mesh.set_routes(
            policy(
                "Service",
                "web",
                "Local",
                1,
                "clientSelectors: [{headers: [{name: x-user, type: Distinct}]}]",
            )
        )
        client = await mesh.http(vip=WEB_VIP)
        assert (await get(mesh, client, extra=b"x-user: ann\r\n"))[0].status_code == 200
        assert (await get(mesh, client, extra=b"x-user: ann\r\n"))[0].status_code == 429
        assert (await get(mesh, client, extra=b"x-user: bob\r\n"))[0].status_code == 200
        for _ in range(3):  # no x-user: no rule, no limit
            assert (await get(mesh, client))[0].status_code == 200

    run(tmp_path, body)


def test_a_grpc_call_over_the_limit_gets_resource_exhausted(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        await add_h2_services(mesh)
        mesh.set_routes(policy("Service", "grpc", "Local", 1))
        client = await h2_client(mesh, GRPC_VIP, GRPC_PORT)
        first = await client.grpc("/echo.Echo/Any")
        assert first.trailers["grpc-status"] == "0"
        over = await client.grpc("/echo.Echo/Any")
        assert over.status == 200
        assert over.headers["grpc-status"] == "8"  # trailers-only RESOURCE_EXHAUSTED
        assert over.headers["x-ratelimit-limit"] == "1"
        assert over.headers["x-ratelimit-remaining"] == "0"
        assert int(over.headers["retry-after"]) >= 1
        client.close()

    run(tmp_path, body)


def test_a_global_limit_counts_in_redis(tmp_path: Path, redis_server: RedisServer) -> None:  # noqa: F811
    async def body(mesh: Mesh) -> None:
        store = RedisStore(redis_server.addr)
        mesh.waypoint.ratelimit_store = store
        try:
            mesh.set_routes(policy("Service", "web", "Global", 2))
            client = await mesh.http(vip=WEB_VIP)
            codes = [(await get(mesh, client))[0].status_code for _ in range(4)]
            assert codes == [200, 200, 429, 429]
            keys = await store.client.keys("weft:rl:shop/limit-web:*")
            assert len(keys) == 1 and int(await store.client.get(keys[0])) == 4
        finally:
            await store.close()

    run(tmp_path, body)
