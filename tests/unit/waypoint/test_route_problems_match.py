"""The waypoint's tables and the controller's route status see the same problems: what
`build_table`/`build_grpc_table` record while compiling equals `meshcore.routecheck`'s
`route_problems` for every route that attaches, so a status never claims what the data plane
does not do."""

from __future__ import annotations

import textwrap

import pytest

from meshcore.resources import documents_from_text, parse_documents
from meshcore.resources.gateway import GRPCRoute, HTTPRoute
from meshcore.routecheck import route_problems
from waypoint.routing import build_grpc_table, build_table

KNOWN = {("shop", "web", 80), ("shop", "web-v1", 80), ("shop", "shadow", 80)}


def known(namespace: str, name: str, port: int) -> bool:
    return (namespace, name, port) in KNOWN


HTTP_RULES = [
    "- backendRefs: [{name: web-v1, port: 80}]",
    "- backendRefs: [{name: gone, port: 80}, {name: web-v1, port: 81, weight: 0}]",
    "- matches: [{path: {type: RegularExpression, value: '/(?=a)'}}]\n"
    "  backendRefs: [{name: web-v1, port: 80}]",
    "- matches:\n"
    "  - headers:\n"
    "    - {type: RegularExpression, name: X-A, value: '(a)\\1'}\n"
    "    - {type: RegularExpression, name: x-a, value: '(?>b)'}\n"  # a repeat: not looked at
    "    queryParams: [{type: RegularExpression, name: q, value: 'a{2000}'}]\n"
    "  - path: {type: RegularExpression, value: '/b\\Z'}\n"
    "  backendRefs: [{name: web-v1, port: 80}]",
    "- filters:\n"
    "  - {type: RequestMirror, requestMirror: {backendRef: {name: nowhere, port: 80}}}\n"
    "  - {type: ExtensionRef, extensionRef: {group: example.net, kind: Magic, name: m}}\n"
    "  backendRefs:\n"
    "  - name: web-v1\n"
    "    port: 80\n"
    "    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: shadow, port: 9}}}]",
]

GRPC_RULES = [
    "- backendRefs: [{name: web-v1, port: 80}]",
    "- matches: [{method: {type: RegularExpression, service: '(?<=a)b', method: 'x(?=y)'}}]\n"
    "  backendRefs: [{name: gone, port: 80}]",
    "- matches: [{headers: [{type: RegularExpression, name: h, value: '(?P<n>a)(?P=n)'}]}]\n"
    "  filters:\n"
    "  - {type: ExtensionRef, extensionRef: {group: '', kind: Thing, name: t}}\n"
    "  backendRefs: [{name: web-v1, port: 80}]",
]


def parse(kind: str, rules: list[str]) -> HTTPRoute | GRPCRoute:
    text = textwrap.dedent(
        f"""
        apiVersion: gateway.networking.k8s.io/v1
        kind: {kind}
        metadata: {{name: r, namespace: shop}}
        spec:
          parentRefs: [{{group: "", kind: Service, name: web}}]
          rules:
        """
    ) + textwrap.indent("\n".join(rules), "  ")
    (parsed,) = parse_documents(documents_from_text(text, "r.yaml"))
    assert isinstance(parsed.resource, HTTPRoute | GRPCRoute)
    return parsed.resource


@pytest.mark.parametrize("upto", range(1, len(HTTP_RULES) + 1))
def test_an_http_route_table_has_the_route_problems(upto: int) -> None:
    rt = parse("HTTPRoute", HTTP_RULES[:upto])
    table = build_table(
        [rt], service_namespace="shop", service_name="web", port=80, known_service=known
    )
    assert table.problems == route_problems(rt, known)
    assert len(table.problems) >= upto - 1


@pytest.mark.parametrize("upto", range(1, len(GRPC_RULES) + 1))
def test_a_grpc_route_table_has_the_route_problems(upto: int) -> None:
    rt = parse("GRPCRoute", GRPC_RULES[:upto])
    table = build_grpc_table(
        [rt], service_namespace="shop", service_name="web", port=80, known_service=known
    )
    assert table.problems == route_problems(rt, known)
    assert len(table.problems) >= upto - 1
