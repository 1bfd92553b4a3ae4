"""Edges of the inbound datapath, in a two-node lab with real capture and real ztunnels:
plaintext that carries IP options, and an unenrolled pod's connections through a Service VIP
whose endpoints include one on its own node. Either way the plaintext must go through
ztunnel (PERMISSIVE: answered and counted; STRICT: refused), as it does without them."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from lab.state import LabPaths
from tests.conftest import RUN_ID
from tests.integration.lab.labtools import Lab, leftovers, weftctl

pytestmark = pytest.mark.integration

MANIFESTS = Path(__file__).parent / "manifests"

# Sequential HTTP requests from inside a pod; prints the answering pod (or the error) of each.
REQUESTS = """
import json, socket, sys
host, port, count, options = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
results = []
for _ in range(count):
    s = socket.socket()
    s.settimeout(2)
    try:
        if options:
            s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, bytes.fromhex(options))
        s.connect((host, port))
        s.sendall(b"GET / HTTP/1.1\\r\\nHost: x\\r\\nConnection: close\\r\\n\\r\\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
        head, _, body = data.partition(b"\\r\\n\\r\\n")
        results.append(json.loads(body)["pod"] if head.split()[1] == b"200" else "not 200")
    except (OSError, ValueError, IndexError) as err:
        results.append(type(err).__name__)
    finally:
        s.close()
print(json.dumps(results))
"""

NOPS = "01010101"  # four no-operation options: a 24-byte IP header
RECORD_ROUTE = "070b04" + "00" * 8 + "00"  # room for two addresses, then end of options
OPTIONS = pytest.mark.parametrize("options", [NOPS, RECORD_ROUTE], ids=["nops", "record-route"])

STRICT = """
apiVersion: security.weft.dev/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: shop}
spec:
  mtls: {mode: STRICT}
