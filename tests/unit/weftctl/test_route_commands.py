"""`weftctl route status`: the conditions the controller wrote on routes, per Service parent."""

from __future__ import annotations

import json
from typing import Any

from click.testing import CliRunner

from tests.unit.weftctl.test_waypoint_commands import FakeCluster
from weftctl.route_commands import route


def http_route(name: str, status: dict[str, Any] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "namespace": "shop"},
        "spec": {"parentRefs": [{"group": "", "kind": "Service", "name": "web", "port": 80}]},
    }
    if status is not None:
        doc["status"] = status
    return doc


def cond(kind: str, ok: bool, reason: str, message: str = "") -> dict[str, Any]:
    return {
        "type": kind,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": message,
        "lastTransitionTime": "2026-11-30T17:00:00Z",
    }


STATUS = {
    "parents": [
        {
            "parentRef": {
                "group": "",
                "kind": "Service",
                "name": "web",
                "namespace": "shop",
                "port": 80,
            },
            "controllerName": "weft.dev/mesh-controller",
            "conditions": [
                cond("Accepted", True, "Accepted"),
                cond(
                    "ResolvedRefs",
                    False,
                    "BackendNotFound",
                    "spec.rules[0].backendRefs[1]: Service shop/web-v3 port 80 not found",
                ),
            ],
        }
    ]
}


def run(cluster: FakeCluster, *args: str) -> tuple[int, str]:
    result = CliRunner().invoke(route, list(args), obj=cluster)
    return result.exit_code, result.output


def test_status_shows_each_condition_of_each_service_parent() -> None:
    cluster = FakeCluster([http_route("web", STATUS), http_route("a-new-one")])
    code, out = run(cluster, "status", "-n", "shop")
    assert code == 0, out
    lines = out.splitlines()
    assert lines[0].split() == [
        "NAMESPACE", "ROUTE", "PARENT", "TYPE", "STATUS", "REASON", "MESSAGE"
    ]  # fmt: skip
    assert lines[1].split()[:3] == ["shop", "HTTPRoute/a-new-one", "-"]
    assert lines[1].endswith("no status yet")
    assert lines[2].split() == [
        "shop", "HTTPRoute/web", "Service", "shop/web:80", "Accepted", "True", "Accepted", "-"
    ]  # fmt: skip
    assert "ResolvedRefs   False    BackendNotFound   spec.rules[0].backendRefs[1]" in lines[3]


def test_status_of_one_route_as_json() -> None:
    cluster = FakeCluster([http_route("web", STATUS), http_route("other")])
    code, out = run(cluster, "status", "-n", "shop", "web", "-o", "json")
    assert code == 0, out
    (summary,) = json.loads(out)["routes"]
    assert summary["name"] == "web"
    (parent,) = summary["parents"]
    assert parent["parent"] == "Service shop/web:80"
    assert parent["controllerName"] == "weft.dev/mesh-controller"
    assert [(c["type"], c["status"]) for c in parent["conditions"]] == [
        ("Accepted", "True"),
        ("ResolvedRefs", "False"),
    ]


def test_a_missing_route_is_an_error_that_says_where() -> None:
    code, out = run(FakeCluster([]), "status", "-n", "shop", "nope")
    assert code == 1
    assert "no HTTPRoute or GRPCRoute nope in namespace shop" in out
    assert run(FakeCluster([]), "status", "-A")[1].strip() == "no routes in any namespace"
