"""`weftctl enroll` / `unenroll` and `weftctl status` on one two-node lab, as a user drives
them: running pods join and leave the mesh live (same processes), their traffic then goes
through the ztunnels over mutual TLS (or no longer does), and the status lists every node,
agent, ztunnel and waypoint with the right counts, and says when a process cannot be reached.

One lab for the module (the machine's cores are shared): the tests run in file order, and
each leaves the labels as the manifests wrote them unless it says otherwise."""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RUN_ID
from tests.e2e.waypoint_lab import poll_until, running_lab
from tests.integration.lab.labtools import Lab, weftctl
from tests.kubeapi import binaries

pytestmark = pytest.mark.e2e

LABEL = "weft.dev/dataplane-mode"

# shop: not enrolled; a Deployment of two echo replicas (one per node), a client, and a pod
# that opts out. solo: not enrolled; one pinned pod. meshed: enrolled, with a waypoint.
MANIFESTS = """
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Namespace
metadata: {name: solo}
---
apiVersion: v1
kind: Namespace
metadata:
  name: meshed
  labels: {weft.dev/dataplane-mode: ambient}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: echo}}
  template:
    metadata: {labels: {app: echo}}
    spec:
      containers:
      - name: echo
        image: weft/http-echo
        args: ["--port", "8080"]
        ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: echo, namespace: shop}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
spec:
  containers:
  - name: main
    command: ["sleep", "3600"]
---
apiVersion: v1
kind: Pod
metadata:
  name: outsider
  namespace: shop
  labels: {app: outsider, weft.dev/dataplane-mode: none}
spec:
  containers:
  - name: main
    command: ["sleep", "3600"]
---
apiVersion: v1
kind: Pod
metadata: {name: lone, namespace: solo, labels: {app: lone}}
spec:
  nodeName: node-2
  containers:
  - name: echo
    image: weft/http-echo
    args: ["--port", "8080"]
    ports: [{name: http, containerPort: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: lone, namespace: solo}
spec:
  selector: {app: lone}
  ports: [{name: http, port: 80, targetPort: http}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: inmesh, namespace: meshed}
spec:
  replicas: 1
  selector: {matchLabels: {app: inmesh}}
  template:
    metadata: {labels: {app: inmesh}}
    spec:
      containers:
      - name: echo
        image: weft/http-echo
        args: ["--port", "8080"]
        ports: [{name: http, containerPort: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: meshed}
spec:
  gatewayClassName: weft-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"""


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with running_lab(f"weft-a-{RUN_ID}", MANIFESTS, tmp_path_factory.mktemp("enroll")) as lab:
        yield lab


# --- helpers ---------------------------------------------------------------------------------


def cli(lab: Lab, *args: str, check: bool = True) -> Any:
    """`weftctl <args...> --lab` with `-o json`, parsed; (exit code, data) when not `check`."""
    group, *rest = args
    proc = weftctl(group, "--lab", lab.name, *rest, "-o", "json", check=check, timeout=90)
    data = json.loads(proc.stdout) if proc.stdout.strip() else None
    return data if check else (proc.returncode, data, proc.stderr)


def status(lab: Lab) -> tuple[int, dict[str, Any]]:
    proc = weftctl("status", "--lab", lab.name, "-o", "json", check=False, timeout=60)
    assert proc.returncode in (0, 1), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def pods_by_name(lab: Lab, namespace: str) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in lab.pods(namespace)}


def pids(lab: Lab, namespace: str) -> dict[str, list[int]]:
    return {
        name: [c["pid"] for c in p["containers"]]
        for name, p in pods_by_name(lab, namespace).items()
    }


def captured(lab: Lab) -> set[str]:
    """`ns/name` of every pod in a node agent's capture maps."""
    out: set[str] = set()
    for node in ("node-1", "node-2"):
        data = json.loads(weftctl("agent", "--lab", lab.name, "status", "--node", node,
                                  "-o", "json").stdout)  # fmt: skip
        out |= {e["pod"] for e in data["enrolled"]}
    return out


def ztunnel_metrics(lab: Lab, node: str) -> str:
    sock = f"/run/weft/labs/{lab.name}/nodes/{node}/ztunnel.sock"
    return subprocess.run(
        ["curl", "-s", "--max-time", "5", "--unix-socket", sock, "http://z/metrics"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout


def mesh_connections(lab: Lab, **want: str) -> float:
    """istio_tcp_connections_opened_total summed over both ztunnels, for the series whose
    labels include `want`."""
    total = 0.0
    for node in ("node-1", "node-2"):
        for line in ztunnel_metrics(lab, node).splitlines():
            if not line.startswith("istio_tcp_connections_opened_total{"):
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line))
            if all(labels.get(k) == v for k, v in want.items()):
                total += float(line.rsplit(" ", 1)[1])
    return total


