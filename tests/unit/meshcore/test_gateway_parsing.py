"""Gateway, HTTPRoute and GRPCRoute manifests in, typed values or located errors out.

Defaults are the ones the Gateway API CRDs declare; the bad manifests are what their schema
and CEL rules refuse, plus weft's own limits (Gateway or Service parents, Service backends).
"""

from __future__ import annotations

import textwrap

import pytest

from meshcore.resources import (
    Gateway,
    GRPCRoute,
    GRPCRouteRule,
    HTTPRoute,
    HTTPRouteRule,
    Listener,
    ManifestError,
    ObjectMeta,
    ParentRef,
    ResourceKey,
)
from meshcore.resources.gateway import (
    AddressType,
    AllowedRoutes,
    BackendObjectRef,
    BackendRef,
    ExtensionRef,
    FromNamespaces,
    GatewayAddress,
    GRPCMethodMatch,
    GRPCRouteMatch,
    HeaderMatch,
    HTTPHeader,
    HTTPMethod,
    HTTPRouteMatch,
    ListenerProtocol,
    MatchType,
    ParentKind,
    PathMatch,
    PathMatchType,
    PathModifier,
    PathModifierType,
    QueryParamMatch,
    RequestHeaderModifier,
    RequestMirror,
    RequestRedirect,
    ResponseHeaderModifier,
    Retry,
    RouteGroupKind,
    Timeouts,
    URLRewrite,
    parse_duration,
)
from tests.manifest_parsing import ManifestParser

SOURCE = "routes.yaml"
GW_API = "gateway.networking.k8s.io/v1"


_parser = ManifestParser(SOURCE)
parse, parse_one, only_error = _parser.parse, _parser.parse_one, _parser.only_error


def manifest(kind: str, spec: str, *, api: str = GW_API, name: str = "r") -> str:
    """A manifest in namespace `shop` around a `spec:` body given at column 0."""
    body = textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ")
    return (
        f"apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: {name}\n  namespace: shop\n"
        f"spec:\n{body}\n"
    )


def gateway(spec: str, **kwargs: str) -> str:
    return manifest("Gateway", spec, **kwargs)


def http_route(spec: str, **kwargs: str) -> str:
    return manifest("HTTPRoute", spec, **kwargs)


def grpc_route(spec: str, **kwargs: str) -> str:
    return manifest("GRPCRoute", spec, **kwargs)


MESH_PARENT = "parentRefs: [{group: '', kind: Service, name: reviews, port: 9080}]\n"


def mesh_rule(rule: str, *, kind: str = "HTTPRoute") -> str:
    """A GAMMA route on Service shop/reviews with one rule given in YAML flow style."""
    return manifest(kind, f"{MESH_PARENT}rules:\n- {rule}")


def meta(name: str = "r") -> ObjectMeta:
    return ObjectMeta(name, "shop")


REVIEWS = ParentRef(ParentKind.SERVICE, "reviews", "shop", port=9080)


# --- Gateway: good manifests ----------------------------------------------------------------------

