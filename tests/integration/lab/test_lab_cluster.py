"""A running two-node lab behaves like a small Kubernetes cluster without a mesh."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.integration.lab.labtools import Lab, weftctl

pytestmark = pytest.mark.integration

MANIFESTS = Path(__file__).parent / "manifests"


def _pod(lab: Lab, name: str) -> dict:
    [pod] = [p for p in lab.status()["pods"] if p["name"] == name]
    return pod


def _service(lab: Lab, name: str) -> dict:
    [svc] = [s for s in lab.status()["services"] if s["name"] == name]
    return svc


def test_deployment_replicas_are_spread_over_both_nodes(cluster: Lab) -> None:
    echo = cluster.pods("it", "echo-")
    assert len(echo) == 4
    assert sorted(p["node"] for p in echo) == ["node-1", "node-1", "node-2", "node-2"]
    assert all(p["ready"] and p["phase"] == "Running" for p in echo)
    names = [p["name"] for p in echo]
    assert all(len(n.split("-")) == 3 and len(n.split("-")[2]) == 5 for n in names), names


def test_pod_on_node_1_reaches_pod_on_node_2_by_ip(cluster: Lab) -> None:
    client, peer = _pod(cluster, "client"), _pod(cluster, "peer")
    assert (client["node"], peer["node"]) == ("node-1", "node-2")
    code = (
        "import socket;"
        f"s=socket.create_connection(('{peer['ip']}', 9000), timeout=5);"
        "s.sendall(b'hello');s.shutdown(socket.SHUT_WR);"
        "print(s.recv(100).decode(), s.getsockname()[0])"
    )
    out = cluster.python("client", "it", code).stdout.split()
    assert out[:2] == ["peer", "hello"]
    assert out[2] == client["ip"]  # no NAT between pods: the peer sees the pod's own address


def test_service_by_vip_and_by_name_spreads_over_endpoints_on_both_nodes(cluster: Lab) -> None:
    svc = _service(cluster, "echo")
    assert len(svc["ports"][0]["endpoints"]) == 4
    echo_nodes = {p["name"]: p["node"] for p in cluster.pods("it", "echo-")}
    for url in (
        f"http://{svc['vip']}/",
        "http://echo/",
        "http://echo.it/",
        "http://echo.it.svc.cluster.local/",
    ):
        proc = cluster.exec(
            "client",
            "it",
            sys.executable,
            "-m",
            "sample_apps.load_client",
            url,
            "--count",
            "40",
            "--new-connections",
            "--duration",
            "20",
            "-o",
            "json",
        )
        report = json.loads(proc.stdout)
        assert report["requests"]["succeeded"] == 40, report
        served = set(report["responses"]["by_pod"])
        assert served <= set(echo_nodes), served
        assert {echo_nodes[p] for p in served} == {"node-1", "node-2"}, (url, served)
        assert len(served) >= 3, (url, served)


def test_pods_get_kubernetes_service_environment_variables(cluster: Lab) -> None:
    env = cluster.exec("client", "it", "env").stdout.splitlines()
    vip = _service(cluster, "echo")["vip"]
    assert f"ECHO_SERVICE_HOST={vip}" in env
    assert "ECHO_SERVICE_PORT=80" in env
    assert f"ECHO_PORT_80_TCP=tcp://{vip}:80" in env


def test_echo_sees_downward_api_fields_and_client_address(cluster: Lab) -> None:
    out = cluster.exec("client", "it", "curl", "-s", "--max-time", "5", "http://echo/").stdout
    seen = json.loads(out)
    pod = _pod(cluster, seen["pod"])
    assert seen["node"] == pod["node"]
    assert seen["client"]["ip"] == _pod(cluster, "client")["ip"]


def test_service_without_endpoints_refuses_at_once(cluster: Lab) -> None:
    vip = _service(cluster, "idle")["vip"]
    code = (
        "import socket,time;t=time.monotonic()\n"
        "try:\n"
        f"    socket.create_connection(('{vip}', 7000), timeout=5); print('connected')\n"
        "except ConnectionRefusedError: print('refused', time.monotonic()-t)\n"
    )
    out = cluster.python("client", "it", code).stdout.split()
    assert out[0] == "refused"
    assert float(out[1]) < 1.0


def test_exec_passes_the_exit_code_through(cluster: Lab) -> None:
    assert cluster.exec("client", "it", "sh", "-c", "exit 7", check=False).returncode == 7
    cgroup = cluster.exec("client", "it", "cat", "/proc/self/cgroup").stdout
    assert f"/pods/pod-{_pod(cluster, 'client')['uid']}/main" in cgroup


def test_logs_show_container_output(cluster: Lab) -> None:
    out = cluster.run("logs", "peer", "-n", "it").stdout
    assert "9000" in out


def _apply(lab: Lab, tmp_path: Path, text: str, *, check: bool = True):
    f = tmp_path / f"m{time.monotonic_ns()}.yaml"
    f.write_text(text)
    return lab.run("apply", "-f", str(f), check=check)


def _echo_deployment(replicas: int) -> str:
    text = (MANIFESTS / "cluster.yaml").read_text()
    start = text.index("apiVersion: apps/v1")
    end = text.index("---", start)
    return text[start:end].replace("replicas: 4", f"replicas: {replicas}")


def _wait_endpoints(lab: Lab, service: str, count: int, timeout: float = 20) -> list[str]:
    deadline = time.monotonic() + timeout
    while True:
        endpoints = _service(lab, service)["ports"][0]["endpoints"]
        if len(endpoints) == count or time.monotonic() > deadline:
            return endpoints
        time.sleep(0.2)


def test_scaling_a_deployment_updates_endpoints(cluster: Lab, tmp_path: Path) -> None:
    try:
        _apply(cluster, tmp_path, _echo_deployment(1))
        assert len(_wait_endpoints(cluster, "echo", 1)) == 1
        assert len(cluster.pods("it", "echo-")) == 1
        report = json.loads(
            cluster.exec(
                "client",
                "it",
                sys.executable,
                "-m",
                "sample_apps.load_client",
                "http://echo/",
                "--count",
                "10",
                "--duration",
                "20",
                "-o",
                "json",
            ).stdout
        )
        assert report["requests"]["succeeded"] == 10 and len(report["responses"]["by_pod"]) == 1
        _apply(cluster, tmp_path, _echo_deployment(6))
        endpoints = _wait_endpoints(cluster, "echo", 6)
        assert len(endpoints) == 6
        assert sorted(p["node"] for p in cluster.pods("it", "echo-")).count("node-2") == 3
    finally:
        _apply(cluster, tmp_path, _echo_deployment(4))
        _wait_endpoints(cluster, "echo", 4)


def test_label_changes_take_effect_without_restarting_pods(cluster: Lab, tmp_path: Path) -> None:
    before = _pod(cluster, "peer")
    _apply(
        cluster,
        tmp_path,
        """
