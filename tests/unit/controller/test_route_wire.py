"""HTTPRoute and GRPCRoute reach the nodes: every parsed route survives the wire unchanged,
a message a node cannot read is refused by name, and a route no waypoint serves is reported."""

from __future__ import annotations

import dataclasses
import textwrap

import pytest

from controller.meshbuilder import MeshBuilder
from meshcore.api import mesh_pb2 as pb
from meshcore.api.convert import ConversionError, from_proto, to_proto
from meshcore.meshstate import TrustBundle
from meshcore.resources import (
    GRPCRoute,
    HTTPRoute,
    ObjectMeta,
    Resource,
    ResourceKey,
    documents_from_text,
    parse_documents,
)
from tests.unit.meshcore.test_gateway_parsing import GOOD_GRPC_ROUTES, GOOD_HTTP_ROUTES

BUNDLE = TrustBundle("cluster.local", ("root",))


def parse(text: str) -> dict[ResourceKey, Resource]:
    docs = documents_from_text(textwrap.dedent(text), "c.yaml")
    return {p.resource.key: p.resource for p in parse_documents(docs)}


def without_labels(route: HTTPRoute | GRPCRoute) -> HTTPRoute | GRPCRoute:
    """Nodes get a route's name and namespace, not its labels and annotations."""
    meta = ObjectMeta(route.metadata.name, route.metadata.namespace)
    return dataclasses.replace(route, metadata=meta)


@pytest.mark.parametrize(
    "text", [pytest.param(t, id=i) for i, t, _ in GOOD_HTTP_ROUTES + GOOD_GRPC_ROUTES]
)
def test_every_route_the_parser_accepts_survives_the_wire(text: str) -> None:
    (route,) = parse(text).values()
    assert isinstance(route, HTTPRoute | GRPCRoute)
    msg = pb.Resource.FromString(to_proto(route).SerializeToString())
    assert from_proto(msg) == without_labels(route)


ROUTE = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /v2}, method: GET}]
    backendRefs: [{name: web-v2, port: 80, weight: 0}]
  - matches: [{path: {type: PathPrefix, value: /old}}]
    filters:
    - type: RequestRedirect
      requestRedirect: {scheme: https, port: 8443, statusCode: 301}
"""


def _mutated(change: str) -> pb.Resource:
    (route,) = parse(ROUTE).values()
    assert isinstance(route, HTTPRoute)
    msg = to_proto(route)
    rule = msg.http_route.rules[0]
    if change == "path type":
        rule.matches[0].path.type = "Prefix"
    elif change == "method":
        rule.matches[0].method = "get"
    elif change == "backend port":
        rule.backend_refs[0].port = 0
    elif change == "redirect port":
        msg.http_route.rules[1].filters[0].request_redirect.port = 70000
    elif change == "empty filter":
        msg.http_route.rules[1].filters[0].Clear()
    elif change == "parent kind":
        msg.http_route.parent_refs[0].kind = "ServiceImport"
    return msg


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            "path type",
            "path type must be one of Exact, PathPrefix, RegularExpression, got 'Prefix'",
        ),
        ("method", "method must be one of GET, HEAD"),
        ("backend port", "backendRef port must be between 1 and 65535, got 0"),
        ("redirect port", "redirect port must be between 1 and 65535, got 70000"),
        ("empty filter", "a filter with no type"),
        ("parent kind", "parentRef kind must be one of Gateway, Service, got 'ServiceImport'"),
    ],
)
def test_a_route_a_node_cannot_read_is_refused_naming_it(change: str, message: str) -> None:
    with pytest.raises(ConversionError, match="http_route shop/r: ") as caught:
        from_proto(_mutated(change))
    assert message in str(caught.value)


def test_a_grpc_route_refuses_an_http_only_filter() -> None:
    (route,) = parse(GOOD_GRPC_ROUTES[0][1]).values()
    msg = to_proto(route)
    msg.grpc_route.rules[0].filters[0].url_rewrite.hostname = "x"
    with pytest.raises(ConversionError, match="a GRPCRoute takes no URLRewrite filter"):
        from_proto(msg)


SERVICES = """
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop, labels: {weft.dev/use-waypoint: wp}}
spec: {clusterIP: 10.96.0.5, selector: {app: web}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: shop}
spec: {clusterIP: 10.96.0.6, selector: {app: plain}, ports: [{name: http, port: 80}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: shop}
spec:
  gatewayClassName: weft-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
"""


def route_to(parent: str) -> str:
    return f"""
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {{name: r, namespace: shop}}
spec:
  parentRefs: [{{group: "", kind: Service, name: {parent}}}]
  rules: [{{backendRefs: [{{name: {parent}, port: 80}}]}}]
"""


def test_routes_are_in_the_state_as_parsed() -> None:
    resources = parse(SERVICES + route_to("web"))
    builder = MeshBuilder("cluster.local")
    state = builder.build(resources, BUNDLE)
    key = ResourceKey("HTTPRoute", "shop", "r")
    assert state[key] is resources[key]
    assert builder.problems() == {}


@pytest.mark.parametrize(
    ("parent", "reason"),
    [
        (
            "plain",
            "no waypoint serves Service shop/plain: the route takes no effect for it until the "
            "Service or its namespace is labelled weft.dev/use-waypoint=<gateway>",
        ),
        ("gone", "no Service shop/gone: nothing for the route to attach to"),
    ],
)
def test_a_route_whose_parent_service_no_waypoint_serves_is_reported(
    parent: str, reason: str
) -> None:
    builder = MeshBuilder("cluster.local")
    state = builder.build(parse(SERVICES + route_to(parent)), BUNDLE)
    assert ResourceKey("HTTPRoute", "shop", "r") in state  # still sent
    problem = builder.problems()[ResourceKey("HTTPRoute", "shop", "r")]
    assert (problem.field, problem.reason) == ("spec.parentRefs[0]", reason)
