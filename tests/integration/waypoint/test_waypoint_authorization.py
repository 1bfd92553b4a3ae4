"""AuthorizationPolicy enforced by the waypoint on real traffic over mTLS: allowed requests
reach the echo, denied ones get Envoy's 403 (gRPC: PERMISSION_DENIED) with the policy in the
access log, and a path dressed up (`//admin`, `%2Fadmin`, `/a/../admin`) is still `/admin`."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from meshcore import hbone
from tests.integration.waypoint.h2_mesh import GRPC_PORT, GRPC_VIP, add_h2_services, h2_client
from tests.integration.waypoint.waypoint_mesh import (
    HTTP_PORT,
    ROUTED_VIP,
    TCP_PORT,
    WEB_VIP,
    HttpClient,
    Mesh,
    run,
)
from waypoint.streamio import BufferedEnd, EndClosed
from ztunnel.relay import Relay

pytestmark = pytest.mark.integration

POLICIES = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: web-allow-get, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/client]}}]
    to: [{operation: {methods: [GET]}}]
---
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: web-deny-admin, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  action: DENY
  rules:
  - to: [{operation: {paths: [/admin, "/admin/*"]}}]
  - when: [{key: "request.headers[x-evil]", values: ["*"]}]
---
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: audit-web, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  action: AUDIT
  rules:
  - to: [{operation: {paths: ["/audited"]}}]
---
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: grpc-deny-b, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: grpc}]
  action: DENY
  rules:
  - to: [{operation: {paths: ["/echo.Echo/B"]}}]
"""


def access_log(logs: list[dict[str, object]]) -> list[dict[str, object]]:
    return [e for e in logs if e.get("event") == "request.completed"]


def test_allow_deny_and_normalised_paths_over_mtls(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        mesh.set_routes(POLICIES)
        client = await mesh.http()
        with capture_logs() as logs:
            client.send_raw(b"GET /ip HTTP/1.1\r\nHost: web\r\n\r\n")
            ok, raw = await client.response()
            assert ok.status_code == 200 and json.loads(raw)["pod"] == "web-1"
            for target in (b"/admin", b"//admin", b"/%2Fadmin", b"/%5cadmin", b"/a/../admin",
                           b"/./admin/x", b"/admin#frag", b"/public/..%2Fadmin?x=1"):  # fmt: skip
                client.send_raw(b"GET " + target + b" HTTP/1.1\r\nHost: web\r\n\r\n")
                denied, raw = await client.response()
                assert (denied.status_code, raw) == (403, b"RBAC: access denied"), target
            # a header that a DENY rule names, and a method no ALLOW rule names
            client.send_raw(b"GET /ip HTTP/1.1\r\nHost: web\r\nX-Evil: 1\r\n\r\n")
            assert (await client.response())[0].status_code == 403
            client.send_raw(b"POST /ip HTTP/1.1\r\nHost: web\r\nContent-Length: 2\r\n\r\nhi")
            assert (await client.response())[0].status_code == 403
            # AUDIT logs and does not decide; the connection went on through all of it
            client.send_raw(b"GET /audited HTTP/1.1\r\nHost: web\r\n\r\n")
            assert (await client.response())[0].status_code == 200
        entries = access_log(logs)
        assert entries[1]["response_code"] == 403 and entries[1]["response_flags"] == "-"
        assert entries[1]["rbac_policy"] == "ns[shop]-policy[web-deny-admin]-rule[0]"
        evil = entries[9]
        assert evil["rbac_policy"] == "ns[shop]-policy[web-deny-admin]-rule[1]"
        post = entries[10]
        assert post["response_code"] == 403 and post.get("rbac_policy") is None
        assert "no ALLOW policy matched" in str(post["reason"])
        audits = [e for e in logs if e.get("event") == "authz.audit"]
        assert [a["rbac_policy"] for a in audits] == ["ns[shop]-policy[audit-web]-rule[0]"]
        assert audits[0]["allowed"] is True and audits[0]["path"] == "/audited"

    run(tmp_path, body)


def test_another_identity_is_denied_and_an_unprotected_service_is_not_touched(
    tmp_path: Path,
) -> None:
    async def body(mesh: Mesh) -> None:
        mesh.set_routes(POLICIES)
        conn = await mesh.connect("spiffe://cluster.local/ns/other/sa/intruder")
        stream = conn.open(hbone.Target(WEB_VIP, HTTP_PORT), {})
        assert (await stream.response).status == 200
        intruder = HttpClient(stream)
        intruder.send_raw(b"GET /ip HTTP/1.1\r\nHost: web\r\n\r\n")
        assert (await intruder.response())[0].status_code == 403
        routed = await mesh.http(vip=ROUTED_VIP)  # Service `routed`: no policy
        routed.send_raw(b"GET /admin HTTP/1.1\r\nHost: routed\r\n\r\n")
        assert (await routed.response())[0].status_code == 200

    run(tmp_path, body)


def test_a_denied_grpc_call_is_permission_denied_trailers_only(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        echoes = await add_h2_services(mesh)
        mesh.set_routes(POLICIES)
        client = await h2_client(mesh, GRPC_VIP, GRPC_PORT)
        reply = await client.grpc("/echo.Echo/B")
        assert reply.status == 200 and reply.headers["grpc-status"] == "7"
        assert reply.headers["grpc-message"] == "RBAC: access denied"
        assert reply.body == b"" and reply.trailers == {}
        calls = sum(e.calls for e in echoes.values())
        ok = await client.grpc("/echo.Echo/A")
        assert ok.trailers["grpc-status"] == "0"
        assert sum(e.calls for e in echoes.values()) == calls + 1

    run(tmp_path, body)


L4_ALLOW = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: web-allow-tcp, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  action: ALLOW
  rules:
  - from: [{source: {principals: [cluster.local/ns/shop/sa/client]}}]
    to: [{operation: {ports: ["9000"]}}]
"""


async def tcp_echo(mesh: Mesh, payload: bytes) -> bytes:
    """What comes back through the waypoint to web's TCP echo ("" when the stream ends)."""
    stream, status = await mesh.stream(port=TCP_PORT)
    assert status == 200
    end = BufferedEnd("test-client")
    Relay(stream, end).start()
    got = b""
    with contextlib.suppress(EndClosed):  # (a denied stream may be reset before the write)
        end.write(payload)
        while len(got) < len(payload):
            piece = await asyncio.wait_for(end.read(), 5)
            if not piece:
                break
            got += piece
        end.write_eof()  # closed both ways, so the waypoint counts the connection closed
        assert await asyncio.wait_for(end.read(), 5) == b""
    return got


def test_tcp_through_the_waypoint_is_authorized_as_at_l4(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        # Istio's L4 reading: a DENY rule's HTTP fields are left out (so it denies more) ...
        mesh.set_routes(POLICIES)
        with capture_logs() as logs:
            assert await tcp_echo(mesh, b"ping") == b""
        denied = [e for e in logs if e.get("event") == "connection.denied"]
        assert denied[0]["rbac_policy"] == "ns[shop]-policy[web-deny-admin]-rule[0]"
        # ... and an ALLOW rule with HTTP fields never matches
        mesh.set_routes(POLICIES.split("---")[0])
        with capture_logs() as logs:
            assert await tcp_echo(mesh, b"ping") == b""
        denied = [e for e in logs if e.get("event") == "connection.denied"]
        assert "no ALLOW policy matched" in str(denied[0]["reason"])
        # an ALLOW rule of L4 fields lets it through
        mesh.set_routes(L4_ALLOW)
        assert await tcp_echo(mesh, b"ping") == b"ping"

    run(tmp_path, body)
