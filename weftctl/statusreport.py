"""`weftctl status`: the mesh's health from what each process says, and the rules that call
it healthy.

Pure: the reads (lab, controller, each node's agent and ztunnel, waypoints) come in as plain
data, each either what the process answered or the error it could not be reached with; a
report comes out, with every issue in words. The rules:

- the controller answers;
- every node's agent and ztunnel answer, are subscribed to the controller and have ACKed its
  current state version (a NACK is named); an agent is ready;
- no ztunnel holds an expired certificate;
- every waypoint is Programmed with all its replicas ready, and each replica subscribed has
  ACKed the current state version;
- every running pod the labels enroll is in its node agent's capture maps;
- the controller refused no resource (`weftctl controller problems`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from controller.meshbuilder import is_enrolled
from meshcore.meshstate import DATAPLANE_MODE_LABEL

COMPONENTS = ("agent", "ztunnel")
NO_ZTUNNEL = "the lab runs no ztunnel (lab up --no-ztunnel)"


@dataclass(frozen=True, slots=True)
class Read:
    """What one process answered (`data`), or why it could not be read (`error`)."""

    data: Any = None
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error


@dataclass(frozen=True, slots=True)
class Reads:
    lab: Mapping[str, Any]  # the lab's /v1/status
    controller_nodes: Read  # /debug/nodes
    problems: Read  # /debug/problems
    agents: Mapping[str, Read]  # node -> /debug/status
    ztunnels: Mapping[str, Read]  # node -> /config_dump
    waypoints: Read  # [weftctl.waypoint_commands.waypoint_summary(...)]


def _sessions(nodes: Read) -> dict[tuple[str, str], Mapping[str, Any]]:
    """(node, component) -> its subscription, connected ones first."""
    out: dict[tuple[str, str], Mapping[str, Any]] = {}
    if not nodes.ok:
        return out
    for s in sorted(nodes.data.get("nodes", []), key=lambda s: not s.get("connected")):
        out.setdefault((str(s.get("node", "")), str(s.get("component", ""))), s)
    return out


def lagging(nodes: Read) -> bool:
    """Does a connected subscriber not have the current state version yet? (Right after a
    change that is normal for a few milliseconds: the caller reads once more.)"""
    if not nodes.ok:
        return False
    version = nodes.data.get("version")
    return any(
        s.get("connected") and s.get("acked_version") != version
        for s in nodes.data.get("nodes", [])
    )


def subscription_issues(
    node: str, component: str, session: Mapping[str, Any] | None, version: int | None
) -> list[str]:
    """What is wrong with one process's subscription to the controller's state."""
    who = f"{component} of {node}"
    if version is None:  # the controller could not be read: nothing to compare with
        return []
    if session is None or not session.get("connected"):
        return [f"{who}: not subscribed to the controller"]
    acked = int(session.get("acked_version", 0))
    if acked == version:
        return []
    nacks = session.get("nacks") or []
    why = f": NACKed version {nacks[-1]['version']}: {nacks[-1]['reason']}" if nacks else ""
    return [f"{who}: ACKed state version {acked} of {version}{why}"]


def certificate_summary(dump: Mapping[str, Any]) -> dict[str, Any]:
    certs = dump.get("certificates") or []
    earliest = min(certs, key=lambda c: c.get("expires_in_s", 0), default=None)
    return {
        "count": len(certs),
        "earliest_not_after": earliest["not_after"] if earliest else None,
        "earliest_expires_in_s": earliest["expires_in_s"] if earliest else None,
        "expired": sorted(c["identity"] for c in certs if c.get("expires_in_s", 0) <= 0),
    }


def _component_row(
    node: str,
    component: str,
    read: Read,
    process: Mapping[str, Any] | None,
    session: Mapping[str, Any] | None,
    version: int | None,
) -> tuple[dict[str, Any], list[str]]:
    row: dict[str, Any] = {
        "component": component,
        "reachable": read.ok,
        "error": read.error,
        "process": dict(process or {}).get("state", ""),
        "weft_version": (session or {}).get("weft_version", ""),
        "connected": bool(session and session.get("connected")),
        "sent_version": (session or {}).get("sent_version"),
        "acked_version": (session or {}).get("acked_version"),
    }
    issues = []
    if not read.ok:
        state = f", process {row['process']}" if row["process"] else ""
        issues.append(f"{component} of {node}: unreachable ({read.error}{state})")
    issues += subscription_issues(node, component, session, version)
    if read.ok and component == "agent":
        row["ready"] = bool(read.data.get("ready"))
        row["captured_pods"] = len(read.data.get("enrolled") or [])
        if not row["ready"]:
            issues.append(f"agent of {node}: not ready")
    if read.ok and component == "ztunnel":
        row["certificates"] = certificate_summary(read.data)
        for identity in row["certificates"]["expired"]:
            issues.append(f"ztunnel of {node}: certificate of {identity} expired")
    return row, issues


def namespace_rows(
    lab: Mapping[str, Any], agents: Mapping[str, Read]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Pods per namespace: total, enrolled by the labels, captured by their node agent."""
    ns_labels = {str(n["name"]): dict(n.get("labels") or {}) for n in lab.get("namespaces", [])}
    captured = {
        str(e.get("pod", ""))
        for read in agents.values()
        if read.ok
        for e in read.data.get("enrolled") or []
    }
    readable = {node for node, read in agents.items() if read.ok}
    rows: dict[str, dict[str, Any]] = {
        ns: {
            "namespace": ns,
            "mode": labels.get(DATAPLANE_MODE_LABEL, ""),
            "pods": 0,
            "enrolled": 0,
            "captured": 0,
            "not_captured": [],
        }
        for ns, labels in sorted(ns_labels.items())
    }
    for pod in lab.get("pods", []):
        ns = str(pod["namespace"])
        row = rows.setdefault(
            ns,
            {
                "namespace": ns,
                "mode": "",
                "pods": 0,
                "enrolled": 0,
                "captured": 0,
                "not_captured": [],
            },
        )
        row["pods"] += 1
        ref = f"{ns}/{pod['name']}"
        if ref in captured:
            row["captured"] += 1
        if not is_enrolled(pod.get("labels") or {}, ns_labels.get(ns, {})):
            continue
        row["enrolled"] += 1
        # Only a running pod on a node whose agent answered can be judged; the agent's
        # own row says when it did not.
        if ref not in captured and pod.get("phase") == "Running" and pod.get("node") in readable:
            row["not_captured"].append(ref)
    issues = [
        f"namespace {r['namespace']}: enrolled but not captured: {', '.join(r['not_captured'])}"
        for r in rows.values()
        if r["not_captured"]
    ]
    return list(rows.values()), issues