def curl(lab: Lab, url: str, count: int = 3) -> None:
    """`count` GETs of `url` from the client pod, each on a new connection; all must answer."""
    script = (
        f'for i in $(seq {count}); do curl -sf --max-time 5 -o /dev/null "{url}" || exit 1; done'
    )
    lab.exec("client", "shop", "sh", "-c", script)


# --- status, before anything changes ----------------------------------------------------------


def test_status_lists_every_node_agent_ztunnel_and_the_waypoint(lab: Lab) -> None:
    code, data = poll_until(lambda: status(lab), lambda r: r[0] == 0, timeout=30)
    assert code == 0 and data["healthy"], data["issues"]
    assert data["issues"] == []
    controller = data["controller"]
    assert controller["reachable"] and controller["problems"] == 0
    version = controller["version"]
    weft = importlib.metadata.version("weftmesh")
    assert [n["node"] for n in data["nodes"]] == ["node-1", "node-2"]
    for n in data["nodes"]:
        for component in ("agent", "ztunnel"):
            part = n[component]
            assert part["reachable"] and part["connected"], (n["node"], component, part)
            assert part["acked_version"] == version and part["weft_version"] == weft
    # the ztunnel of inmesh's node holds its certificate (the only enrolled pod yet)
    inmesh = next(p for p in lab.pods("meshed") if p["name"].startswith("inmesh-"))
    for n in data["nodes"]:
        certs = n["ztunnel"]["certificates"]
        if n["node"] == inmesh["node"]:
            assert certs["count"] == 1 and certs["earliest_expires_in_s"] > 3600, certs
        else:
            assert certs["count"] == 0 and certs["earliest_expires_in_s"] is None, certs
    assert [(w["namespace"], w["name"], w["programmed"], w["replicas"]) for w in
            data["waypoints"]] == [("meshed", "waypoint", "True", {"ready": 1, "desired": 1})]  # fmt: skip
    assert [(r["identity"], r["acked_version"], r["weft_version"]) for r in
            data["waypoint_subscriptions"]] == [
        ("spiffe://cluster.local/ns/meshed/sa/waypoint", version, weft)
    ]  # fmt: skip
    counts = {n["namespace"]: (n["mode"], n["pods"], n["enrolled"], n["captured"])
              for n in data["namespaces"]}  # fmt: skip
    # meshed: inmesh (enrolled) and its waypoint's pod (labeled none, as Istio's are)
    assert counts == {
        "default": ("", 0, 0, 0),
        "meshed": ("ambient", 2, 1, 1),
        "shop": ("", 4, 0, 0),
        "solo": ("", 1, 0, 0),
    }
    table = weftctl("status", "--lab", lab.name).stdout
    assert f"lab {lab.name}: healthy" in table
    assert re.search(r"node-2\s+ztunnel\s+yes\s+" + re.escape(weft), table), table
    assert "meshed/waypoint" in table


def test_controller_nodes_says_which_component_each_subscription_is(lab: Lab) -> None:
    data = cli(lab, "controller", "nodes")
    seen = {(n["node"], n["component"]) for n in data["nodes"] if n["connected"]}
    assert {(node, c) for node in ("node-1", "node-2") for c in ("agent", "ztunnel")} <= seen
    assert ("spiffe://cluster.local/ns/meshed/sa/waypoint", "waypoint") in seen
    table = weftctl("controller", "--lab", lab.name, "nodes").stdout
    assert "COMPONENT" in table.splitlines()[1]
    assert re.search(r"node-1\s+agent\s+yes", table) and re.search(r"node-1\s+ztunnel\s+yes", table)


def test_agent_status_of_a_node_the_lab_lacks_lists_its_nodes(lab: Lab) -> None:
    proc = weftctl("agent", "--lab", lab.name, "status", "--node", "node-9", check=False)
    assert proc.returncode != 0
    assert f'no node "node-9" in lab {lab.name}; nodes: node-1, node-2' in proc.stderr
    assert "is the lab up" not in proc.stderr


# --- enroll / unenroll -----------------------------------------------------------------------