"""


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    lab = Lab(f"weft-edges-{RUN_ID}")
    lab_id = ""
    try:
        lab.run(
            "up",
            "--nodes",
            "2",
            "--manifests",
            str(MANIFESTS / "datapath_edges.yaml"),
            "--wait",
            "90",
        )
        lab_id = lab.status()["id"]
        yield lab
    finally:
        lab.force_down()
    assert leftovers(lab_id) == []


def requests(lab: Lab, host: str, count: int = 1, options: str = "", port: int = 8080) -> list[str]:
    """What `count` requests from the unenrolled pod `outside/plain` got, in order."""
    proc = lab.exec(
        "plain",
        "outside",
        sys.executable,
        "-c",
        REQUESTS,
        host,
        str(port),
        str(count),
        options,
        timeout=30 + 3 * count,
    )
    results: list[str] = json.loads(proc.stdout)
    return results


def pod_ip(lab: Lab, name: str) -> str:
    return next(p["ip"] for p in lab.status()["pods"] if p["name"] == name)


def vip(lab: Lab, name: str) -> str:
    return next(s["vip"] for s in lab.status()["services"] if s["name"] == name)


def plaintext_admitted(lab: Lab, node: str, workload: str) -> float:
    """Plaintext connections node's ztunnel opened to `workload` (its 15006 path)."""
    sock = LabPaths.for_lab(lab.name).ztunnel_socket(node)
    text = subprocess.run(
        ["curl", "-s", "--unix-socket", str(sock), "http://z/metrics"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    total = 0.0
    for line in text.splitlines():
        if (
            line.startswith("istio_tcp_connections_opened_total{")
            and 'reporter="destination"' in line
            and f'destination_workload="{workload}"' in line
            and 'connection_security_policy="none"' in line
            and 'response_flags="-"' in line
        ):
            total += float(line.rsplit(" ", 1)[1])
    return total


def eventually(fn: Callable[[], bool], timeout: float = 20, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while True:
        if fn():
            return
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(0.3)


@pytest.fixture
def strict(lab: Lab) -> Iterator[None]:
    """STRICT mTLS for namespace shop, in force (plaintext to web-1 refused) while it lasts."""
    path = MANIFESTS / f".strict-{RUN_ID}.yaml"
    path.write_text(STRICT)
    web1 = pod_ip(lab, "web-1")
    try:
        lab.run("apply", "-f", str(path))
        eventually(lambda: requests(lab, web1) != ["web-1"], what="STRICT to refuse plaintext")
        yield
    finally:
        lab.run("delete", "-f", str(path), check=False)
        path.unlink(missing_ok=True)
    eventually(lambda: requests(lab, web1) == ["web-1"], what="STRICT to go away")


# --- IP options -------------------------------------------------------------------------


@OPTIONS
@pytest.mark.parametrize(("target", "node"), [("web-1", "node-1"), ("web-2", "node-2")])
def test_plaintext_with_ip_options_is_steered_through_ztunnel_in_permissive(
    lab: Lab, options: str, target: str, node: str
) -> None:
    """Same node (web-1: the client's veth) and across nodes (web-2: the underlay device)."""
    ip = pod_ip(lab, target)
    before = plaintext_admitted(lab, node, target)
    assert requests(lab, ip, count=3) == [target] * 3  # the baseline, without options
    assert plaintext_admitted(lab, node, target) == before + 3
    assert requests(lab, ip, count=3, options=options) == [target] * 3
    assert plaintext_admitted(lab, node, target) == before + 6  # not around ztunnel


@OPTIONS
def test_strict_refuses_plaintext_with_ip_options_as_without(
    lab: Lab, strict: None, options: str
) -> None:
    for target in ("web-1", "web-2"):
        ip = pod_ip(lab, target)
        assert target not in requests(lab, ip, count=2)
        assert target not in requests(lab, ip, count=2, options=options)


# --- Service VIP from an unenrolled pod ---------------------------------------------------

ENDPOINTS = (("web-1", "node-1"), ("web-2", "node-2"))


def admitted(lab: Lab) -> dict[str, float]:
    return {workload: plaintext_admitted(lab, node, workload) for workload, node in ENDPOINTS}


def test_an_unenrolled_pod_reaches_a_service_with_an_endpoint_on_its_node_every_time(
    lab: Lab,
) -> None:
    """How namespaces migrate into the mesh one at a time (PERMISSIVE): a client outside it
    keeps reaching the service, whichever endpoint kube-proxy picks, through ztunnel."""
    before = admitted(lab)
    results = requests(lab, vip(lab, "web"), count=100, port=80)
    failed = [r for r in results if r not in ("web-1", "web-2")]
    assert failed == [], f"{len(failed)} of 100 failed: {sorted(set(failed))}"
    assert set(results) == {"web-1", "web-2"}  # both endpoints, the same-node one among them
    after = admitted(lab)  # every one of them through its endpoint's ztunnel
    assert {w: after[w] - before[w] for w in after} == {w: results.count(w) for w in after}


@OPTIONS
def test_a_service_with_ip_options_is_steered_too(lab: Lab, options: str) -> None:
    before = admitted(lab)
    results = requests(lab, vip(lab, "web"), count=20, port=80, options=options)
    assert len(results) == 20 and set(results) <= {"web-1", "web-2"}, results
    after = admitted(lab)
    assert {w: after[w] - before[w] for w in after} == {w: results.count(w) for w in after}


@pytest.mark.parametrize("options", ["", NOPS, RECORD_ROUTE], ids=["plain", "nops", "record-route"])
def test_strict_refuses_an_unenrolled_pods_connections_through_a_service(
    lab: Lab, strict: None, options: str
) -> None:
    results = requests(lab, vip(lab, "web"), count=20, port=80, options=options)
    assert not {"web-1", "web-2"} & set(results), results


def test_service_steering_goes_on_while_the_agent_restarts(lab: Lab) -> None:
    """The table outlives the agent, as the programs and maps do; the restarted one keeps it."""
    service = vip(lab, "web")
    agent = lab.status()["node_agents"]["node-1"]
    os.kill(agent["pid"], signal.SIGKILL)
    results = requests(lab, service, count=20, port=80)
    assert len(results) == 20 and set(results) <= {"web-1", "web-2"}, results

    def back() -> bool:
        now = lab.status()["node_agents"]["node-1"]
        if now["pid"] in (None, agent["pid"]) or now["restarts"] <= agent["restarts"]:
            return False
        status = weftctl(
            "agent", "--lab", lab.name, "status", "--node", "node-1", "-o", "json", check=False
        )
        if status.returncode != 0:  # not answering yet
            return False
        data = json.loads(status.stdout)
        return bool(data["ready"] and data["dnat_steering"]["current"])

    eventually(back, timeout=30, what="the agent to come back and reconcile")
    results = requests(lab, service, count=20, port=80)
    assert len(results) == 20 and set(results) <= {"web-1", "web-2"}, results
