"""Which routes apply (Service parentRefs, ports, producer and consumer routes), weighted
backends, and what a route weft cannot apply as written turns into (problems, 500s)."""

from __future__ import annotations

from collections import Counter

import pytest

from meshcore.resources import ResourceKey
from tests.unit.waypoint.routing_cases import (
    CONSUMER,
    MESH,
    never,
    request,
    seeded,
    services,
    table,
)
from waypoint.routing import (
    ACCEPTED,
    BACKEND_NOT_FOUND,
    INVALID_KIND,
    RESOLVED_REFS,
    UNSUPPORTED_VALUE,
    Forward,
    Problem,
    Respond,
    check_re2,
    route,
)

# --- binding -------------------------------------------------------------------------------------

MESH_PORTS = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mesh-split-v1, namespace: gateway-conformance-mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo-v1, port: 80}]
  rules:
  - filters:
    - {type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: X-Header-Set, value: v1}]}}
    backendRefs: [{name: echo-v1, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mesh-split-v2, namespace: gateway-conformance-mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo-v2}]
  rules:
  - filters:
    - {type: ResponseHeaderModifier, responseHeaderModifier: {set: [{name: X-Header-Set, value: v2}]}}
    backendRefs: [{name: echo-v2, port: 80}]
"""


@pytest.mark.parametrize(
    ("service", "port", "routed"),
    [
        ("echo-v1", 80, True),  # explicit port set, send to that port
        ("echo-v1", 8080, False),  # explicit port, send to an excluded port
        ("echo-v2", 80, True),  # no port set: every port
        ("echo-v2", 8080, True),
        ("echo", 80, False),  # another Service
    ],
)
def test_mesh_ports(service: str, port: int, routed: bool) -> None:
    t = table(MESH_PORTS, service=service, port=port)
    assert t.empty is not routed
    d = route(t, request(host=f"{service}:{port}"), never)
    assert isinstance(d, Forward)
    assert (d.backend_name, d.backend_port) == (service, 80 if routed else port)
    assert bool(d.response_header_ops) is routed
    assert (d.route_key is not None) is routed


def test_an_unrouted_port_passes_the_request_through_unchanged() -> None:
    t = table(MESH_PORTS, service="echo-v1", port=8080)
    req = request("/a?b=c", headers={"X": "y"}, host="echo-v1:8080")
    assert route(t, req, never) == Forward(
        MESH, "echo-v1", 8080, "/a?b=c", "echo-v1:8080", (("X", "y"),)
    )


@pytest.mark.parametrize(
    ("parent", "port", "port_name", "attaches"),
    [
        ("{group: '', kind: Service, name: echo, sectionName: http}", 80, "http", True),
        ("{group: '', kind: Service, name: echo, sectionName: http}", 81, "admin", False),
        ("{group: '', kind: Service, name: echo, sectionName: http, port: 80}", 80, "http", True),
        ("{group: '', kind: Service, name: echo, sectionName: http, port: 80}", 80, "web", False),
        (
            "{group: '', kind: Service, name: echo, namespace: gateway-conformance-mesh}",
            80,
            "",
            True,
        ),
        ("{group: '', kind: Service, name: echo, namespace: elsewhere}", 80, "", False),
        ("{name: echo}", 80, "", False),  # a Gateway named echo, not the Service
    ],
)
def test_which_parent_refs_attach(parent: str, port: int, port_name: str, attaches: bool) -> None:
    t = table(
        f"""
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {{name: r, namespace: gateway-conformance-mesh}}
        spec:
          parentRefs: [{parent}]
          rules: [{{backendRefs: [{{name: v1, port: 8080}}]}}]
        """,
        port=port,
        port_name=port_name,
    )
    assert t.empty is not attaches


def test_a_route_with_several_parents_attaches_to_each() -> None:
    text = """
    apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata: {name: r, namespace: gateway-conformance-mesh}
    spec:
      parentRefs:
      - {group: "", kind: Service, name: a}
      - {group: "", kind: Service, name: b, port: 9000}
      rules: [{backendRefs: [{name: v1, port: 8080}]}]
    """
    assert not table(text, service="a", port=1).empty
    assert not table(text, service="b", port=9000).empty
    assert table(text, service="b", port=9001).empty


CONSUMER_ROUTE = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: mesh-echo-add-header
  namespace: gateway-conformance-mesh-consumer
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo-v1
    namespace: gateway-conformance-mesh
  rules:
  - filters:
    - type: ResponseHeaderModifier
      responseHeaderModifier:
        set:
        - name: X-Header-Set
          value: set
    backendRefs:
    - name: echo-v1
      namespace: gateway-conformance-mesh
      port: 80
"""


