"""The waypoint's view of the mesh: what is bound to it, endpoints, routes picked out of the
state; route tables rebuilt when the state changes."""

from __future__ import annotations

import textwrap

from meshcore.meshstate import MeshService, ServiceMembership, ServicePort, Workload
from meshcore.resources import ResourceKey, documents_from_text, parse_documents
from waypoint import routing
from waypoint.decision import RouteTables
from waypoint.state import WaypointView

GATEWAY = "shop/waypoint"


def pod(name: str, ip: str, *, ready: bool = True, waypoint: str = "") -> Workload:
    return Workload(
        uid=name,
        name=name,
        namespace="shop",
        service_account=name,
        identity=f"spiffe://cluster.local/ns/shop/sa/{name}",
        node="node-1",
        node_address="192.0.2.1",
        addresses=(ip,),
        labels={},
        enrolled=True,
        ready=ready,
        waypoint=waypoint,
        services=(ServiceMembership("shop", "web", {80: 8080}),),
    )


def web(waypoint: str = GATEWAY) -> MeshService:
    return MeshService(
        "web",
        "shop",
        "web.shop.svc.cluster.local",
        ("10.96.0.10",),
        (ServicePort("http", 80),),
        waypoint=waypoint,
    )


ROUTE = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules: [{matches: [{path: {type: Exact, value: /only}}], backendRefs: [{name: web, port: 80}]}]
"""


def state(*values: object) -> dict[ResourceKey, object]:
    return {v.key: v for v in values}  # type: ignore[attr-defined]


def route() -> object:
    (parsed,) = parse_documents(documents_from_text(textwrap.dedent(ROUTE), "r.yaml"))
    return parsed.resource


def test_only_what_is_bound_to_this_waypoint_is_a_destination() -> None:
    view = WaypointView(GATEWAY)
    view.update(state(web(), pod("a", "10.0.0.1", waypoint=GATEWAY), pod("b", "10.0.0.2")))
    assert view.bound_service("10.96.0.10") is not None
    assert view.bound_workload("10.0.0.1") is not None
    assert view.bound_workload("10.0.0.2") is None  # bound through its Service only
    view.update(state(web("shop/other")))
    assert view.bound_service("10.96.0.10") is None


def test_endpoints_are_the_ready_pods_with_their_target_port() -> None:
    view = WaypointView(GATEWAY)
    view.update(state(web(), pod("a", "10.0.0.1"), pod("b", "10.0.0.2", ready=False)))
    service = view.service("shop", "web")
    assert service is not None
    assert [(w.name, port) for w, port in view.endpoints(service, 80)] == [("a", 8080)]
    assert view.endpoints(service, 81) == []


def test_routes_come_from_the_state_and_tables_follow_updates() -> None:
    view = WaypointView(GATEWAY)
    tables = RouteTables(view, rand=lambda: 0.0)
    view.update(state(web(), pod("a", "10.0.0.1")))
    service = view.service("shop", "web")
    assert service is not None
    port = service.ports[0]
    request = routing.Request("GET", "/elsewhere", (("host", "web"),), client_namespace="shop")
    assert isinstance(tables.decide(service, port, request), routing.Forward)  # no routes
    view.update(state(web(), pod("a", "10.0.0.1"), route()))
    assert len(view.http_routes) == 1
    decision = tables.decide(service, port, request)
    assert isinstance(decision, routing.Respond) and decision.status == 404
