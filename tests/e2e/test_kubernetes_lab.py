"""`weftctl lab up --source kubernetes`: the demo with a real API server as the source of truth.

The lab runs etcd and weft-kube-apiserver (tests/kubeapi.py builds it), installs weft's CRDs,
writes the cluster through the API as its kubelets and controllers would, and the controller
watches the API server; the nodes trade their DaemonSet pod's token for their credential
(TokenReview). kubectl sees the lab's pods; traffic crosses the mesh as with the folder source;
a refused policy shows as an Event; `lab down` leaves nothing behind.
"""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import RUN_ID
from tests.e2e.test_demo_lab import principal_pairs, weftctl_metrics
from tests.integration.lab.labtools import Lab, leftovers
from tests.kubeapi import binaries

pytestmark = [pytest.mark.e2e, pytest.mark.kubernetes]


def kubectl(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binaries().kubectl), "--kubeconfig", str(kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


POLICY = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: ask-nobody
  namespace: demo
spec:
  action: CUSTOM
  provider:
    name: no-such-provider
  targetRefs:
  - kind: Service
    group: ""
    name: backend
  rules:
  - to:
    - operation:
        paths: ["/never-asked"]
"""


def test_the_demo_on_a_real_api_server(tmp_path: Path) -> None:
    binaries()  # (skips, saying why, where the API server cannot be built)
    lab = Lab(f"weft-k8s-{RUN_ID}")
    lab_id = ""
    try:
        lab.run("up", "--source", "kubernetes", "--wait", "150", timeout=600)
        record = lab.record()
        assert record is not None
        lab_id = record.lab_id
        status = lab.status()
        assert status["source"] == "kubernetes"
        assert all(p["ready"] for p in status["pods"]), status["pods"]

        # kubectl sees the pods the lab runs, where and at the address the lab gave them
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(lab.run("kubeconfig").stdout)
        listed = json.loads(kubectl(kubeconfig, "get", "pods", "-n", "demo", "-o", "json").stdout)
        by_name = {p["metadata"]["name"]: p for p in listed["items"]}
        for pod in (p for p in status["pods"] if p["namespace"] == "demo"):
            seen = by_name[pod["name"]]
            assert seen["status"]["podIP"] == pod["ip"]
            assert seen["spec"]["nodeName"] == pod["node"]
            assert seen["status"]["phase"] == "Running"

        # the controller's status reaches the API: the demo's waypoint Gateway is Programmed
        (gateway,) = json.loads(
            kubectl(kubeconfig, "get", "gateways", "-n", "demo", "-o", "json").stdout
        )["items"]
        conditions = {c["type"]: c["status"] for c in gateway["status"]["conditions"]}
        assert conditions == {"Accepted": "True", "Programmed": "True"}, gateway["status"]

        # the nodes got their credentials by TokenReview, not from the lab
        log = (Path("/run/weft/labs") / lab.name / "logs" / "controller.log").read_text()
        bootstrapped = {
            json.loads(line).get("node")
            for line in log.splitlines()
            if '"node.bootstrapped"' in line
        }
        assert {"node-1", "node-2"} <= bootstrapped, log[-3000:]

        # traffic crosses the mesh as with the folder source
        answer = json.loads(
            lab.exec("traffic", "demo", "curl", "-s", "--max-time", "5", "http://frontend/").stdout
        )
        assert answer["upstream"]["status"] == 200
        pairs = set()
        for node in ("node-1", "node-2"):
            pairs |= principal_pairs(weftctl_metrics(lab, node))
        assert any("sa/frontend" in p for p in pairs), pairs

        # a policy the controller cannot enforce as written shows as an Event on it
        policy = tmp_path / "policy.yaml"
        policy.write_text(POLICY)
        lab.run("apply", "-f", str(policy))
        deadline = time.monotonic() + 30
        while True:
            events = json.loads(
                kubectl(kubeconfig, "get", "events", "-n", "demo", "-o", "json").stdout
            )["items"]
            mine = [e for e in events if e["involvedObject"]["name"] == "ask-nobody"]
            if mine or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert mine and mine[0]["type"] == "Warning", events
        assert "no-such-provider" in mine[0]["message"]
    finally:
        lab.force_down()
    assert lab_id and leftovers(lab_id) == []