def test_mesh_consumer_route_applies_only_to_its_namespace() -> None:
    t = table(CONSUMER_ROUTE, service="echo-v1")
    assert not t.empty
    assert t.applies(CONSUMER) and not t.applies(MESH) and not t.applies(None)
    consumer = route(t, request(host="echo-v1.gateway-conformance-mesh", client=CONSUMER), never)
    assert isinstance(consumer, Forward)
    assert consumer.backend_name == "echo-v1" and consumer.response_header_ops
    producer = route(t, request(host="echo-v1.gateway-conformance-mesh", client=MESH), never)
    assert isinstance(producer, Forward)
    assert producer.backend_name == "echo-v1" and not producer.response_header_ops
    assert producer.route_key is None


PRODUCER_AND_CONSUMER = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: producer, namespace: gateway-conformance-mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /only-producer}}]
    backendRefs: [{name: producer-special, port: 80}]
  - backendRefs: [{name: producer, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: consumer, namespace: gateway-conformance-mesh-consumer}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, namespace: gateway-conformance-mesh}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /consumer}}]
    backendRefs: [{name: consumer, namespace: gateway-conformance-mesh, port: 80}]
"""


@pytest.mark.parametrize(
    ("client", "path", "backend"),
    [
        (MESH, "/consumer", "producer"),
        (MESH, "/only-producer", "producer-special"),
        ("third-party", "/consumer", "producer"),
        (None, "/consumer", "producer"),
        (CONSUMER, "/consumer", "consumer"),
        # GEP-1294: a consumer namespace with routes uses those routes only
        (CONSUMER, "/only-producer", 404),
        (CONSUMER, "/", 404),
    ],
)
def test_consumer_routes_replace_producer_routes_for_their_namespace(
    client: str | None, path: str, backend: str | int
) -> None:
    d = route(table(PRODUCER_AND_CONSUMER), request(path, client=client), never)
    assert (d.backend_name if isinstance(d, Forward) else d.status) == backend


# --- weighted backends ---------------------------------------------------------------------------

WEIGHTS = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: mesh-weighted-backends, namespace: gateway-conformance-mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
  rules:
  - backendRefs:
    - {name: echo-v1, port: 8080, weight: 70}
    - {name: echo-v2, port: 8080, weight: 30}
    - {name: echo-v3, port: 8080, weight: 0}
"""


def picks(text: str, n: int = 1000, seed: int = 1, **kwargs: object) -> Counter[str | int]:
    t = table(text, **kwargs)  # type: ignore[arg-type]
    rand = seeded(seed)
    out: Counter[str | int] = Counter()
    for _ in range(n):
        d = route(t, request(), rand)
        out[d.backend_name if isinstance(d, Forward) else d.status] += 1
    return out


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_mesh_httproute_weight_within_five_percent(seed: int) -> None:
    got = picks(WEIGHTS, seed=seed)
    assert abs(got["echo-v1"] / 1000 - 0.7) <= 0.05
    assert abs(got["echo-v2"] / 1000 - 0.3) <= 0.05
    assert got["echo-v3"] == 0
    assert sum(got.values()) == 1000


def test_a_missing_backend_keeps_its_share_and_that_share_gets_500() -> None:
    known = services((MESH, "echo-v1", 8080), (MESH, "echo-v3", 8080))  # no echo-v2
    got = picks(WEIGHTS, known=known)
    assert abs(got[500] / 1000 - 0.3) <= 0.05
    assert abs(got["echo-v1"] / 1000 - 0.7) <= 0.05
    t = table(WEIGHTS, known=known)
    assert t.problems == (
        Problem(
            ResourceKey("HTTPRoute", MESH, "mesh-weighted-backends"),
            "spec.rules[0].backendRefs[1]",
            RESOLVED_REFS,
            BACKEND_NOT_FOUND,
            "Service gateway-conformance-mesh/echo-v2 port 8080 not found; its share of the "
            "traffic gets 500",
        ),
    )