def test_enroll_dry_run_changes_nothing(lab: Lab) -> None:
    data = cli(lab, "enroll", "namespace", "shop", "--dry-run")
    assert data["dry_run"] and data["change"]["after"] == "ambient"
    would = {p["pod"].split("/")[1].split("-")[0]: p["enrolled_after"] for p in data["pods"]}
    assert would == {"client": True, "echo": True, "outsider": False}
    ns = {n["name"]: n["labels"] for n in lab.status()["namespaces"]}
    assert LABEL not in ns["shop"]
    assert not {p for p in captured(lab) if p.startswith("shop/")}
    out = weftctl("enroll", "--lab", lab.name, "namespace", "shop", "--dry-run").stdout
    assert "would be captured" in out and "nothing was changed" in out


def test_enroll_namespace_captures_its_running_pods_live_and_their_traffic_is_mtls(
    lab: Lab,
) -> None:
    before = pids(lab, "shop")
    plain = mesh_connections(lab, source_workload="client", reporter="source")
    curl(lab, "http://echo.shop/")
    assert mesh_connections(lab, source_workload="client", reporter="source") == plain

    data = cli(lab, "enroll", "namespace", "shop")
    results = {o["pod"]: o["result"] for o in data["outcomes"]}
    echo = sorted(p for p in results if p.startswith("shop/echo-"))
    assert len(echo) == 2
    assert results == {
        "shop/client": "captured",
        **{p: "captured" for p in echo},
        "shop/outsider": "not captured",
    }
    assert data["complete"] and data["seconds"] < 30
    assert data["ztunnels_behind"] == []  # every ztunnel has the state with the change
    assert captured(lab) >= {"shop/client", *echo} and "shop/outsider" not in captured(lab)
    after = pods_by_name(lab, "shop")
    assert pids(lab, "shop") == before  # live: the same processes, no restart
    assert all(p["restarts"] == 0 for p in after.values())

    curl(lab, "http://echo.shop/", count=3)
    counted = poll_until(
        lambda: mesh_connections(
            lab,
            source_workload="client",
            destination_workload="echo",
            reporter="destination",
            connection_security_policy="mutual_tls",
        ),
        lambda n: n >= 3,
        timeout=5,
    )
    assert counted >= 3

    _, data = status(lab)
    shop = next(n for n in data["namespaces"] if n["namespace"] == "shop")
    assert (shop["mode"], shop["pods"], shop["enrolled"], shop["captured"]) == (
        "ambient",
        4,
        3,
        3,
    )


def test_unenroll_pod_of_an_enrolled_namespace_labels_it_none_and_enroll_undoes_it(
    lab: Lab,
) -> None:
    data = cli(lab, "unenroll", "pod", "client", "-n", "shop")
    assert data["change"]["after"] == "none"
    assert [(o["pod"], o["result"]) for o in data["outcomes"]] == [("shop/client", "uncaptured")]
    assert pods_by_name(lab, "shop")["client"]["labels"][LABEL] == "none"
    assert "shop/client" not in captured(lab)
    counted = mesh_connections(lab, source_workload="client", reporter="source")
    curl(lab, "http://echo.shop/")  # plaintext now, around the mesh
    assert mesh_connections(lab, source_workload="client", reporter="source") == counted

    data = cli(lab, "enroll", "pod", "client", "-n", "shop")
    assert data["change"]["before"] == "none" and data["change"]["after"] is None
    assert [(o["pod"], o["result"]) for o in data["outcomes"]] == [("shop/client", "captured")]
    assert LABEL not in pods_by_name(lab, "shop")["client"]["labels"]


def test_enroll_pod_of_an_unenrolled_namespace_labels_it_ambient(lab: Lab) -> None:
    pid = pids(lab, "solo")["lone"]
    out = weftctl("enroll", "--lab", lab.name, "pod", "lone", "-n", "solo").stdout
    assert "pod solo/lone: label weft.dev/dataplane-mode=ambient" in out
    assert re.search(r"solo/lone\s+node-2\s+captured", out), out
    assert pods_by_name(lab, "solo")["lone"]["labels"][LABEL] == "ambient"
    assert pids(lab, "solo")["lone"] == pid
    curl(lab, "http://lone.solo/", count=2)
    counted = poll_until(
        lambda: mesh_connections(
            lab,
            source_workload="client",
            destination_workload="lone",
            reporter="destination",
            connection_security_policy="mutual_tls",
        ),
        lambda n: n >= 2,
        timeout=5,
    )
    assert counted >= 2
    data = cli(lab, "unenroll", "pod", "lone", "-n", "solo")  # back as written
    assert data["change"]["after"] is None
    assert data["outcomes"][0]["result"] == "uncaptured"


