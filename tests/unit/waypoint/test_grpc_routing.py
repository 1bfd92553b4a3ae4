"""GRPCRoute routing: method and header matches, precedence, header filters and weights, from
the mesh conformance tests (MeshGRPCRoute*) and the Gateway versions of the gRPC ones."""

from __future__ import annotations

from collections import Counter

import pytest

from tests.unit.waypoint.routing_cases import MESH, grpc_table, never, request, seeded, services
from waypoint.routing import (
    GRPC_UNAVAILABLE,
    GRPC_UNIMPLEMENTED,
    Forward,
    Request,
    Respond,
    route_grpc,
)

ECHO = "/gateway_api_conformance.echo_basic.grpcecho.GrpcEcho"


def call(
    method: str = "Echo",
    headers: dict[str, str] | None = None,
    *,
    host: str = "echo",
    client: str | None = MESH,
) -> Request:
    """A unary call to the conformance echo service's `method`."""
    return request(
        f"{ECHO}/{method}", method="POST", headers=headers or {}, host=host, client=client
    )


def outcome(decision: Forward | Respond) -> str | int | None:
    """The backend's name, or the grpc-status answered."""
    return decision.backend_name if isinstance(decision, Forward) else decision.grpc_status


GRPC_HEADER_MODIFIER = """
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: grpc-request-header-modifier, namespace: gateway-conformance-mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 7070}]
  rules:
  - matches: [{headers: [{name: x-test-case, value: set}]}]
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-header-set, value: set-overwrites-values}]}}]
    backendRefs: [{name: echo-v1, port: 7070}]
  - matches: [{headers: [{name: x-test-case, value: add}]}]
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {add: [{name: x-header-add, value: add-appends-values}]}}]
    backendRefs: [{name: echo-v1, port: 7070}]
  - matches: [{headers: [{name: x-test-case, value: remove}]}]
    filters: [{type: RequestHeaderModifier, requestHeaderModifier: {remove: [x-header-remove]}}]
    backendRefs: [{name: echo-v1, port: 7070}]
  - matches: [{headers: [{name: x-test-case, value: multi}]}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier:
        set: [{name: x-header-set-1, value: header-set-1}, {name: x-header-set-2, value: header-set-2}]
        add: [{name: x-header-add-1, value: header-add-1}, {name: x-header-add-2, value: header-add-2}]
        remove: [x-header-remove-1, x-header-remove-2]
    backendRefs: [{name: echo-v2, port: 7070}]
"""


@pytest.mark.parametrize(
    ("case", "sent", "backend", "expected"),
    [
        (
            "set",
            {
                "some-other-header": "this-header-should-be-set",
                "x-header-set": "this-value-should-be-overwritten",
            },
            "echo-v1",
            {
                "x-test-case": "set",
                "some-other-header": "this-header-should-be-set",
                "x-header-set": "set-overwrites-values",
            },
        ),
        (
            "add",
            {"x-header-add": "this-value-should-be-appended"},
            "echo-v1",
            {
                "x-test-case": "add",
                "x-header-add": "this-value-should-be-appended,add-appends-values",
            },
        ),
        (
            "remove",
            {"x-header-remove": "this-should-be-removed"},
            "echo-v1",
            {"x-test-case": "remove"},
        ),
        (
            "multi",
            {
                "x-header-set-2": "set-header-2",
                "x-header-add-2": "add-header-2",
                "x-header-remove-2": "should-be-removed-2",
            },
            "echo-v2",
            {
                "x-test-case": "multi",
                "x-header-set-1": "header-set-1",
                "x-header-set-2": "header-set-2",
                "x-header-add-1": "header-add-1",
                "x-header-add-2": "add-header-2,header-add-2",
            },
        ),
    ],
)
def test_mesh_grpcroute_request_header_modifier(
    case: str, sent: dict[str, str], backend: str, expected: dict[str, str]
) -> None:
    t = grpc_table(GRPC_HEADER_MODIFIER)
    d = route_grpc(t, call(headers={"x-test-case": case, **sent}, host="echo:7070"), never)
    assert isinstance(d, Forward) and d.backend_name == backend
    assert dict(d.request_headers) == expected
    assert d.path == f"{ECHO}/Echo"


