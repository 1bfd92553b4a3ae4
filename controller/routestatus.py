"""Route status: what the controller writes on each HTTPRoute and GRPCRoute (GAMMA).

Gateway API's `status.parents[]`: one entry per Service parentRef of the route (Gateway
parents belong to other controllers and are left alone), each with the `parentRef`, weft's
`controllerName` and conditions:

- `Accepted`: True when the parent Service exists, has the port the ref names (`port` or
  `sectionName`), is bound to a waypoint, and the route kept a rule. Else False:
  `NoMatchingParent` (no such Service or port, or no waypoint serves it: the route takes no
  effect for it), or `UnsupportedValue` (every rule was dropped: a regex RE2 refuses).
- `PartiallyInvalid` (only when it is True): some rules were dropped, `UnsupportedValue`,
  the message starting "Dropped Rule", as the spec asks of implementations that drop rules.
- `ResolvedRefs`: False when a backendRef or mirror names a Service or port that does not
  exist (`BackendNotFound`: that share gets 500) or a filter weft does not have
  (`InvalidKind`: that rule gets 500); else True.

The problems in a route come from `meshcore.routecheck.route_problems`, the same list the
waypoint builds its tables with. Pure: `route_status` and `route_statuses`, tested by tables
in `tests/unit/controller/test_route_status.py`; the deployer's loop writes them through its
`ObjectWriter`, as it writes the Gateways' status.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from controller.conditions import condition
from meshcore.meshstate import MESH_CONTROLLER_NAME, MeshService, StateValue
from meshcore.resources import Resource, ResourceKey
from meshcore.resources.gateway import GRPCRoute, HTTPRoute, ParentKind, ParentRef
from meshcore.routecheck import (
    ACCEPTED,
    NO_MATCHING_PARENT,
    PARTIALLY_INVALID,
    RESOLVED_REFS,
    UNSUPPORTED_VALUE,
    Problem,
    dropped_rules,
    route_problems,
)

Route = HTTPRoute | GRPCRoute


def _parent_ref(ref: ParentRef) -> dict[str, Any]:
    out: dict[str, Any] = {
        "group": ref.group,
        "kind": ref.kind.value,
        "name": ref.name,
        "namespace": ref.namespace,
    }
    if ref.section_name:
        out["sectionName"] = ref.section_name
    if ref.port is not None:
        out["port"] = ref.port
    return out


def _parent_problem(ref: ParentRef, services: Mapping[ResourceKey, MeshService]) -> str:
    """Why the route cannot attach to this Service parent, or "" when it can."""
    where = f"{ref.namespace}/{ref.name}"
    svc = services.get(ResourceKey(MeshService.kind, ref.namespace, ref.name))
    if svc is None:
        return f"Service {where} not found"
    if ref.port is not None and not any(p.port == ref.port for p in svc.ports):
        return f"Service {where} has no port {ref.port}"
    if ref.section_name and not any(p.name == ref.section_name for p in svc.ports):
        return f"Service {where} has no port named {ref.section_name!r}"
    if not svc.waypoint:
        return (
            f"no waypoint serves Service {where}: label it or its namespace "
            "weft.dev/use-waypoint=<gateway>"
        )
    return ""


def _listed(problems: list[Problem]) -> str:
    return "; ".join(f"{p.field}: {p.message}" for p in problems)


def route_status(
    route: Route,
    services: Mapping[ResourceKey, MeshService],
    *,
    previous: Mapping[str, Any] | None,
    now: str,
) -> dict[str, Any] | None:
    """The route's `status` (its Service parents' entries), or None when it has no Service
    parent. `services`: the mesh state's Services (with their ports and waypoint binding);
    `previous`: the status last written, whose transition times are kept."""
    refs = [ref for ref in route.parent_refs if ref.kind is ParentKind.SERVICE]
    if not refs:
        return None

    def known(namespace: str, name: str, port: int) -> bool:
        svc = services.get(ResourceKey(MeshService.kind, namespace, name))
        return svc is not None and any(p.port == port for p in svc.ports)

    problems = list(route_problems(route, known))
    dropped = dropped_rules(problems)
    unsupported = [p for p in problems if p.condition == ACCEPTED and p.reason == UNSUPPORTED_VALUE]
    unresolved = [p for p in problems if p.condition == RESOLVED_REFS]
    every_rule_dropped = bool(route.rules) and len(dropped) == len(route.rules)
    old_parents = {
        _key(entry.get("parentRef", {})): entry for entry in (previous or {}).get("parents", [])
    }
    parents = []
    for ref in refs:
        parent_ref = _parent_ref(ref)
        old = old_parents.get(_key(parent_ref))
        why_not = _parent_problem(ref, services)
        if why_not:
            accepted = condition(ACCEPTED, False, NO_MATCHING_PARENT, why_not, old, now)
        elif every_rule_dropped:
            message = f"every rule was dropped: {_listed(unsupported)}"
            accepted = condition(ACCEPTED, False, UNSUPPORTED_VALUE, message, old, now)
        else:
            accepted = condition(ACCEPTED, True, "Accepted", "", old, now)
        conditions = [accepted]
        if dropped and not every_rule_dropped:
            rules = ", ".join(f"spec.rules[{i}]" for i in dropped)
            message = f"Dropped Rule(s) {rules}: {_listed(unsupported)}"
            conditions.append(
                condition(PARTIALLY_INVALID, True, UNSUPPORTED_VALUE, message, old, now)
            )
        if unresolved:
            resolved = condition(
                RESOLVED_REFS, False, unresolved[0].reason, _listed(unresolved), old, now
            )
        else:
            resolved = condition(RESOLVED_REFS, True, "ResolvedRefs", "", old, now)
        conditions.append(resolved)
        parents.append(
            {
                "parentRef": parent_ref,
                "controllerName": MESH_CONTROLLER_NAME,
                "conditions": conditions,
            }
        )
    return {"parents": parents}


def _key(parent_ref: Mapping[str, Any]) -> tuple[Any, ...]:
    return tuple(parent_ref.get(k) for k in ("kind", "namespace", "name", "sectionName", "port"))


def route_statuses(
    resources: Mapping[ResourceKey, Resource],
    state: Mapping[ResourceKey, StateValue],
    previous: Mapping[ResourceKey, Mapping[str, Any]],
    now: str,
) -> dict[ResourceKey, dict[str, Any]]:
    """The status of every route with a Service parent, by route: `state` is the mesh state
    built from `resources`; `previous`, the statuses last written."""
    services = {k: v for k, v in state.items() if isinstance(v, MeshService)}
    out: dict[ResourceKey, dict[str, Any]] = {}
    for key, r in resources.items():
        if isinstance(r, HTTPRoute | GRPCRoute):
            status = route_status(r, services, previous=previous.get(key), now=now)
            if status is not None:
                out[key] = status
    return out
