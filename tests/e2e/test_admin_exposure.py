"""What a pod can reach of the mesh's own HTTP listeners, as Istio has it: admin and debug
(config dumps, agent status, controller state) only on localhost and the unix sockets;
15020 serves metrics and nothing else, 15021 readiness and nothing else."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab.state import LabPaths
from tests.conftest import RUN_ID
from tests.integration.lab.labtools import Lab, leftovers, weftctl

pytestmark = pytest.mark.e2e

GATEWAY = "169.254.1.1"  # a pod's own node, as every pod's default route has it

MANIFEST = """
apiVersion: v1
kind: Namespace
metadata: {name: meshed, labels: {weft.dev/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
apiVersion: v1
kind: Pod
metadata: {name: probe, namespace: meshed}
spec:
  nodeName: node-1
  containers: [{name: main, command: ["sleep", "3600"]}]
---
apiVersion: v1
kind: Pod
metadata: {name: probe, namespace: plain}
spec:
  nodeName: node-1
  containers: [{name: main, command: ["sleep", "3600"]}]
"""

# Run in the pod: GET each (host, port, path), print what happened as JSON:
# an HTTP status, "refused", "reset", or another error's name.
PROBE = r"""
import http.client, json, sys
out = []
for host, port, path in json.loads(sys.argv[1]):
    try:
        conn = http.client.HTTPConnection(host, port, timeout=3)
        conn.request("GET", path)
        got = conn.getresponse().status
        conn.close()
    except ConnectionRefusedError:
        got = "refused"
    except ConnectionResetError:
        got = "reset"
    except OSError as err:
        got = type(err).__name__
    out.append([host, port, path, got])
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    manifest = Path(tmp_path_factory.mktemp("admin")) / "probe.yaml"
    manifest.write_text(MANIFEST)
    lab = Lab(f"weft-e2e-{RUN_ID}-admin")
    lab_id = ""
    try:
        lab.run("up", "--nodes", "2", "--manifests", str(manifest), "--wait", "60")
        lab_id = lab.status()["id"]
        yield lab
    finally:
        lab.force_down()
    assert leftovers(lab_id) == []


def probe(lab: Lab, namespace: str, targets: list[tuple[str, int, str]]) -> dict:
    out = lab.python("probe", namespace, PROBE.replace("sys.argv[1]", repr(json.dumps(targets))))
    return {(h, p, path): got for h, p, path, got in json.loads(out.stdout)}


@pytest.mark.parametrize("namespace", ["meshed", "plain"])
def test_pods_reach_no_config_or_state_only_metrics_and_readiness(lab: Lab, namespace: str) -> None:
    status = lab.status()
    nodes = {n["name"]: n["underlay_ip"] for n in status["nodes"]}
    controller = status["controller"]["address"].rsplit(":", 1)[0]
    hidden: list[tuple[str, int, str]] = []  # must be refused: nothing listens there
    wrong_path: list[tuple[str, int, str]] = []  # must be 404 (served, but not that)
    served: list[tuple[str, int, str]] = []  # must be 200
    for host in (GATEWAY, nodes["node-1"], nodes["node-2"]):  # own node twice, other node
        hidden += [(host, 15000, "/config_dump"), (host, 15024, "/debug/status")]
        wrong_path += [(host, 15020, "/config_dump"), (host, 15021, "/config_dump")]
        served += [(host, 15020, "/metrics"), (host, 15021, "/healthz/ready")]
    hidden += [(controller, 15000, "/debug/state"), (controller, 15000, "/debug/nodes")]
    wrong_path += [(controller, 15014, "/debug/state"), (controller, 15021, "/debug/state")]
    served += [(controller, 15014, "/metrics"), (controller, 15021, "/ready")]

    got = probe(lab, namespace, hidden + wrong_path + served)

    # An enrolled pod's connection off its node is captured: its ztunnel accepts it, finds
    # the port closed, and resets it. Either way nothing answered.
    closed = {"refused", "reset"} if namespace == "meshed" else {"refused"}
    assert {t: got[t] for t in hidden if got[t] not in closed} == {}
    assert {t: got[t] for t in wrong_path} == dict.fromkeys(wrong_path, 404)
    assert {t: got[t] for t in served} == dict.fromkeys(served, 200)


def test_admin_still_answers_on_the_unix_sockets_and_localhost(lab: Lab) -> None:
    """weftctl and the lab read the same admin APIs over the unix sockets; a process on the
    node itself still has them on localhost."""
    by_lab = ("--lab", lab.name)
    agent = weftctl("agent", *by_lab, "status", "--node", "node-1").stdout
    assert "meshed/probe" in agent
    assert "SERVICE STEERING (nftables weft_steer): current" in agent
    workloads = weftctl("ztunnel-config", "workloads", *by_lab, "--node", "node-1").stdout
    assert "probe" in workloads
    assert "node-1" in weftctl("controller", *by_lab, "nodes").stdout
    node_ns = next(n["netns"] for n in lab.status()["nodes"] if n["name"] == "node-1")
    sock = LabPaths.for_lab(lab.name).ztunnel_socket("node-1")
    assert sock.exists()
    local = [("127.0.0.1", 15000, "/config_dump"), ("127.0.0.1", 15024, "/debug/status")]
    out = subprocess.run(
        ["ip", "netns", "exec", node_ns, sys.executable, "-c", PROBE, json.dumps(local)],
        capture_output=True,
        text=True,
        check=True,
        timeout=30,
    ).stdout
    assert [got for *_, got in json.loads(out)] == [200, 200]
