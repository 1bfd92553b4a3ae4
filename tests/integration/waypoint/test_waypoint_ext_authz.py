"""AuthorizationPolicy CUSTOM at the waypoint, on real traffic over mTLS: the waypoint asks
the real sample ext_authz server (`sample_apps.extauthz`), a pod of the mesh it reaches over
HBONE with its own identity through node-2's ztunnel, over HTTP and over gRPC; allowed
requests reach the echo with the provider's header, denied ones get the provider's answer
(gRPC calls: PERMISSION_DENIED), a provider that cannot answer fails closed or open as
configured, and a CUSTOM allow does not skip a DENY."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import structlog
from structlog.testing import capture_logs

from meshcore.meshstate import ServiceMembership, ServicePort, Workload
from meshcore.resources.meshconfig import ExtAuthzKind, ExtAuthzProvider, MeshSettings
from sample_apps import extauthz as server
from tests.integration.waypoint.h2_mesh import GRPC_PORT, GRPC_VIP, add_h2_services, h2_client
from tests.integration.waypoint.waypoint_mesh import (
    NS,
    ROUTED_VIP,
    WEB_IP,
    WEB_VIP,
    Mesh,
    free_port,
    headers_of,
    run,
    service,
)

pytestmark = pytest.mark.integration

AUTHZ_VIP = "10.96.0.30"
HTTP_PROVIDER_PORT, GRPC_PROVIDER_PORT, DEAD_PROVIDER_PORT = 8000, 9000, 8001


def providers(**changes: object) -> dict[str, ExtAuthzProvider]:
    common = {
        "service": f"ext-authz.{NS}.svc.cluster.local",
        "service_namespace": NS,
        "service_name": "ext-authz",
        "timeout": 3.0,
        "headers_to_upstream_on_allow": ("x-ext-authz-check-result",),
        "headers_to_downstream_on_deny": ("x-ext-authz-check-result",),
    }
    found = [
        ExtAuthzProvider(
            name="sample-http", kind=ExtAuthzKind.HTTP, port=HTTP_PROVIDER_PORT,
            include_request_headers_in_check=("x-ext-authz",), **common,  # type: ignore[arg-type]
        ),
        ExtAuthzProvider(
            name="sample-grpc", kind=ExtAuthzKind.GRPC, port=GRPC_PROVIDER_PORT, **common,  # type: ignore[arg-type]
        ),
        ExtAuthzProvider(
            name="dead", kind=ExtAuthzKind.GRPC, port=DEAD_PROVIDER_PORT, **common,  # type: ignore[arg-type]
        ),
    ]  # fmt: skip
    return {p.name: dataclasses.replace(p, **changes) for p in found}  # type: ignore[arg-type]


def custom(name: str, service_name: str, provider: str, paths: str = '["/headers*"]') -> str:
    return f"""
---
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata: {{name: {name}, namespace: {NS}}}
spec:
  targetRefs: [{{kind: Service, group: "", name: {service_name}}}]
  action: CUSTOM
  provider: {{name: {provider}}}
  rules:
  - to: [{{operation: {{paths: {paths}}}}}]
"""


async def add_ext_authz(mesh: Mesh, settings: dict[str, ExtAuthzProvider]) -> None:
    """The sample ext_authz server as Service ext-authz (ports 8000 HTTP, 9000 gRPC; 8001 has
    no endpoint) on web's pod, and the mesh config naming it, in both views."""
    stop, ready = asyncio.Event(), asyncio.Event()
    grpc_port, http_port = free_port(), free_port()
    task = asyncio.ensure_future(
        server.serve(WEB_IP, grpc_port, http_port, 0.0, structlog.get_logger("ext"), stop, ready)
    )
    await asyncio.wait_for(ready.wait(), 10)
    close_mesh = mesh.close

    async def close() -> None:
        await close_mesh()
        stop.set()
        await asyncio.wait_for(task, 10)

    mesh.close = close  # type: ignore[method-assign]
    state = dict(mesh.state)
    web = next(w for w in state.values() if isinstance(w, Workload) and w.name == "web")
    member = ServiceMembership(
        NS, "ext-authz", {HTTP_PROVIDER_PORT: http_port, GRPC_PROVIDER_PORT: grpc_port}
    )
    web = dataclasses.replace(web, services=(*web.services, member))
    state[web.key] = web
    ports = (
        ServicePort("http", HTTP_PROVIDER_PORT),
        ServicePort("grpc", GRPC_PROVIDER_PORT),
        ServicePort("http-dead", DEAD_PROVIDER_PORT),
    )
    authz_service = service("ext-authz", AUTHZ_VIP, ports, bound=False)
    state[authz_service.key] = authz_service
    mesh_settings = MeshSettings(settings)
    state[mesh_settings.key] = mesh_settings
    mesh.state = state
    mesh.waypoint.view.update(state)
    mesh.inbound.view.update(state)  # type: ignore[arg-type]


