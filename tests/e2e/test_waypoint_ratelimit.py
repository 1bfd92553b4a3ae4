"""A Global RateLimitPolicy in the lab, as a user would set it up: a namespace waypoint with
two replicas (`weftctl waypoint apply --replicas 2`), the policy on Service `echo`, and three
times the limit sent from a client pod over many connections (each lands on either replica):
the allowed count is the limit within ±2 %, counted in the lab's redis-server, the rest 429
with the limit headers."""

from __future__ import annotations

import json
import re
import shutil
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RUN_ID
from tests.e2e import waypoint_lab as wl
from tests.integration.lab.labtools import Lab

pytestmark = pytest.mark.e2e

NS = "rle2e"
LIMIT = 100

MANIFESTS = wl.manifests(
    wl.enrolled_namespace(NS),
    wl.echo_deployment(NS),
    wl.service(NS, "echo", {"app": "echo"}),
    wl.client_pod(NS),
)

# A Day window: the count cannot be split by a window's edge during the test (but at midnight)
POLICY = f"""
apiVersion: policy.weft.dev/v1
kind: RateLimitPolicy
metadata: {{name: echo-limit, namespace: {NS}}}
spec:
  targetRefs: [{{group: "", kind: Service, name: echo}}]
  type: Global
  failureMode: Deny
  rules:
  - limit: {{requests: {LIMIT}, unit: Day}}
"""

# Run in the client pod: `conns` connections, `per` requests on each; the status counts and
# one 429's rate limit headers.
CLIENT = textwrap.dedent("""
    import collections, http.client, json, sys
    conns, per = int(sys.argv[1]), int(sys.argv[2])
    codes, limited = collections.Counter(), {}
    for _ in range(conns):
        conn = http.client.HTTPConnection("echo", 80, timeout=5)
        for _ in range(per):
            conn.request("GET", "/")
            resp = conn.getresponse()
            resp.read()
            codes[resp.status] += 1
            if resp.status == 429 and not limited:
                limited = {k.lower(): v for k, v in resp.getheaders() if k.lower().startswith(("x-ratelimit", "retry-after"))}
        conn.close()
    print(json.dumps({"codes": codes, "limited": limited}))
""")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    if shutil.which("redis-server") is None:
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    with wl.running_lab(f"weft-e2e-rl-{RUN_ID}", MANIFESTS, tmp_path_factory.mktemp("rl")) as lab:
        yield lab


def config_dump(lab: Lab, pod: str) -> dict[str, Any]:
    out = lab.exec(
        pod, NS, "curl", "-s", "--max-time", "5", "http://127.0.0.1:15000/config_dump"
    ).stdout
    data: dict[str, Any] = json.loads(out)
    return data


def decisions(lab: Lab, pod: str) -> dict[str, float]:
    metrics = lab.exec(
        pod, NS, "curl", "-s", "--max-time", "5", "http://127.0.0.1:15020/metrics"
    ).stdout
    found = re.findall(
        r'^weft_waypoint_ratelimit_decisions_total\{policy="([^"]*)",verdict="([^"]*)"\} (\S+)$',
        metrics,
        re.M,
    )
    return {verdict: float(n) for policy, verdict, n in found if policy == f"{NS}/echo-limit"}


def test_a_global_limit_holds_across_two_waypoint_replicas(lab: Lab, tmp_path: Path) -> None:
    applied = wl.apply_waypoint(lab, NS, "--replicas", "2")
    assert f"waypoint {NS}/waypoint is programmed" in applied.stdout
    wl.apply_yaml(lab, tmp_path / "policy.yaml", POLICY)

    def replicas() -> tuple[list[dict[str, Any]], bool]:
        """The ready waypoint pods, and whether they are both and both hold the policy."""
        pods = [p for p in lab.pods(NS, "waypoint-") if p.get("ready")]
        return pods, len(pods) == 2 and all(
            config_dump(lab, p["name"])["rate_limits"]["policies"] == [f"{NS}/echo-limit"]
            for p in pods
        )

    pods, holding = wl.poll_until(replicas, lambda r: r[1], 30)
    assert holding, lab.pods(NS, "waypoint-")
    assert all(config_dump(lab, p["name"])["rate_limits"]["redis"] for p in pods)

    result = wl.in_client(lab, NS, CLIENT, "60", "5", timeout=120)
    codes = {int(k): v for k, v in result["codes"].items()}
    assert sum(codes.values()) == 3 * LIMIT
    assert set(codes) <= {200, 429}, codes
    assert abs(codes.get(200, 0) - LIMIT) <= LIMIT * 0.02, codes
    assert result["limited"]["x-ratelimit-limit"] == str(LIMIT)
    assert result["limited"]["x-ratelimit-remaining"] == "0"
    assert int(result["limited"]["retry-after"]) >= 1

    # both replicas decided some of them, and the store never failed
    per_pod = [decisions(lab, p["name"]) for p in pods]
    assert all(d.get("allowed", 0) + d.get("limited", 0) > 0 for d in per_pod), per_pod
    assert sum(d.get("allowed", 0) for d in per_pod) == codes.get(200, 0), per_pod
    assert not any(d.get("store_error_denied") for d in per_pod), per_pod
