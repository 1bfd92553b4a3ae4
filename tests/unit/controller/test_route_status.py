"""Route status: the conditions the controller writes on an HTTPRoute or GRPCRoute for each
Service parent (Accepted, PartiallyInvalid, ResolvedRefs), from the mesh state's Services and
the route's own problems; and the deployer's plan writing them only when they change."""

from __future__ import annotations

import textwrap
from typing import Any

import pytest

from controller.deployer import Deployer, DeployerConfig
from controller.meshbuilder import MeshBuilder
from controller.routestatus import route_status
from meshcore.meshstate import MeshService, ServicePort, TrustBundle
from meshcore.resources import ResourceKey, documents_from_text, parse_documents
from meshcore.resources.gateway import GRPCRoute, HTTPRoute

NOW = "2026-11-30T17:00:00Z"
LATER = "2026-11-30T18:00:00Z"


def svc(name: str, waypoint: str = "shop/waypoint", ports: tuple[int, ...] = (80,)) -> MeshService:
    return MeshService(
        name,
        "shop",
        f"{name}.shop.svc.cluster.local",
        ("198.19.0.10",),
        tuple(ServicePort("http" if p == 80 else f"p{p}", p) for p in ports),
        waypoint,
    )


BOUND = {s.key: s for s in (svc("web"), svc("web-v1", ""), svc("web-v2", ""))}


def route(spec: str, kind: str = "HTTPRoute") -> HTTPRoute | GRPCRoute:
    text = textwrap.dedent(
        f"""
        apiVersion: gateway.networking.k8s.io/v1
        kind: {kind}
        metadata: {{name: r, namespace: shop}}
        spec:
        """
    ) + textwrap.indent(textwrap.dedent(spec), "  ")
    (parsed,) = parse_documents(documents_from_text(text, "r.yaml"))
    assert isinstance(parsed.resource, HTTPRoute | GRPCRoute)
    return parsed.resource


PARENT = 'parentRefs: [{group: "", kind: Service, name: web, port: 80}]\n'
TO_V1 = "backendRefs: [{name: web-v1, port: 80}]"


def conditions(status: dict[str, Any] | None, parent: int = 0) -> list[tuple[str, str, str]]:
    assert status is not None
    return [(c["type"], c["status"], c["reason"]) for c in status["parents"][parent]["conditions"]]


def message(status: dict[str, Any] | None, kind: str) -> str:
    assert status is not None
    (found,) = [c for c in status["parents"][0]["conditions"] if c["type"] == kind]
    text: str = found["message"]
    return text


OK = [("Accepted", "True", "Accepted"), ("ResolvedRefs", "True", "ResolvedRefs")]