def waypoint_issues(waypoints: Sequence[Mapping[str, Any]]) -> list[str]:
    issues = []
    for w in waypoints:
        name = f"waypoint {w['namespace']}/{w['name']}"
        if w.get("programmed") != "True":
            issues.append(f"{name}: not Programmed ({w.get('programmed', 'Unknown')})")
        replicas = w.get("replicas") or {}
        if replicas.get("ready", 0) != replicas.get("desired", 0):
            issues.append(
                f"{name}: {replicas.get('ready', 0)}/{replicas.get('desired', '?')} replicas ready"
            )
    return issues


def waypoint_subscriptions(nodes: Read) -> tuple[list[dict[str, Any]], list[str]]:
    """Each connected waypoint replica's subscription (by its identity), and the ones that
    have not ACKed the controller's current state version."""
    if not nodes.ok:
        return [], []
    version = nodes.data.get("version")
    rows = [
        {
            "identity": s.get("node", ""),
            "weft_version": s.get("weft_version", ""),
            "sent_version": s.get("sent_version"),
            "acked_version": s.get("acked_version"),
        }
        for s in nodes.data.get("nodes", [])
        if s.get("component") == "waypoint" and s.get("connected")
    ]
    rows.sort(key=lambda r: r["identity"])
    issues = [
        f"waypoint replica {r['identity']}: ACKed state version {r['acked_version']} of {version}"
        for r in rows
        if r["acked_version"] != version
    ]
    return rows, issues


def report(reads: Reads) -> dict[str, Any]:
    """The whole status: each part, the issues found, and `healthy` when there are none."""
    issues: list[str] = []
    nodes_read = reads.controller_nodes
    version = int(nodes_read.data["version"]) if nodes_read.ok else None
    controller: dict[str, Any] = {
        "reachable": nodes_read.ok,
        "error": nodes_read.error,
        "process": (reads.lab.get("controller") or {}).get("state", ""),
        "version": version,
        "epoch": nodes_read.data.get("epoch") if nodes_read.ok else None,
        "problems": len(reads.problems.data.get("problems", [])) if reads.problems.ok else None,
    }
    if not nodes_read.ok:
        issues.append(f"controller: unreachable ({nodes_read.error})")
    sessions = _sessions(nodes_read)
    processes = {
        "agent": reads.lab.get("node_agents") or {},
        "ztunnel": reads.lab.get("ztunnels") or {},
    }
    # `lab up --no-ztunnel`: no ztunnel to judge (said once below, when a pod needs one)
    components = [("agent", reads.agents)]
    if processes["ztunnel"]:
        components.append(("ztunnel", reads.ztunnels))
    node_rows = []
    for node in [str(n["name"]) for n in reads.lab.get("nodes", [])]:
        row: dict[str, Any] = {"node": node}
        if not processes["ztunnel"]:
            row["ztunnel"] = {
                "component": "ztunnel",
                "reachable": False,
                "error": NO_ZTUNNEL,
                "process": "",
                "weft_version": "",
                "connected": False,
                "sent_version": None,
                "acked_version": None,
            }
        for component, read_map in components:
            read = read_map.get(node, Read(error="not read"))
            part, found = _component_row(
                node,
                component,
                read,
                processes[component].get(node),
                sessions.get((node, component)),
                version,
            )
            row[component] = part
            issues += found
        node_rows.append(row)
    waypoints: list[dict[str, Any]] = []
    if reads.waypoints.ok:
        waypoints = list(reads.waypoints.data)
        issues += waypoint_issues(waypoints)
    else:
        issues.append(f"waypoints: cannot be listed ({reads.waypoints.error})")
    replicas, replica_issues = waypoint_subscriptions(nodes_read)
    issues += replica_issues
    namespaces, ns_issues = namespace_rows(reads.lab, reads.agents)
    issues += ns_issues
    if not processes["ztunnel"] and any(n["enrolled"] for n in namespaces):
        issues.append(f"{NO_ZTUNNEL}: the connections of enrolled pods fail closed")
    problems: list[str] = []
    if reads.problems.ok:
        problems = [str(p.get("message", "")) for p in reads.problems.data.get("problems", [])]
        if problems:
            issues.append(
                f"controller: {len(problems)} resource(s) refused (`weftctl controller problems`)"
            )
    elif nodes_read.ok:  # (an unreachable controller is said once)
        issues.append(f"controller problems: cannot be read ({reads.problems.error})")
    return {
        "lab": reads.lab.get("name", ""),
        "healthy": not issues,
        "issues": issues,
        "controller": controller,
        "nodes": node_rows,
        "waypoints": waypoints,
        "waypoint_subscriptions": replicas,
        "namespaces": namespaces,
        "problems": problems,
    }