GOOD_GATEWAYS: list[tuple[str, str, Gateway]] = [
    (
        "a waypoint: weft's class and an HBONE listener",
        gateway(
            """
            gatewayClassName: weft-waypoint
            listeners:
            - name: mesh
              port: 15008
              protocol: HBONE
            """,
            name="waypoint",
        ),
        Gateway(
            meta("waypoint"),
            "weft-waypoint",
            (Listener("mesh", 15008, ListenerProtocol.HBONE),),
        ),
    ),
    (
        "an ingress with hostnames, route admission rules and addresses (v1beta1)",
        gateway(
            """
            gatewayClassName: public
            listeners:
            - name: http
              port: 80
              protocol: HTTP
              hostname: "*.example.com"
              allowedRoutes:
                namespaces:
                  from: All
            - name: https
              port: 443
              protocol: HTTPS
              hostname: shop.example.com
              allowedRoutes:
                namespaces:
                  from: Selector
                  selector:
                    matchLabels: {shared-gateway-access: "true"}
                kinds:
                - kind: HTTPRoute
                - kind: GRPCRoute
                  group: gateway.networking.k8s.io
            - name: tls
              port: 8443
              protocol: TLS
            - name: tcp
              port: 5432
              protocol: TCP
              allowedRoutes: {}
            - name: dns
              port: 53
              protocol: UDP
            addresses:
            - value: 198.19.0.50
            - type: IPAddress
              value: "fd00::50"
            - type: Hostname
              value: gw.example.com
            - type: NamedAddress
              value: my-pool
            """,
            api="gateway.networking.k8s.io/v1beta1",
            name="ingress",
        ),
        Gateway(
            meta("ingress"),
            "public",
            (
                Listener(
                    "http",
                    80,
                    ListenerProtocol.HTTP,
                    "*.example.com",
                    AllowedRoutes(FromNamespaces.ALL),
                ),
                Listener(
                    "https",
                    443,
                    ListenerProtocol.HTTPS,
                    "shop.example.com",
                    AllowedRoutes(
                        FromNamespaces.SELECTOR,
                        {"shared-gateway-access": "true"},
                        (RouteGroupKind("HTTPRoute"), RouteGroupKind("GRPCRoute")),
                    ),
                ),
                Listener("tls", 8443, ListenerProtocol.TLS),
                Listener("tcp", 5432, ListenerProtocol.TCP),
                Listener("dns", 53, ListenerProtocol.UDP),
            ),
            (
                GatewayAddress("198.19.0.50"),
                GatewayAddress("fd00::50"),
                GatewayAddress("gw.example.com", AddressType.HOSTNAME),
                GatewayAddress("my-pool", AddressType.NAMED_ADDRESS),
            ),
        ),
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [pytest.param(m, e, id=i) for i, m, e in GOOD_GATEWAYS]
)
def test_gateway_round_trips_to_its_typed_value(text: str, expected: Gateway) -> None:
    resource = parse_one(text)

    assert resource == expected
    assert resource.key == ResourceKey("Gateway", "shop", expected.metadata.name)


@pytest.mark.parametrize(
    ("class_name", "waypoint"), [("weft-waypoint", True), ("istio-waypoint", False)]
)
def test_only_weft_s_gateway_class_makes_a_waypoint(class_name: str, waypoint: bool) -> None:
    gw = parse_one(
        gateway(
            f"gatewayClassName: {class_name}\nlisteners: [{{name: mesh, port: 15008, protocol: HBONE}}]"
        )
    )

    assert isinstance(gw, Gateway)
    assert gw.is_waypoint is waypoint


def test_gateway_tls_and_infrastructure_are_accepted_and_reported_as_ignored() -> None:
    (parsed,) = parse(
        gateway(
            """
            gatewayClassName: weft-waypoint
            infrastructure:
              labels: {team: mesh}
              annotations: {note: hi}
            listeners:
            - name: https
              port: 443
              protocol: HTTPS
              tls:
                mode: Terminate
                certificateRefs: [{name: cert}]
            """
        )
    )

    assert sorted(parsed.ignored_fields) == ["spec.infrastructure", "spec.listeners[0].tls"]


# --- HTTPRoute: good manifests --------------------------------------------------------------------

GOOD_HTTP_ROUTES: list[tuple[str, str, HTTPRoute]] = [
    (
        "a GAMMA canary split with header and method matches and timeouts",
        http_route(
            """
            parentRefs:
            - group: ""
              kind: Service
              name: reviews
              port: 9080
            rules:
            - name: canary
              matches:
              - headers:
                - name: x-canary
                  value: "true"
                method: GET
              - path:
                  type: Exact
                  value: /reviews/1
              backendRefs:
              - name: reviews-v1
                port: 9080
                weight: 90
              - name: reviews-v2
                port: 9080
                weight: 10
              timeouts:
                request: 10s
                backendRequest: 500ms
            - backendRefs:
              - name: reviews-v1
                port: 9080
            """
        ),
        HTTPRoute(
            meta(),
            (REVIEWS,),
            (
                HTTPRouteRule(
                    matches=(
                        HTTPRouteMatch(
                            headers=(HeaderMatch("x-canary", "true"),), method=HTTPMethod.GET
                        ),
                        HTTPRouteMatch(PathMatch(PathMatchType.EXACT, "/reviews/1")),
                    ),
                    backend_refs=(
                        BackendRef("reviews-v1", "shop", 9080, 90),
                        BackendRef("reviews-v2", "shop", 9080, 10),
                    ),
                    timeouts=Timeouts(10.0, 0.5),
                    name="canary",
                ),
                HTTPRouteRule(backend_refs=(BackendRef("reviews-v1", "shop", 9080),)),
            ),
        ),
    ),
    (
        "parentRefs alone: one rule matching every request, as the API server defaults it",
        http_route("parentRefs: [{name: ingress}]", api="gateway.networking.k8s.io/v1beta1"),
        HTTPRoute(
            meta(),
            (ParentRef(ParentKind.GATEWAY, "ingress", "shop"),),
            (HTTPRouteRule(matches=(HTTPRouteMatch(PathMatch(PathMatchType.PATH_PREFIX, "/")),)),),
        ),
    ),
    (
        "a Gateway parent in another namespace by listener, with hostnames and query matches",
        http_route(
            """
            parentRefs:
            - name: ingress
              namespace: infra
              sectionName: https
            - name: ingress
              namespace: infra
              sectionName: http
              port: 80
            hostnames: ["shop.example.com", "*.shop.example.com"]
            rules:
            - matches:
              - path: {type: RegularExpression, value: "^/items/[0-9]+$"}
                queryParams:
                - {name: page, value: "1"}
                - {type: RegularExpression, name: sort, value: "^(asc|desc)$"}
                headers:
                - {type: RegularExpression, name: user-agent, value: ".*curl.*"}
              - path: {value: /api}
              - path: {type: Exact}
              backendRefs:
              - {name: items, namespace: catalog, port: 8080, weight: 0}
            """
        ),
        HTTPRoute(
            meta(),
            (
                ParentRef(ParentKind.GATEWAY, "ingress", "infra", "https"),
                ParentRef(ParentKind.GATEWAY, "ingress", "infra", "http", 80),
            ),
            (
                HTTPRouteRule(
                    matches=(
                        HTTPRouteMatch(
                            PathMatch(PathMatchType.REGULAR_EXPRESSION, "^/items/[0-9]+$"),
                            headers=(
                                HeaderMatch("user-agent", ".*curl.*", MatchType.REGULAR_EXPRESSION),
                            ),
                            query_params=(
                                QueryParamMatch("page", "1"),
                                QueryParamMatch(
                                    "sort", "^(asc|desc)$", MatchType.REGULAR_EXPRESSION
                                ),
                            ),
                        ),
                        HTTPRouteMatch(PathMatch(PathMatchType.PATH_PREFIX, "/api")),
                        HTTPRouteMatch(PathMatch(PathMatchType.EXACT, "/")),
                    ),
                    backend_refs=(BackendRef("items", "catalog", 8080, 0),),
                ),
            ),
            ("shop.example.com", "*.shop.example.com"),
        ),
    ),
    (
        "every filter type, on rules and on a backend",
        http_route(
            """
            parentRefs: [{group: "", kind: Service, name: reviews, port: 9080}]
            rules:
            - matches: [{path: {type: PathPrefix, value: /v1}}]
              filters:
              - type: RequestHeaderModifier
                requestHeaderModifier:
                  set: [{name: x-env, value: prod}]
                  add: [{name: x-trace, value: "on"}]
                  remove: [x-debug]
              - type: ResponseHeaderModifier
                responseHeaderModifier:
                  remove: [server]
              - type: URLRewrite
                urlRewrite:
                  hostname: reviews.internal
                  path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}
              - type: RequestMirror
                requestMirror:
                  backendRef: {name: shadow, port: 9080}
                  fraction: {numerator: 1, denominator: 8}
              - type: RequestMirror
                requestMirror:
                  backendRef: {name: audit, namespace: ops, port: 80}
                  percent: 5
              - type: ExtensionRef
                extensionRef: {group: weft.dev, kind: RateLimit, name: gentle}
              backendRefs:
              - name: reviews-v2
                port: 9080
                filters:
                - type: RequestHeaderModifier
                  requestHeaderModifier: {set: [{name: x-version, value: v2}]}
            - matches: [{path: {value: /old}}]
              filters:
              - type: RequestRedirect
                requestRedirect:
                  scheme: https
                  hostname: new.example.com
                  port: 8443
                  statusCode: 301
                  path: {type: ReplaceFullPath, replaceFullPath: /new}
            - matches: [{path: {value: /moved}}]
              filters:
              - type: RequestRedirect
                requestRedirect: {}
            """
        ),
        HTTPRoute(
            meta(),
            (REVIEWS,),
            (
                HTTPRouteRule(
                    matches=(HTTPRouteMatch(PathMatch(PathMatchType.PATH_PREFIX, "/v1")),),
                    filters=(
                        RequestHeaderModifier(
                            set=(HTTPHeader("x-env", "prod"),),
                            add=(HTTPHeader("x-trace", "on"),),
                            remove=("x-debug",),
                        ),
                        ResponseHeaderModifier(remove=("server",)),
                        URLRewrite(
                            "reviews.internal",
                            PathModifier(PathModifierType.REPLACE_PREFIX_MATCH, "/v2"),
                        ),
                        RequestMirror(BackendObjectRef("shadow", "shop", 9080), 12.5),
                        RequestMirror(BackendObjectRef("audit", "ops", 80), 5.0),
                        ExtensionRef("weft.dev", "RateLimit", "gentle"),
                    ),
                    backend_refs=(
                        BackendRef(
                            "reviews-v2",
                            "shop",
                            9080,
                            filters=(RequestHeaderModifier(set=(HTTPHeader("x-version", "v2"),)),),
                        ),
                    ),
                ),
                HTTPRouteRule(
                    matches=(HTTPRouteMatch(PathMatch(value="/old")),),
                    filters=(
                        RequestRedirect(
                            "https",
                            "new.example.com",
                            PathModifier(PathModifierType.REPLACE_FULL_PATH, "/new"),
                            8443,
                            301,
                        ),
                    ),
                ),
                HTTPRouteRule(
                    matches=(HTTPRouteMatch(PathMatch(value="/moved")),),
                    filters=(RequestRedirect(),),
                ),
            ),
        ),
    ),
    (
        "retries, a disabled request timeout and a rule with no backends",
        mesh_rule(
            "{timeouts: {request: 0s, backendRequest: 1h30m}, "
            "retry: {codes: [500, 503], attempts: 3, backoff: 100ms}}"
        ),
        HTTPRoute(
            meta(),
            (REVIEWS,),
            (
                HTTPRouteRule(
                    timeouts=Timeouts(0.0, 5400.0),
                    retry=Retry((500, 503), 3, 0.1),
                ),
            ),
        ),
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [pytest.param(m, e, id=i) for i, m, e in GOOD_HTTP_ROUTES]
)
def test_http_route_round_trips_to_its_typed_value(text: str, expected: HTTPRoute) -> None:
    resource = parse_one(text)

    assert resource == expected
    assert resource.key == ResourceKey("HTTPRoute", "shop", "r")


def test_filters_know_their_type() -> None:
    route = parse_one(
        mesh_rule(
            "{filters: [{type: URLRewrite, urlRewrite: {hostname: a}}, "
            "{type: ResponseHeaderModifier, responseHeaderModifier: {}}]}"
        )
    )

    assert isinstance(route, HTTPRoute)
    assert [f.type.value for f in route.rules[0].filters] == [
        "URLRewrite",
        "ResponseHeaderModifier",
    ]


def test_session_persistence_and_default_gateways_are_reported_as_ignored() -> None:
    (parsed,) = parse(
        http_route(
            f"{MESH_PARENT}useDefaultGateways: All\n"
            "rules: [{sessionPersistence: {type: Cookie}}]"
        )
    )

    assert sorted(parsed.ignored_fields) == [
        "spec.rules[0].sessionPersistence",
        "spec.useDefaultGateways",
    ]


# --- GRPCRoute: good manifests --------------------------------------------------------------------

GOOD_GRPC_ROUTES: list[tuple[str, str, GRPCRoute]] = [
    (
        "a GAMMA route by service and method, with a header match",
        grpc_route(
            """
            parentRefs: [{group: "", kind: Service, name: greeter, port: 50051}]
            hostnames: [greeter.shop.svc.cluster.local]
            rules:
            - matches:
              - method: {service: helloworld.Greeter, method: SayHello}
                headers: [{name: x-tenant, value: blue}]
              - method: {service: helloworld.Greeter}
              - method: {method: Check}
              - headers: [{type: RegularExpression, name: x-debug, value: "^1$"}]
              filters:
              - type: RequestHeaderModifier
                requestHeaderModifier: {add: [{name: x-via, value: weft}]}
              backendRefs:
              - {name: greeter-v2, port: 50051, weight: 3}
            - backendRefs: [{name: greeter, port: 50051}]
            """
        ),
        GRPCRoute(
            meta(),
            (ParentRef(ParentKind.SERVICE, "greeter", "shop", port=50051),),
            (
                GRPCRouteRule(
                    matches=(
                        GRPCRouteMatch(
                            GRPCMethodMatch(service="helloworld.Greeter", method="SayHello"),
                            (HeaderMatch("x-tenant", "blue"),),
                        ),
                        GRPCRouteMatch(GRPCMethodMatch(service="helloworld.Greeter")),
                        GRPCRouteMatch(GRPCMethodMatch(method="Check")),
                        GRPCRouteMatch(
                            headers=(HeaderMatch("x-debug", "^1$", MatchType.REGULAR_EXPRESSION),)
                        ),
                    ),
                    filters=(RequestHeaderModifier(add=(HTTPHeader("x-via", "weft"),)),),
                    backend_refs=(BackendRef("greeter-v2", "shop", 50051, 3),),
                ),
                GRPCRouteRule(backend_refs=(BackendRef("greeter", "shop", 50051),)),
            ),
            ("greeter.shop.svc.cluster.local",),
        ),
    ),
    (
        "regular-expression method matching, served as v1alpha2",
        grpc_route(
            "parentRefs: [{name: ingress}]\n"
            "rules: [{matches: [{method: {type: RegularExpression, service: 'helloworld\\..*'}}]}]",
            api="gateway.networking.k8s.io/v1alpha2",
        ),
        GRPCRoute(
            meta(),
            (ParentRef(ParentKind.GATEWAY, "ingress", "shop"),),
            (
                GRPCRouteRule(
                    matches=(
                        GRPCRouteMatch(
                            GRPCMethodMatch(MatchType.REGULAR_EXPRESSION, service="helloworld\\..*")
                        ),
                    )
                ),
            ),
        ),
    ),
    (
        "a route with parents only has no rules",
        grpc_route("parentRefs: [{name: ingress}]"),
        GRPCRoute(meta(), (ParentRef(ParentKind.GATEWAY, "ingress", "shop"),)),
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [pytest.param(m, e, id=i) for i, m, e in GOOD_GRPC_ROUTES]
)
def test_grpc_route_round_trips_to_its_typed_value(text: str, expected: GRPCRoute) -> None:
    resource = parse_one(text)

    assert resource == expected
    assert resource.key == ResourceKey("GRPCRoute", "shop", "r")


# --- durations (GEP-2257's test vectors) ----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0h", 0.0),
        ("0s", 0.0),
        ("0h0m0s", 0.0),
        ("1h", 3600.0),
        ("30m", 1800.0),
        ("10s", 10.0),
        ("500ms", 0.5),
        ("2h30m", 9000.0),
        ("150m", 9000.0),
        ("7230s", 7230.0),
        ("1h30m10s", 5410.0),
        ("10s30m1h", 5410.0),
        ("100ms200ms300ms", 0.6),
        ("00060m", 3600.0),
        ("99999h", 359996400.0),
    ],
)
def test_gateway_api_durations_parse_to_seconds(text: str, seconds: float) -> None:
    assert parse_duration(text, "f") == pytest.approx(seconds)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "1",
        "1m1",
        "1d",
        "1h30m10s20ms50h",
        "999999h",
        "1.5h",
        "-15m",
        "1us",
        "10 s",
        "1H",
        "10s\n",
    ],
)
def test_invalid_gateway_api_durations_are_refused(text: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_duration(text, "spec.rules[0].timeouts.request")

    assert caught.value.field == "spec.rules[0].timeouts.request"


# --- bad manifests: each names file, resource and field path ------------------------------------

GW = "Gateway shop/r"
HR = "HTTPRoute shop/r"
GR = "GRPCRoute shop/r"
ONE_LISTENER = "gatewayClassName: c\nlisteners: [{name: l, port: 80, protocol: HTTP}]\n"
_DURATION = (
    "is not a Gateway API duration (1 to 4 parts, each up to 5 digits and a unit h, m, s or ms, "
    "such as 10s, 500ms or 1h30m)"
)


def listener(fields: str) -> str:
    return gateway(f"gatewayClassName: c\nlisteners: [{{{fields}}}]")


BAD_MANIFESTS = [
    # (id, manifest, "resource: field: reason" after the file name)
    (
        "Istio's own Gateway kind",
        gateway(ONE_LISTENER, api="networking.istio.io/v1"),
        f"{GW}: apiVersion: Gateway is served as gateway.networking.k8s.io/v1 or "
        "gateway.networking.k8s.io/v1beta1, not 'networking.istio.io/v1'",
    ),
    (
        "gateway without spec",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: Gateway\nmetadata: {name: r, namespace: shop}\n",
        f"{GW}: spec: required field is missing",
    ),
    (
        "gateway without a class",
        gateway("listeners: [{name: l, port: 80, protocol: HTTP}]"),
        f"{GW}: spec.gatewayClassName: required field is missing",
    ),
    (
        "gateway without listeners",
        gateway("gatewayClassName: weft-waypoint"),
        f"{GW}: spec.listeners: a Gateway needs at least one listener",
    ),
    (
        "listener names repeated",
        gateway(
            "gatewayClassName: c\nlisteners:\n- {name: web, port: 80, protocol: HTTP}\n"
            "- {name: web, port: 81, protocol: HTTP}"
        ),
        f"{GW}: spec.listeners: duplicate listener name 'web'",
    ),
    (
        "listeners on the same port, protocol and hostname",
        gateway(
            "gatewayClassName: c\nlisteners:\n- {name: a, port: 80, protocol: HTTP}\n"
            "- {name: b, port: 80, protocol: HTTP}"
        ),
        f"{GW}: spec.listeners: duplicate listener port/protocol/hostname '80/HTTP/*'",
    ),
    (
        "listener port zero",
        listener("name: l, port: 0, protocol: HTTP"),
        f"{GW}: spec.listeners[0].port: must be at least 1, got 0",
    ),
    (
        "listener port above 65535",
        listener("name: l, port: 65536, protocol: HTTP"),
        f"{GW}: spec.listeners[0].port: must be at most 65535, got 65536",
    ),
    (
        "listener port as a string",
        listener("name: l, port: '80', protocol: HTTP"),
        f"{GW}: spec.listeners[0].port: expected an integer, got string",
    ),
    (
        "listener without a protocol",
        listener("name: l, port: 80"),
        f"{GW}: spec.listeners[0].protocol: required field is missing",
    ),
    (
        "listener protocol in lowercase",
        listener("name: l, port: 80, protocol: http"),
        f"{GW}: spec.listeners[0].protocol: must be HTTP, HTTPS, TLS, TCP, UDP or HBONE, got 'http'",
    ),
    (
        "listener name with an uppercase letter",
        listener("name: Web, port: 80, protocol: HTTP"),
        f"{GW}: spec.listeners[0].name: 'Web' is not a valid DNS-1123 subdomain (lowercase "
        "letters, digits, '-' and '.', at most 253 characters)",
    ),
    (
        "hostname on a TCP listener",
        listener("name: l, port: 5432, protocol: TCP, hostname: db.example.com"),
        f"{GW}: spec.listeners[0].hostname: must not be given for protocol TCP",
    ),
    (
        "tls on an HTTP listener",
        listener("name: l, port: 80, protocol: HTTP, tls: {mode: Terminate}"),
        f"{GW}: spec.listeners[0].tls: must not be given for protocol HTTP",
    ),
    (
        "a listener hostname with uppercase letters",
        listener("name: l, port: 80, protocol: HTTP, hostname: Shop.example.com"),
        f"{GW}: spec.listeners[0].hostname: 'Shop.example.com' is not a valid hostname (an "
        "optional '*.' then lowercase DNS labels joined by '.'; not an IP address)",
    ),
    (
        "a listener hostname that is an IP address",
        listener("name: l, port: 80, protocol: HTTP, hostname: 10.0.0.1"),
        f"{GW}: spec.listeners[0].hostname: '10.0.0.1' is not a valid hostname (an optional "
        "'*.' then lowercase DNS labels joined by '.'; not an IP address)",
    ),
    (
        "routes from selected namespaces without a selector",
        listener(
            "name: l, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Selector}}"
        ),
        f"{GW}: spec.listeners[0].allowedRoutes.namespaces.selector: required when from is Selector",
    ),
    (
        "routes from no namespace",
        listener("name: l, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: None}}"),
        f"{GW}: spec.listeners[0].allowedRoutes.namespaces.from: must be All, Selector or Same, "
        "got 'None'",
    ),
    (
        "a route kind without its kind",
        listener("name: l, port: 80, protocol: HTTP, allowedRoutes: {kinds: [{group: x}]}"),
        f"{GW}: spec.listeners[0].allowedRoutes.kinds[0].kind: required field is missing",
    ),
    (
        "a namespace selector with expressions",
        listener(
            "name: l, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Selector, "
            "selector: {matchExpressions: [{key: a, operator: Exists}]}}}"
        ),
        f"{GW}: spec.listeners[0].allowedRoutes.namespaces.selector.matchExpressions: not "
        "supported here; use matchLabels",
    ),
    (
        "an address that is not an IP",
        gateway(f"{ONE_LISTENER}addresses: [{{value: 10.0.0.300}}]"),
        f"{GW}: spec.addresses[0].value: '10.0.0.300' is not an IP address",
    ),
    (
        "an address of an unknown type",
        gateway(f"{ONE_LISTENER}addresses: [{{type: example.com/pool, value: a}}]"),
        f"{GW}: spec.addresses[0].type: must be IPAddress, Hostname or NamedAddress, got "
        "'example.com/pool'",
    ),
    (
        "the same address twice",
        gateway(
            f"{ONE_LISTENER}addresses: [{{value: 10.0.0.1}}, {{type: IPAddress, value: 10.0.0.1}}]"
        ),
        f"{GW}: spec.addresses: duplicate address 'IPAddress 10.0.0.1'",
    ),
    (
        "a misspelled listener field",
        listener("name: l, port: 80, protocol: HTTP, hostnmae: a"),
        f"{GW}: spec.listeners[0].hostnmae: unknown field",
    ),
    (
        "route without parents",
        http_route("rules: [{backendRefs: [{name: a, port: 80}]}]"),
        f"{HR}: spec.parentRefs: a route needs at least one parent (a Gateway or a Service)",
    ),
    (
        "route without spec",
        "apiVersion: gateway.networking.k8s.io/v1\nkind: HTTPRoute\nmetadata: {name: r, namespace: shop}\n",
        f"{HR}: spec: required field is missing",
    ),
    (
        "GRPCRoute served as v1beta1",
        grpc_route("parentRefs: [{name: g}]", api="gateway.networking.k8s.io/v1beta1"),
        f"{GR}: apiVersion: GRPCRoute is served as gateway.networking.k8s.io/v1 or "
        "gateway.networking.k8s.io/v1alpha2, not 'gateway.networking.k8s.io/v1beta1'",
    ),
    (
        "a Service parent left in the Gateway API group",
        http_route("parentRefs: [{kind: Service, name: reviews}]"),
        f"{HR}: spec.parentRefs[0].group: a Service is in group '' (the core group: write "
        "group: \"\"), not 'gateway.networking.k8s.io'",
    ),
    (
        "a Gateway parent in the core group",
        http_route("parentRefs: [{group: '', name: ingress}]"),
        f"{HR}: spec.parentRefs[0].group: a Gateway is in group 'gateway.networking.k8s.io', "
        "not ''",
    ),
    (
        "a parent of another kind",
        http_route("parentRefs: [{kind: Mesh, name: m}]"),
        f"{HR}: spec.parentRefs[0].kind: must be Gateway or Service, got 'Mesh'",
    ),
    (
        "a parent port of zero",
        http_route("parentRefs: [{group: '', kind: Service, name: a, port: 0}]"),
        f"{HR}: spec.parentRefs[0].port: must be at least 1, got 0",
    ),
    (
        "a parent without a name",
        http_route("parentRefs: [{kind: Gateway}]"),
        f"{HR}: spec.parentRefs[0].name: required field is missing",
    ),
    (
        "a parent namespace that is not a DNS label",
        http_route("parentRefs: [{name: a, namespace: Infra}]"),
        f"{HR}: spec.parentRefs[0].namespace: 'Infra' is not a valid DNS-1123 label (lowercase "
        "letters, digits and '-', starting and ending with a letter or digit, at most 63 "
        "characters)",
    ),
    (
        "the same parent twice",
        http_route("parentRefs: [{name: gw, sectionName: a}, {name: gw, sectionName: a}]"),
        f"{HR}: spec.parentRefs[1]: Gateway shop/gw is referenced more than once; give each "
        "reference its own sectionName or port",
    ),
    (
        "the same parent twice, once as a whole",
        http_route(
            "parentRefs: [{group: '', kind: Service, name: s, port: 80}, "
            "{group: '', kind: Service, name: s, namespace: shop}]"
        ),
        f"{HR}: spec.parentRefs[1]: Service shop/s is referenced more than once; give each "
        "reference its own sectionName or port",
    ),
    (
        "a backend without a port",
        mesh_rule("{backendRefs: [{name: reviews-v1}]}"),
        f"{HR}: spec.rules[0].backendRefs[0].port: required for a Service backend",
    ),
    (
        "a backend of another kind",
        mesh_rule(
            "{backendRefs: [{group: networking.istio.io, kind: ServiceEntry, name: e, port: 80}]}"
        ),
        f"{HR}: spec.rules[0].backendRefs[0].kind: weft routes to Services only, not 'ServiceEntry'",
    ),
    (
        "a Service backend in another group",
        mesh_rule("{backendRefs: [{group: core, name: a, port: 80}]}"),
        f"{HR}: spec.rules[0].backendRefs[0].group: a Service is in the core group: write "
        "group: \"\", not 'core'",
    ),
    (
        "a negative weight",
        mesh_rule("{backendRefs: [{name: a, port: 80, weight: -1}]}"),
        f"{HR}: spec.rules[0].backendRefs[0].weight: must be at least 0, got -1",
    ),
    (
        "a weight above a million",
        mesh_rule("{backendRefs: [{name: a, port: 80, weight: 1000001}]}"),
        f"{HR}: spec.rules[0].backendRefs[0].weight: must be at most 1000000, got 1000001",
    ),
    (
        "a backend port above 65535",
        mesh_rule("{backendRefs: [{name: a, port: 70000}]}"),
        f"{HR}: spec.rules[0].backendRefs[0].port: must be at most 65535, got 70000",
    ),
    (
        "a backend name with a dot",
        mesh_rule("{backendRefs: [{name: a.b, port: 80}]}"),
        f"{HR}: spec.rules[0].backendRefs[0].name: 'a.b' is not a valid DNS-1123 label "
        "(lowercase letters, digits and '-', starting and ending with a letter or digit, at "
        "most 63 characters)",
    ),
    (
        "a relative path",
        mesh_rule("{matches: [{path: {value: api}}]}"),
        f"{HR}: spec.rules[0].matches[0].path.value: 'api' must be an absolute path starting "
        "with '/'",
    ),
    (
        "an exact path with a double slash",
        mesh_rule("{matches: [{path: {type: Exact, value: /a//b}}]}"),
        f"{HR}: spec.rules[0].matches[0].path.value: '/a//b' must not contain '//'",
    ),
    (
        "a path prefix ending in /..",
        mesh_rule("{matches: [{path: {value: /a/..}}]}"),
        f"{HR}: spec.rules[0].matches[0].path.value: '/a/..' must not end with '/..'",
    ),
    (
        "a path with a space",
        mesh_rule("{matches: [{path: {value: '/a b'}}]}"),
        f"{HR}: spec.rules[0].matches[0].path.value: '/a b' holds characters not allowed in a "
        "URL path (percent-encode them)",
    ),
    (
        "a path match type that does not exist",
        mesh_rule("{matches: [{path: {type: Prefix, value: /}}]}"),
        f"{HR}: spec.rules[0].matches[0].path.type: must be Exact, PathPrefix or "
        "RegularExpression, got 'Prefix'",
    ),
    (
        "a path regex that does not compile",
        mesh_rule("{matches: [{path: {type: RegularExpression, value: '/(a'}}]}"),
        f"{HR}: spec.rules[0].matches[0].path.value: '/(a' is not a valid regular expression: "
        "missing ), unterminated subpattern at position 1",
    ),
    (
        "a header regex that does not compile",
        mesh_rule("{matches: [{headers: [{type: RegularExpression, name: x, value: '[a-'}]}]}"),
        f"{HR}: spec.rules[0].matches[0].headers[0].value: '[a-' is not a valid regular "
        "expression: unterminated character set at position 0",
    ),
    (
        "a header name with a space",
        mesh_rule("{matches: [{headers: [{name: 'x y', value: a}]}]}"),
        f"{HR}: spec.rules[0].matches[0].headers[0].name: 'x y' is not a valid HTTP header name",
    ),
    (
        "an empty header value",
        mesh_rule("{matches: [{headers: [{name: x, value: ''}]}]}"),
        f"{HR}: spec.rules[0].matches[0].headers[0].value: must not be empty",
    ),
    (
        "the same header matched twice",
        mesh_rule("{matches: [{headers: [{name: x, value: a}, {name: x, value: b}]}]}"),
        f"{HR}: spec.rules[0].matches[0].headers: duplicate name 'x'",
    ),
    (
        "a query parameter without a value",
        mesh_rule("{matches: [{queryParams: [{name: page}]}]}"),
        f"{HR}: spec.rules[0].matches[0].queryParams[0].value: required field is missing",
    ),
    (
        "a method in lowercase",
        mesh_rule("{matches: [{method: get}]}"),
        f"{HR}: spec.rules[0].matches[0].method: must be GET, HEAD, POST, PUT, DELETE, CONNECT, "
        "OPTIONS, TRACE or PATCH, got 'get'",
    ),
    (
        "a filter whose type names another field",
        mesh_rule(
            "{filters: [{type: RequestHeaderModifier, urlRewrite: {hostname: a}, "
            "requestHeaderModifier: {}}]}"
        ),
        f"{HR}: spec.rules[0].filters[0].urlRewrite: must not be given when type is "
        "RequestHeaderModifier",
    ),
    (
        "a filter without the field its type names",
        mesh_rule("{filters: [{type: RequestMirror}]}"),
        f"{HR}: spec.rules[0].filters[0].requestMirror: required when type is RequestMirror",
    ),
    (
        "a filter without a type",
        mesh_rule("{filters: [{requestHeaderModifier: {}}]}"),
        f"{HR}: spec.rules[0].filters[0].type: required field is missing",
    ),
    (
        "the CORS filter",
        mesh_rule("{filters: [{type: CORS, cors: {allowOrigins: ['*']}}]}"),
        f"{HR}: spec.rules[0].filters[0].type: the CORS filter is not supported by weft yet",
    ),
    (
        "a filter type that does not exist",
        mesh_rule("{filters: [{type: RateLimit}]}"),
        f"{HR}: spec.rules[0].filters[0].type: must be RequestHeaderModifier, "
        "ResponseHeaderModifier, RequestRedirect, URLRewrite, RequestMirror or ExtensionRef, "
        "got 'RateLimit'",
    ),
    (
        "a header modifier twice in one rule",
        mesh_rule(
            "{filters: [{type: RequestHeaderModifier, requestHeaderModifier: {remove: [a]}}, "
            "{type: RequestHeaderModifier, requestHeaderModifier: {remove: [b]}}]}"
        ),
        f"{HR}: spec.rules[0].filters[1]: RequestHeaderModifier may appear only once",
    ),
    (
        "a header modifier twice on one backend",
        mesh_rule(
            "{backendRefs: [{name: a, port: 80, filters: ["
            "{type: ResponseHeaderModifier, responseHeaderModifier: {}}, "
            "{type: ResponseHeaderModifier, responseHeaderModifier: {}}]}]}"
        ),
        f"{HR}: spec.rules[0].backendRefs[0].filters[1]: ResponseHeaderModifier may appear only "
        "once",
    ),
    (
        "a redirect and a rewrite together",
        mesh_rule(
            "{filters: [{type: RequestRedirect, requestRedirect: {}}, "
            "{type: URLRewrite, urlRewrite: {}}]}"
        ),
        f"{HR}: spec.rules[0].filters: RequestRedirect and URLRewrite may not be used together",
    ),
    (
        "a redirect with backends",
        mesh_rule(
            "{filters: [{type: RequestRedirect, requestRedirect: {}}], "
            "backendRefs: [{name: a, port: 80}]}"
        ),
        f"{HR}: spec.rules[0].backendRefs: must not be given with a RequestRedirect filter",
    ),
    (
        "a prefix rewrite with an exact match",
        mesh_rule(
            "{matches: [{path: {type: Exact, value: /a}}], filters: [{type: URLRewrite, "
            "urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: /b}}}]}"
        ),
        f"{HR}: spec.rules[0].filters: a ReplacePrefixMatch path modifier needs exactly one "
        "match, of type PathPrefix",
    ),
    (
        "a prefix redirect with two matches",
        mesh_rule(
            "{matches: [{path: {value: /a}}, {path: {value: /b}}], filters: [{type: "
            "RequestRedirect, requestRedirect: {path: {type: ReplacePrefixMatch, "
            "replacePrefixMatch: /c}}}]}"
        ),
        f"{HR}: spec.rules[0].filters: a ReplacePrefixMatch path modifier needs exactly one "
        "match, of type PathPrefix",
    ),
    (
        "a prefix rewrite on a backend with two matches",
        mesh_rule(
            "{matches: [{path: {value: /a}}, {path: {value: /b}}], backendRefs: [{name: a, "
            "port: 80, filters: [{type: URLRewrite, urlRewrite: {path: {type: "
            "ReplacePrefixMatch, replacePrefixMatch: /c}}}]}]}"
        ),
        f"{HR}: spec.rules[0].backendRefs[0].filters: a ReplacePrefixMatch path modifier needs "
        "exactly one match, of type PathPrefix",
    ),
    (
        "a path modifier whose value field does not match its type",
        mesh_rule(
            "{filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, "
            "replacePrefixMatch: /b}}}]}"
        ),
        f"{HR}: spec.rules[0].filters[0].urlRewrite.path.replacePrefixMatch: must not be given "
        "when type is ReplaceFullPath",
    ),
    (
        "a path modifier without its value",
        mesh_rule("{filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath}}}]}"),
        f"{HR}: spec.rules[0].filters[0].urlRewrite.path.replaceFullPath: required when type "
        "is ReplaceFullPath",
    ),
    (
        "a redirect status that is not a redirect",
        mesh_rule("{filters: [{type: RequestRedirect, requestRedirect: {statusCode: 304}}]}"),
        f"{HR}: spec.rules[0].filters[0].requestRedirect.statusCode: must be 301, 302, 303, 307 "
        "or 308, got 304",
    ),
    (
        "a redirect to another scheme",
        mesh_rule("{filters: [{type: RequestRedirect, requestRedirect: {scheme: ftp}}]}"),
        f"{HR}: spec.rules[0].filters[0].requestRedirect.scheme: must be http or https, got 'ftp'",
    ),
    (
        "a redirect to a wildcard hostname",
        mesh_rule("{filters: [{type: RequestRedirect, requestRedirect: {hostname: '*.a.com'}}]}"),
        f"{HR}: spec.rules[0].filters[0].requestRedirect.hostname: '*.a.com' is not a valid "
        "hostname (lowercase DNS labels joined by '.'; not an IP address)",
    ),
    (
        "a mirror with percent and fraction",
        mesh_rule(
            "{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: a, port: 80}, "
            "percent: 5, fraction: {numerator: 1}}}]}"
        ),
        f"{HR}: spec.rules[0].filters[0].requestMirror.fraction: give percent or fraction, not both",
    ),
    (
        "a mirror fraction above one",
        mesh_rule(
            "{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: a, port: 80}, "
            "fraction: {numerator: 3, denominator: 2}}}]}"
        ),
        f"{HR}: spec.rules[0].filters[0].requestMirror.fraction.numerator: must be at most the "
        "denominator (2)",
    ),
    (
        "a mirror percent above 100",
        mesh_rule(
            "{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: a, port: 80}, "
            "percent: 101}}]}"
        ),
        f"{HR}: spec.rules[0].filters[0].requestMirror.percent: must be at most 100, got 101",
    ),
    (
        "a mirror without a backend",
        mesh_rule("{filters: [{type: RequestMirror, requestMirror: {percent: 1}}]}"),
        f"{HR}: spec.rules[0].filters[0].requestMirror.backendRef: required field is missing",
    ),
    (
        "a mirror to a backend without a port",
        mesh_rule("{filters: [{type: RequestMirror, requestMirror: {backendRef: {name: a}}}]}"),
        f"{HR}: spec.rules[0].filters[0].requestMirror.backendRef.port: required for a Service "
        "backend",
    ),
    (
        "an extension reference without a group",
        mesh_rule("{filters: [{type: ExtensionRef, extensionRef: {kind: K, name: n}}]}"),
        f"{HR}: spec.rules[0].filters[0].extensionRef.group: required field is missing (write "
        '"" for the core group)',
    ),
    (
        "a timeout without a unit",
        mesh_rule("{timeouts: {request: '10'}}"),
        f"{HR}: spec.rules[0].timeouts.request: '10' {_DURATION}",
    ),
    (
        "a fractional timeout",
        mesh_rule("{timeouts: {backendRequest: 1.5s}}"),
        f"{HR}: spec.rules[0].timeouts.backendRequest: '1.5s' {_DURATION}",
    ),
    (
        "a timeout in days",
        mesh_rule("{timeouts: {request: 1d}}"),
        f"{HR}: spec.rules[0].timeouts.request: '1d' {_DURATION}",
    ),
    (
        "a timeout as a number",
        mesh_rule("{timeouts: {request: 10}}"),
        f"{HR}: spec.rules[0].timeouts.request: expected a string, got integer",
    ),
    (
        "a backend timeout longer than the request timeout",
        mesh_rule("{timeouts: {request: 1s, backendRequest: 1001ms}}"),
        f"{HR}: spec.rules[0].timeouts.backendRequest: must not be longer than the request "
        "timeout (which covers retries)",
    ),
    (
        "a retry on a status that is not an error",
        mesh_rule("{retry: {codes: [503, 200]}}"),
        f"{HR}: spec.rules[0].retry.codes[1]: must be an HTTP status from 400 to 599, got 200",
    ),
    (
        "a retry on the same status twice",
        mesh_rule("{retry: {codes: [503, 503]}}"),
        f"{HR}: spec.rules[0].retry.codes: duplicate code '503'",
    ),
    (
        "zero retry attempts",
        mesh_rule("{retry: {attempts: 0}}"),
        f"{HR}: spec.rules[0].retry.attempts: must be at least 1, got 0",
    ),
    (
        "a retry backoff without a unit",
        mesh_rule("{retry: {backoff: '100'}}"),
        f"{HR}: spec.rules[0].retry.backoff: '100' {_DURATION}",
    ),
    (
        "an uppercase hostname",
        http_route(f"{MESH_PARENT}hostnames: [Shop.example.com]"),
        f"{HR}: spec.hostnames[0]: 'Shop.example.com' is not a valid hostname (an optional "
        "'*.' then lowercase DNS labels joined by '.'; not an IP address)",
    ),
    (
        "an IP address as a hostname",
        http_route(f"{MESH_PARENT}hostnames: [a.example.com, 10.0.0.1]"),
        f"{HR}: spec.hostnames[1]: '10.0.0.1' is not a valid hostname (an optional '*.' then "
        "lowercase DNS labels joined by '.'; not an IP address)",
    ),
    (
        "an empty rule list",
        http_route(f"{MESH_PARENT}rules: []"),
        f"{HR}: spec.rules: must not be empty; leave it out to route every request",
    ),
    (
        "two rules with one name",
        http_route(f"{MESH_PARENT}rules: [{{name: a}}, {{name: a}}]"),
        f"{HR}: spec.rules: duplicate rule name 'a'",
    ),
    (
        "a misspelled rule field",
        mesh_rule("{backendRef: [{name: a, port: 80}]}"),
        f"{HR}: spec.rules[0].backendRef: unknown field",
    ),
    (
        "a gRPC method match with neither service nor method",
        mesh_rule("{matches: [{method: {type: Exact}}]}", kind="GRPCRoute"),
        f"{GR}: spec.rules[0].matches[0].method: give service or method (or both)",
    ),
    (
        "a gRPC service name with a space",
        mesh_rule("{matches: [{method: {service: 'hello world'}}]}", kind="GRPCRoute"),
        f"{GR}: spec.rules[0].matches[0].method.service: 'hello world' is not a valid gRPC "
        "service name",
    ),
    (
        "a gRPC method name with a slash",
        mesh_rule("{matches: [{method: {service: a.B, method: /Get}}]}", kind="GRPCRoute"),
        f"{GR}: spec.rules[0].matches[0].method.method: '/Get' is not a valid gRPC method name",
    ),
    (
        "a gRPC method regex that does not compile",
        mesh_rule(
            "{matches: [{method: {type: RegularExpression, method: 'Get('}}]}", kind="GRPCRoute"
        ),
        f"{GR}: spec.rules[0].matches[0].method.method: 'Get(' is not a valid regular "
        "expression: missing ), unterminated subpattern at position 3",
    ),
    (
        "a redirect on a gRPC route",
        mesh_rule("{filters: [{type: RequestRedirect, requestRedirect: {}}]}", kind="GRPCRoute"),
        f"{GR}: spec.rules[0].filters[0].type: must be RequestHeaderModifier, "
        "ResponseHeaderModifier, RequestMirror or ExtensionRef, got 'RequestRedirect'",
    ),
    (
        "timeouts on a gRPC route, which has none",
        mesh_rule("{timeouts: {request: 1s}}", kind="GRPCRoute"),
        f"{GR}: spec.rules[0].timeouts: unknown field",
    ),
    (
        "a path match on a gRPC route",
        mesh_rule("{matches: [{path: {value: /a}}]}", kind="GRPCRoute"),
        f"{GR}: spec.rules[0].matches[0].path: unknown field",
    ),
    (
        "a gRPC backend without a port",
        mesh_rule("{backendRefs: [{name: a, weight: 1}]}", kind="GRPCRoute"),
        f"{GR}: spec.rules[0].backendRefs[0].port: required for a Service backend",
    ),
]


@pytest.mark.parametrize(
    ("text", "expected"), [pytest.param(m, e, id=i) for i, m, e in BAD_MANIFESTS]
)
def test_bad_gateway_or_route_is_rejected_naming_file_resource_and_field(
    text: str, expected: str
) -> None:
    error = only_error(text)

    assert str(error) == f"{SOURCE}: {expected}"


@pytest.mark.parametrize(
    ("text", "field"),
    [pytest.param(m, e.split(": ", 2)[1], id=i) for i, m, e in BAD_MANIFESTS],
)
def test_bad_gateway_or_route_error_carries_the_field_path_on_its_own(
    text: str, field: str
) -> None:
    assert only_error(text).field == field
