"""No bypass: with an L7 AuthorizationPolicy on a waypoint-bound Service, the destination's
ztunnel (a real `Inbound`, real mTLS) refuses a direct pod-IP connection from another enrolled
pod, while the same request through the waypoint is answered. Without such a policy the direct
connection is admitted (Istio's behaviour: pod-IP traffic skips a `for: service` waypoint)."""

from __future__ import annotations

import asyncio
import json
import textwrap
from pathlib import Path

import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from meshcore import hbone
from meshcore.meshstate import Workload
from meshcore.resources import documents_from_text, parse_documents
from tests.integration.waypoint.waypoint_mesh import (
    CLIENT_ID,
    CLIENT_IP,
    WEB_ID,
    WEB_IP,
    HttpClient,
    Mesh,
    run,
)
from ztunnel.hbone_conn import HboneConnection
from ztunnel.pool import sni_for

pytestmark = pytest.mark.integration

GET_ONLY = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: web-get-only, namespace: shop}
spec:
  targetRefs: [{group: "", kind: Service, name: web}]
  action: ALLOW
  rules: [{to: [{operation: {methods: [GET]}}]}]
"""


def refused() -> float:
    labels = {"listener": "hbone", "verdict": "waypoint_policy_bypass"}
    return REGISTRY.get_sample_value("weft_ztunnel_inbound_refused_total", labels) or 0.0


def apply_policy(mesh: Mesh) -> None:
    parsed = parse_documents(documents_from_text(textwrap.dedent(GET_ONLY), "policy.yaml"))
    state = {**mesh.state, **{p.resource.key: p.resource for p in parsed}}
    mesh.waypoint.view.update(state)
    mesh.inbound.view.update(state)  # type: ignore[arg-type]


async def direct(mesh: Mesh) -> tuple[HttpClient | None, int, int]:
    """CONNECT straight to web's pod IP at node-2's ztunnel, as the client pod's ztunnel
    would for pod-IP traffic: (the HTTP client when admitted, CONNECT status, echo port)."""
    web = next(w for w in mesh.state.values() if isinstance(w, Workload) and w.name == "web")
    port = next(m for m in web.services if m.name == "web").ports[80]
    ctx = await mesh.client_ids.context(CLIENT_ID, server=False)
    node_port = int(mesh.listeners[0].sockets[0].getsockname()[1])
    _, conn = await asyncio.get_running_loop().create_connection(
        lambda: HboneConnection(hbone.HboneClient()),
        "127.0.0.1",
        node_port,
        ssl=ctx,
        server_hostname=sni_for(WEB_ID),
    )
    conn.start()
    mesh.clients.append(conn)
    stream = conn.open(hbone.Target(WEB_IP, port), {"forwarded": f"for={CLIENT_IP}"})
    response = await asyncio.wait_for(stream.response, 5)
    if response.status != 200:
        return None, response.status, port
    client = HttpClient(stream)
    client.send_raw(b"GET / HTTP/1.1\r\nHost: web\r\n\r\n")
    answer, _ = await client.response()
    assert answer.status_code == 200
    return client, response.status, port


def test_an_l7_policy_makes_the_destination_ztunnel_refuse_a_direct_pod_ip_call(
    tmp_path: Path,
) -> None:
    async def body(mesh: Mesh) -> None:
        # no L7 policy: pod-IP traffic is admitted around the service waypoint
        open_direct, status, _ = await direct(mesh)
        assert status == 200 and open_direct is not None

        apply_policy(mesh)
        assert await open_direct.closed()  # the open direct connection is closed by policy
        before = refused()
        with capture_logs() as logs:
            _, status, port = await direct(mesh)
        assert status == 403
        assert refused() == before + 1
        (line,) = [e for e in logs if e.get("reason", "").startswith("shop/web has an L7")]
        assert line["event"] == "connection.denied"
        assert line["source_principal"] == CLIENT_ID
        assert line["target"] == f"{WEB_IP}:{port}"
        assert "waypoint shop/waypoint" in line["reason"]

        # the same request through the waypoint: admitted by the same ztunnel
        client = await mesh.http()
        client.send_raw(b"GET /through HTTP/1.1\r\nHost: web\r\n\r\n")
        response, raw = await client.response()
        assert response.status_code == 200
        assert json.loads(raw)["request"]["path"] == "/through"
        assert refused() == before + 1

    run(tmp_path, body)
