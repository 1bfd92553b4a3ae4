"""A VirtualService's fault injection at a namespace waypoint in the lab, driven as a user
would: `weftctl waypoint apply --enroll-namespace --wait`, a VirtualService
(networking.weft.dev/v1) aborting 50 % of the requests to Service `counter` with 503; the
share over 1,000 requests is 50 % ± 5 %, and the backend (a pod counting what reaches it)
saw exactly the requests that were not aborted. Then an HTTPRoute on the same Service: it
wins, and `weftctl controller problems` names the VirtualService as the conflict."""

from __future__ import annotations

import json
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RUN_ID
from tests.e2e import waypoint_lab as wl
from tests.integration.lab.labtools import Lab, weftctl

pytestmark = pytest.mark.e2e

NS = "vsfault"

# The backend: answers every request 200 and counts it; GET /count answers the count (not
# counted), asked on the pod's own address (not through the waypoint).
COUNTER = textwrap.dedent("""
    import http.server, json
    n = 0
    class H(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        def do_GET(self):
            global n
            if self.path == "/count":
                body = json.dumps({"count": n}).encode()
            else:
                n += 1
                body = b"ok"
            self.send_response(200)
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        def log_message(self, *args):
            pass
    http.server.ThreadingHTTPServer(("", 8080), H).serve_forever()
""")

MANIFESTS = wl.manifests(
    wl.enrolled_namespace(NS),
    wl.service(NS, "counter", {"app": "counter"}, target_port=8080),
    f"""
apiVersion: v1
kind: Pod
metadata: {{name: counter, namespace: {NS}, labels: {{app: counter}}}}
spec:
  nodeName: node-2
  containers:
  - name: main
    command: ["python3", "-c", {json.dumps(COUNTER)}]
    ports: [{{name: http, containerPort: 8080}}]
""",
    wl.client_pod(NS),
)

VIRTUAL_SERVICE = f"""
apiVersion: networking.weft.dev/v1
kind: VirtualService
metadata: {{name: counter, namespace: {NS}}}
spec:
  hosts: [counter]
  http:
  - fault: {{abort: {{httpStatus: 503, percentage: {{value: 50}}}}}}
    route: [{{destination: {{host: counter}}}}]
"""

ROUTE = f"""
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: counter, namespace: {NS}}}
spec:
  parentRefs: [{{group: "", kind: Service, name: counter, port: 80}}]
  rules: [{{backendRefs: [{{name: counter, port: 80}}]}}]
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with wl.running_lab(f"weft-e2e-vs-{RUN_ID}", MANIFESTS, tmp_path_factory.mktemp("vs")) as lab:
        yield lab


def _requests(lab: Lab, to: tuple[str, int], path: str, count: int) -> list[tuple[int, str]]:
    """(status, body) of each of `count` requests over one kept-alive connection."""
    return wl.keepalive_gets(lab, NS, path, count, to)


def _backend_count(lab: Lab, counter_ip: str) -> int:
    ((status, body),) = _requests(lab, (counter_ip, 8080), "/count", 1)
    assert status == 200
    return int(json.loads(str(body))["count"])


def test_an_abort_fault_hits_its_share_and_aborted_requests_never_reach_the_backend(
    lab: Lab, tmp_path: Path
) -> None:
    applied = wl.apply_waypoint(lab, NS)
    assert f"waypoint {NS}/waypoint is programmed" in applied.stdout
    wl.apply_yaml(lab, tmp_path / "vs.yaml", VIRTUAL_SERVICE)
    (counter,) = lab.pods(NS, "counter")

    # the VirtualService reaches the waypoint within seconds: aborts start to show
    statuses = wl.poll_until(
        lambda: {r[0] for r in _requests(lab, ("counter", 80), "/warm", 20)}, lambda s: 503 in s, 30
    )
    assert statuses == {200, 503}, statuses

    before = _backend_count(lab, counter["ip"])
    results = _requests(lab, ("counter", 80), "/x", 1000)
    after = _backend_count(lab, counter["ip"])
    aborted = [r for r in results if r[0] == 503]
    passed = [r for r in results if r[0] == 200]
    assert len(aborted) + len(passed) == 1000, {r[0] for r in results}
    share = len(aborted) / 1000
    # ±5 % over 1,000 at p = 0.5 is 3.2 standard deviations: a correct share fails about
    # once in 700 runs
    assert 0.45 <= share <= 0.55, f"aborted {share:.1%}"
    assert after - before == len(passed), "an aborted request reached the backend"
    assert all(r[1] == "ok" for r in passed)

    # an HTTPRoute on the same Service wins: no more aborts, and the VirtualService is
    # reported as the conflict's loser
    wl.apply_yaml(lab, tmp_path / "route.yaml", ROUTE)
    statuses = wl.poll_until(
        lambda: {r[0] for r in _requests(lab, ("counter", 80), "/after", 40)},
        lambda s: s == {200},
        30,
    )
    assert statuses == {200}
    problems = weftctl("controller", "--lab", lab.name, "problems").stdout
    assert f"VirtualService {NS}/counter" in problems, problems
    assert "conflict: HTTPRoute" in problems and "the HTTPRoute wins" in problems, problems
