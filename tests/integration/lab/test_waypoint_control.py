"""Waypoints driven as a user would: `weftctl waypoint apply` makes the controller deploy a
waypoint (ServiceAccount, Deployment, Service) that runs as lab pods and is reported
Programmed with its address; `weftctl waypoint delete` takes it all away."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lab import client
from lab.state import LabPaths
from tests.conftest import RUN_ID
from tests.integration.lab.labtools import Lab, weftctl

pytestmark = pytest.mark.integration

MANIFESTS = Path(__file__).parent / "manifests"
OWNED = ("ServiceAccount", "Service", "Deployment")


@pytest.fixture(scope="module")
def cluster(request: pytest.FixtureRequest) -> Iterator[Lab]:
    """A two-node lab; its waypoint pods run `python -m waypoint run`."""
    lab = Lab(f"weft-it-{RUN_ID}-{abs(hash(request.module.__name__)) % 1000}")
    try:
        lab.run(
            "up",
            "--nodes",
            "2",
            "--manifests",
            str(MANIFESTS / "cluster.yaml"),
            "--wait",
            "60",
        )
        yield lab
    finally:
        lab.force_down()


def waypoint(lab: Lab, *args: str, check: bool = True) -> Any:
    return weftctl("waypoint", "--lab", lab.name, *args, check=check)


def objects(lab: Lab, kind: str, namespace: str, name: str = "") -> list[dict[str, Any]]:
    query = f"/v1/objects?kind={kind}&namespace={namespace}&name={name}"
    items: list[dict[str, Any]] = client.request(LabPaths.for_lab(lab.name), "GET", query)["items"]
    return items


def eventually(check: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f}s: {what}")
        time.sleep(0.5)


def mesh_state(lab: Lab) -> dict[tuple[str, str, str], dict[str, Any]]:
    out = weftctl("controller", "--lab", lab.name, "state", "-o", "json").stdout
    found = {}
    for r in json.loads(out)["resources"]:
        key = r["key"]
        body = next(v for k, v in r.items() if k != "key")
        found[(key["kind"], key.get("namespace", ""), key["name"])] = body
    return found


def test_apply_deploys_a_programmed_waypoint_and_delete_removes_everything(
    cluster: Lab,
) -> None:
    applied = waypoint(
        cluster, "apply", "-n", "it", "--enroll-namespace", "--wait", "--timeout", "90"
    )
    assert "Gateway it/waypoint created" in applied.stdout
    assert "namespace it labelled weft.dev/use-waypoint=waypoint" in applied.stdout
    assert "waypoint it/waypoint is programmed at 198.19." in applied.stdout

    # What the deployer made, owned by the Gateway.
    for kind in OWNED:
        (obj,) = objects(cluster, kind, "it", "waypoint")
        (owner,) = obj["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"]) == ("Gateway", "waypoint")
    (dep,) = objects(cluster, "Deployment", "it", "waypoint")
    (container,) = dep["spec"]["template"]["spec"]["containers"]
    assert (container["image"], container["args"]) == (
        "weft/waypoint",
        ["--gateway", "it/waypoint"],
    )

    # Its pod runs as an ordinary lab pod, with the waypoint's service account: the waypoint
    # process, with the credential the lab gave it (ready: synced, its SVID fetched).
    (pod,) = cluster.pods("it", "waypoint-")
    assert pod["ready"] and pod["phase"] == "Running"
    paths = LabPaths.for_lab(cluster.name)
    credential = paths.pod_credential("it", pod["name"])
    assert sorted(p.name for p in credential.glob("*.pem")) == [
        "cert.pem",
        "key.pem",
        "roots.pem",
    ]
    container_log = paths.container_log("it", pod["name"], "waypoint").read_text()
    assert "waypoint.ready" in container_log

    status = json.loads(waypoint(cluster, "status", "-n", "it", "-o", "json").stdout)
    (svc,) = [s for s in cluster.status()["services"] if s["name"] == "waypoint"]
    assert status["programmed"] == "True"
    assert status["addresses"] == [svc["vip"]]
    assert status["replicas"] == {"ready": 1, "desired": 1}
    listed = waypoint(cluster, "list", "-A").stdout
    assert f"it          waypoint   service   True         {svc['vip']}" in listed

    # The mesh state: the namespace's Service is bound, the waypoint has its identity.
    state = mesh_state(cluster)
    assert state[("Service", "it", "echo")]["waypoint"] == "it/waypoint"
    assert state[("Service", "it", "waypoint")].get("waypoint", "") == ""  # never its own
    wp = state[("Waypoint", "it", "waypoint")]
    assert wp["addresses"] == [svc["vip"]]
    assert wp["identity"] == "spiffe://cluster.local/ns/it/sa/waypoint"

    deleted = waypoint(cluster, "delete", "-n", "it", "waypoint")
    assert "Gateway it/waypoint deleted" in deleted.stdout
    eventually(
        lambda: not any(objects(cluster, k, "it", "waypoint") for k in ("Gateway", *OWNED)),
        "the Gateway and what the deployer made for it are gone",
        timeout=10,
    )
    eventually(lambda: not cluster.pods("it", "waypoint-"), "the waypoint pods are gone")
    assert not paths.pod_dir("it", pod["name"]).exists()  # its credential went with it
    assert "no waypoints in namespace it" in waypoint(cluster, "list", "-n", "it").stdout


def test_a_gateway_with_other_listeners_is_refused_in_its_status(
    cluster: Lab, tmp_path: Path
) -> None:
    gateway = tmp_path / "gateway.yaml"
    gateway.write_text("""
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: odd, namespace: it}
spec:
  gatewayClassName: weft-waypoint
  listeners: [{name: http, port: 80, protocol: HTTP}]