apiVersion: v1
kind: Namespace
metadata: {name: it, labels: {team: red, tier: gold}}
---
apiVersion: v1
kind: Pod
metadata: {name: peer, namespace: it, labels: {app: peer, version: v9}}
spec:
  nodeName: node-2
  containers:
  - name: echo
    image: weft/tcp-echo
    args: ["--port", "9000", "--prefix", "peer "]
    ports: [{containerPort: 9000}]
""",
    )
    status = cluster.status()
    after = _pod(cluster, "peer")
    assert after["labels"] == {"app": "peer", "version": "v9"}
    assert after["uid"] == before["uid"]
    assert after["containers"][0]["pid"] == before["containers"][0]["pid"]
    assert after["restarts"] == 0
    [ns] = [n for n in status["namespaces"] if n["name"] == "it"]
    assert ns["labels"] == {"team": "red", "tier": "gold"}


def test_a_bad_manifest_is_reported_by_file_resource_and_field_and_changes_nothing(
    cluster: Lab, tmp_path: Path
) -> None:
    before = cluster.status()
    proc = _apply(
        cluster,
        tmp_path,
        _echo_deployment(2)
        + """---
apiVersion: v1
kind: Service
metadata: {name: broken, namespace: it}
spec:
  selector: {app: echo}
""",
        check=False,
    )
    assert proc.returncode == 1
    assert "Service it/broken: spec.ports: a Service needs at least one port" in proc.stderr
    assert ".yaml#2" in proc.stderr
    assert "nothing was changed" in proc.stderr
    after = cluster.status()
    assert [p["name"] for p in after["pods"]] == [p["name"] for p in before["pods"]]
    assert [s["name"] for s in after["services"]] == [s["name"] for s in before["services"]]


def test_cross_resource_errors_are_checked_by_the_daemon(cluster: Lab, tmp_path: Path) -> None:
    proc = _apply(
        cluster,
        tmp_path,
        """
apiVersion: v1
kind: Pod
metadata: {name: lost, namespace: it}
spec:
  nodeName: node-9
  containers: [{name: main, command: ["sleep", "1"]}]
""",
        check=False,
    )
    assert proc.returncode == 1
    assert "Pod it/lost: spec.nodeName: node 'node-9' does not exist" in proc.stderr
    assert all(p["name"] != "lost" for p in cluster.status()["pods"])


def test_up_twice_says_the_lab_exists(cluster: Lab) -> None:
    proc = cluster.run("up", "--manifests", str(MANIFESTS / "cluster.yaml"), check=False)
    assert proc.returncode == 1
    assert "already exists" in proc.stderr
    assert cluster.status()["phase"] == "Ready"


EXTRA = """
apiVersion: v1
kind: Service
metadata: {name: extra, namespace: it}
spec:
  selector: {app: extra}
  ports: [{port: 8000, targetPort: 8080}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: extra, namespace: it}
