"""The controller sends VirtualServices to waypoints as parsed, and reports one whose host
names no Service, and one whose Service an HTTPRoute also binds (the HTTPRoute wins)."""

from __future__ import annotations

import textwrap

from controller.meshbuilder import MeshBuilder, Problem
from meshcore.meshstate import StateValue, TrustBundle
from meshcore.resources import ResourceKey, documents_from_text, parse_documents
from meshcore.resources.virtualservice import VirtualService

BUNDLE = TrustBundle(
    "cluster.local", ("-----BEGIN CERTIFICATE-----\nr\n-----END CERTIFICATE-----\n",)
)

MESH = """
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  selector: {app: cart}
  ports: [{name: http, port: 80, targetPort: 8080}]
"""

KEY = ResourceKey("VirtualService", "shop", "cart")


def vs(host: str) -> str:
    return f"""
---
apiVersion: networking.weft.dev/v1
kind: VirtualService
metadata: {{name: cart, namespace: shop}}
spec:
  hosts: [{host}]
  http: [{{route: [{{destination: {{host: cart}}}}]}}]
"""


ROUTE = """
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: cart, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: cart, port: 80}]
  rules: [{backendRefs: [{name: cart, port: 80}]}]
"""


def build(text: str) -> tuple[dict[ResourceKey, StateValue], dict[ResourceKey, Problem]]:
    docs = documents_from_text(textwrap.dedent(text), "mesh.yaml")
    resources = {p.resource.key: p.resource for p in parse_documents(docs)}
    builder = MeshBuilder("cluster.local")
    state = builder.build(resources, BUNDLE)
    return state, builder.problems()


def test_a_virtual_service_goes_to_the_waypoints_as_parsed_without_a_problem() -> None:
    state, problems = build(MESH + vs("cart"))
    assert isinstance(state[KEY], VirtualService)
    assert KEY not in problems


def test_a_host_naming_no_service_is_reported() -> None:
    state, problems = build(MESH + vs("nope.shop.svc.cluster.local"))
    assert KEY in state  # sent all the same: it applies once the Service exists
    assert problems[KEY].field == "spec.hosts[0]"
    assert problems[KEY].reason == "no Service shop/nope: the host takes no effect"


def test_an_httproute_on_the_same_service_wins_and_the_virtual_service_is_the_conflict() -> None:
    _, problems = build(MESH + vs("cart") + ROUTE)
    assert problems[KEY].field == "spec.hosts[0]"
    assert problems[KEY].reason.startswith(
        "conflict: HTTPRoute shop/cart also binds Service shop/cart (port 80)"
    )


def test_a_grpcroute_on_the_same_service_is_reported_as_winning_for_grpc_calls() -> None:
    grpc_route = ROUTE.replace("kind: HTTPRoute", "kind: GRPCRoute")
    _, problems = build(MESH + vs("cart") + grpc_route)
    assert problems[KEY].reason.startswith(
        "conflict: GRPCRoute shop/cart also binds Service shop/cart (port 80); the GRPCRoute "
        "wins for gRPC calls"
    )
