"""A namespace waypoint routing real traffic in the lab, driven as a user would: `weftctl
waypoint apply --enroll-namespace --wait`, an HTTPRoute on Service `echo` (a header A/B and an
80/20 canary), requests from a client pod; then the waypoint scaled to 0: bound traffic fails
closed, it never goes around the waypoint."""

from __future__ import annotations

import json
import re
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RUN_ID
from tests.e2e import waypoint_lab as wl
from tests.integration.lab.labtools import Lab, weftctl

pytestmark = pytest.mark.e2e

NS = "wpe2e"


MANIFESTS = wl.manifests(
    wl.enrolled_namespace(NS),
    wl.service(NS, "echo", {"app": "echo"}),
    wl.client_pod(NS),
    wl.versioned_echo(NS, "echo", "v1", pod_env=("POD_NAME", "POD_IP")),
    wl.versioned_echo(NS, "echo", "v2", pod_env=("POD_NAME", "POD_IP")),
)

ROUTE = f"""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: echo, namespace: {NS}}}
spec:
  parentRefs: [{{group: "", kind: Service, name: echo, port: 80}}]
  rules:
  - matches:
    - path: {{type: PathPrefix, value: /api}}
      headers: [{{name: x-version, value: v2}}]
    backendRefs: [{{name: echo-v2, port: 80}}]
  - matches:
    - path: {{type: PathPrefix, value: /api}}
    backendRefs:
    - {{name: echo-v1, port: 80, weight: 80}}
    - {{name: echo-v2, port: 80, weight: 20}}
"""

# Run in the client pod: one connection attempt and one request; what happened.
PROBE = textwrap.dedent("""
    import http.client, json
    try:
        conn = http.client.HTTPConnection("echo", 80, timeout=3)
        conn.request("GET", "/api/x")
        print(json.dumps({"status": conn.getresponse().status}))
    except OSError as err:
        print(json.dumps({"error": type(err).__name__}))
""")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with wl.running_lab(f"weft-e2e-wp-{RUN_ID}", MANIFESTS, tmp_path_factory.mktemp("wp")) as lab:
        yield lab


def requests(
    lab: Lab, path: str, count: int, header: str = "", to: tuple[str, int] = ("echo", 80)
) -> list[list[Any]]:
    """[status, version, peer ip] of each of `count` requests over one kept-alive connection,
    with `x-version: header` if given."""
    sent = {"x-version": header} if header else {}
    result: list[list[Any]] = []
    for status, body in wl.keepalive_gets(lab, NS, path, count, to, sent):
        data = wl.echo_said(body)
        result.append([status, data.get("version", ""), data.get("client", {}).get("ip", "")])
    return result


def waypoint_pod(lab: Lab) -> dict[str, Any]:
    (pod,) = lab.pods(NS, "waypoint-")
    return pod


def test_a_namespace_waypoint_routes_by_header_and_weight_and_fails_closed(
    lab: Lab, tmp_path: Path
) -> None:
    applied = wl.apply_waypoint(lab, NS)
    assert f"waypoint {NS}/waypoint is programmed" in applied.stdout
    wl.apply_yaml(lab, tmp_path / "route.yaml", ROUTE)
    client_ip = next(p["ip"] for p in lab.pods(NS, "client"))

    # (a) the header sends everything to v2 (the route reaches the waypoint within seconds)
    for _ in range(20):
        with_header = requests(lab, "/api/ab", 20, "v2")
        if all(r[0] == 200 for r in with_header) and {r[1] for r in with_header} == {"v2"}:
            break
    assert {(r[0], r[1]) for r in with_header} == {(200, "v2")}, with_header
    # the backend saw the client pod's own address, not the waypoint's
    assert {r[2] for r in with_header} == {client_ip}

    # (b) without it, 80/20: v2's share within ±7 % (over 400 requests that is 3.5 standard
    # deviations, so a correct split fails about once in 2,000 runs; over 200, once in 80)
    canary = requests(lab, "/api/canary", 400)
    assert {r[0] for r in canary} == {200}, canary
    v2 = sum(1 for r in canary if r[1] == "v2") / len(canary)
    assert 0.13 <= v2 <= 0.27, f"v2 got {v2:.1%} of {len(canary)} requests"
    assert {r[2] for r in canary} == {client_ip}

    # (c) a path no rule matches on a routed port is a 404 from the waypoint
    assert {r[0] for r in requests(lab, "/elsewhere", 3)} == {404}

    # MeshFrontend: a pod's own address is not the Service's: not through the waypoint, not
    # routed (the header would have sent it to v2; the path matches no rule)
    (v1_pod,) = lab.pods(NS, "echo-v1-")
    direct = requests(lab, "/elsewhere", 3, "v2", to=(v1_pod["ip"], 8080))
    assert {(r[0], r[1], r[2]) for r in direct} == {(200, "v1", client_ip)}, direct

    # the waypoint counted them, Istio's names, reporter="waypoint"
    wp = waypoint_pod(lab)
    metrics = lab.exec(
        wp["name"], NS, "curl", "-s", "--max-time", "5", "http://127.0.0.1:15020/metrics"
    ).stdout
    counted = re.findall(r"^istio_requests_total\{([^}]*)\} ([0-9.e+]+)$", metrics, re.M)
    ours = [
        (labels, float(n))
        for labels, n in counted
        if 'reporter="waypoint"' in labels
        and f'source_principal="spiffe://cluster.local/ns/{NS}/sa/default"' in labels
    ]
    assert ours, metrics
    assert sum(n for labels, n in ours if 'response_code="200"' in labels) >= 420
    assert any('response_code="404"' in labels for labels, _ in ours)
    assert any('destination_service_name="echo-v2"' in labels for labels, _ in ours)

    # the waypoint scaled to 0: bound traffic is refused, never sent around it
    weftctl("waypoint", "--lab", lab.name, "apply", "-n", NS, "--replicas", "0")
    for _ in range(60):
        if not lab.pods(NS, "waypoint-"):
            break
        time.sleep(0.5)
    assert not lab.pods(NS, "waypoint-")
    for _ in range(3):
        probe = json.loads(lab.exec("client", NS, "python3", "-c", PROBE).stdout)
        assert "status" not in probe, f"bound traffic went around the stopped waypoint: {probe}"