def test_unenroll_namespace_releases_its_pods_live(lab: Lab) -> None:
    before = pids(lab, "shop")
    data = cli(lab, "unenroll", "namespace", "shop")
    assert data["change"]["before"] == "ambient" and data["change"]["after"] is None
    assert {o["result"] for o in data["outcomes"]} == {"uncaptured", "not captured"}
    assert not {p for p in captured(lab) if p.startswith("shop/")}
    assert pids(lab, "shop") == before
    counted = mesh_connections(lab, source_workload="client", reporter="source")
    curl(lab, "http://echo.shop/")
    assert mesh_connections(lab, source_workload="client", reporter="source") == counted
    again = weftctl("unenroll", "--lab", lab.name, "namespace", "shop").stdout
    assert "labels unchanged: already so" in again


def test_enroll_errors_name_what_exists(lab: Lab) -> None:
    code, _, err = cli(lab, "enroll", "namespace", "nope", check=False)
    assert code == 1
    assert "namespace 'nope' not found (namespaces: default, meshed, shop, solo)" in err
    code, _, err = cli(lab, "enroll", "pod", "nope", "-n", "shop", check=False)
    assert code == 1 and "pod shop/nope not found (pods in shop: client, echo-" in err
    replica = next(iter(p for p in pods_by_name(lab, "shop") if p.startswith("echo-")))
    code, _, err = cli(lab, "enroll", "pod", replica, "-n", "shop", check=False)
    assert code == 1 and "replica of Deployment shop/echo" in err
    proc = weftctl("enroll", "--lab", f"weft-a-{RUN_ID}-gone", "namespace", "shop", check=False)
    assert proc.returncode == 1 and "is the lab up?" in proc.stderr
    proc = weftctl("status", "--lab", f"weft-a-{RUN_ID}-gone", check=False)
    assert proc.returncode == 2 and "is the lab up?" in proc.stderr


# --- status when a process cannot be reached ---------------------------------------------------


def test_status_says_which_process_cannot_be_reached(lab: Lab) -> None:
    sock = Path(f"/run/weft/labs/{lab.name}/nodes/node-2/ztunnel.sock")
    away = sock.with_name("ztunnel.sock.away")
    sock.rename(away)  # the CLI can no longer reach it; the ztunnel itself keeps running
    try:
        code, data = status(lab)
        table = weftctl("status", "--lab", lab.name, check=False)
    finally:
        away.rename(sock)
    assert code == 1 and not data["healthy"]
    z2 = data["nodes"][1]["ztunnel"]
    assert not z2["reachable"] and z2["connected"]  # still subscribed to the controller
    assert any(i.startswith("ztunnel of node-2: unreachable (") for i in data["issues"])
    assert data["nodes"][0]["ztunnel"]["reachable"]
    assert table.returncode == 1 and "NOT healthy" in table.stdout
    assert re.search(r"node-2\s+ztunnel\s+NO: ", table.stdout)
    assert "Traceback" not in table.stderr
    code, _ = status(lab)
    assert code == 0


# --- the same through a real API server ---------------------------------------------------------

K8S_MANIFESTS = """
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Pod
metadata: {name: client, namespace: shop, labels: {app: client}}
spec:
  containers:
  - name: main
    command: ["sleep", "3600"]
"""


def kubectl(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(binaries().kubectl), "--kubeconfig", str(kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )


@pytest.mark.kubernetes
def test_enroll_on_a_lab_with_a_real_api_server(tmp_path: Path) -> None:
    binaries()  # (skips, saying why, where the API server cannot be built)
    name = f"weft-a-k-{RUN_ID}"
    with running_lab(name, K8S_MANIFESTS, tmp_path, ("--source", "kubernetes")) as lab:
        kubeconfig = tmp_path / "kubeconfig"
        kubeconfig.write_text(lab.run("kubeconfig").stdout)

        def labels(*what: str) -> dict[str, str]:
            doc = json.loads(kubectl(kubeconfig, "get", *what, "-o", "json").stdout)
            return dict(doc["metadata"].get("labels") or {})

        pid = pids(lab, "shop")["client"]
        data = cli(lab, "enroll", "namespace", "shop")
        assert [(o["pod"], o["result"]) for o in data["outcomes"]] == [("shop/client", "captured")]
        assert pids(lab, "shop")["client"] == pid
        # the lab mirrors the label to the API server, where the controller read it
        assert (
            poll_until(lambda: labels("namespace", "shop"), lambda ls: LABEL in ls, 20)[LABEL]
            == "ambient"
        )
        data = cli(lab, "unenroll", "pod", "client", "-n", "shop")
        assert data["outcomes"][0]["result"] == "uncaptured"
        got = poll_until(lambda: labels("pod", "client", "-n", "shop"), lambda ls: LABEL in ls, 20)
        assert got[LABEL] == "none"
