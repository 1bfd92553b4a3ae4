"""Real eBPF capture in a real lab: enrolled pods' connects land on the node's listener with
their original destination; everything else is left alone; capture survives the agent."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from lab import cgroups
from tests.conftest import RUN_ID
from tests.integration.lab.labtools import Lab, leftovers, weftctl

pytestmark = pytest.mark.integration

HERE = Path(__file__).parent
CONNECT = """
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=5)
peer = s.getpeername()
s.sendall(b"hello"); s.shutdown(socket.SHUT_WR)
data = b""
while chunk := s.recv(4096):
    data += chunk
print(f"{peer[0]}:{peer[1]} {data.decode().strip()}")
"""


class Listener:
    """capture_listener.py on port 15001 of a node, in the node's system cgroup (where
    ztunnel runs, and where the SO_ORIGINAL_DST program is attached)."""

    def __init__(self, lab: Lab, node: str, port: int = 15001) -> None:
        status = lab.status()
        netns = next(n["netns"] for n in status["nodes"] if n["name"] == node)
        lab_id = status["id"]
        cgroup = cgroups.create(f"weft-{lab_id}/{node}/system/test-listener-{port}")
        self.log = HERE / f".listener-{RUN_ID}-{node}-{port}.log"
        out = open(self.log, "w")  # noqa: SIM115 - the listener process owns it
        self.proc = subprocess.Popen(
            [
                "sh",
                "-c",
                'echo $$ > "$0/cgroup.procs" && exec "$@"',
                str(cgroup),
                "nsenter",
                f"--net=/run/netns/{netns}",
                "--",
                sys.executable,
                str(HERE / "capture_listener.py"),
                str(port),
                *(["inbound"] if port == 15006 else []),
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
        out.close()
        deadline = time.monotonic() + 10
        while "listening" not in self.log.read_text():
            assert time.monotonic() < deadline, f"listener did not start: {self.log.read_text()}"
            time.sleep(0.05)

    def records(self) -> list[dict]:
        return [
            json.loads(line)
            for line in self.log.read_text().splitlines()
            if line.startswith("{") and "peer" in line
        ]

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(5)
        self.log.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def mesh_lab() -> Iterator[Lab]:
    lab = Lab(f"weft-cap-{RUN_ID}")
    try:
        # No ztunnel: the tests' own listeners stand in for it on 15001 and 15006.
        lab.run("up", "--nodes", "2", "--manifests", str(HERE / "manifests.yaml"), "--no-ztunnel")
        yield lab
    finally:
        lab.force_down()


@pytest.fixture(scope="module")
def listener(mesh_lab: Lab) -> Iterator[Listener]:
    node_listener = Listener(mesh_lab, "node-1")
    try:
        yield node_listener
    finally:
        node_listener.stop()


@pytest.fixture(scope="module")
def inbound(mesh_lab: Lab) -> Iterator[dict[str, Listener]]:
    listeners = {n: Listener(mesh_lab, n, 15006) for n in ("node-1", "node-2")}
    try:
        yield listeners
    finally:
        for each in listeners.values():
            each.stop()


def pod(lab: Lab, namespace: str, name: str) -> dict:
    return next(
        p for p in lab.status()["pods"] if p["namespace"] == namespace and p["name"] == name
    )


def connect(
    lab: Lab, namespace: str, name: str, ip: str, port: int, check: bool = True
) -> subprocess.CompletedProcess[str]:
    return lab.exec(name, namespace, sys.executable, "-c", CONNECT, ip, str(port), check=check)


def agent_status(lab: Lab, node: str) -> dict:
    return json.loads(
        weftctl("agent", "--lab", lab.name, "status", "--node", node, "-o", "json").stdout
    )


def wait_enrolled(
    lab: Lab, node: str, pod_label: str, present: bool = True, timeout: float = 20
) -> None:
    deadline = time.monotonic() + timeout
    while True:
        names = [e["pod"] for e in agent_status(lab, node)["enrolled"]]
        if (pod_label in names) == present:
            return
        assert time.monotonic() < deadline, f"{pod_label} enrolled={not present}: {names}"
        time.sleep(0.2)


def test_an_enrolled_pods_connect_lands_on_the_node_listener_with_its_original_destination(
    mesh_lab: Lab, listener: Listener
) -> None:
    wait_enrolled(mesh_lab, "node-1", "mesh/client")
    server = pod(mesh_lab, "plain", "server")
    out = connect(mesh_lab, "mesh", "client", server["ip"], 9000).stdout.split()
    # The app's view stays honest: its peer is where it connected, not the node.
    assert out[0] == f"{server['ip']}:9000"
    assert out[1:] == ["captured", f"{server['ip']}:9000"]
    record = listener.records()[-1]
    assert record["orig"] == f"{server['ip']}:9000"
    assert record["peer"].split(":")[0] == pod(mesh_lab, "mesh", "client")["ip"]


def test_a_connect_to_a_service_vip_is_captured_with_the_vip_as_destination(
    mesh_lab: Lab, listener: Listener
) -> None:
    vip = next(s["vip"] for s in mesh_lab.status()["services"] if s["name"] == "server")
    out = connect(mesh_lab, "mesh", "client", vip, 80).stdout.split()
    assert out[1:] == ["captured", f"{vip}:80"]
    assert listener.records()[-1]["orig"] == f"{vip}:80"


def test_an_unenrolled_pods_connect_is_left_alone(mesh_lab: Lab, listener: Listener) -> None:
    server = pod(mesh_lab, "plain", "server")
    before = len(listener.records())
    out = connect(mesh_lab, "plain", "outsider", server["ip"], 9000).stdout.split()
    assert out[1:] == ["direct", "hello"]
    assert len(listener.records()) == before


def test_an_excluded_port_is_left_alone(mesh_lab: Lab, listener: Listener) -> None:
    wait_enrolled(mesh_lab, "node-1", "mesh/skipper")
    server = pod(mesh_lab, "plain", "server")
    out = connect(mesh_lab, "mesh", "skipper", server["ip"], 9000).stdout.split()
    assert out[1:] == ["direct", "hello"]
    vip = next(s["vip"] for s in mesh_lab.status()["services"] if s["name"] == "server")
    out = connect(mesh_lab, "mesh", "skipper", vip, 80).stdout.split()
    assert out[1:] == ["captured", f"{vip}:80"]  # only port 9000 is excluded


def test_loopback_and_udp_are_left_alone(mesh_lab: Lab, listener: Listener) -> None:
    code = (
        "import socket\n"
        "srv = socket.socket(); srv.bind(('127.0.0.1', 0)); srv.listen(1)\n"
        "c = socket.create_connection(srv.getsockname(), timeout=3)\n"
        "print('loopback', c.getpeername()[0])\n"
        "u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "u.connect(('198.19.0.53', 53)); print('udp', u.getpeername()[0])\n"
    )
    out = mesh_lab.python("client", "mesh", code).stdout.split()
    assert out == ["loopback", "127.0.0.1", "udp", "198.19.0.53"]


def test_an_enrolled_pod_fails_closed_when_no_listener_is_there(mesh_lab: Lab) -> None:
    """node-2 has no listener on 15001: the connect fails instead of going around the mesh."""
    wait_enrolled(mesh_lab, "node-2", "mesh/far")
    server = pod(mesh_lab, "plain", "server")
    proc = connect(mesh_lab, "mesh", "far", server["ip"], 9000, check=False)
    assert proc.returncode != 0
    assert "ConnectionRefusedError" in proc.stderr


def test_label_changes_enroll_and_unenroll_a_running_pod(
    mesh_lab: Lab, listener: Listener, tmp_path: Path
) -> None:
    server = pod(mesh_lab, "plain", "server")
    before = pod(mesh_lab, "mesh", "client")
    manifest = tmp_path / "out.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: mesh, labels: "
        "{app: client, weft.dev/dataplane-mode: none}}\nspec:\n  nodeName: node-1\n"
        '  containers: [{name: main, command: ["sleep", "3600"]}]\n'
    )
    mesh_lab.run("apply", "-f", str(manifest))
    try:
        wait_enrolled(mesh_lab, "node-1", "mesh/client", present=False)
        out = connect(mesh_lab, "mesh", "client", server["ip"], 9000).stdout.split()
        assert out[1:] == ["direct", "hello"]
    finally:
        manifest.write_text(manifest.read_text().replace(", weft.dev/dataplane-mode: none", ""))
        mesh_lab.run("apply", "-f", str(manifest))
    wait_enrolled(mesh_lab, "node-1", "mesh/client")
    out = connect(mesh_lab, "mesh", "client", server["ip"], 9000).stdout.split()
    assert out[1] == "captured"
    after = pod(mesh_lab, "mesh", "client")
    assert after["containers"][0]["pid"] == before["containers"][0]["pid"]  # not restarted


def test_capture_goes_on_while_the_agent_is_killed_and_restarted(
    mesh_lab: Lab, listener: Listener
) -> None:
    server = pod(mesh_lab, "plain", "server")
    before = agent_status(mesh_lab, "node-1")
    ids_before = {p["program"]: p["attached_ids"] for p in before["programs"]}
    pid = mesh_lab.status()["node_agents"]["node-1"]["pid"]
    os.kill(pid, signal.SIGKILL)
    # While it is down (the lab restarts it after a backoff), capture goes on.
    results = []
    for _ in range(3):
        out = connect(mesh_lab, "mesh", "client", server["ip"], 9000).stdout.split()
        results.append(out[1])
    assert results == ["captured"] * 3
    deadline = time.monotonic() + 30
    while True:
        agents = mesh_lab.status()["node_agents"]["node-1"]
        if agents["pid"] not in (None, pid) and agents["restarts"] >= 1:
            try:
                after = agent_status(mesh_lab, "node-1")
                if after["ready"]:
                    break
            except AssertionError:
                pass
        assert time.monotonic() < deadline, "the agent did not come back"
        time.sleep(0.2)
    # It adopted the attached programs instead of loading new ones.
    assert {p["program"]: p["attached_ids"] for p in after["programs"]} == ids_before
    assert "mesh/client" in [e["pod"] for e in after["enrolled"]]
    out = connect(mesh_lab, "mesh", "client", server["ip"], 9000).stdout.split()
    assert out[1] == "captured"


def test_plaintext_to_an_enrolled_pod_is_steered_to_the_inbound_listener(
    mesh_lab: Lab, inbound: dict[str, Listener]
) -> None:
    far, client = pod(mesh_lab, "mesh", "far"), pod(mesh_lab, "mesh", "client")
    outsider = pod(mesh_lab, "plain", "outsider")
    # across nodes (outsider on node-1 -> far on node-2), and on one node (-> client)
    for target, node in ((far, "node-2"), (client, "node-1")):
        out = connect(mesh_lab, "plain", "outsider", target["ip"], 8080).stdout.split()
        assert out == [f"{target['ip']}:8080", "captured", f"{target['ip']}:8080"]
        record = inbound[node].records()[-1]
        assert record["orig"] == f"{target['ip']}:8080"
        assert record["peer"].split(":")[0] == outsider["ip"]  # the client's own address


def test_the_node_itself_reaches_an_enrolled_pod_directly(
    mesh_lab: Lab, inbound: dict[str, Listener]
) -> None:
    """Connections made by the node's processes (ztunnel's, probes) are not steered."""
    far = pod(mesh_lab, "mesh", "far")
    netns = next(n["netns"] for n in mesh_lab.status()["nodes"] if n["name"] == "node-2")
    before = len(inbound["node-2"].records())
    code = (
        f"import socket\ntry:\n    socket.create_connection(('{far['ip']}', 8080), "
        "timeout=3)\nexcept ConnectionRefusedError:\n    print('refused by the pod')\n"
    )
    proc = subprocess.run(
        ["nsenter", f"--net=/run/netns/{netns}", "--", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert proc.stdout.strip() == "refused by the pod"  # reached it: nothing listens there
    assert len(inbound["node-2"].records()) == before


def test_plaintext_through_a_service_dnat_on_the_node_is_steered_or_else_dropped(
    mesh_lab: Lab, inbound: dict[str, Listener]
) -> None:
    """A same-node Service DNAT happens after tc ingress: the agent's nftables rule steers
    the connection to the inbound listener, which sees the endpoint as its own address (the
    client still sees the VIP); with no listener, the egress guard drops the SYN."""
    outsider, client = pod(mesh_lab, "plain", "outsider"), pod(mesh_lab, "mesh", "client")
    manifest = (
        "apiVersion: v1\nkind: Service\nmetadata: {name: enrolled, namespace: mesh}\n"
        "spec:\n  selector: {app: client}\n  ports: [{port: 80, targetPort: 8080}]\n"
    )
    path = HERE / f".svc-{RUN_ID}.yaml"
    path.write_text(manifest)
    try:
        mesh_lab.run("apply", "-f", str(path))
        vip = next(s["vip"] for s in mesh_lab.status()["services"] if s["name"] == "enrolled")
        deadline = time.monotonic() + 10
        while True:  # until the service has its endpoint
            proc = connect(mesh_lab, "plain", "outsider", vip, 80, check=False)
            if "ConnectionRefusedError" not in proc.stderr or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert proc.stdout.split() == [f"{vip}:80", "captured", f"{client['ip']}:8080"], proc.stderr
        record = inbound["node-1"].records()[-1]
        assert record["orig"] == f"{client['ip']}:8080"
        assert record["peer"].split(":")[0] == outsider["ip"]

        inbound["node-1"].stop()
        try:
            code = (
                f"import socket\ntry:\n    socket.create_connection(('{vip}', 80), timeout=2)\n"
                "except TimeoutError:\n    print('dropped')\n"
                "except OSError as e:\n    print(type(e).__name__)\n"
            )
            assert mesh_lab.python("outsider", "plain", code).stdout.strip() == "dropped"
        finally:
            inbound["node-1"] = Listener(mesh_lab, "node-1", 15006)
    finally:
        mesh_lab.run("delete", "-f", str(path), check=False)
        path.unlink(missing_ok=True)


def test_lab_down_removes_every_pin(tmp_path: Path) -> None:
    lab = Lab(f"weft-pin-{RUN_ID}")
    manifest = tmp_path / "one.yaml"
    manifest.write_text(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: m, labels: "
        "{weft.dev/dataplane-mode: ambient}}\n---\napiVersion: v1\nkind: Pod\n"
        "metadata: {name: p, namespace: m}\nspec:\n"
        '  containers: [{name: main, command: ["sleep", "3600"]}]\n'
    )
    try:
        lab.run("up", "--nodes", "1", "--manifests", str(manifest), "--no-ztunnel")
        record = lab.record()
        assert record is not None
        pins = Path("/sys/fs/bpf") / f"weft-{record.lab_id}"
        assert pins.exists() and any(pins.rglob("*"))
    finally:
        lab.force_down()
    assert not pins.exists()
    assert leftovers(record.lab_id) == []
