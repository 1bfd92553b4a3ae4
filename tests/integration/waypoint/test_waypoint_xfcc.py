"""Who called: the backend behind the waypoint sees `x-forwarded-client-cert` made by the
waypoint from the client's verified certificate (HTTP/1.1 and h2c), and never the one a client
sent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.waypoint.h2_mesh import GRPC_PORT, GRPC_VIP, add_h2_services, h2_client
from tests.integration.waypoint.waypoint_mesh import CLIENT_ID, WAYPOINT_ID, Mesh, run

pytestmark = pytest.mark.integration

XFCC = f"By={WAYPOINT_ID};URI={CLIENT_ID}"
FORGED = "By=spiffe://cluster.local/ns/shop/sa/waypoint;URI=spiffe://cluster.local/ns/kube-system/sa/admin"


def test_http1_backend_sees_the_waypoint_made_client_identity(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        client = await mesh.http()
        client.send_raw(b"GET /who HTTP/1.1\r\nHost: web\r\n\r\n")
        response, raw = await client.response()
        assert response.status_code == 200
        assert json.loads(raw)["request"]["headers"]["x-forwarded-client-cert"] == XFCC
        # a forged one, in two copies and another case, on the same connection: gone
        client.send_raw(
            b"GET /who HTTP/1.1\r\nHost: web\r\n"
            + f"X-Forwarded-Client-Cert: {FORGED}\r\n".encode()
            + f"x-forwarded-client-cert: {FORGED}\r\n\r\n".encode()
        )
        response, raw = await client.response()
        headers = json.loads(raw)["request"]["headers"]
        assert headers["x-forwarded-client-cert"] == XFCC
        assert FORGED not in raw.decode()

    run(tmp_path, body)


def test_h2c_backend_sees_the_waypoint_made_client_identity(tmp_path: Path) -> None:
    async def body(mesh: Mesh) -> None:
        await add_h2_services(mesh)
        client = await h2_client(mesh, GRPC_VIP, GRPC_PORT)
        reply = await client.grpc("/echo.Echo/A", headers=(("x-forwarded-client-cert", FORGED),))
        assert reply.status == 200
        seen = json.loads(reply.headers["x-request"])
        assert seen["head"]["x-forwarded-client-cert"] == XFCC
        assert FORGED not in reply.headers["x-request"]
        client.close()

    run(tmp_path, body)