""")
    weftctl("lab", "--name", cluster.name, "apply", "-f", str(gateway))
    try:

        def refused() -> bool:
            found = objects(cluster, "Gateway", "it", "odd")
            conds = found[0].get("status", {}).get("conditions", []) if found else []
            return any(c["type"] == "Accepted" and c["status"] == "False" for c in conds)

        eventually(refused, "Accepted=False on the Gateway", timeout=20)
        status = waypoint(cluster, "status", "-n", "it", "--name", "odd").stdout
        assert "ListenersNotValid" in status
        assert objects(cluster, "Deployment", "it", "odd") == []
    finally:
        waypoint(cluster, "delete", "-n", "it", "odd", check=False)


ROUTE = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo, namespace: it}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - backendRefs:
    - {name: echo, port: 80, weight: 9}
    - {name: missing, port: 80, weight: 1}
"""


def route_conditions(lab: Lab) -> dict[str, tuple[str, str]]:
    found = objects(lab, "HTTPRoute", "it", "echo")
    parents = found[0].get("status", {}).get("parents", []) if found else []
    if not parents:
        return {}
    assert parents[0]["controllerName"] == "weft.dev/mesh-controller"
    return {c["type"]: (c["status"], c["reason"]) for c in parents[0]["conditions"]}


def test_a_route_gets_accepted_and_resolved_refs_conditions_from_the_controller(
    cluster: Lab, tmp_path: Path
) -> None:
    route = tmp_path / "route.yaml"
    route.write_text(ROUTE)
    weftctl("lab", "--name", cluster.name, "apply", "-f", str(route))
    try:
        # no waypoint serves Service it/echo yet: not Accepted; its missing backend is named
        eventually(
            lambda: route_conditions(cluster).get("Accepted") == ("False", "NoMatchingParent"),
            "Accepted=False NoMatchingParent on the route",
            timeout=20,
        )
        assert route_conditions(cluster)["ResolvedRefs"] == ("False", "BackendNotFound")

        waypoint(cluster, "apply", "-n", "it", "--enroll-namespace", "--wait", "--timeout", "90")
        eventually(
            lambda: route_conditions(cluster).get("Accepted") == ("True", "Accepted"),
            "Accepted=True once the waypoint serves the Service",
            timeout=20,
        )
        shown = weftctl("route", "--lab", cluster.name, "status", "-n", "it", "echo").stdout
        rows = [line.split(None, 6) for line in shown.splitlines()[1:]]
        assert [r[:6] for r in rows] == [
            ["it", "HTTPRoute/echo", "Service", "it/echo:80", "Accepted", "True"],
            ["it", "HTTPRoute/echo", "Service", "it/echo:80", "ResolvedRefs", "False"],
        ]
        assert rows[1][6].startswith(
            "BackendNotFound   spec.rules[0].backendRefs[1]: Service it/missing port 80 not found"
        )
    finally:
        weftctl("lab", "--name", cluster.name, "delete", "-f", str(route), check=False)
        waypoint(cluster, "delete", "-n", "it", "--all", check=False)