GRPC_WEIGHT = """
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: mesh-grpc-weighted-backends, namespace: gateway-conformance-mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 7070}]
  rules:
  - backendRefs:
    - {name: echo-v1, port: 7070, weight: 70}
    - {name: echo-v2, port: 7070, weight: 30}
    - {name: echo-v3, port: 7070, weight: 0}
"""


@pytest.mark.parametrize("seed", [1, 2])
def test_mesh_grpcroute_weight_within_five_percent(seed: int) -> None:
    t = grpc_table(GRPC_WEIGHT)
    rand = seeded(seed)
    got: Counter[str | int | None] = Counter(
        outcome(route_grpc(t, call(), rand)) for _ in range(1000)
    )
    assert abs(got["echo-v1"] / 1000 - 0.7) <= 0.05
    assert abs(got["echo-v2"] / 1000 - 0.3) <= 0.05
    assert got["echo-v3"] == 0


def test_a_missing_grpc_backends_share_gets_unavailable() -> None:
    t = grpc_table(GRPC_WEIGHT, known=services((MESH, "echo-v1", 7070)))
    rand = seeded(3)
    got: Counter[str | int | None] = Counter(
        outcome(route_grpc(t, call(), rand)) for _ in range(1000)
    )
    assert set(got) == {"echo-v1", GRPC_UNAVAILABLE}
    assert abs(got[GRPC_UNAVAILABLE] / 1000 - 0.3) <= 0.05
    assert [p.field for p in t.problems] == [
        "spec.rules[0].backendRefs[1]",
        "spec.rules[0].backendRefs[2]",
    ]


EXACT_METHOD = """
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: exact-matching, namespace: gateway-conformance-mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - name: named-rule
    matches: [{method: {service: gateway_api_conformance.echo_basic.grpcecho.GrpcEcho, method: Echo}}]
    backendRefs: [{name: v1, port: 8080}]
  - matches: [{method: {service: gateway_api_conformance.echo_basic.grpcecho.GrpcEcho, method: EchoTwo}}]
    backendRefs: [{name: v2, port: 8080}]
"""


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (f"{ECHO}/Echo", "v1"),
        (f"{ECHO}/EchoTwo", "v2"),
        (f"{ECHO}/EchoThree", GRPC_UNIMPLEMENTED),
        (f"{ECHO}/echo", GRPC_UNIMPLEMENTED),  # case-sensitive
        ("/gateway_api_conformance.echo_basic.grpcecho.GrpcEchoX/Echo", GRPC_UNIMPLEMENTED),
        (f"{ECHO}/Echo/extra", GRPC_UNIMPLEMENTED),  # not a gRPC :path
        (f"{ECHO}", GRPC_UNIMPLEMENTED),
    ],
)
def test_grpcroute_exact_method_matching(path: str, expected: str | int) -> None:
    t = grpc_table(EXACT_METHOD, port=7070)
    d = route_grpc(t, request(path, method="POST"), never)
    assert outcome(d) == expected
    if isinstance(d, Respond):
        assert (d.status, d.reason) == (404, "no route rule matched")
    else:
        assert d.rule_name == ("named-rule" if expected == "v1" else "")


GRPC_HEADER_MATCHING = """
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: grpc-header-matching, namespace: gateway-conformance-mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - matches: [{headers: [{name: version, value: one}]}]
    backendRefs: [{name: v1, port: 8080}]
  - matches: [{headers: [{name: version, value: two}]}]
    backendRefs: [{name: v2, port: 8080}]
  - matches: [{headers: [{name: version, value: two}, {name: color, value: orange}]}]
    backendRefs: [{name: v1, port: 8080}]
  - matches: [{headers: [{name: color, value: blue}]}, {headers: [{name: color, value: green}]}]
    backendRefs: [{name: v1, port: 8080}]
  - matches: [{headers: [{name: color, value: red}]}, {headers: [{name: color, value: yellow}]}]
    backendRefs: [{name: v2, port: 8080}]
"""


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Version": "one"}, "v1"),
        ({"Version": "two"}, "v2"),
        ({"Version": "two", "Color": "orange"}, "v1"),
        ({"Version": "two", "Color": "blue"}, "v2"),
        ({"Color": "orange"}, GRPC_UNIMPLEMENTED),
        ({"Some-Other-Header": "one"}, GRPC_UNIMPLEMENTED),
        ({"Color": "blue"}, "v1"),
        ({"Color": "green"}, "v1"),
        ({"Color": "red"}, "v2"),
        ({"Color": "yellow"}, "v2"),
        ({"Color": "purple"}, GRPC_UNIMPLEMENTED),
    ],
)
def test_grpcroute_header_matching(headers: dict[str, str], expected: str | int) -> None:
    t = grpc_table(GRPC_HEADER_MATCHING, port=7070)
    assert outcome(route_grpc(t, call(headers=headers), never)) == expected


