"""HTTPRoute matching and precedence, from the Gateway API's mesh conformance tests and spec.

Each table is one conformance manifest (conformance/tests/mesh/*.yaml, or the Gateway
version of a test where the mesh suite has none) with its request/backend pairs.
"""

from __future__ import annotations

import pytest

from tests.unit.waypoint.routing_cases import MESH, never, request, table
from waypoint.routing import Forward, Respond, route


def backend_of(decision: Forward | Respond) -> str | int:
    """The backend's name, or the status answered."""
    return decision.backend_name if isinstance(decision, Forward) else decision.status


MESH_HTTPROUTE_MATCHING = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: mesh-matching
  namespace: gateway-conformance-mesh
spec:
  parentRefs:
  - group: ""
    kind: Service
    name: echo
    port: 80
  rules:
  - matches:
    - path:
        type: PathPrefix
        value: /
    - headers:
      - name: version
        value: one
    backendRefs:
    - name: echo-v1
      port: 8080
  - matches:
    - path:
        type: PathPrefix
        value: /v2
    - headers:
      - name: version
        value: two
    backendRefs:
    - name: echo-v2
      port: 8080
"""


@pytest.mark.parametrize(
    ("path", "headers", "backend"),
    [
        ("/", {}, "echo-v1"),
        ("/example", {}, "echo-v1"),
        ("/", {"Version": "one"}, "echo-v1"),
        ("/v2", {}, "echo-v2"),
        ("/v2/example", {}, "echo-v2"),
        ("/", {"Version": "two"}, "echo-v2"),
        ("/v2/", {}, "echo-v2"),
        ("/v2example", {}, "echo-v1"),
        ("/foo/v2/example", {}, "echo-v1"),
    ],
)
def test_mesh_httproute_matching(path: str, headers: dict[str, str], backend: str) -> None:
    t = table(MESH_HTTPROUTE_MATCHING)
    assert backend_of(route(t, request(path, headers=headers), never)) == backend


QUERY_PARAM_MATCHING = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata:
  name: mesh-query-param-matching
  namespace: gateway-conformance-mesh
spec:
  parentRefs:
  - {group: "", kind: Service, name: echo, port: 80}
  rules:
  - matches:
    - queryParams: [{name: animal, value: whale}]
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches:
    - queryParams: [{name: animal, value: dolphin}]
    backendRefs: [{name: echo-v2, port: 8080}]
  - matches:
    - path: {type: PathPrefix, value: /path1}
      queryParams: [{name: animal, value: whale}]
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches:
    - headers: [{name: version, value: one}]
      queryParams: [{name: animal, value: whale}]
    backendRefs: [{name: echo-v2, port: 8080}]
  - matches:
    - path: {type: PathPrefix, value: /path3}
      queryParams: [{name: animal, value: shark}]
    - path: {type: PathPrefix, value: /path4}
      headers: [{name: version, value: three}]
      queryParams: [{name: animal, value: kraken}]
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches:
    - path: {type: PathPrefix, value: /path5}
    backendRefs: [{name: echo-v1, port: 8080}]
  - matches:
    - queryParams: [{name: animal, value: hydra}]
    backendRefs: [{name: echo-v2, port: 8080}]
"""