def access_log(logs: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    return [e for e in logs if e.get("event") == "request.completed"]


@pytest.mark.parametrize("provider", ["sample-http", "sample-grpc"])
def test_custom_asks_the_provider_over_hbone(tmp_path: Path, provider: str) -> None:
    async def body(mesh: Mesh) -> None:
        await add_ext_authz(mesh, providers())
        mesh.set_routes(custom("ext", "web", provider))
        client = await mesh.http(WEB_VIP)
        with capture_logs() as logs:
            client.send_raw(b"GET /headers HTTP/1.1\r\nHost: web\r\nX-Ext-Authz: allow\r\n\r\n")
            ok, raw = await client.response()
            assert ok.status_code == 200, raw
            seen = json.loads(raw)["request"]["headers"]
            assert seen.get("x-ext-authz-check-result") == "allowed", seen
            client.send_raw(b"GET /headers HTTP/1.1\r\nHost: web\r\n\r\n")
            denied, raw = await client.response()
            assert (denied.status_code, raw) == (403, server.DENIED_BODY.encode())
            assert headers_of(denied)["x-ext-authz-check-result"] == "denied"
            client.send_raw(b"GET /ip HTTP/1.1\r\nHost: web\r\n\r\n")  # not the rule's path
            assert (await client.response())[0].status_code == 200
        entries = access_log(logs)
        assert [e["response_code"] for e in entries] == [200, 403, 200]
        assert entries[1]["response_flags"] == "UAEX"
        assert entries[1]["rbac_policy"] == "ns[shop]-policy[ext]-rule[0]"
        assert f"denied by ext_authz {provider}" in str(entries[1]["reason"])
        assert not [e for e in logs if e.get("event") == "extauthz.error"]

    run(tmp_path, body)


def test_a_custom_allow_does_not_skip_a_deny(tmp_path: Path) -> None:
    deny = f"""
---
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata: {{name: no-post, namespace: {NS}}}
spec:
  targetRefs: [{{kind: Service, group: "", name: routed}}]
  action: DENY
  rules:
  - to: [{{operation: {{methods: [POST]}}}}]
"""

    async def body(mesh: Mesh) -> None:
        await add_ext_authz(mesh, providers())
        mesh.set_routes(custom("ext", "routed", "sample-grpc") + deny)
        client = await mesh.http(ROUTED_VIP)
        client.send_raw(
            b"POST /headers HTTP/1.1\r\nHost: routed\r\nX-Ext-Authz: allow\r\n"
            b"Content-Length: 2\r\n\r\nhi"
        )
        denied, raw = await client.response("POST")
        assert (denied.status_code, raw) == (403, b"RBAC: access denied")
        client.send_raw(b"GET /headers HTTP/1.1\r\nHost: routed\r\nX-Ext-Authz: allow\r\n\r\n")
        assert (await client.response())[0].status_code == 200

    run(tmp_path, body)


@pytest.mark.parametrize("fail_open", [False, True], ids=["fail-closed", "fail-open"])
def test_a_provider_without_endpoints_fails_as_configured(tmp_path: Path, fail_open: bool) -> None:
    async def body(mesh: Mesh) -> None:
        await add_ext_authz(mesh, providers(fail_open=fail_open, status_on_error=503))
        mesh.set_routes(custom("ext", "web", "dead"))
        client = await mesh.http(WEB_VIP)
        with capture_logs() as logs:
            client.send_raw(b"GET /headers HTTP/1.1\r\nHost: web\r\nX-Ext-Authz: allow\r\n\r\n")
            answer, raw = await client.response()
        assert answer.status_code == (200 if fail_open else 503), raw
        errors = [e for e in logs if e.get("event") == "extauthz.error"]
        assert errors and "no ready endpoint of Service shop/ext-authz:8001" in str(
            errors[0]["reason"]
        )

    run(tmp_path, body)


def test_an_undefined_provider_fails_closed(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        await add_ext_authz(mesh, providers())
        mesh.set_routes(custom("ext", "web", "nobody"))
        client = await mesh.http(WEB_VIP)
        with capture_logs() as logs:
            client.send_raw(b"GET /headers HTTP/1.1\r\nHost: web\r\nX-Ext-Authz: allow\r\n\r\n")
            assert (await client.response())[0].status_code == 403
        (entry,) = access_log(logs)
        assert "'nobody'" in str(entry["reason"])

    run(tmp_path, body)


def test_a_grpc_call_denied_by_the_provider_is_permission_denied(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        await add_h2_services(mesh)
        await add_ext_authz(mesh, providers())
        mesh.set_routes(custom("ext", "grpc", "sample-grpc", '["/echo.Echo/*"]'))
        client = await h2_client(mesh, GRPC_VIP, GRPC_PORT)
        denied = await client.grpc("/echo.Echo/A")
        assert denied.status == 200 and denied.headers["grpc-status"] == "7", denied
        assert denied.headers["grpc-message"] == server.DENIED_BODY
        allowed = await client.grpc("/echo.Echo/A", (("x-ext-authz", "allow"),))
        assert allowed.trailers.get("grpc-status") == "0", allowed
        seen = json.loads(allowed.headers["x-request"])["head"]
        assert seen["x-ext-authz-check-result"] == "allowed"

    run(tmp_path, body)


@pytest.mark.parametrize("provider", ["sample-http", "sample-grpc"])
def test_the_request_body_goes_in_the_check_as_configured(tmp_path: Path, provider: str) -> None:
    async def body(mesh: Mesh) -> None:
        settings = providers(
            body_max_bytes=16,
            headers_to_upstream_on_allow=("x-ext-authz-check-result", "x-ext-authz-body-bytes"),
        )
        settings["cut"] = dataclasses.replace(
            settings[provider], name="cut", body_allow_partial=True
        )
        await add_ext_authz(mesh, settings)
        mesh.set_routes(custom("ext", "web", provider) + custom("cut", "web", "cut", '["/cut*"]'))
        client = await mesh.http(WEB_VIP)
        head = b"POST %s HTTP/1.1\r\nHost: web\r\nX-Ext-Authz: allow\r\nContent-Length: %d\r\n\r\n"
        client.send_raw(head % (b"/headers", 5) + b"hello")
        ok, raw = await client.response("POST")
        assert ok.status_code == 200, raw
        echoed = json.loads(raw)
        assert echoed["request"]["headers"]["x-ext-authz-body-bytes"] == "5"
        assert echoed["body_bytes"] == 5  # forwarded whole, after the check read it
        long = b"x" * 40
        client.send_raw(head % (b"/headers", len(long)) + long)  # over 16, not partial: 413
        too_long, _ = await client.response("POST")
        assert too_long.status_code == 413
        client.send_raw(head % (b"/cut", len(long)) + long)  # partial allowed: 16 go in the check
        cut, raw = await client.response("POST")
        assert cut.status_code == 200, raw
        echoed = json.loads(raw)
        assert echoed["request"]["headers"]["x-ext-authz-body-bytes"] == "16"
        assert echoed["body_bytes"] == 40

    run(tmp_path, body)


def test_a_grpc_calls_message_goes_in_the_check_and_on_to_the_backend(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        await add_h2_services(mesh)
        await add_ext_authz(mesh, providers(body_max_bytes=1024))
        mesh.set_routes(custom("ext", "grpc", "sample-grpc", '["/echo.Echo/*"]'))
        client = await h2_client(mesh, GRPC_VIP, GRPC_PORT)
        message = b"\x00\x00\x00\x00\x03abc"
        allowed = await client.grpc("/echo.Echo/A", (("x-ext-authz", "allow"),), message)
        assert allowed.trailers.get("grpc-status") == "0", allowed
        seen = json.loads(allowed.headers["x-request"])
        assert seen["head"]["x-ext-authz-body-bytes"] == str(len(message))
        assert seen["body_bytes"] == len(message) and bytes(allowed.body) == message

    run(tmp_path, body)