def test_a_missing_backend_of_weight_zero_breaks_nothing() -> None:
    known = services((MESH, "echo-v1", 8080), (MESH, "echo-v2", 8080))  # no echo-v3
    got = picks(WEIGHTS, known=known)
    assert set(got) == {"echo-v1", "echo-v2"}


@pytest.mark.parametrize(
    ("backends", "reason"),
    [
        ("[]", "no backendRefs"),
        (
            "[{name: a, port: 80, weight: 0}, {name: b, port: 80, weight: 0}]",
            "every backendRef has weight 0",
        ),
    ],
)
def test_no_backend_to_send_to_is_a_500(backends: str, reason: str) -> None:
    t = table(
        f"""
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {{name: r, namespace: gateway-conformance-mesh}}
        spec:
          parentRefs: [{{group: "", kind: Service, name: echo}}]
          rules:
          - backendRefs: {backends}
        """
    )
    d = route(t, request(), never)
    assert isinstance(d, Respond) and (d.status, d.reason) == (500, reason)
    assert d.route_key == ResourceKey("HTTPRoute", MESH, "r")


def test_a_lone_missing_backend_gets_every_request_a_500() -> None:
    t = table(
        """
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {name: r, namespace: gateway-conformance-mesh}
        spec:
          parentRefs: [{group: "", kind: Service, name: echo}]
          rules: [{backendRefs: [{name: gone, port: 80}]}]
        """,
        known=services(),
    )
    d = route(t, request(), never)
    assert isinstance(d, Respond)
    assert (d.status, d.reason) == (500, "Service gateway-conformance-mesh/gone port 80 not found")


def test_rand_at_its_edges_picks_the_first_and_the_last_live_backend() -> None:
    t = table(WEIGHTS)
    first = route(t, request(), lambda: 0.0)
    last = route(t, request(), lambda: 0.9999999)
    assert isinstance(first, Forward) and first.backend_name == "echo-v1"
    assert isinstance(last, Forward) and last.backend_name == "echo-v2"
    edge = route(t, request(), lambda: 1.0)  # outside [0, 1): still a live backend
    assert isinstance(edge, Forward) and edge.backend_name == "echo-v2"


# --- what weft cannot apply ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "refused"),
    [
        ("/foo/[a-z]+", None),
        ("(?i)/FOO", None),
        ("(?P<name>a)b", None),
        ("a{2,1000}", None),
        ("^/a$", None),
        (r"(a)\1", "backreferences"),
        ("(?P<x>a)(?P=x)", "backreferences"),
        ("/foo(?=bar)", "lookahead/lookbehind"),
        ("/foo(?!bar)", "lookahead/lookbehind"),
        ("(?<=a)b", "lookahead/lookbehind"),
        ("(?>ab)c", "atomic groups"),
        ("a++", "possessive quantifiers"),
        ("(a)?(?(1)b|c)", "conditional groups"),
        (r"/foo\Z", r"\Z"),
        ("a(?#comment)", "comments"),
        ("(?x) a b", "verbose"),
        ("(?a)\\w", "ASCII"),
        ("a{1001}", "at most 1000"),
        ("(?:x(?=y))|z", "lookahead"),
        ("(x{2000})", "at most 1000"),
    ],
)
def test_check_re2(pattern: str, refused: str | None) -> None:
    why = check_re2(pattern)
    if refused is None:
        assert why is None
    else:
        assert why is not None and refused in why


UNSUPPORTED = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: partly, namespace: gateway-conformance-mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - matches: [{path: {type: RegularExpression, value: "/look(?=ahead)"}}]
    backendRefs: [{name: v1, port: 8080}]
  - matches: [{headers: [{name: x, value: "(a)\\\\1", type: RegularExpression}]}]
    backendRefs: [{name: v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /ext}}]
    filters: [{type: ExtensionRef, extensionRef: {group: example.net, kind: Magic, name: m}}]
    backendRefs: [{name: v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /mirror}}]
    filters: [{type: RequestMirror, requestMirror: {backendRef: {name: gone, port: 80}}}]
    backendRefs: [{name: v1, port: 8080}]
  - backendRefs: [{name: fine, port: 8080}]
