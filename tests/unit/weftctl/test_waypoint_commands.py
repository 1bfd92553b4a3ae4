"""`weftctl waypoint`: what it writes and what it shows, against a cluster held in memory."""

from __future__ import annotations

import json
from typing import Any

import yaml
from click.testing import CliRunner

from weftctl.waypoint_commands import gateway_manifest, waypoint


class FakeCluster:
    def __init__(self, objects: list[dict[str, Any]] | None = None) -> None:
        self.objects = list(objects or [])
        self.applied: list[dict[str, Any]] = []
        self.deleted: list[dict[str, Any]] = []

    def apply(self, objects: list[dict[str, Any]]) -> list[str]:
        self.applied += objects
        return [f"{o['kind']} {o['metadata'].get('namespace', '')} created" for o in objects]

    def delete(self, objects: list[dict[str, Any]]) -> list[str]:
        self.deleted += objects
        return [f"{o['kind']} {o['metadata']['name']} deleted" for o in objects]

    def get(self, kind: str, namespace: str = "", name: str = "") -> list[dict[str, Any]]:
        return [
            o
            for o in self.objects
            if o["kind"] == kind
            and (not namespace or o["metadata"].get("namespace", "default") == namespace)
            and (not name or o["metadata"]["name"] == name)
        ]


def run(cluster: FakeCluster, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(waypoint, list(args), obj=cluster)
    return result.exit_code, result.output


def programmed_gateway(name: str = "waypoint", namespace: str = "shop") -> dict[str, Any]:
    gw = gateway_manifest(namespace, name, "all", 2)
    gw["status"] = {
        "addresses": [{"type": "IPAddress", "value": "198.19.0.40"}],
        "conditions": [
            {"type": "Accepted", "status": "True", "reason": "Accepted", "message": ""},
            {
                "type": "Programmed",
                "status": "True",
                "reason": "Programmed",
                "message": "1/2 replicas ready",
            },
        ],
    }
    return gw


def pod(name: str, gateway: str, ready: bool, namespace: str = "shop") -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {"gateway.networking.k8s.io/gateway-name": gateway},
        },
        "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def test_generate_prints_a_waypoint_gateway_like_istioctl() -> None:
    code, out = run(FakeCluster(), "generate", "-n", "shop", "--name", "wp", "--for", "workload")
    assert code == 0
    assert yaml.safe_load(out) == {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {
            "name": "wp",
            "namespace": "shop",
            "labels": {"weft.dev/waypoint-for": "workload"},
        },
        "spec": {
            "gatewayClassName": "weft-waypoint",
            "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
        },
    }


def test_the_default_waypoint_is_for_services_and_carries_no_label() -> None:
    assert "labels" not in gateway_manifest("shop", "waypoint", "service")["metadata"]


def test_apply_writes_the_gateway_with_replicas_and_enrolls_the_namespace_keeping_its_labels() -> (
    None
):
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": "shop", "labels": {"weft.dev/dataplane-mode": "ambient"}},
    }
    cluster = FakeCluster([namespace])
    code, out = run(cluster, "apply", "-n", "shop", "--replicas", "2", "--enroll-namespace")
    assert code == 0, out
    ns, gw = cluster.applied
    assert ns["metadata"]["labels"] == {
        "weft.dev/dataplane-mode": "ambient",
        "weft.dev/use-waypoint": "waypoint",
    }
    assert gw["metadata"]["annotations"] == {"weft.dev/replicas": "2"}
    assert "namespace shop labelled weft.dev/use-waypoint=waypoint" in out


def test_apply_wait_returns_once_programmed() -> None:
    cluster = FakeCluster([programmed_gateway()])
    code, out = run(cluster, "apply", "-n", "shop", "--wait", "--timeout", "2")
    assert code == 0, out
    assert "waypoint shop/waypoint is programmed at 198.19.0.40" in out


def test_apply_wait_stops_at_a_refusal_with_its_reason() -> None:
    gw = gateway_manifest("shop", "waypoint", "service")
    gw["status"] = {
        "conditions": [
            {"type": "Accepted", "status": "False", "reason": "ListenersNotValid", "message": "x"}
        ]
    }
    code, out = run(FakeCluster([gw]), "apply", "-n", "shop", "--wait", "--timeout", "2")
    assert code == 1
    assert "waypoint shop/waypoint is not accepted: x" in out


def test_list_shows_programmed_address_and_ready_replicas() -> None:
    cluster = FakeCluster(
        [
            programmed_gateway(),
            pod("waypoint-1", "waypoint", True),
            pod("waypoint-2", "waypoint", False),
            pod("other", "elsewhere", True),
        ]
    )
    code, out = run(cluster, "list", "-A")
    assert code == 0
    assert out.splitlines() == [
        "NAMESPACE   NAME       FOR   PROGRAMMED   ADDRESS       READY",
        "shop        waypoint   all   True         198.19.0.40   1/2",
    ]
    code, out = run(cluster, "list", "-n", "shop", "-o", "json")
    (summary,) = json.loads(out)["waypoints"]
    assert summary["replicas"] == {"ready": 1, "desired": 2}
    assert run(cluster, "list", "-n", "other")[1] == "no waypoints in namespace other\n"


def test_status_shows_the_conditions_address_and_replicas() -> None:
    cluster = FakeCluster([programmed_gateway(), pod("waypoint-1", "waypoint", True)])
    code, out = run(cluster, "status", "-n", "shop")
    assert code == 0
    assert "Programmed   True     Programmed   1/2 replicas ready" in out
    assert "address:  198.19.0.40" in out
    assert "replicas: 1/2 ready" in out


def test_status_of_a_missing_waypoint_says_how_to_make_one() -> None:
    code, out = run(FakeCluster(), "status", "-n", "shop", "--name", "wp")
    assert code == 1
    assert "`weftctl waypoint apply -n shop --name wp`" in out


def test_delete_deletes_the_named_gateways_only() -> None:
    cluster = FakeCluster([programmed_gateway("a"), programmed_gateway("b")])
    assert run(cluster, "delete", "-n", "shop", "a")[0] == 0
    assert [g["metadata"]["name"] for g in cluster.deleted] == ["a"]
    code, out = run(cluster, "delete", "-n", "shop", "c")
    assert code == 1 and "no waypoint c in namespace shop" in out
    assert run(cluster, "delete", "-n", "shop", "--all")[0] == 0
    assert [g["metadata"]["name"] for g in cluster.deleted] == ["a", "a", "b"]
