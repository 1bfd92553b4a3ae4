"""The waypoint's ext_authz client against the real sample ext_authz server
(`sample_apps.extauthz`, grpcio + aiohttp) on loopback, over both protocols: allow, deny,
a provider too slow (timeout), down, answering too much, and too many checks at once."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from dataclasses import replace

import pytest
import structlog
from prometheus_client import REGISTRY

from meshcore.meshstate import Workload
from meshcore.resources.meshconfig import ExtAuthzKind, ExtAuthzProvider
from sample_apps import extauthz as server
from waypoint.extauthz import CheckInput, Outcome
from waypoint.extauthz_client import ExtAuthzClient, tcp_open


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def workload() -> Workload:
    return Workload(
        "uid-weft-authz", "ext-authz-0", "weft-authz", "ext-authz", "", "node-0", "",
        ("127.0.0.1",), {}, enrolled=False, ready=True,
    )  # fmt: skip


def provider(kind: ExtAuthzKind, port: int, **changes: object) -> ExtAuthzProvider:
    base = ExtAuthzProvider(
        name=f"sample-{kind.value}",
        kind=kind,
        service="ext-authz.weft-authz.svc.cluster.local",
        service_namespace="weft-authz",
        service_name="ext-authz",
        port=port,
        timeout=5.0,
        include_request_headers_in_check=("x-ext-authz*",) if kind is ExtAuthzKind.HTTP else (),
        headers_to_upstream_on_allow=("x-ext-authz-check-result",),
        headers_to_downstream_on_deny=("x-ext-authz-check-result",),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def request(*headers: tuple[str, str]) -> CheckInput:
    return CheckInput(
        method="GET",
        path="/headers?x=1",
        authority="web.shop:80",
        headers=(("host", "web.shop:80"), *headers),
        source_principal="spiffe://cluster.local/ns/shop/sa/client",
        source_ip="10.0.0.7",
        source_port=40000,
        destination_ip="10.96.0.10",
        destination_port=80,
        destination_principal="spiffe://cluster.local/ns/shop/sa/waypoint",
        request_id="rid-1",
    )


ALLOW = ("x-ext-authz", "allow")
Body = Callable[[ExtAuthzClient, dict[ExtAuthzKind, int]], Awaitable[None]]


async def with_server(body: Body, max_in_flight: int = 1024) -> None:
    ports = {ExtAuthzKind.GRPC: free_port(), ExtAuthzKind.HTTP: free_port()}
    stop, ready = asyncio.Event(), asyncio.Event()
    log = structlog.get_logger(app="extauthz-test")
    task = asyncio.ensure_future(
        server.serve(
            "127.0.0.1", ports[ExtAuthzKind.GRPC], ports[ExtAuthzKind.HTTP], 0.0, log, stop, ready
        )
    )
    client = ExtAuthzClient(lambda p: [(workload(), p.port)], tcp_open, max_in_flight)
    try:
        await asyncio.wait_for(ready.wait(), 10)
        await body(client, ports)
    finally:
        client.close()
        stop.set()
        await asyncio.wait_for(task, 10)


def counted(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


@pytest.fixture(params=[ExtAuthzKind.HTTP, ExtAuthzKind.GRPC], ids=["http", "grpc"])
def kind(request: pytest.FixtureRequest) -> ExtAuthzKind:
    return request.param


def test_allowed_request_gets_the_providers_upstream_header(kind: ExtAuthzKind) -> None:
    async def body(client: ExtAuthzClient, ports: dict[ExtAuthzKind, int]) -> None:
        p = provider(kind, ports[kind])
        before = counted("weft_waypoint_ext_authz_checks_total", provider=p.name, result="allow")
        result = await client.check(p, request(ALLOW))
        assert result.outcome is Outcome.ALLOW and result.allowed, result.reason
        forwarded = result.request_headers((("host", "web.shop:80"), ALLOW))
        assert ("x-ext-authz-check-result", "allowed") in forwarded
        after = counted("weft_waypoint_ext_authz_checks_total", provider=p.name, result="allow")
        assert after == before + 1

    asyncio.run(with_server(body))


def test_denied_request_gets_the_providers_status_body_and_headers(kind: ExtAuthzKind) -> None:
    async def body(client: ExtAuthzClient, ports: dict[ExtAuthzKind, int]) -> None:
        result = await client.check(provider(kind, ports[kind]), request(("x-ext-authz", "no")))
        assert result.outcome is Outcome.DENY and not result.allowed
        assert result.status == 403
        assert result.body == server.DENIED_BODY.encode()
        assert ("x-ext-authz-check-result", "denied") in result.downstream

    asyncio.run(with_server(body))


def test_connections_to_the_provider_are_kept_and_reused(kind: ExtAuthzKind) -> None:
    async def body(client: ExtAuthzClient, ports: dict[ExtAuthzKind, int]) -> None:
        p = provider(kind, ports[kind])
        opened: list[int] = []
        inner = client.open_end

        async def counting(w: Workload, port: int) -> object:
            opened.append(port)
            return await inner(w, port)

        client.open_end = counting  # type: ignore[assignment]
        for _ in range(5):
            assert (await client.check(p, request(ALLOW))).allowed
        assert (await client.check(p, request())).status == 403
        assert opened == [ports[kind]]

    asyncio.run(with_server(body))


def test_a_slow_provider_times_out_into_status_on_error_or_fail_open(kind: ExtAuthzKind) -> None:
    async def body(client: ExtAuthzClient, ports: dict[ExtAuthzKind, int]) -> None:
        slow = request(ALLOW, ("x-ext-authz-delay", "3"))
        closed = provider(kind, ports[kind], timeout=0.3, status_on_error=503)
        before = counted(
            "weft_waypoint_ext_authz_overflows_total", provider=closed.name, bound="timeout"
        )
        started = asyncio.get_running_loop().time()
        result = await client.check(closed, slow)
        assert asyncio.get_running_loop().time() - started < 2.0
        assert result.outcome is Outcome.ERROR and not result.allowed and result.status == 503
        assert "no answer within 0.3 s" in result.reason
        opened = await client.check(replace(closed, fail_open=True), slow)
        assert opened.outcome is Outcome.ERROR and opened.allowed
        after = counted(
            "weft_waypoint_ext_authz_overflows_total", provider=closed.name, bound="timeout"
        )
        assert after == before + 2
        # the connection a timed-out check left is not reused half-read: the next is fine
        assert (await client.check(closed, request(ALLOW))).allowed

    asyncio.run(with_server(body))


def test_a_provider_that_is_down_is_an_error(kind: ExtAuthzKind) -> None:
    async def body(client: ExtAuthzClient, ports: dict[ExtAuthzKind, int]) -> None:
        down = provider(kind, free_port())
        result = await client.check(down, request(ALLOW))
        assert result.outcome is Outcome.ERROR and not result.allowed and result.status == 403
        assert "reachable" in result.reason
        assert (await client.check(replace(down, fail_open=True), request())).allowed
        nowhere = ExtAuthzClient(lambda p: [], tcp_open)
        result = await nowhere.check(down, request(ALLOW))
        assert not result.allowed and "no ready endpoint of Service weft-authz/ext-authz" in (
            result.reason
        )

    asyncio.run(with_server(body))


def test_an_answer_over_64_kib_is_an_error(kind: ExtAuthzKind) -> None:
    async def body(client: ExtAuthzClient, ports: dict[ExtAuthzKind, int]) -> None:
        p = provider(kind, ports[kind])
        before = counted(
            "weft_waypoint_ext_authz_overflows_total", provider=p.name, bound="answer_size"
        )
        # (HTTP: a deny body past the bound; gRPC: an allowed answer's header past it)
        padded = request(
            *(() if kind is ExtAuthzKind.HTTP else (ALLOW,)), ("x-ext-authz-pad", "70000")
        )
        result = await client.check(p, padded)
        assert result.outcome is Outcome.ERROR and not result.allowed, result.reason
        assert "65536 bytes" in result.reason
        after = counted(
            "weft_waypoint_ext_authz_overflows_total", provider=p.name, bound="answer_size"
        )
        assert after == before + 1
        small = await client.check(p, request(ALLOW, ("x-ext-authz-pad", "1000")))
        assert small.allowed

    asyncio.run(with_server(body))


def test_checks_past_the_in_flight_bound_are_errors(kind: ExtAuthzKind) -> None:
    async def body(client: ExtAuthzClient, ports: dict[ExtAuthzKind, int]) -> None:
        p = provider(kind, ports[kind], fail_open=False, status_on_error=429)
        slow = request(ALLOW, ("x-ext-authz-delay", "0.5"))
        before = counted(
            "weft_waypoint_ext_authz_overflows_total", provider=p.name, bound="in_flight"
        )
        results = await asyncio.gather(*(client.check(p, slow) for _ in range(3)))
        assert [r.allowed for r in results] == [True, True, False]
        assert results[2].status == 429 and "in flight" in results[2].reason
        after = counted(
            "weft_waypoint_ext_authz_overflows_total", provider=p.name, bound="in_flight"
        )
        assert after == before + 1
        assert client.in_flight == 0

    asyncio.run(with_server(body, max_in_flight=2))


def test_kept_connections_follow_the_mesh_config_and_the_endpoints(kind: ExtAuthzKind) -> None:
    async def body(client: ExtAuthzClient, ports: dict[ExtAuthzKind, int]) -> None:
        p = provider(kind, ports[kind])
        opened: list[int] = []
        inner = client.open_end
        ready = [True]

        async def counting(w: Workload, port: int) -> object:
            opened.append(port)
            return await inner(w, port)

        client.open_end = counting  # type: ignore[assignment]
        client.resolve = lambda q: [(workload(), q.port)] if ready[0] else []
        assert (await client.check(p, request(ALLOW))).allowed
        assert (await client.check(p, request(ALLOW))).allowed
        assert len(opened) == 1
        changed = replace(p, timeout=4.0)  # a provider changed by the mesh config: a new pool
        client.retain([changed])
        assert (await client.check(changed, request(ALLOW))).allowed
        assert len(opened) == 2
        ready[0] = False  # the endpoint left the Service: its kept connection is not used
        gone = await client.check(changed, request(ALLOW))
        assert not gone.allowed and "no ready endpoint" in gone.reason
        ready[0] = True
        assert (await client.check(changed, request(ALLOW))).allowed
        assert len(opened) == 3

    asyncio.run(with_server(body))