spec:
  replicas: 2
  selector: {matchLabels: {app: extra}}
  template:
    metadata: {labels: {app: extra}}
    spec:
      containers:
      - name: web
        image: weft/http-echo
        args: ["--port", "8080"]
        ports: [{containerPort: 8080}]
"""


def test_apply_then_delete_a_service_and_deployment(cluster: Lab, tmp_path: Path) -> None:
    f = tmp_path / "extra.yaml"
    f.write_text(EXTRA)
    out = cluster.run("apply", "-f", str(f)).stdout
    assert "Service it/extra created" in out
    assert len(_wait_endpoints(cluster, "extra", 2)) == 2
    # An existing pod resolves the new name: its hosts file is rewritten in place.
    got = cluster.exec("client", "it", "curl", "-s", "--max-time", "5", "http://extra:8000/")
    extra_ips = {p["ip"] for p in cluster.pods("it", "extra-")}
    assert json.loads(got.stdout)["server"]["ip"] in extra_ips
    record = cluster.record()
    assert record is not None
    saved = {p.name for p in (Path("/run/weft/labs") / cluster.name / "manifests").iterdir()}
    assert {"Service.it.extra.yaml", "Deployment.it.extra.yaml"} <= saved

    out = cluster.run("delete", "-f", str(f)).stdout
    assert "Deployment it/extra deleted" in out
    assert cluster.pods("it", "extra-") == []
    assert all(s["name"] != "extra" for s in cluster.status()["services"])
    hosts = cluster.exec("client", "it", "cat", "/etc/hosts").stdout
    assert "extra" not in hosts
    saved = {p.name for p in (Path("/run/weft/labs") / cluster.name / "manifests").iterdir()}
    assert "Service.it.extra.yaml" not in saved
    again = cluster.run("delete", "-f", str(f), check=False)
    assert again.returncode == 1
    assert "not found" in again.stderr


def _controller_state(lab: Lab) -> dict:
    out = weftctl("controller", "--lab", lab.name, "state", "-o", "json").stdout
    return json.loads(out)


def _workloads(state: dict) -> dict[str, dict]:
    return {r["key"]["name"]: r["workload"] for r in state["resources"] if "workload" in r}


def test_the_controller_sees_every_pod_as_a_workload_and_follows_label_changes(
    cluster: Lab, tmp_path: Path
) -> None:
    pods = {p["name"]: p for p in cluster.status()["pods"]}
    deadline = time.monotonic() + 20
    while True:
        workloads = _workloads(_controller_state(cluster))
        if set(workloads) == set(pods) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert set(workloads) == set(pods)
    for name, w in workloads.items():
        assert w["addresses"] == [pods[name]["ip"]]
        assert w["node"] == pods[name]["node"]
    assert weftctl("controller", "--lab", cluster.name, "problems").stdout.strip() == (
        "no invalid resources"
    )
    # Opt the pod `client` out, and the namespace in: enrollment follows without restarts.
    _apply(
        cluster,
        tmp_path,
        """
apiVersion: v1
kind: Namespace
metadata: {name: it, labels: {team: red, weft.dev/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: it, labels: {app: client, weft.dev/dataplane-mode: none}}
spec:
  nodeName: node-1
  containers:
  - name: main
    command: ["sleep", "3600"]
""",
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            workloads = _workloads(_controller_state(cluster))
            if workloads["peer"].get("enrolled") or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert workloads["peer"].get("enrolled") is True
        assert not workloads["client"].get("enrolled")
    finally:
        # Leave the namespace out of the mesh again: this lab has no ztunnel, and enrolled
        # pods' connections fail closed without one.
        _apply(cluster, tmp_path, "apiVersion: v1\nkind: Namespace\nmetadata: {name: it}\n")


def test_a_node_reaches_the_controller_with_its_credential(cluster: Lab) -> None:
    status = cluster.status()
    node_ns = status["nodes"][0]["netns"]
    credential = Path("/run/weft/labs") / cluster.name / "nodes" / "node-1" / "credential"
    assert oct((credential / "key.pem").stat().st_mode & 0o777) == "0o600"
    code = f"""
import asyncio, json
from pathlib import Path
from meshcore.configclient import ConfigClient, NodeCredential
async def main():
    c = ConfigClient("node-1", "{status["controller"]["address"]}",
                     NodeCredential.load(Path("{credential}")))
    t = asyncio.create_task(c.run())
    async with asyncio.timeout(10):
        await c.synced.wait()
    print(json.dumps(sorted(k.name for k in c.state if k.kind == "Workload")))
    t.cancel()
asyncio.run(main())
"""
    proc = subprocess.run(
        ["ip", "netns", "exec", node_ns, sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    names = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(names) == {p["name"] for p in status["pods"]}