@pytest.mark.parametrize(
    ("path", "headers", "backend"),
    [
        ("/?animal=whale", {}, "echo-v1"),
        ("/?animal=dolphin", {}, "echo-v2"),
        ("/?animal=whale&otherparam=irrelevant", {}, "echo-v1"),
        ("/?animal=dolphin&color=yellow", {}, "echo-v2"),
        ("/?color=blue", {}, 404),
        ("/?animal=dog", {}, 404),
        ("/?animal=whaledolphin", {}, 404),
        ("/", {}, 404),
        ("/path1?animal=whale", {}, "echo-v1"),
        ("/?animal=whale", {"version": "one"}, "echo-v2"),
        ("/path3?animal=shark", {}, "echo-v1"),
        ("/path4?animal=kraken", {"version": "three"}, "echo-v1"),
        ("/?animal=shark", {}, 404),
        ("/path4?animal=kraken", {}, 404),
        ("/path5?animal=hydra", {}, "echo-v1"),
        # weft's readings: values are URL-decoded, the first of a repeated param counts
        ("/?animal=%77hale", {}, "echo-v1"),
        ("/?animal=dolphin&animal=whale", {}, "echo-v2"),
        ("/?Animal=whale", {}, 404),
    ],
)
def test_mesh_httproute_query_param_matching(
    path: str, headers: dict[str, str], backend: str | int
) -> None:
    t = table(QUERY_PARAM_MATCHING)
    assert backend_of(route(t, request(path, headers=headers), never)) == backend


METHOD_MATCHING = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: method-matching, namespace: gateway-conformance-mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - matches: [{method: POST}]
    backendRefs: [{name: v1, port: 8080}]
  - matches: [{method: GET}]
    backendRefs: [{name: v2, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /path1}, method: GET}]
    backendRefs: [{name: v1, port: 8080}]
  - matches: [{headers: [{name: version, value: one}], method: PUT}]
    backendRefs: [{name: v2, port: 8080}]
  - matches:
    - {path: {type: PathPrefix, value: /path2}, headers: [{name: version, value: two}], method: POST}
    backendRefs: [{name: v3, port: 8080}]
  - matches:
    - {path: {type: PathPrefix, value: /path3}, method: PATCH}
    - {path: {type: PathPrefix, value: /path4}, headers: [{name: version, value: three}], method: DELETE}
    backendRefs: [{name: v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /path5}}]
    backendRefs: [{name: v1, port: 8080}]
  - matches: [{method: PATCH}]
    backendRefs: [{name: v2, port: 8080}]
  - matches: [{headers: [{name: version, value: four}]}]
    backendRefs: [{name: v3, port: 8080}]
"""


@pytest.mark.parametrize(
    ("method", "path", "headers", "backend"),
    [
        ("POST", "/", {}, "v1"),
        ("GET", "/", {}, "v2"),
        ("HEAD", "/", {}, 404),
        ("GET", "/path1", {}, "v1"),
        ("PUT", "/", {"version": "one"}, "v2"),
        ("POST", "/path2", {"version": "two"}, "v3"),
        ("PATCH", "/path3", {}, "v1"),
        ("DELETE", "/path4", {"version": "three"}, "v1"),
        ("PUT", "/", {}, 404),
        ("DELETE", "/path4", {}, 404),
        ("PATCH", "/path5", {}, "v1"),
        ("PATCH", "/", {"version": "four"}, "v2"),  # a method match outranks a header match
        ("get", "/", {}, 404),  # methods are case-sensitive
    ],
)
def test_httproute_method_matching(
    method: str, path: str, headers: dict[str, str], backend: str | int
) -> None:
    t = table(METHOD_MATCHING)
    assert backend_of(route(t, request(path, method=method, headers=headers), never)) == backend


HEADER_MATCHING = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: header-matching, namespace: gateway-conformance-mesh}
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
  - matches: [{headers: [{name: x-re, value: "v[0-9]+", type: RegularExpression}]}]
    backendRefs: [{name: v3, port: 8080}]
"""