GRPC_PRECEDENCE = """
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: precedence, namespace: gateway-conformance-mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - backendRefs: [{name: catch-all, port: 8080}]
  - matches: [{method: {method: Echo}}]
    backendRefs: [{name: any-service-echo, port: 8080}]
  - matches: [{method: {service: pkg.Svc}}]
    backendRefs: [{name: svc-any-method, port: 8080}]
  - matches: [{method: {service: pkg.Svc, method: Echo}}]
    backendRefs: [{name: svc-echo, port: 8080}]
  - matches: [{method: {service: pkg.Svc, method: Echo}, headers: [{name: canary, value: "yes"}]}]
    backendRefs: [{name: svc-echo-canary, port: 8080}]
  - matches: [{method: {type: RegularExpression, service: "pkg\\\\.v[0-9]+\\\\.Svc", method: "Get.*"}}]
    backendRefs: [{name: regex, port: 8080}]
"""


@pytest.mark.parametrize(
    ("path", "headers", "expected"),
    [
        ("/pkg.Svc/Echo", {}, "svc-echo"),
        ("/pkg.Svc/Echo", {"Canary": "yes"}, "svc-echo-canary"),
        ("/pkg.Svc/Other", {}, "svc-any-method"),  # a longer service outranks a method
        ("/other.Svc/Echo", {}, "any-service-echo"),
        ("/other.Svc/Other", {}, "catch-all"),
        ("/pkg.v2.Svc/GetThing", {}, "regex"),
        ("/pkg.v2.Svc/PutThing", {}, "catch-all"),
        ("/pkg.v2.Svc/Echo", {}, "any-service-echo"),  # an exact method outranks a regex
        ("/not-grpc", {}, "catch-all"),  # a rule without method match takes any path
    ],
)
def test_grpcroute_precedence(path: str, headers: dict[str, str], expected: str) -> None:
    t = grpc_table(GRPC_PRECEDENCE)
    d = route_grpc(t, request(path, method="POST", headers=headers), never)
    assert outcome(d) == expected


def test_grpc_consumer_routes_and_passthrough() -> None:
    t = grpc_table(
        """
        apiVersion: gateway.networking.k8s.io/v1
        kind: GRPCRoute
        metadata: {name: consumer, namespace: gateway-conformance-mesh-consumer}
        spec:
          parentRefs: [{group: "", kind: Service, name: echo, namespace: gateway-conformance-mesh}]
          rules:
          - backendRefs: [{name: echo-v2, namespace: gateway-conformance-mesh, port: 7070}]
        """
    )
    assert not t.empty and not t.applies(MESH)
    consumer = route_grpc(t, call(client="gateway-conformance-mesh-consumer"), never)
    producer = route_grpc(t, call(client=MESH), never)
    assert outcome(consumer) == "echo-v2"
    assert isinstance(producer, Forward) and producer.backend_name == "echo"
    assert producer.route_key is None


def test_a_grpc_route_left_with_no_rule_re2_accepts_does_not_attach() -> None:
    t = grpc_table(
        """
        apiVersion: gateway.networking.k8s.io/v1
        kind: GRPCRoute
        metadata: {name: r, namespace: gateway-conformance-mesh}
        spec:
          parentRefs: [{group: "", kind: Service, name: echo}]
          rules:
          - matches: [{method: {type: RegularExpression, service: "pkg(?!x).*"}}]
            backendRefs: [{name: v1, port: 8080}]
        """
    )
    assert [p.field for p in t.problems] == ["spec.rules[0].matches[0].method.service"]
    assert t.empty  # not Accepted: the Service is reached as if it had no routes
    assert outcome(route_grpc(t, request("/pkg.Svc/M"), never)) == "echo"
