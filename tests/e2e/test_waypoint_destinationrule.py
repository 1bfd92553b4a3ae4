"""A DestinationRule at a namespace waypoint in the lab, driven as a user would: `weftctl
waypoint apply --enroll-namespace --wait`, Service `echo` with two pods (v1, v2), a
DestinationRule (networking.weft.dev/v1) with subsets v1/v2 and outlier detection, and a
VirtualService sending /v2 to subset v2. The subset gets only its pod's traffic; the v2 pod,
told to fail (`?codes=503&pod=...`, the lab echo's failures on demand), is ejected: its share
drops to 0, `weftctl waypoint status` lists it, and it comes back after baseEjectionTime."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RUN_ID
from tests.e2e import waypoint_lab as wl
from tests.integration.lab.labtools import Lab, weftctl

pytestmark = pytest.mark.e2e

NS = "dre2e"
EJECTION_S = 8


MANIFESTS = wl.manifests(
    wl.enrolled_namespace(NS),
    wl.service(NS, "echo", {"app": "echo"}),
    wl.client_pod(NS),
    wl.echo_deployment(NS, "echo", "v1", "node-2", ("POD_NAME", "POD_IP")),
    wl.echo_deployment(NS, "echo", "v2", "node-2", ("POD_NAME", "POD_IP")),
)

POLICY = f"""
apiVersion: networking.weft.dev/v1
kind: DestinationRule
metadata: {{name: echo, namespace: {NS}}}
spec:
  host: echo
  trafficPolicy:
    outlierDetection:
      consecutive5xxErrors: 3
      interval: 1s
      baseEjectionTime: {EJECTION_S}s
      maxEjectionPercent: 50
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
---
apiVersion: networking.weft.dev/v1
kind: VirtualService
metadata: {{name: echo, namespace: {NS}}}
spec:
  hosts: [echo]
  http:
  - match: [{{uri: {{prefix: /v2}}}}]
    route: [{{destination: {{host: echo, subset: v2}}}}]
  - route: [{{destination: {{host: echo}}}}]
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with wl.running_lab(f"weft-e2e-dr-{RUN_ID}", MANIFESTS, tmp_path_factory.mktemp("dr")) as lab:
        yield lab


def _requests(lab: Lab, path: str, count: int) -> list[tuple[int, str]]:
    """(status, pod) of each of `count` requests over one kept-alive connection."""
    return [
        (s, str(wl.echo_said(body).get("pod", "")))
        for s, body in wl.keepalive_gets(lab, NS, path, count)
    ]


def test_a_subset_gets_its_pods_traffic_and_a_failing_pod_is_ejected_then_returns(
    lab: Lab, tmp_path: Path
) -> None:
    applied = wl.apply_waypoint(lab, NS)
    assert f"waypoint {NS}/waypoint is programmed" in applied.stdout
    (v1,) = lab.pods(NS, "echo-v1")
    (v2,) = lab.pods(NS, "echo-v2")
    wl.apply_yaml(lab, tmp_path / "dr.yaml", POLICY)

    # the rules reach the waypoint within seconds: /v2 goes to subset v2 only
    pods = wl.poll_until(
        lambda: {p for _, p in _requests(lab, "/v2/warm", 10)}, lambda p: p == {v2["name"]}, 30
    )
    assert pods == {v2["name"]}
    assert {p for _, p in _requests(lab, "/v2/x", 20)} == {v2["name"]}
    # round robin over both pods otherwise
    assert Counter(p for _, p in _requests(lab, "/x", 20)) == {v1["name"]: 10, v2["name"]: 10}

    # v2 fails every request: after 3 in a row it is ejected, all traffic goes to v1
    failing = f"/x?codes=503&pod={v2['name']}"
    results = _requests(lab, failing, 30)
    later = results[12:]
    assert {p for _, p in later} == {v1["name"]}, results
    assert {s for s, _ in later} == {200}
    status = json.loads(
        weftctl("waypoint", "--lab", lab.name, "status", "-n", NS, "-o", "json").stdout
    )
    ejected = status["outlier_ejections"]
    assert [e["endpoint"].rsplit(":", 1)[0] for e in ejected] == [v2["ip"]], ejected
    assert ejected[0]["service"] == f"echo.{NS}.svc.cluster.local"
    text = weftctl("waypoint", "--lab", lab.name, "status", "-n", NS).stdout
    assert "endpoints ejected" in text and v2["ip"] in text, text

    # after baseEjectionTime it is back
    share = wl.poll_until(
        lambda: Counter(p for _, p in _requests(lab, "/x", 10)),
        lambda s: s.get(v2["name"], 0) > 0,
        EJECTION_S + 15,
        interval=1,
    )
    assert share.get(v2["name"], 0) >= 4, share
