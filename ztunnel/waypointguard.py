"""Which workloads only their waypoint may reach, sans I/O: L7 authorization cannot be bypassed.

Pod-IP traffic to a workload whose Service is bound to a `for: service` waypoint does not go
through that waypoint (Istio's behaviour, and the Gateway API's mesh conformance), so routes
are skipped. Authorization must not be: when an AuthorizationPolicy with HTTP attributes
(hosts, methods, paths and their not* forms, requestPrincipals, remoteIpBlocks, `when` keys a
ztunnel cannot read) applies to a destination through its Service's or namespace's waypoint,
only that waypoint evaluates it. Such a destination is then admitted only from the
waypoint's identity, on the peer certificate (ztunnel/admission.py); everything else is
refused. Istio leaves this to a hand-written L4 policy; weft does it for you.

A policy applies through waypoint W to workload P when it targets (`targetRefs`):

- the Gateway W, and P backs a Service bound to W (or P itself is bound to W);
- a Service S bound to W, and P backs S;
- the GatewayClass `weft-waypoint` from the root namespace, and P backs a Service bound to
  any waypoint W (or is bound to one).

`guarded_workloads()` is computed when the mesh state changes (ztunnel/state.py), not per
connection.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from meshcore.meshstate import WAYPOINT_GATEWAY_CLASS, MeshService, Waypoint, Workload
from meshcore.resources.security import AuthorizationPolicy, TargetKind

# (namespace, name) of a workload -> the waypoints ("<ns>/<name>") that alone may reach it.
Guard = Mapping[tuple[str, str], frozenset[str]]


def has_l7_attributes(policy: AuthorizationPolicy) -> bool:
    """Whether the policy matches on anything only an HTTP proxy can see."""
    return bool(policy.l7_only_fields())


def _policy_waypoints(
    policy: AuthorizationPolicy,
    services: Mapping[tuple[str, str], MeshService],
    waypoints: Mapping[str, Waypoint],
    root_namespace: str,
) -> tuple[set[str], set[tuple[str, str]]]:
    """What an L7 policy reaches: whole waypoints, and single Services (namespace, name)."""
    whole: set[str] = set()
    single: set[tuple[str, str]] = set()
    ns = policy.metadata.namespace
    for ref in policy.target_refs:
        if ref.kind is TargetKind.GATEWAY and f"{ns}/{ref.name}" in waypoints:
            whole.add(f"{ns}/{ref.name}")
        elif ref.kind is TargetKind.SERVICE and (ns, ref.name) in services:
            single.add((ns, ref.name))
        elif (
            ref.kind is TargetKind.GATEWAY_CLASS
            and ref.name == WAYPOINT_GATEWAY_CLASS
            and ns == root_namespace
        ):
            whole.update(waypoints)
    return whole, single


def guarded_workloads(
    policies: Iterable[AuthorizationPolicy],
    services: Iterable[MeshService],
    workloads: Iterable[Workload],
    waypoints: Mapping[str, Waypoint],
    *,
    root_namespace: str,
) -> Guard:
    """For each workload an L7 policy reaches through a waypoint, the waypoints that may reach
    it (a workload behind two guarded Services may be reached from either's waypoint)."""
    l7 = [p for p in policies if p.for_waypoint and has_l7_attributes(p)]
    if not l7:
        return {}
    by_name = {(s.namespace, s.name): s for s in services}
    whole: set[str] = set()
    single: set[tuple[str, str]] = set()
    for policy in l7:
        w, s = _policy_waypoints(policy, by_name, waypoints, root_namespace)
        whole |= w
        single |= s
    guard: dict[tuple[str, str], frozenset[str]] = {}
    for workload in workloads:
        allowed: set[str] = set()
        if workload.waypoint in whole:  # bound itself (`for: workload|all`)
            allowed.add(workload.waypoint)
        for m in workload.services:
            svc = by_name.get((m.namespace, m.name))
            if svc is None or not svc.waypoint:
                continue
            if svc.waypoint in whole or (m.namespace, m.name) in single:
                allowed.add(svc.waypoint)
        if allowed:
            guard[(workload.namespace, workload.name)] = frozenset(allowed)
    return guard