@pytest.mark.parametrize(
    ("headers", "backend"),
    [
        ({"Version": "one"}, "v1"),
        ({"Version": "two"}, "v2"),
        ({"Version": "two", "Color": "orange"}, "v1"),
        ({"Version": "two", "Color": "blue"}, "v2"),
        ({"Color": "orange"}, 404),
        ({"Some-Other-Header": "one"}, 404),
        ({"Color": "blue"}, "v1"),
        ({"Color": "green"}, "v1"),
        ({"Color": "red"}, "v2"),
        ({"Color": "yellow"}, "v2"),
        ({"Color": "purple"}, 404),
        ({"VERSION": "one"}, "v1"),
        ({"version": "ONE"}, 404),  # values are case-sensitive
        ({"x-re": "v12"}, "v3"),
        ({"x-re": "v12x"}, 404),  # a regex must match the whole value
        ({"x-re": "xv1"}, 404),
        # a repeated header is matched as its values joined by ","
        ((("color", "blue"), ("Color", "green")), 404),
        ((("x-re", "v1"), ("x-re", "v2")), 404),
    ],
)
def test_httproute_header_matching(
    headers: dict[str, str] | tuple[tuple[str, str], ...], backend: str | int
) -> None:
    t = table(HEADER_MATCHING)
    assert backend_of(route(t, request(headers=headers), never)) == backend


def test_of_header_matches_naming_one_header_only_the_first_counts() -> None:
    t = table(
        """
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {name: r, namespace: gateway-conformance-mesh}
        spec:
          parentRefs: [{group: "", kind: Service, name: echo}]
          rules:
          - matches: [{headers: [{name: version, value: one}, {name: Version, value: two}]}]
            backendRefs: [{name: v1, port: 8080}]
        """
    )
    assert backend_of(route(t, request(headers={"version": "one"}), never)) == "v1"
    assert backend_of(route(t, request(headers={"version": "two"}), never)) == 404


PATH_MATCH_ORDER = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: path-matching-order, namespace: gateway-conformance-mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - matches: [{path: {type: Exact, value: /match}}]
    backendRefs: [{name: v1, port: 8080}]
  - matches: [{path: {type: Exact, value: /match/exact}}]
    backendRefs: [{name: v2, port: 8080}]
  - matches: [{path: {type: Exact, value: /match/exact/one}}]
    backendRefs: [{name: v3, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /match/}}]
    backendRefs: [{name: v3, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /match/prefix/}}]
    backendRefs: [{name: v1, port: 8080}]
  - matches: [{path: {type: PathPrefix, value: /match/prefix/one}}]
    backendRefs: [{name: v2, port: 8080}]
  - matches: [{path: {type: RegularExpression, value: "/match/re/[a-z]+"}}]
    backendRefs: [{name: re, port: 8080}]
  - matches: [{path: {type: RegularExpression, value: "/match/re/.*"}}]
    backendRefs: [{name: re-short, port: 8080}]
