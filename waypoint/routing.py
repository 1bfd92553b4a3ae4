"""The waypoint's routing core: Gateway API HTTPRoute/GRPCRoute (GAMMA) decisions, sans I/O.

No sockets, no asyncio, no clock; randomness comes in as a `rand()` returning [0, 1). The
waypoint process parses one request into a `Request`, asks `route()` (or `route_grpc()`) for
a decision, and carries it out.

Public API
----------

    build_table(routes, *, service_namespace, service_name, port, known_service,
                port_name="") -> RouteTable
    route(table, request, rand) -> Forward | Respond

    build_grpc_table(routes, *, service_namespace, service_name, port, known_service,
                     port_name="") -> GRPCRouteTable
    route_grpc(table, request, rand) -> Forward | Respond

    modify_headers(headers, ops) -> headers     # apply Forward.response_header_ops
    check_re2(pattern) -> str | None            # why RE2 would refuse a pattern, or None

- `known_service(namespace, name, port) -> bool` says whether a Service exists and has that
  port; backends and mirrors failing it are reported in `table.problems` (ResolvedRefs).
- A table is built for one Service port (`port`, and `port_name` for parentRefs that name
  the port by `sectionName`). `table.empty` is True when no route attaches to that port for
  any client: pass the traffic straight to the Service, do not parse it as HTTP for routing.
  `table.applies(client_namespace)` says whether routes apply to one client; when they do
  not, `route()` answers a plain `Forward` to the Service itself (`route_key` None), so the
  caller needs no special case.
- `Forward`: where to send the request (a Service port, for the endpoint picker), the final
  path (query string kept), Host and request headers after every filter, the response
  header operations to apply to the backend's response (`modify_headers`), the mirrors
  chosen for this request, the rule's timeouts and retry, and which route/rule decided.
- `Respond`: answer without a backend: redirects (301/302/303/307/308 with `location`),
  404 (no rule matched), 500 (no usable backend, an unsupported filter). `headers` are final
  (Location and any ResponseHeaderModifier of the rule). For gRPC, `grpc_status` is set
  (12 UNIMPLEMENTED for no match, 14 UNAVAILABLE for no usable backend) and the waypoint
  answers HTTP 200 trailers-only with that grpc-status; `status` is the HTTP equivalent.
- `Problem`s (route, field path, condition, reason, message; defined in
  `meshcore.routecheck`, whose `route_problems` gives the controller's route status the same
  list): a regex RE2 refuses (the rule is left out: PartiallyInvalid; a route left with no
  rule does not attach at all, as a route that is not Accepted), an ExtensionRef filter
  (weft defines none: requests through it get 500, as the spec requires), a backend or
  mirror that does not resolve (its weight share gets 500; a mirror is dropped).

Semantics (Gateway API v1 `httproute_types.go`, `grpcroute_types.go`, GEP-1294, the mesh
conformance tests):

- A route attaches when a parentRef is this Service (kind Service, core group, namespace
  defaulting to the route's), with `port` equal to the table's port or unset (all ports),
  and `sectionName` equal to the port's name or unset. Hostnames are never used (GEP-1294).
- Producer routes (route namespace == Service namespace) apply to every client; consumer
  routes apply only to clients in the route's namespace, and for those clients they replace
  the producer routes entirely (GEP-1294 "Multiple routes for a Service").
- Within a rule, matches are ORed; within a match, conditions are ANDed. Across the rules of
  all applicable routes the first match in this order wins: Exact path, then PathPrefix by
  longest value (without its trailing "/"), then RegularExpression by longest pattern
  (implementation-specific in the spec; Istio's order, so a PathPrefix "/" beats any
  regex); then a method match; then most header matches; then most query-param matches;
  then route `namespace/name` alphabetically (the model has no creation timestamp); then
  rule order, then match order.
- PathPrefix is element-wise (`/foo` matches `/foo`, `/foo/`, `/foo/bar`, not `/foobar`; a
  trailing `/` on the prefix is ignored). Exact and PathPrefix compare the raw path (no
  query string, no percent-decoding; an absolute-form target is reduced to origin-form);
  RegularExpression must match the whole path. A `Host` header match sees the request's
  authority (Host, `:authority`, or `Request.host`). Header names compare
  case-insensitively; a repeated request header is matched as its values joined by ","
  (RFC 9110 §5.3, as Envoy does); of match entries naming the same header (any case) only
  the first counts. Query params: names exact, values URL-decoded, first value of a
  repeated param. Regex dialect: Python `re` restricted to what RE2 accepts.
- Filters run in order, rule filters then the chosen backend's. RequestHeaderModifier: set
  replaces every value, add appends (",value" onto an existing header, as the spec's
  example), remove drops all; names case-insensitive. URLRewrite: hostname replaces Host;
  ReplaceFullPath; ReplacePrefixMatch per the spec's table (`/foo` -> `/` makes `/foo/bar`
  `/bar` and `/foo` `/`). RequestRedirect: scheme (default the request's), hostname
  (default the request's Host without port), port (default: 80/443 when a scheme is given,
  else the Service port; omitted from Location when it is the scheme's default), path,
  status (default 302); the query string is kept; on a backendRef it answers when that
  backend is picked. RequestMirror: kept with probability `percent`; the mirror gets the
  request as forwarded (after all filters).
- Weighted backends: picked by weight with `rand`; weight 0 never; all 0 (or no backends
  and no redirect): 500; a backend that does not resolve keeps its share, which gets 500.
- GRPCRoute: `:path` is `/<service>/<method>`; method matches Exact or RegularExpression on
  service and/or method (empty: any); precedence: the service match (exact, by length,
  before a regex, by pattern length, before none), then the method match likewise, then
  most header matches, then route namespace/name, rule order. Filters: header modifiers,
  mirror. When an HTTPRoute and a GRPCRoute both attach to one Service port, the GRPCRoute
  table wins (GEP-1294); that choice is the caller's.
- Backends in any namespace need no ReferenceGrant (GEP-1294, "Namespace boundaries").
  Routes whose parent is a Gateway (a waypoint's own Gateway included) are not looked at.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar
from urllib.parse import parse_qsl, urlsplit

from meshcore.resources.core import ResourceKey
from meshcore.resources.gateway import (
    BackendRef,
    ExtensionRef,
    GRPCMethodMatch,
    GRPCRoute,
    GRPCRouteFilter,
    GRPCRouteMatch,
    GRPCRouteRule,
    HeaderMatch,
    HTTPRoute,
    HTTPRouteFilter,
    HTTPRouteRule,
    MatchType,
    ParentKind,
    ParentRef,
    PathMatchType,
    PathModifier,
    PathModifierType,
    QueryParamMatch,
    RequestHeaderModifier,
    RequestMirror,
    RequestRedirect,
    ResponseHeaderModifier,
    Retry,
    Timeouts,
    URLRewrite,
)
from meshcore.routecheck import (  # the route problems' home (the controller's too)
    ACCEPTED,
    BACKEND_NOT_FOUND,
    INVALID_KIND,
    RESOLVED_REFS,
    UNSUPPORTED_VALUE,
    KnownService,
    Problem,
    check_re2,
)

Headers = tuple[tuple[str, str], ...]

GRPC_UNIMPLEMENTED = 12
GRPC_UNAVAILABLE = 14

# --- inputs and outputs ----------------------------------------------------------------------


@dataclass(frozen=True)
class Request:
    """What the waypoint parsed from one HTTP request (or gRPC call)."""

    method: str
    path: str  # raw request-target path with its query string: "/a/b?x=1"
    headers: Headers = ()  # in order, names as received
    host: str = ""  # empty: taken from the Host (or :authority) header
    client_namespace: str | None = None  # from the client's verified identity
    scheme: str = "http"  # as the client spoke it (the redirect default)
    source_labels: Mapping[str, str] | None = None  # the client workload's (VirtualService)

    @property
    def authority(self) -> str:
        if self.host:
            return self.host
        for name, value in self.headers:
            if name.lower() in ("host", ":authority"):
                return value
        return ""


@dataclass(frozen=True)
class HeaderOps:
    """One RequestHeaderModifier or ResponseHeaderModifier: set, then add, then remove."""

    set: Headers = ()
    add: Headers = ()
    remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class MirrorTarget:
    """A Service port that gets a copy of the request; its response is ignored."""

    namespace: str
    name: str
    port: int


@dataclass(frozen=True)
class Fault:
    """A fault injected into this request (a VirtualService's `fault`, already drawn): wait
    `delay` seconds, then answer here with `abort_status` (HTTP) or `abort_grpc` (a gRPC
    call: trailers-only with that grpc-status) instead of forwarding; neither: forward."""

    delay: float = 0.0
    abort_status: int | None = None  # HTTP status; for a gRPC call, mapped to a grpc-status
    abort_grpc: int | None = None  # grpc-status; for plain HTTP, its HTTP equivalent

    @property
    def aborts(self) -> bool:
        return self.abort_status is not None or self.abort_grpc is not None


@dataclass(frozen=True)
class Forward:
    backend_namespace: str
    backend_name: str
    backend_port: int
    path: str  # after URLRewrite, query string kept
    host: str  # after URLRewrite (a "host" header in request_headers is rewritten too)
    request_headers: Headers  # final, after every RequestHeaderModifier
    response_header_ops: tuple[HeaderOps, ...] = ()  # apply in order: modify_headers()
    mirrors: tuple[MirrorTarget, ...] = ()
    timeouts: Timeouts | None = None
    retry: Retry | None = None
    route_key: ResourceKey | None = None  # None: no route applied (passthrough)
    rule_index: int = -1
    rule_name: str = ""
    subset: str = ""  # a VirtualService destination's subset (a DestinationRule names its labels)
    fault: Fault | None = None  # injected into this request (VirtualService); None: none


@dataclass(frozen=True)
class Respond:
    status: int  # HTTP status (for gRPC, the HTTP equivalent of grpc_status)
    headers: Headers = ()  # final: Location for redirects, response header modifiers
    reason: str = ""  # for the access log
    grpc_status: int | None = None  # set for gRPC: answer 200 with this grpc-status
    route_key: ResourceKey | None = None
    rule_index: int = -1
    rule_name: str = ""

    @property
    def location(self) -> str:
        return next((v for n, v in self.headers if n.lower() == "location"), "")


Decision = Forward | Respond


# --- compiled form ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Backend:
    namespace: str
    name: str
    port: int
    weight: int
    valid: bool  # resolves, and has no filter we cannot apply
    request_ops: tuple[HeaderOps | URLRewrite, ...]
    response_ops: tuple[HeaderOps, ...]
    mirrors: tuple[tuple[MirrorTarget, float], ...]
    redirect: RequestRedirect | None = None  # answered when this backend is picked
    why_invalid: str = ""


@dataclass(frozen=True)
class _Rule:
    route_key: ResourceKey
    index: int
    name: str
    request_ops: tuple[HeaderOps | URLRewrite, ...]  # in filter order
    response_ops: tuple[HeaderOps, ...]
    mirrors: tuple[tuple[MirrorTarget, float], ...]
    redirect: RequestRedirect | None
    backends: tuple[_Backend, ...]
    timeouts: Timeouts | None = None
    retry: Retry | None = None
    unsupported_filter: str = ""  # an ExtensionRef: requests through this rule get 500


@dataclass(frozen=True)
class _ValueMatch:
    name: str  # lower-cased for headers
    exact: str | None
    regex: re.Pattern[str] | None

    def test(self, value: str | None) -> bool:
        if value is None:
            return False
        if self.regex is not None:
            return self.regex.fullmatch(value) is not None
        return value == self.exact


@dataclass(frozen=True)
class _HTTPMatch:
    sort_key: tuple[object, ...]
    path_type: PathMatchType
    path_value: str  # Exact: as given; PathPrefix: without trailing "/" ("" for "/")
    path_regex: re.Pattern[str] | None
    method: str | None
    headers: tuple[_ValueMatch, ...]
    query: tuple[_ValueMatch, ...]
    rule: _Rule


@dataclass(frozen=True)
class _GRPCMatch:
    sort_key: tuple[object, ...]
    service: _ValueMatch | None
    method: _ValueMatch | None
    headers: tuple[_ValueMatch, ...]
    rule: _Rule


_M = TypeVar("_M", _HTTPMatch, _GRPCMatch)


@dataclass(frozen=True)
class _Table(Generic[_M]):
    service_namespace: str
    service_name: str
    port: int
    producer: tuple[_M, ...] = ()  # every client's matches, in precedence order
    consumers: Mapping[str, tuple[_M, ...]] = field(default_factory=dict)  # by client namespace
    problems: tuple[Problem, ...] = ()

    @property
    def empty(self) -> bool:
        """No route attaches to this port for any client: pass traffic through untouched."""
        return not self.producer and not self.consumers

    def applies(self, client_namespace: str | None) -> bool:
        """Whether routes apply to a client from this namespace (None: unknown client)."""
        return self._has_routes_for(client_namespace)

    def _has_routes_for(self, client_namespace: str | None) -> bool:
        return bool(self.producer) or (
            client_namespace is not None and client_namespace in self.consumers
        )

    def _matches_for(self, client_namespace: str | None) -> tuple[_M, ...]:
        if client_namespace is not None and client_namespace in self.consumers:
            return self.consumers[client_namespace]
        return self.producer


@dataclass(frozen=True)
class RouteTable(_Table[_HTTPMatch]):
    """The HTTPRoute matches of one Service port, in precedence order."""


@dataclass(frozen=True)
class GRPCRouteTable(_Table[_GRPCMatch]):
    """The GRPCRoute matches of one Service port, in precedence order."""


# --- building --------------------------------------------------------------------------------


class _Builder:
    """Collects problems while one table is built."""

    def __init__(self, route_key: ResourceKey, known_service: KnownService) -> None:
        self.route_key = route_key
        self.known_service = known_service
        self.problems: list[Problem] = []

    def problem(self, path: str, condition: str, reason: str, message: str) -> None:
        self.problems.append(Problem(self.route_key, path, condition, reason, message))

    def regex(self, pattern: str, path: str) -> re.Pattern[str] | None:
        why = check_re2(pattern)
        if why is not None:
            self.problem(path, ACCEPTED, UNSUPPORTED_VALUE, f"{pattern!r}: {why}")
            return None
        return re.compile(pattern)

    def value_matches(
        self, matches: Sequence[HeaderMatch | QueryParamMatch], path: str, *, fold: bool
    ) -> tuple[_ValueMatch, ...] | None:
        """Compiled matches, the first of each name only; None when one cannot be applied."""
        out: list[_ValueMatch] = []
        seen: set[str] = set()
        usable = True
        for i, m in enumerate(matches):
            name = m.name.lower() if fold else m.name
            if name in seen:
                continue
            seen.add(name)
            if m.type is MatchType.REGULAR_EXPRESSION:
                regex = self.regex(m.value, f"{path}[{i}].value")
                usable = usable and regex is not None
                out.append(_ValueMatch(name, None, regex))
            else:
                out.append(_ValueMatch(name, m.value, None))
        return tuple(out) if usable else None

    def filters(
        self, filters: Sequence[HTTPRouteFilter | GRPCRouteFilter], path: str
    ) -> tuple[
        tuple[HeaderOps | URLRewrite, ...],
        tuple[HeaderOps, ...],
        tuple[tuple[MirrorTarget, float], ...],
        RequestRedirect | None,
        str,
    ]:
        request_ops: list[HeaderOps | URLRewrite] = []
        response_ops: list[HeaderOps] = []
        mirrors: list[tuple[MirrorTarget, float]] = []
        redirect = None
        unsupported = ""
        for i, flt in enumerate(filters):
            if isinstance(flt, RequestHeaderModifier):
                request_ops.append(_ops(flt))
            elif isinstance(flt, ResponseHeaderModifier):
                response_ops.append(_ops(flt))
            elif isinstance(flt, URLRewrite):
                request_ops.append(flt)
            elif isinstance(flt, RequestRedirect):
                redirect = flt
            elif isinstance(flt, RequestMirror):
                b = flt.backend
                if self.known_service(b.namespace, b.name, b.port):
                    mirrors.append((MirrorTarget(b.namespace, b.name, b.port), flt.percent))
                else:
                    self.problem(
                        f"{path}[{i}].requestMirror.backendRef",
                        RESOLVED_REFS,
                        BACKEND_NOT_FOUND,
                        f"mirror Service {b.namespace}/{b.name} port {b.port} not found; "
                        "the mirror is dropped",
                    )
            elif isinstance(flt, ExtensionRef):
                unsupported = f"ExtensionRef {flt.group or 'core'}/{flt.kind} {flt.name}"
                self.problem(
                    f"{path}[{i}].extensionRef",
                    RESOLVED_REFS,
                    INVALID_KIND,
                    f"weft supports no {unsupported}; requests through this rule get 500",
                )
        return tuple(request_ops), tuple(response_ops), tuple(mirrors), redirect, unsupported

    def backends(self, refs: Sequence[BackendRef], path: str) -> tuple[_Backend, ...]:
        out = []
        for i, ref in enumerate(refs):
            here = f"{path}[{i}]"
            req_ops, resp_ops, mirrors, redirect, unsupported = self.filters(
                ref.filters, f"{here}.filters"
            )
            valid, why = True, ""
            if unsupported:
                valid, why = False, f"{unsupported} is not supported"
            if not self.known_service(ref.namespace, ref.name, ref.port):
                valid, why = False, f"Service {ref.namespace}/{ref.name} port {ref.port} not found"
                self.problem(
                    here,
                    RESOLVED_REFS,
                    BACKEND_NOT_FOUND,
                    f"{why}; its share of the traffic gets 500",
                )
            out.append(
                _Backend(
                    ref.namespace,
                    ref.name,
                    ref.port,
                    ref.weight,
                    valid,
                    req_ops,
                    resp_ops,
                    mirrors,
                    redirect,
                    why,
                )
            )
        return tuple(out)


def _ops(flt: RequestHeaderModifier | ResponseHeaderModifier) -> HeaderOps:
    return HeaderOps(
        tuple((h.name, h.value) for h in flt.set),
        tuple((h.name, h.value) for h in flt.add),
        flt.remove,
    )


def _attaches(
    ref: ParentRef, service_namespace: str, service_name: str, port: int, port_name: str
) -> bool:
    return (
        ref.kind is ParentKind.SERVICE
        and ref.namespace == service_namespace
        and ref.name == service_name
        and (ref.port is None or ref.port == port)
        and (not ref.section_name or ref.section_name == port_name)
    )


def _route_order(key: ResourceKey) -> str:
    return f"{key.namespace}/{key.name}"


_R = TypeVar("_R", HTTPRoute, GRPCRoute)


def _collect(
    routes: Iterable[_R],
    compile_route: Callable[[_Builder, _R], list[_M]],
    *,
    service_namespace: str,
    service_name: str,
    port: int,
    port_name: str,
    known_service: KnownService,
) -> tuple[tuple[_M, ...], dict[str, tuple[_M, ...]], tuple[Problem, ...]]:
    """The compiled matches of the routes that attach, producer's and consumers' apart."""
    producer: list[_M] = []
    consumers: dict[str, list[_M]] = {}
    problems: list[Problem] = []
    for rt in routes:
        if not any(
            _attaches(ref, service_namespace, service_name, port, port_name)
            for ref in rt.parent_refs
        ):
            continue
        b = _Builder(rt.key, known_service)
        namespace = rt.metadata.namespace
        into = producer if namespace == service_namespace else consumers.setdefault(namespace, [])
        into.extend(compile_route(b, rt))
        problems.extend(b.problems)
    producer.sort(key=lambda m: m.sort_key)
    for matches in consumers.values():
        matches.sort(key=lambda m: m.sort_key)
    # A consumer namespace whose routes kept no rule has no route (not Accepted).
    return tuple(producer), {ns: tuple(ms) for ns, ms in consumers.items() if ms}, tuple(problems)


def build_table(
    routes: Iterable[HTTPRoute],
    *,
    service_namespace: str,
    service_name: str,
    port: int,
    known_service: KnownService,
    port_name: str = "",
) -> RouteTable:
    """The HTTPRoutes that attach to one Service port, compiled in precedence order."""
    producer, consumers, problems = _collect(
        routes,
        _compile_http_route,
        service_namespace=service_namespace,
        service_name=service_name,
        port=port,
        port_name=port_name,
        known_service=known_service,
    )
    return RouteTable(service_namespace, service_name, port, producer, consumers, problems)


def _compile_http_route(b: _Builder, rt: HTTPRoute) -> list[_HTTPMatch]:
    order = _route_order(rt.key)
    out: list[_HTTPMatch] = []
    for ri, rule in enumerate(rt.rules):
        out.extend(_compile_http_rule(b, rt.key, ri, rule, f"spec.rules[{ri}]", order))
    return out


def _compile_http_rule(
    b: _Builder, key: ResourceKey, ri: int, rule: HTTPRouteRule, path: str, order: str
) -> list[_HTTPMatch]:
    req_ops, resp_ops, mirrors, redirect, unsupported = b.filters(rule.filters, f"{path}.filters")
    backends = b.backends(rule.backend_refs, f"{path}.backendRefs")
    compiled_rule = _Rule(
        key,
        ri,
        rule.name,
        req_ops,
        resp_ops,
        mirrors,
        redirect,
        backends,
        rule.timeouts,
        rule.retry,
        unsupported,
    )
    out: list[_HTTPMatch] = []
    usable = True  # every regex RE2 accepts; else the rule is left out (PartiallyInvalid)
    for mi, m in enumerate(rule.matches):
        mpath = f"{path}.matches[{mi}]"
        path_regex = None
        value = m.path.value
        if m.path.type is PathMatchType.REGULAR_EXPRESSION:
            path_regex = b.regex(value, f"{mpath}.path.value")
            usable = usable and path_regex is not None
            rank = 2
        elif m.path.type is PathMatchType.EXACT:
            rank = 0
        else:
            value = value.rstrip("/")  # "/foo/" is the prefix "/foo"; "/" is ""
            rank = 1
        headers = b.value_matches(m.headers, f"{mpath}.headers", fold=True)
        query = b.value_matches(m.query_params, f"{mpath}.queryParams", fold=False)
        if headers is None or query is None:
            usable = False
            continue
        method = m.method.value if m.method is not None else None
        # The spec's precedence, then its tie-breaks: route namespace/name, rule, match.
        sort_key = (rank, -len(value), method is None, -len(headers), -len(query), order, ri, mi)
        out.append(
            _HTTPMatch(
                sort_key, m.path.type, value, path_regex, method, headers, query, compiled_rule
            )
        )
    return out if usable else []


def build_grpc_table(
    routes: Iterable[GRPCRoute],
    *,
    service_namespace: str,
    service_name: str,
    port: int,
    known_service: KnownService,
    port_name: str = "",
) -> GRPCRouteTable:
    """The GRPCRoutes that attach to one Service port, compiled in precedence order."""
    producer, consumers, problems = _collect(
        routes,
        _compile_grpc_route,
        service_namespace=service_namespace,
        service_name=service_name,
        port=port,
        port_name=port_name,
        known_service=known_service,
    )
    return GRPCRouteTable(service_namespace, service_name, port, producer, consumers, problems)


def _compile_grpc_route(b: _Builder, rt: GRPCRoute) -> list[_GRPCMatch]:
    order = _route_order(rt.key)
    out: list[_GRPCMatch] = []
    for ri, rule in enumerate(rt.rules):
        out.extend(_compile_grpc_rule(b, rt.key, ri, rule, f"spec.rules[{ri}]", order))
    return out


def _compile_grpc_rule(
    b: _Builder, key: ResourceKey, ri: int, rule: GRPCRouteRule, path: str, order: str
) -> list[_GRPCMatch]:
    req_ops, resp_ops, mirrors, _, unsupported = b.filters(rule.filters, f"{path}.filters")
    backends = b.backends(rule.backend_refs, f"{path}.backendRefs")
    compiled_rule = _Rule(
        key, ri, rule.name, req_ops, resp_ops, mirrors, None, backends, None, None, unsupported
    )
    out: list[_GRPCMatch] = []
    usable = True  # every regex RE2 accepts; else the rule is left out (PartiallyInvalid)
    for mi, m in enumerate(rule.matches or (GRPCRouteMatch(),)):
        mpath = f"{path}.matches[{mi}].method"
        mm = m.method if m.method is not None else GRPCMethodMatch()
        service, s_rank = _grpc_name_match(b, mm.type, mm.service, mpath, "service")
        method, m_rank = _grpc_name_match(b, mm.type, mm.method, mpath, "method")
        headers = b.value_matches(m.headers, f"{path}.matches[{mi}].headers", fold=True)
        if headers is None or s_rank is None or m_rank is None:
            usable = False
            continue
        # The spec's precedence (service, method, headers), then route name, rule, match.
        sort_key = (s_rank, m_rank, -len(headers), order, ri, mi)
        out.append(_GRPCMatch(sort_key, service, method, headers, compiled_rule))
    return out if usable else []


def _grpc_name_match(
    b: _Builder, kind: MatchType, value: str, path: str, part: str
) -> tuple[_ValueMatch | None, tuple[int, int] | None]:
    """A service or method match and its rank (exact before regex before none, then longer
    first); a rank of None when RE2 refuses the regex."""
    if not value:
        return None, (2, 0)
    if kind is MatchType.EXACT:
        return _ValueMatch(part, value, None), (0, -len(value))
    pattern = b.regex(value, f"{path}.{part}")
    if pattern is None:
        return None, None
    return _ValueMatch(part, None, pattern), (1, -len(value))


# --- matching --------------------------------------------------------------------------------


class _RequestView:
    """The parts of a request matching looks at, computed once per request."""

    def __init__(self, request: Request) -> None:
        self.request = request
        target = request.path or "/"
        if not target.startswith("/") and "://" in target:
            # absolute-form ("http://host/p?q", RFC 9112 §3.2.2): routing uses origin-form
            url = urlsplit(target)
            target = (url.path or "/") + (f"?{url.query}" if url.query else "")
        self.target = target  # origin-form, with the query string
        self.path, sep, self.query_string = target.partition("?")
        self.has_query = bool(sep)
        self._headers: dict[str, str] | None = None
        self._query: dict[str, str] | None = None

    def header(self, name: str) -> str | None:
        if self._headers is None:
            joined: dict[str, list[str]] = {}
            for n, v in self.request.headers:
                joined.setdefault(n.lower(), []).append(v)
            self._headers = {n: ",".join(vs) for n, vs in joined.items()}
            if "host" not in self._headers and self.request.authority:
                self._headers["host"] = self.request.authority  # h2's :authority, or host
        return self._headers.get(name)

    def query(self, name: str) -> str | None:
        if self._query is None:
            self._query = {}
            for n, v in parse_qsl(self.query_string, keep_blank_values=True):
                self._query.setdefault(n, v)  # the first value of a repeated param
        return self._query.get(name)


def _path_matches(m: _HTTPMatch, path: str) -> bool:
    if m.path_type is PathMatchType.EXACT:
        return path == m.path_value
    if m.path_type is PathMatchType.PATH_PREFIX:
        p = m.path_value  # no trailing "/"; "" for the prefix "/"
        return path == p or path.startswith(p + "/")
    assert m.path_regex is not None
    return m.path_regex.fullmatch(path) is not None


def _http_match(m: _HTTPMatch, view: _RequestView) -> bool:
    return (
        _path_matches(m, view.path)
        and (m.method is None or m.method == view.request.method)
        and all(h.test(view.header(h.name)) for h in m.headers)
        and all(q.test(view.query(q.name)) for q in m.query)
    )


def route(table: RouteTable, request: Request, rand: Callable[[], float]) -> Decision:
    """Decide what the waypoint does with one HTTP request to the table's Service port."""
    if not table._has_routes_for(request.client_namespace):
        return _passthrough(table, request)
    view = _RequestView(request)
    for m in table._matches_for(request.client_namespace):
        if _http_match(m, view):
            return _apply(m.rule, view, m, rand, table.port, grpc=False)
    return Respond(404, reason="no route rule matched")


def route_grpc(table: GRPCRouteTable, request: Request, rand: Callable[[], float]) -> Decision:
    """Decide what the waypoint does with one gRPC call (`request.path` is its :path)."""
    if not table._has_routes_for(request.client_namespace):
        return _passthrough(table, request)
    view = _RequestView(request)
    service, _, method = view.path.removeprefix("/").partition("/")
    well_formed = bool(service and method) and "/" not in method
    for m in table._matches_for(request.client_namespace):
        if (m.service or m.method) and not well_formed:
            continue
        if (
            (m.service is None or m.service.test(service))
            and (m.method is None or m.method.test(method))
            and all(h.test(view.header(h.name)) for h in m.headers)
        ):
            return _apply(m.rule, view, None, rand, table.port, grpc=True)
    return Respond(404, reason="no route rule matched", grpc_status=GRPC_UNIMPLEMENTED)


def _passthrough(table: RouteTable | GRPCRouteTable, request: Request) -> Forward:
    return Forward(
        table.service_namespace,
        table.service_name,
        table.port,
        request.path or "/",
        request.authority,
        request.headers,
    )


def _pick(backends: tuple[_Backend, ...], rand: Callable[[], float]) -> _Backend | None:
    live = [b for b in backends if b.weight > 0]
    if len(live) <= 1:
        return live[0] if live else None  # no random draw for a lone backend
    total = sum(b.weight for b in live)
    point = rand() * total
    running = 0
    for b in live:
        running += b.weight
        if point < running:
            return b
    return live[-1]  # rand() gave 1.0


def _apply(
    rule: _Rule,
    view: _RequestView,
    m: _HTTPMatch | None,
    rand: Callable[[], float],
    port: int,
    *,
    grpc: bool,
) -> Decision:
    request = view.request

    def respond(
        status: int, headers: Headers, reason: str, backend_ops: tuple[HeaderOps, ...] = ()
    ) -> Respond:
        return Respond(
            status,
            modify_headers(headers, rule.response_ops + backend_ops),
            reason,
            (GRPC_UNAVAILABLE if status >= 500 else None) if grpc else None,
            rule.route_key,
            rule.index,
            rule.name,
        )

    if rule.unsupported_filter:
        return respond(500, (), f"{rule.unsupported_filter} is not supported")
    if rule.redirect is not None and m is not None:
        location = _location(rule.redirect, view, m, port)
        return respond(rule.redirect.status_code, (("location", location),), "redirect")
    backend = _pick(rule.backends, rand)
    if backend is None:
        why = "no backendRefs" if not rule.backends else "every backendRef has weight 0"
        return respond(500, (), why)
    if not backend.valid:
        return respond(500, (), backend.why_invalid)
    if backend.redirect is not None and m is not None:
        location = _location(backend.redirect, view, m, port)
        status = backend.redirect.status_code
        return respond(status, (("location", location),), "redirect", backend.response_ops)
    path = view.target
    host = request.authority
    headers = request.headers
    for op in rule.request_ops + backend.request_ops:
        if isinstance(op, HeaderOps):
            headers = modify_headers(headers, (op,))
            if any(n.lower() == "host" for n, _ in op.set + op.add):
                host = next(v for n, v in reversed(headers) if n.lower() == "host")
            continue
        if op.hostname:
            host = op.hostname
            headers = tuple(
                (n, op.hostname) if n.lower() in ("host", ":authority") else (n, v)
                for n, v in headers
            )
        if op.path is not None:
            path = _rewrite_path(op.path, m, path)
    mirrors = tuple(
        target
        for target, percent in rule.mirrors + backend.mirrors
        if percent >= 100 or (percent > 0 and rand() * 100 < percent)
    )
    return Forward(
        backend.namespace,
        backend.name,
        backend.port,
        path,
        host,
        headers,
        rule.response_ops + backend.response_ops,
        mirrors,
        rule.timeouts,
        rule.retry,
        rule.route_key,
        rule.index,
        rule.name,
    )


# --- filters ---------------------------------------------------------------------------------


def modify_headers(headers: Headers, ops: Iterable[HeaderOps]) -> Headers:
    """Apply header modifiers in order: for each, set, then add, then remove.

    set replaces every value of the header (case-insensitive name) with one line, where the
    first was; add appends ",value" to an existing header's last line (a new line for
    Set-Cookie, whose values cannot be joined) or adds a line; remove drops every line.
    """
    out = list(headers)
    for op in ops:
        for name, value in op.set:
            low = name.lower()
            at = next((i for i, (n, _) in enumerate(out) if n.lower() == low), len(out))
            out = [(n, v) for n, v in out if n.lower() != low]
            out.insert(min(at, len(out)), (name, value))
        for name, value in op.add:
            low = name.lower()
            last = max((i for i, (n, _) in enumerate(out) if n.lower() == low), default=-1)
            if last < 0 or low == "set-cookie":
                out.append((name, value))
            else:
                n, v = out[last]
                out[last] = (n, f"{v},{value}" if v else value)
        if op.remove:
            gone = {r.lower() for r in op.remove}
            out = [(n, v) for n, v in out if n.lower() not in gone]
    return tuple(out)


def _replace_prefix(path: str, prefix: str, replacement: str) -> str:
    """ReplacePrefixMatch per the spec's table; `prefix` has no trailing "/"."""
    rest = path[len(prefix) :]
    return (replacement.rstrip("/") + rest) or "/"


def _rewrite_path(mod: PathModifier, m: _HTTPMatch | None, path: str) -> str:
    raw, sep, query = path.partition("?")
    if mod.type is PathModifierType.REPLACE_FULL_PATH:
        new = mod.value or "/"
    else:
        # The parser admits ReplacePrefixMatch only on a rule with one PathPrefix match.
        prefix = m.path_value if m is not None else ""
        new = _replace_prefix(raw, prefix, mod.value)
    return new + sep + query


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _split_host(authority: str) -> str:
    """The host of a Host header value, without its port."""
    if authority.startswith("["):
        end = authority.find("]")
        return authority[: end + 1] if end > 0 else authority
    host, _, _ = authority.partition(":")
    return host


def _location(redirect: RequestRedirect, view: _RequestView, m: _HTTPMatch, port: int) -> str:
    """The Location of a redirect; `port` is the Service port (the mesh's "listener")."""
    scheme = redirect.scheme or view.request.scheme or "http"
    host = redirect.hostname or _split_host(view.request.authority)
    if redirect.port is not None:
        port = redirect.port
    elif redirect.scheme:
        port = _DEFAULT_PORTS.get(redirect.scheme, port)
    path = view.path
    if redirect.path is not None:
        if redirect.path.type is PathModifierType.REPLACE_FULL_PATH:
            path = redirect.path.value or "/"
        else:
            path = _replace_prefix(view.path, m.path_value, redirect.path.value)
    port_part = "" if _DEFAULT_PORTS.get(scheme) == port else f":{port}"
    query = f"?{view.query_string}" if view.has_query else ""
    return f"{scheme}://{host}{port_part}{path}{query}"