CASES = [
    pytest.param(PARENT + f"rules: [{{{TO_V1}}}]", BOUND, OK, id="bound-and-resolved"),
    pytest.param(
        PARENT + f"rules: [{{{TO_V1}}}]",
        {**BOUND, svc("web").key: svc("web", waypoint="")},
        [("Accepted", "False", "NoMatchingParent"), ("ResolvedRefs", "True", "ResolvedRefs")],
        id="service-bound-to-no-waypoint",
    ),
    pytest.param(
        'parentRefs: [{group: "", kind: Service, name: gone}]\n' + f"rules: [{{{TO_V1}}}]",
        BOUND,
        [("Accepted", "False", "NoMatchingParent"), ("ResolvedRefs", "True", "ResolvedRefs")],
        id="parent-service-missing",
    ),
    pytest.param(
        'parentRefs: [{group: "", kind: Service, name: web, port: 8080}]\n'
        + f"rules: [{{{TO_V1}}}]",
        BOUND,
        [("Accepted", "False", "NoMatchingParent"), ("ResolvedRefs", "True", "ResolvedRefs")],
        id="parent-port-missing",
    ),
    pytest.param(
        'parentRefs: [{group: "", kind: Service, name: web, sectionName: grpc}]\n'
        + f"rules: [{{{TO_V1}}}]",
        BOUND,
        [("Accepted", "False", "NoMatchingParent"), ("ResolvedRefs", "True", "ResolvedRefs")],
        id="parent-port-name-missing",
    ),
    pytest.param(
        PARENT + "rules: [{backendRefs: [{name: web-v3, port: 80}]}]",
        BOUND,
        [("Accepted", "True", "Accepted"), ("ResolvedRefs", "False", "BackendNotFound")],
        id="backend-service-missing",
    ),
    pytest.param(
        PARENT + "rules: [{backendRefs: [{name: web-v1, port: 81}]}]",
        BOUND,
        [("Accepted", "True", "Accepted"), ("ResolvedRefs", "False", "BackendNotFound")],
        id="backend-port-missing",
    ),
    pytest.param(
        PARENT
        + "rules: [{filters: [{type: RequestMirror, requestMirror: "
        + "{backendRef: {name: shadow, port: 80}}}], "
        + TO_V1
        + "}]",
        BOUND,
        [("Accepted", "True", "Accepted"), ("ResolvedRefs", "False", "BackendNotFound")],
        id="mirror-missing",
    ),
    pytest.param(
        PARENT
        + "rules: [{filters: [{type: ExtensionRef, extensionRef: "
        + "{group: example.net, kind: Magic, name: m}}], "
        + TO_V1
        + "}]",
        BOUND,
        [("Accepted", "True", "Accepted"), ("ResolvedRefs", "False", "InvalidKind")],
        id="unknown-filter-kind",
    ),
    pytest.param(
        PARENT
        + "rules:\n"
        + "- matches: [{path: {type: RegularExpression, value: '/(?=a)'}}]\n"
        + f"  {TO_V1}\n"
        + f"- {TO_V1}\n",
        BOUND,
        [
            ("Accepted", "True", "Accepted"),
            ("PartiallyInvalid", "True", "UnsupportedValue"),
            ("ResolvedRefs", "True", "ResolvedRefs"),
        ],
        id="regex-re2-refuses-one-rule-dropped",
    ),
    pytest.param(
        PARENT
        + "rules:\n"
        + "- matches: [{headers: [{type: RegularExpression, name: x, value: '(a)\\1'}]}]\n"
        + f"  {TO_V1}\n",
        BOUND,
        [("Accepted", "False", "UnsupportedValue"), ("ResolvedRefs", "True", "ResolvedRefs")],
        id="regex-re2-refuses-every-rule",
    ),
]


@pytest.mark.parametrize(("spec", "services", "expected"), CASES)
def test_route_conditions(
    spec: str, services: dict[ResourceKey, MeshService], expected: list[tuple[str, str, str]]
) -> None:
    assert conditions(route_status(route(spec), services, previous=None, now=NOW)) == expected


def test_a_parent_entry_names_its_ref_and_weft_as_its_controller() -> None:
    status = route_status(route(PARENT + f"rules: [{{{TO_V1}}}]"), BOUND, previous=None, now=NOW)
    assert status is not None
    (entry,) = status["parents"]
    assert entry["parentRef"] == {
        "group": "",
        "kind": "Service",
        "name": "web",
        "namespace": "shop",
        "port": 80,
    }
    assert entry["controllerName"] == "weft.dev/mesh-controller"
    assert {c["lastTransitionTime"] for c in entry["conditions"]} == {NOW}


def test_each_service_parent_has_its_own_entry_and_gateway_parents_none() -> None:
    spec = (
        "parentRefs:\n"
        '- {group: "", kind: Service, name: web}\n'
        '- {group: "", kind: Service, name: gone}\n'
        "- {name: ingress}\n"  # a Gateway: another controller's
        f"rules: [{{{TO_V1}}}]\n"
    )
    status = route_status(route(spec), BOUND, previous=None, now=NOW)
    assert status is not None
    assert [e["parentRef"]["name"] for e in status["parents"]] == ["web", "gone"]
    assert conditions(status, 0)[0] == ("Accepted", "True", "Accepted")
    assert conditions(status, 1)[0] == ("Accepted", "False", "NoMatchingParent")
    gateway_only = route("parentRefs: [{name: ingress}]\n" + f"rules: [{{{TO_V1}}}]")
    assert route_status(gateway_only, BOUND, previous=None, now=NOW) is None