"""


@pytest.mark.parametrize(
    ("path", "backend"),
    [
        ("/match/exact/one", "v3"),
        ("/match/exact", "v2"),
        ("/match", "v1"),
        ("/match/prefix/one/any", "v2"),
        ("/match/prefix/any", "v1"),
        ("/match/any", "v3"),
        ("/match/", "v3"),  # the prefix /match/ is /match: it matches /match/ too
        ("/match/exact/", "v3"),  # Exact is exact: no trailing slash
        ("/MATCH", 404),
        ("/matchx", 404),
        ("/match/prefix/onex", "v1"),
        ("/match/prefix/one?q=1", "v2"),  # the query string is not part of the path
        # a RegularExpression ranks below every prefix (Istio's order)...
        ("/match/re/abc", "v3"),
        ("/nomatch", 404),
    ],
)
def test_httproute_path_match_order(path: str, backend: str | int) -> None:
    t = table(PATH_MATCH_ORDER)
    assert backend_of(route(t, request(path), never)) == backend


def test_regular_expression_paths_rank_by_length_and_match_whole_paths() -> None:
    t = table(
        """
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {name: r, namespace: gateway-conformance-mesh}
        spec:
          parentRefs: [{group: "", kind: Service, name: echo}]
          rules:
          - matches: [{path: {type: RegularExpression, value: "/re/.*"}}]
            backendRefs: [{name: short, port: 8080}]
          - matches: [{path: {type: RegularExpression, value: "/re/[a-z]+"}}]
            backendRefs: [{name: long, port: 8080}]
          - matches: [{path: {type: PathPrefix, value: /re/exact}}]
            backendRefs: [{name: prefix, port: 8080}]
        """
    )
    assert backend_of(route(t, request("/re/abc"), never)) == "long"
    assert backend_of(route(t, request("/re/ABC"), never)) == "short"
    assert backend_of(route(t, request("/re/exact/x"), never)) == "prefix"
    assert backend_of(route(t, request("/x/re/abc"), never)) == 404
    assert backend_of(route(t, request("/re/abc?x=/"), never)) == "long"


PREFIX_ELEMENTS = [
    # (prefix, path, matches)
    ("/foo", "/foo", True),
    ("/foo", "/foo/", True),
    ("/foo", "/foo/bar", True),
    ("/foo", "/foobar", False),
    ("/foo/", "/foo", True),
    ("/foo/", "/foo/bar", True),
    ("/foo/", "/foobar", False),
    ("/", "/", True),
    ("/", "/anything/at/all", True),
    ("/foo/bar", "/foo", False),
    ("/foo/bar", "/foo/bar/baz", True),
    ("/foo/bar", "/foo/barbaz", False),
    ("/foo", "/Foo", False),
    ("/foo", "/foo?x=1", True),
    ("/foo", "/foo%2Fbar", False),
]


@pytest.mark.parametrize(("prefix", "path", "matches"), PREFIX_ELEMENTS)
def test_path_prefix_matches_whole_elements(prefix: str, path: str, matches: bool) -> None:
    t = table(
        f"""
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {{name: r, namespace: gateway-conformance-mesh}}
        spec:
          parentRefs: [{{group: "", kind: Service, name: echo}}]
          rules:
          - matches: [{{path: {{type: PathPrefix, value: "{prefix}"}}}}]
            backendRefs: [{{name: v1, port: 8080}}]
        """
    )
    assert backend_of(route(t, request(path), never)) == ("v1" if matches else 404)


def test_ties_go_to_the_route_first_by_namespace_and_name_then_to_the_first_rule() -> None:
    text = """
    apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata: {name: b-route, namespace: gateway-conformance-mesh}
    spec:
      parentRefs: [{group: "", kind: Service, name: echo}]
      rules:
      - matches: [{path: {type: PathPrefix, value: /same}}]
        backendRefs: [{name: from-b, port: 8080}]
    ---
    apiVersion: gateway.networking.k8s.io/v1
    kind: HTTPRoute
    metadata: {name: a-route, namespace: gateway-conformance-mesh}
    spec:
      parentRefs: [{group: "", kind: Service, name: echo}]
      rules:
      - matches: [{path: {type: PathPrefix, value: /same}}]
        backendRefs: [{name: from-a-first, port: 8080}]
      - matches: [{path: {type: PathPrefix, value: /same}}]
        backendRefs: [{name: from-a-second, port: 8080}]
      - matches: [{path: {type: PathPrefix, value: /same/longer}}]
        backendRefs: [{name: from-a-longer, port: 8080}]
    """
    t = table(text)
    assert backend_of(route(t, request("/same/x"), never)) == "from-a-first"
    assert backend_of(route(t, request("/same/longer"), never)) == "from-a-longer"
    d = route(t, request("/same"), never)
    assert isinstance(d, Forward)
    assert (d.route_key and d.route_key.name, d.rule_index) == ("a-route", 0)


MATCHING_ACROSS_ROUTES = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: matching-part1, namespace: gateway-conformance-mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  hostnames: [example.com, example.net]
  rules:
  - matches: [{path: {type: PathPrefix, value: /}}, {headers: [{name: version, value: one}]}]
    backendRefs: [{name: v1, port: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: matching-part2, namespace: gateway-conformance-mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  hostnames: [example.com]
  rules:
  - matches: [{path: {type: PathPrefix, value: /v2}}, {headers: [{name: version, value: two}]}]
    backendRefs: [{name: v2, port: 8080}]
"""


