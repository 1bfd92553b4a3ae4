"""What a ztunnel's config dump says of services and policies, for `weftctl ztunnel-config
services|policies` (as istioctl's): plain data from the mesh view, nothing looked up twice."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from meshcore.resources.security import (
    AuthorizationPolicy,
    PeerAuthentication,
    PolicyTargetRef,
    Rule,
    Source,
)
from ztunnel.state import MeshView

MAX_SUMMARY = 200  # characters of one rule's summary


def services(view: MeshView) -> list[dict[str, Any]]:
    """Each Service once: VIPs, ports (port -> target port per endpoint), endpoints with
    their readiness, and its waypoint."""
    out = []
    unique = {s.key: s for s in view.by_vip.values()}.values()
    for s in sorted(unique, key=lambda s: (s.namespace, s.name)):
        members = view.members.get((s.namespace, s.name), [])
        endpoints = []
        for w in sorted(members, key=lambda w: w.name):
            for m in w.services:
                if (m.namespace, m.name) == (s.namespace, s.name):
                    endpoints.append(
                        {
                            "workload": f"{w.namespace}/{w.name}",
                            "address": w.addresses[0] if w.addresses else "",
                            "node": w.node,
                            "ready": w.ready,
                            "ports": {str(p): t for p, t in sorted(m.ports.items())},
                        }
                    )
        out.append(
            {
                "name": s.name,
                "namespace": s.namespace,
                "hostname": s.hostname,
                "addresses": list(s.addresses),
                "ports": [
                    {"name": p.name, "port": p.port, "protocol": p.protocol} for p in s.ports
                ],
                "endpoints": endpoints,
                "waypoint": s.waypoint,
            }
        )
    return out


def _values(name: str, values: Iterable[object]) -> str:
    items = [str(v) for v in values]
    return f"{name}={','.join(items)}" if items else ""


def _source(s: Source) -> str:
    parts = [
        _values("principals", s.principals),
        _values("notPrincipals", s.not_principals),
        _values("namespaces", s.namespaces),
        _values("notNamespaces", s.not_namespaces),
        _values("ipBlocks", s.ip_blocks),
        _values("notIpBlocks", s.not_ip_blocks),
        _values("requestPrincipals", s.request_principals),
    ]
    return " ".join(p for p in parts if p)


def rule_summary(rule: Rule) -> str:
    """`from: principals=a,b; to: ports=80 methods=GET; when: key`, or `any` for a rule that
    matches everything."""
    if rule.matches_everything:
        return "any"
    parts = []
    if rule.sources:
        parts.append("from: " + " | ".join(_source(s) or "any" for s in rule.sources))
    if rule.operations:
        ops = []
        for o in rule.operations:
            fields = [
                _values("ports", o.ports),
                _values("notPorts", o.not_ports),
                _values("hosts", o.hosts),
                _values("methods", o.methods),
                _values("paths", o.paths),
                _values("notPaths", o.not_paths),
            ]
            ops.append(" ".join(f for f in fields if f) or "any")
        parts.append("to: " + " | ".join(ops))
    if rule.conditions:
        parts.append("when: " + ",".join(c.key for c in rule.conditions))
    text = "; ".join(parts)
    return text if len(text) <= MAX_SUMMARY else text[: MAX_SUMMARY - 3] + "..."


def _scope(
    namespace: str,
    selector: Mapping[str, str] | None,
    root_namespace: str,
    target_refs: tuple[PolicyTargetRef, ...] = (),
) -> str:
    if target_refs:
        return "targetRefs: " + ",".join(f"{t.kind.value}/{t.name}" for t in target_refs)
    if selector is not None:
        labels = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        return f"workloads: {labels or '(all)'}"
    return "mesh" if namespace == root_namespace else f"namespace: {namespace}"


def policies(view: MeshView) -> list[dict[str, Any]]:
    """AuthorizationPolicies and PeerAuthentications: kind, scope, action (or mTLS mode),
    and one summary per rule."""
    out: list[dict[str, Any]] = []
    authz: list[AuthorizationPolicy] = view.policies
    for p in sorted(authz, key=lambda p: (p.metadata.namespace, p.metadata.name)):
        out.append(
            {
                "kind": "AuthorizationPolicy",
                "namespace": p.metadata.namespace,
                "name": p.metadata.name,
                "scope": _scope(
                    p.metadata.namespace, p.selector, view.root_namespace, p.target_refs
                ),
                "action": p.action.value,
                "enforced_by": "waypoint" if p.for_waypoint else "ztunnel",
                "rules": [rule_summary(r) for r in p.rules],
            }
        )
    peer: list[PeerAuthentication] = view.peer_authentications
    for pa in sorted(peer, key=lambda p: (p.metadata.namespace, p.metadata.name)):
        out.append(
            {
                "kind": "PeerAuthentication",
                "namespace": pa.metadata.namespace,
                "name": pa.metadata.name,
                "scope": _scope(pa.metadata.namespace, pa.selector, view.root_namespace),
                "action": pa.mode.value,
                "enforced_by": "ztunnel",
                "rules": [
                    f"port {port}: {mode.value}" for port, mode in pa.port_level_mtls.items()
                ],
            }
        )
    return out