"""


def test_what_weft_cannot_apply_is_reported_and_the_rest_of_the_route_works() -> None:
    t = table(UNSUPPORTED, known=lambda ns, name, port: name != "gone")
    key = ResourceKey("HTTPRoute", MESH, "partly")
    assert [(p.route, p.field, p.condition, p.reason) for p in t.problems] == [
        (key, "spec.rules[0].matches[0].path.value", ACCEPTED, UNSUPPORTED_VALUE),
        (key, "spec.rules[1].matches[0].headers[0].value", ACCEPTED, UNSUPPORTED_VALUE),
        (key, "spec.rules[2].filters[0].extensionRef", RESOLVED_REFS, INVALID_KIND),
        (
            key,
            "spec.rules[3].filters[0].requestMirror.backendRef",
            RESOLVED_REFS,
            BACKEND_NOT_FOUND,
        ),
    ]
    assert "lookahead" in t.problems[0].message
    # the rules with regexes RE2 refuses are left out: their requests fall to the last rule
    for req in (request("/lookahead"), request("/", headers={"x": "aa"})):
        d = route(t, req, never)
        assert isinstance(d, Forward) and d.backend_name == "fine"
    # an ExtensionRef weft does not know must not be skipped: 500
    d = route(t, request("/ext"), never)
    assert isinstance(d, Respond) and d.status == 500 and "Magic" in d.reason
    # a mirror whose Service is missing is dropped; the request itself goes on
    d = route(t, request("/mirror"), never)
    assert isinstance(d, Forward) and d.backend_name == "v1" and d.mirrors == ()


def test_an_extension_ref_on_a_backend_gets_that_backends_share_a_500() -> None:
    t = table(
        """
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {name: r, namespace: gateway-conformance-mesh}
        spec:
          parentRefs: [{group: "", kind: Service, name: echo}]
          rules:
          - backendRefs:
            - name: v1
              port: 8080
              filters: [{type: ExtensionRef, extensionRef: {group: example.net, kind: Magic, name: m}}]
        """
    )
    d = route(t, request(), never)
    assert isinstance(d, Respond) and d.status == 500
    assert [p.field for p in t.problems] == ["spec.rules[0].backendRefs[0].filters[0].extensionRef"]


def test_problems_are_reported_only_for_routes_that_attach() -> None:
    t = table(UNSUPPORTED, service="other")
    assert t.empty and t.problems == ()


def test_a_timeout_and_retry_travel_with_the_forward() -> None:
    t = table(
        """
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {name: r, namespace: gateway-conformance-mesh-consumer}
        spec:
          parentRefs: [{group: "", kind: Service, name: echo, namespace: gateway-conformance-mesh}]
          rules:
          - timeouts: {request: 100ms, backendRequest: 50ms}
            retry: {codes: [503], attempts: 2, backoff: 10ms}
            backendRefs: [{name: echo, namespace: gateway-conformance-mesh, port: 80}]
        """
    )
    d = route(t, request(client=CONSUMER), never)
    assert isinstance(d, Forward) and d.timeouts is not None and d.retry is not None
    assert (d.timeouts.request, d.timeouts.backend_request) == (0.1, 0.05)
    assert (d.retry.codes, d.retry.attempts, d.retry.backoff) == ((503,), 2, 0.01)


def test_every_regex_re2_refuses_in_a_rule_is_reported() -> None:
    t = table(
        """
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {name: r, namespace: gateway-conformance-mesh}
        spec:
          parentRefs: [{group: "", kind: Service, name: echo}]
          rules:
          - matches:
            - path: {type: RegularExpression, value: "/a(?=b)"}
              headers: [{name: x, value: "(?>y)", type: RegularExpression}]
              queryParams: [{name: q, value: "z++", type: RegularExpression}]
            - headers: [{name: x, value: "ok", type: RegularExpression}, {name: y, value: "(?<!n)o", type: RegularExpression}]
            backendRefs: [{name: v1, port: 8080}]
          - backendRefs: [{name: v2, port: 8080}]
        """
    )
    assert [p.field for p in t.problems] == [
        "spec.rules[0].matches[0].path.value",
        "spec.rules[0].matches[0].headers[0].value",
        "spec.rules[0].matches[0].queryParams[0].value",
        "spec.rules[0].matches[1].headers[1].value",
    ]
    d = route(t, request("/a", headers={"x": "ok", "y": "o"}), never)
    assert isinstance(d, Forward) and d.backend_name == "v2"
