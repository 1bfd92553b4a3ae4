"""`weftctl status`'s health rules, over the data each process's admin API answers with, and
the lab's node names for `--node`."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import click
import pytest

from lab.config import LabConfig
from lab.state import LabPaths, LabRecord
from weftctl.labnodes import check_node, lab_node_names, unknown_node_message
from weftctl.statusreport import (
    Read,
    Reads,
    certificate_summary,
    lagging,
    report,
    subscription_issues,
    waypoint_issues,
)

VERSION = 7
NODES = ("node-1", "node-2")


def lab() -> dict[str, Any]:
    return {
        "name": "t",
        "nodes": [{"name": n} for n in NODES],
        "controller": {"state": "Running"},
        "node_agents": {n: {"state": "Running"} for n in NODES},
        "ztunnels": {n: {"state": "Running"} for n in NODES},
        "namespaces": [
            {"name": "default", "labels": {}},
            {"name": "shop", "labels": {"weft.dev/dataplane-mode": "ambient"}},
        ],
        "pods": [
            {"namespace": "shop", "name": "a", "node": "node-1", "phase": "Running", "labels": {}},
            {"namespace": "shop", "name": "b", "node": "node-2", "phase": "Running", "labels": {}},
            {
                "namespace": "shop",
                "name": "out",
                "node": "node-2",
                "phase": "Running",
                "labels": {"weft.dev/dataplane-mode": "none"},
            },
            {"namespace": "default", "name": "c", "node": "node-1", "phase": "Running"},
        ],
    }


def session(node: str, component: str, acked: int = VERSION, **kw: Any) -> dict[str, Any]:
    return {
        "node": node,
        "component": component,
        "weft_version": "0.1.0",
        "connected": True,
        "sent_version": VERSION,
        "acked_version": acked,
        "nacks": [],
        **kw,
    }


def cert(identity: str, seconds: int) -> dict[str, Any]:
    return {"identity": identity, "not_after": f"in {seconds}", "expires_in_s": seconds}


def healthy() -> Reads:
    return Reads(
        lab=lab(),
        controller_nodes=Read(
            {
                "version": VERSION,
                "epoch": "e1",
                "nodes": [session(n, c) for n in NODES for c in ("agent", "ztunnel")],
            }
        ),
        problems=Read({"problems": []}),
        agents={
            "node-1": Read({"ready": True, "enrolled": [{"pod": "shop/a"}]}),
            "node-2": Read({"ready": True, "enrolled": [{"pod": "shop/b"}]}),
        },
        ztunnels={
            "node-1": Read({"certificates": [cert("sa/a", 7200), cert("sa/x", 3600)]}),
            "node-2": Read({"certificates": [cert("sa/b", 86000)]}),
        },
        waypoints=Read(
            [
                {
                    "namespace": "shop",
                    "name": "waypoint",
                    "programmed": "True",
                    "replicas": {"ready": 1, "desired": 1},
                }
            ]
        ),
    )


def change(reads: Reads, **kw: Any) -> Reads:
    fields = {f: copy.deepcopy(getattr(reads, f)) for f in Reads.__dataclass_fields__}
    return Reads(**{**fields, **kw})


def test_a_healthy_mesh_has_no_issues_and_counts_pods_per_namespace() -> None:
    data = report(healthy())
    assert data["healthy"] and data["issues"] == []
    assert data["controller"] == {
        "reachable": True,
        "error": "",
        "process": "Running",
        "version": VERSION,
        "epoch": "e1",
        "problems": 0,
    }
    assert [n["node"] for n in data["nodes"]] == list(NODES)
    z1 = data["nodes"][0]["ztunnel"]
    assert z1["certificates"]["count"] == 2
    assert z1["certificates"]["earliest_expires_in_s"] == 3600
    assert data["nodes"][0]["agent"]["captured_pods"] == 1
    assert data["nodes"][1]["agent"]["weft_version"] == "0.1.0"
    shop = next(n for n in data["namespaces"] if n["namespace"] == "shop")
    assert (shop["mode"], shop["pods"], shop["enrolled"], shop["captured"]) == (
        "ambient",
        3,
        2,
        2,
    )
    default = next(n for n in data["namespaces"] if n["namespace"] == "default")
    assert (default["pods"], default["enrolled"], default["captured"]) == (1, 0, 0)


def test_an_unreachable_controller_is_a_row_and_an_issue() -> None:
    reads = change(
        healthy(), controller_nodes=Read(error="Connection refused"), problems=Read(error="x")
    )
    data = report(reads)
    assert not data["healthy"]
    assert data["controller"]["reachable"] is False
    assert data["issues"] == ["controller: unreachable (Connection refused)"]


def test_an_unreachable_ztunnel_is_a_row_and_an_issue() -> None:
    reads = healthy()
    reads = change(reads, ztunnels={**reads.ztunnels, "node-2": Read(error="No such file")})
    data = report(reads)
    assert data["nodes"][1]["ztunnel"]["reachable"] is False
    assert "ztunnel of node-2: unreachable (No such file, process Running)" in data["issues"]


def test_an_agent_not_ready_and_a_pod_not_captured_are_issues() -> None:
    reads = healthy()
    reads = change(reads, agents={**reads.agents, "node-2": Read({"ready": False, "enrolled": []})})
    issues = report(reads)["issues"]
    assert "agent of node-2: not ready" in issues
    assert "namespace shop: enrolled but not captured: shop/b" in issues


def test_a_pod_not_running_or_on_an_unread_node_is_not_judged() -> None:
    reads = healthy()
    reads.lab["pods"][1]["phase"] = "Pending"
    reads = change(reads, agents={**reads.agents, "node-2": Read({"ready": True, "enrolled": []})})
    assert report(reads)["healthy"]
    reads = change(reads, agents={**reads.agents, "node-2": Read(error="gone")})
    reads.lab["pods"][1]["phase"] = "Running"
    assert report(reads)["issues"] == ["agent of node-2: unreachable (gone, process Running)"]


def test_subscription_rules() -> None:
    assert subscription_issues("n", "agent", session("n", "agent"), VERSION) == []
    assert subscription_issues("n", "agent", None, VERSION) == [
        "agent of n: not subscribed to the controller"
    ]
    assert subscription_issues("n", "agent", session("n", "agent", connected=False), 7) == [
        "agent of n: not subscribed to the controller"
    ]
    behind = session("n", "ztunnel", acked=5, nacks=[{"version": 6, "reason": "bad policy"}])
    assert subscription_issues("n", "ztunnel", behind, VERSION) == [
        "ztunnel of n: ACKed state version 5 of 7: NACKed version 6: bad policy"
    ]
    assert subscription_issues("n", "agent", None, None) == []  # controller unread


def test_a_missing_subscription_makes_the_mesh_unhealthy() -> None:
    reads = healthy()
    reads.controller_nodes.data["nodes"] = [
        s
        for s in reads.controller_nodes.data["nodes"]
        if (s["node"], s["component"]) != ("node-1", "ztunnel")
    ]
    assert report(reads)["issues"] == ["ztunnel of node-1: not subscribed to the controller"]


def test_a_disconnected_session_does_not_hide_a_live_one() -> None:
    reads = healthy()
    reads.controller_nodes.data["nodes"].insert(
        0, session("node-1", "agent", acked=2, connected=False)
    )
    assert report(reads)["healthy"]


def test_expired_certificates() -> None:
    summary = certificate_summary({"certificates": [cert("a", 10), cert("b", -1)]})
    assert summary["expired"] == ["b"] and summary["earliest_expires_in_s"] == -1
    assert certificate_summary({"certificates": []})["earliest_not_after"] is None
    reads = healthy()
    reads.ztunnels["node-1"].data["certificates"].append(cert("spiffe://x/ns/a/sa/b", 0))
    assert report(reads)["issues"] == [
        "ztunnel of node-1: certificate of spiffe://x/ns/a/sa/b expired"
    ]


def test_waypoint_rules() -> None:
    ok = {
        "namespace": "a",
        "name": "w",
        "programmed": "True",
        "replicas": {"ready": 2, "desired": 2},
    }
    assert waypoint_issues([ok]) == []
    assert waypoint_issues([{**ok, "programmed": "False"}]) == [
        "waypoint a/w: not Programmed (False)"
    ]
    assert waypoint_issues([{**ok, "replicas": {"ready": 1, "desired": 2}}]) == [
        "waypoint a/w: 1/2 replicas ready"
    ]
    reads = change(healthy(), waypoints=Read(error="lab not answering"))
    assert report(reads)["issues"] == ["waypoints: cannot be listed (lab not answering)"]


def test_refused_resources_make_the_mesh_unhealthy() -> None:
    reads = change(
        healthy(), problems=Read({"problems": [{"message": "policy.yaml: shop/p: bad"}]})
    )
    data = report(reads)
    assert data["problems"] == ["policy.yaml: shop/p: bad"]
    assert data["controller"]["problems"] == 1
    assert data["issues"] == ["controller: 1 resource(s) refused (`weftctl controller problems`)"]


# --- --node on a lab without that node -------------------------------------------------------


def test_unknown_node_lists_the_lab_nodes() -> None:
    assert unknown_node_message("default", "node-9", ["node-1", "node-2"]) == (
        'no node "node-9" in lab default; nodes: node-1, node-2'
    )
    assert unknown_node_message("default", "node-2", ["node-1", "node-2"]) is None


def test_check_node_reads_the_lab_record(tmp_path: Path) -> None:
    paths = LabPaths(tmp_path / "lab-x")
    check_node(paths, "node-9")  # no record: left to the caller's "is the lab up?"
    record = LabRecord("lab-x", "abcd", LabConfig(name="lab-x", nodes=3), 0.0)
    record.save(paths)
    assert lab_node_names(record) == ["node-1", "node-2", "node-3"]
    check_node(paths, "node-3")
    with pytest.raises(click.ClickException, match='no node "node-9" in lab lab-x; nodes: node-1'):
        check_node(paths, "node-9")


def test_lagging_when_a_connected_subscriber_has_not_acked_the_version() -> None:
    reads = healthy()
    assert not lagging(reads.controller_nodes)
    reads.controller_nodes.data["nodes"][0]["acked_version"] = VERSION - 1
    assert lagging(reads.controller_nodes)
    reads.controller_nodes.data["nodes"][0]["connected"] = False
    assert not lagging(reads.controller_nodes)
    assert not lagging(Read(error="down"))


def test_waypoint_replicas_behind_the_state_are_issues() -> None:
    reads = healthy()
    wp = "spiffe://cluster.local/ns/shop/sa/waypoint"
    reads.controller_nodes.data["nodes"] += [
        session(wp, "waypoint"),
        session(wp, "waypoint", acked=VERSION - 2),
        session(wp, "waypoint", acked=1, connected=False),  # gone: not judged
    ]
    data = report(reads)
    assert [r["acked_version"] for r in data["waypoint_subscriptions"]] == [VERSION, VERSION - 2]
    assert data["issues"] == [f"waypoint replica {wp}: ACKed state version 5 of {VERSION}"]


def test_a_lab_without_ztunnels_says_so_once_when_a_pod_needs_one() -> None:
    reads = healthy()
    reads = change(reads, lab={**reads.lab, "ztunnels": {}})
    reads.controller_nodes.data["nodes"] = [
        s for s in reads.controller_nodes.data["nodes"] if s["component"] == "agent"
    ]
    reads = change(reads, ztunnels={})
    data = report(reads)
    assert data["nodes"][0]["ztunnel"]["error"].startswith("the lab runs no ztunnel")
    assert data["issues"] == [
        "the lab runs no ztunnel (lab up --no-ztunnel): the connections of enrolled pods fail "
        "closed"
    ]
    reads.lab["namespaces"][1]["labels"] = {}  # nothing enrolled: nothing fails
    assert report(reads)["healthy"]