@pytest.mark.parametrize(
    ("host", "path", "headers", "backend"),
    [
        ("example.com", "/", {}, "v1"),
        ("example.com", "/example", {}, "v1"),
        ("example.com", "/example", {"Version": "one"}, "v1"),
        ("example.com", "/v2", {}, "v2"),
        ("example.com", "/v2/example", {}, "v2"),
        ("example.com", "/", {"Version": "two"}, "v2"),
        # GEP-1294: mesh routes never look at hostnames; example.net gets part2 too
        ("example.net", "/v2", {}, "v2"),
        ("echo", "/v2", {}, "v2"),
    ],
)
def test_matching_across_routes_ignores_hostnames(
    host: str, path: str, headers: dict[str, str], backend: str
) -> None:
    t = table(MATCHING_ACROSS_ROUTES)
    assert backend_of(route(t, request(path, headers=headers, host=host), never)) == backend


def test_a_route_without_matches_takes_everything_and_reaches_its_backend() -> None:
    t = table(
        """
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata:
          name: gateway-conformance-mesh-test
          namespace: gateway-conformance-mesh
        spec:
          parentRefs:
          - group: ""
            kind: Service
            name: echo
            port: 80
          rules:
          - backendRefs:
            - name: echo-v1
              port: 8080
        """
    )
    d = route(t, request("/", host="echo"), never)
    assert d == Forward(
        MESH,
        "echo-v1",
        8080,
        "/",
        "echo",
        (),
        route_key=d.route_key if isinstance(d, Forward) else None,
        rule_index=0,
    )
    assert isinstance(d, Forward) and d.route_key is not None
    assert str(d.route_key) == "HTTPRoute gateway-conformance-mesh/gateway-conformance-mesh-test"


def test_named_rules_are_reported_in_the_decision() -> None:
    t = table(
        """
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {name: mesh-http-named-rules, namespace: gateway-conformance-mesh}
        spec:
          parentRefs: [{group: "", kind: Service, name: echo, port: 80}]
          rules:
          - name: named-rule
            matches: [{path: {type: PathPrefix, value: /named}}]
            backendRefs: [{name: echo-v1, port: 8080}]
          - matches: [{path: {type: PathPrefix, value: /unnamed}}]
            backendRefs: [{name: echo-v2, port: 8080}]
        """
    )
    named = route(t, request("/named"), never)
    unnamed = route(t, request("/unnamed"), never)
    assert isinstance(named, Forward) and isinstance(unnamed, Forward)
    assert (named.backend_name, named.rule_name, named.rule_index) == ("echo-v1", "named-rule", 0)
    assert (unnamed.backend_name, unnamed.rule_name, unnamed.rule_index) == ("echo-v2", "", 1)
    assert route(t, request("/other"), never) == Respond(404, reason="no route rule matched")


HOST_HEADER_MATCH = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: gateway-conformance-mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: echo}]
  rules:
  - matches: [{headers: [{name: Host, value: echo.example}]}]
    backendRefs: [{name: by-host, port: 8080}]
  - backendRefs: [{name: other, port: 8080}]
"""


@pytest.mark.parametrize(
    ("headers", "host", "backend"),
    [
        ({"Host": "echo.example"}, "", "by-host"),  # HTTP/1.1
        ({}, "echo.example", "by-host"),  # HTTP/2: :authority given as the request's host
        ({":authority": "echo.example"}, "", "by-host"),
        ({"Host": "elsewhere"}, "", "other"),
    ],
)
def test_a_host_header_match_sees_the_authority(
    headers: dict[str, str], host: str, backend: str
) -> None:
    t = table(HOST_HEADER_MATCH)
    assert backend_of(route(t, request(headers=headers, host=host), never)) == backend


def test_an_absolute_form_target_is_routed_and_forwarded_in_origin_form() -> None:
    d = route(table(PATH_MATCH_ORDER), request("http://echo/match/exact?x=1"), never)
    assert isinstance(d, Forward) and (d.backend_name, d.path) == ("v2", "/match/exact?x=1")