def test_messages_name_what_is_wrong_and_where() -> None:
    unbound = {**BOUND, svc("web").key: svc("web", waypoint="")}
    status = route_status(route(PARENT + f"rules: [{{{TO_V1}}}]"), unbound, previous=None, now=NOW)
    assert message(status, "Accepted") == (
        "no waypoint serves Service shop/web: label it or its namespace "
        "weft.dev/use-waypoint=<gateway>"
    )
    status = route_status(
        route(PARENT + "rules: [{backendRefs: [{name: web-v3, port: 80}]}]"),
        BOUND,
        previous=None,
        now=NOW,
    )
    assert message(status, "ResolvedRefs") == (
        "spec.rules[0].backendRefs[0]: Service shop/web-v3 port 80 not found; "
        "its share of the traffic gets 500"
    )
    spec = (
        PARENT
        + "rules:\n"
        + f"- {TO_V1}\n"
        + "- matches: [{path: {type: RegularExpression, value: '/a\\Z'}}]\n"
        + f"  {TO_V1}\n"
    )
    status = route_status(route(spec), BOUND, previous=None, now=NOW)
    assert message(status, "PartiallyInvalid") == (
        "Dropped Rule(s) spec.rules[1]: spec.rules[1].matches[0].path.value: '/a\\\\Z': "
        "RE2 does not support \\Z (use $ without the m flag)"
    )


def test_a_grpc_route_gets_the_same_conditions() -> None:
    spec = (
        PARENT
        + "rules:\n"
        + "- matches: [{method: {type: RegularExpression, service: '(?<=x)y'}}]\n"
        + f"  {TO_V1}\n"
        + "- backendRefs: [{name: web-v9, port: 80}]\n"
    )
    status = route_status(route(spec, kind="GRPCRoute"), BOUND, previous=None, now=NOW)
    assert conditions(status) == [
        ("Accepted", "True", "Accepted"),
        ("PartiallyInvalid", "True", "UnsupportedValue"),
        ("ResolvedRefs", "False", "BackendNotFound"),
    ]


def test_a_transition_time_changes_only_with_its_status() -> None:
    r = route(PARENT + f"rules: [{{{TO_V1}}}]")
    first = route_status(r, BOUND, previous=None, now=NOW)
    assert route_status(r, BOUND, previous=first, now=LATER) == first
    unbound = {**BOUND, svc("web").key: svc("web", waypoint="")}
    second = route_status(r, unbound, previous=first, now=LATER)
    assert second is not None
    times = {c["type"]: c["lastTransitionTime"] for c in second["parents"][0]["conditions"]}
    assert times == {"Accepted": LATER, "ResolvedRefs": NOW}


SHOP = """
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {weft.dev/use-waypoint: waypoint}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: weft-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules: [{backendRefs: [{name: web, port: 80}]}]
"""


def test_the_deployer_plans_a_route_status_from_the_mesh_state_once() -> None:
    resources = {
        p.resource.key: p.resource for p in parse_documents(documents_from_text(SHOP, "s.yaml"))
    }
    state = MeshBuilder("cluster.local").build(resources, TrustBundle("cluster.local", ()))
    deployer = Deployer(DeployerConfig(), wall_clock=lambda: NOW)
    key = ResourceKey("HTTPRoute", "shop", "web")
    assert key not in deployer.plan(resources).statuses  # no state: no route status
    plan = deployer.plan(resources, state)
    assert conditions(plan.statuses[key]) == OK
    deployer.status_written(key, plan.statuses[key])
    assert key not in deployer.plan(resources, state).statuses  # unchanged: not written again
    without = {k: v for k, v in resources.items() if k.kind != "Namespace"}
    unbound = MeshBuilder("cluster.local").build(without, TrustBundle("cluster.local", ()))
    again = deployer.plan(without, unbound).statuses[key]
    assert conditions(again)[0] == ("Accepted", "False", "NoMatchingParent")
