"""A DestinationRule at a namespace waypoint in the lab, driven as a user would: `weftctl
waypoint apply --enroll-namespace --wait`, Service `echo` with two pods (v1, v2), a
DestinationRule (networking.weft.dev/v1) with subsets v1/v2 and outlier detection, and a
VirtualService sending /v2 to subset v2. The subset gets only its pod's traffic; the v2 pod,
told to fail (`?codes=503&pod=...`, the lab echo's failures on demand), is ejected: its share
drops to 0, `weftctl waypoint status` lists it, and it comes back after baseEjectionTime."""

from __future__ import annotations

import json
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RUN_ID
from tests.integration.lab.labtools import Lab, leftovers, weftctl

pytestmark = pytest.mark.e2e

NS = "dre2e"
EJECTION_S = 8


def _echo(version: str, node: str) -> str:
    return f"""
apiVersion: apps/v1
kind: Deployment
metadata: {{name: echo-{version}, namespace: {NS}}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: echo, version: {version}}}}}
  template:
    metadata: {{labels: {{app: echo, version: {version}}}}}
    spec:
      nodeName: {node}
      containers:
      - name: echo
        image: weft/http-echo
        args: ["--port", "8080", "--version", "{version}"]
        ports: [{{name: http, containerPort: 8080}}]
        env:
        - name: POD_NAME
          valueFrom: {{fieldRef: {{fieldPath: metadata.name}}}}
        - name: POD_IP
          valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}
"""


MANIFESTS = (
    f"""
apiVersion: v1
kind: Namespace
metadata:
  name: {NS}
  labels: {{weft.dev/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Service
metadata: {{name: echo, namespace: {NS}}}
spec:
  selector: {{app: echo}}
  ports: [{{name: http, port: 80, targetPort: http}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {NS}, labels: {{app: client}}}}
spec:
  nodeName: node-1
  containers:
  - name: main
    command: ["sleep", "3600"]
---"""
    + _echo("v1", "node-2")
    + "---"
    + _echo("v2", "node-2")
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

# Run in the client pod: requests over one kept-alive connection; (status, pod) of each.
CLIENT = textwrap.dedent("""
    import http.client, json, sys
    path, count = sys.argv[1], int(sys.argv[2])
    conn = http.client.HTTPConnection("echo", 80, timeout=5)
    out = []
    for _ in range(count):
        conn.request("GET", path)
        resp = conn.getresponse()
        body = resp.read()
        try:
            pod = json.loads(body).get("pod", "")
        except ValueError:
            pod = ""
        out.append([resp.status, pod])
    print(json.dumps(out))
""")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    manifests = tmp_path_factory.mktemp("dr") / "app.yaml"
    manifests.write_text(MANIFESTS)
    lab = Lab(f"weft-e2e-dr-{RUN_ID}")
    lab_id = ""
    try:
        lab.run("up", "--nodes", "2", "--manifests", str(manifests), "--wait", "60")
        lab_id = lab.status()["id"]
        yield lab
    finally:
        lab.force_down()
    assert leftovers(lab_id) == []


def _requests(lab: Lab, path: str, count: int) -> list[tuple[int, str]]:
    out = lab.exec("client", NS, "python3", "-c", CLIENT, path, str(count), timeout=60).stdout
    return [(int(s), str(p)) for s, p in json.loads(out.strip().splitlines()[-1])]


def test_a_subset_gets_its_pods_traffic_and_a_failing_pod_is_ejected_then_returns(
    lab: Lab, tmp_path: Path
) -> None:
    applied = weftctl(
        "waypoint", "--lab", lab.name, "apply", "-n", NS, "--enroll-namespace", "--wait",
        "--timeout", "30",
    )  # fmt: skip
    assert f"waypoint {NS}/waypoint is programmed" in applied.stdout
    (v1,) = lab.pods(NS, "echo-v1")
    (v2,) = lab.pods(NS, "echo-v2")
    policy = tmp_path / "dr.yaml"
    policy.write_text(POLICY)
    lab.run("apply", "-f", str(policy))

    # the rules reach the waypoint within seconds: /v2 goes to subset v2 only
    deadline = time.monotonic() + 30
    while True:
        pods = {p for _, p in _requests(lab, "/v2/warm", 10)}
        if pods == {v2["name"]} or time.monotonic() > deadline:
            break
        time.sleep(0.5)
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
    deadline = time.monotonic() + EJECTION_S + 15
    while True:
        share = Counter(p for _, p in _requests(lab, "/x", 10))
        if share.get(v2["name"], 0) > 0 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert share.get(v2["name"], 0) >= 4, share
