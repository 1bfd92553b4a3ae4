"""VirtualService (Istio's `networking.istio.io/v1`, served as `networking.weft.dev/v1`)
decisions at the waypoint, sans I/O: the same `routing.Forward` / `routing.Respond` the
HTTPRoute tables give, so the proxy's retry, timeout, mirror, rewrite, redirect and header
code applies unchanged.

    build_vs_table(services, *, service_namespace, service_name, port, service_ports)
        -> VSTable
    route_vs(table, request, rand) -> Forward | Respond

- `service_ports(namespace, name) -> tuple[int, ...] | None`: a Service's ports (None: no
  such Service), to resolve destinations.
- A table holds the `http` rules of every VirtualService one of whose `hosts` names the
  Service (short name and `name.namespace` read in the VirtualService's namespace, the FQDN,
  a wildcard covering the FQDN), VirtualServices in namespace/name order (the model has no
  creation time), rules in order: the first rule that matches decides (Istio's rule). No
  rule matching is 404 (`NR`), as Envoy answers when a route table has no match. The caller
  (`waypoint.decision`) uses a table only on a Service port no HTTPRoute attaches to (Istio:
  the HTTPRoute wins).

Istio's semantics, rule by rule:

- `match[]` entries are ORed, their conditions ANDed; none: every request. `uri` is the
  path without the query string: `exact`, `prefix` (a plain string prefix, as Envoy's), or
  `regex` (the whole path, RE2); `ignoreUriCase` folds case for exact and prefix. `headers`
  (names case-insensitive; a repeated header is matched as its values joined by ","),
  `withoutHeaders` (matches when the header does not match), `queryParams` (first value,
  URL-decoded), `method`, `authority` (Host / `:authority`), `port` (the Service port),
  `sourceLabels` (every label on the client workload), `sourceNamespace`.
- `route[]`: one destination takes everything; several are picked by `weight` with `rand`
  (weight 0 never). A destination's host names a Service as `hosts` do; its port is
  `port.number`, else the Service's only port, else the request's port. A destination that
  names no Service (or port) gets 500. `subset` is carried on `Forward.subset` (a
  DestinationRule gives its labels).
- `redirect`: answered here, `redirectCode` (301 by default), Location from `scheme`,
  `authority`, `port` (default: the request's), `uri` (the whole path), query kept.
- `rewrite.uri` replaces the matched prefix when the rule matched by `uri.prefix`, else the
  whole path (query kept); `rewrite.authority` the Host.
- `headers.request/response` (set, add, remove) of the rule, then of the destination.
- `mirror` + `mirrorPercentage` (default 100 %): a `MirrorTarget` with that chance.
- `timeout` -> `Timeouts.request` (0 disables); `retries.perTryTimeout` ->
  `Timeouts.backend_request`; `retries.attempts` and `retryOn` -> `Retry` (`retry_codes`
  below). `retries` left out is Istio's default policy: 2 attempts on
  `connect-failure,refused-stream,unavailable,cancelled,retriable-status-codes` (no response
  codes of its own: the proxy tries again when a try gets no response).
- `fault`: `delay` with `percentage` chance, then `abort` with its own chance; left-out
  percentage is 0 (istio/api#2522). An abort answers `httpStatus`, or for `grpcStatus` a
  trailers-only gRPC answer (plain HTTP gets the status's HTTP equivalent). Drawn here, into
  `Forward.fault`, so the proxy only carries the verdict out.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

from meshcore.resources.core import ResourceKey
from meshcore.resources.gateway import Retry, Timeouts
from meshcore.resources.names import service_of_host
from meshcore.resources.virtualservice import (
    GRPC_CODES,
    Destination,
    HeaderOperations,
    HTTPMatchRequest,
    HTTPRoute,
    Retries,
    StringMatch,
    StringMatchType,
    VirtualService,
    host_matches,
)
from waypoint.routing import (
    Decision,
    Fault,
    Forward,
    HeaderOps,
    Headers,
    MirrorTarget,
    Request,
    Respond,
    _RequestView,
    _split_host,
    modify_headers,
)

ServicePorts = Callable[[str, str], "tuple[int, ...] | None"]

# Istio's default retry policy when a rule has no `retries` (pilot's DefaultPolicy).
DEFAULT_RETRY = Retry(codes=(), attempts=2)

# The HTTP equivalent of a gRPC status, for a grpcStatus abort answered to plain HTTP.
_HTTP_FOR_GRPC = {
    0: 200,
    1: 499,
    3: 400,
    4: 504,
    5: 404,
    6: 409,
    7: 403,
    8: 429,
    9: 400,
    10: 409,
    11: 400,
    12: 501,
    14: 503,
    16: 401,
}


def retry_codes(retry_on: Iterable[str]) -> tuple[int, ...]:
    """The response codes a `retryOn` list retries: 5xx -> every 5xx, gateway-error ->
    502/503/504, retriable-4xx -> 409, a number -> itself. The rest (connect-failure,
    reset, refused-stream...) retry a try that got no response, which the proxy always does
    within the attempts; the gRPC ones (unavailable, cancelled...) name grpc-status values,
    which the proxy does not read yet."""
    codes: set[int] = set()
    for policy in retry_on:
        if policy == "5xx":
            codes.update(range(500, 600))
        elif policy == "gateway-error":
            codes.update((502, 503, 504))
        elif policy == "retriable-4xx":
            codes.add(409)
        elif policy.isdigit():
            codes.add(int(policy))
    return tuple(sorted(codes))


def to_retry(retries: Retries | None) -> Retry:
    if retries is None:
        return DEFAULT_RETRY
    return Retry(retry_codes(retries.retry_on), retries.attempts, retries.backoff)


def to_timeouts(rule: HTTPRoute) -> Timeouts | None:
    per_try = rule.retries.per_try_timeout if rule.retries is not None else None
    if rule.timeout is None and per_try is None:
        return None
    return Timeouts(request=rule.timeout, backend_request=per_try)


# --- compiled form ---------------------------------------------------------------------------


@dataclass(frozen=True)
class _Value:
    type: StringMatchType
    value: str
    regex: re.Pattern[str] | None
    fold: bool = False

    def test(self, actual: str | None) -> bool:
        if actual is None:
            return False
        if self.regex is not None:
            return self.regex.fullmatch(actual) is not None
        if self.fold:
            actual = actual.lower()
        if self.type is StringMatchType.EXACT:
            return actual == self.value
        return actual.startswith(self.value)


def _value(m: StringMatch, *, fold: bool = False) -> _Value:
    if m.type is StringMatchType.REGEX:
        return _Value(m.type, m.value, re.compile(m.value))  # the parser checked it for RE2
    return _Value(m.type, m.value.lower() if fold else m.value, None, fold)


@dataclass(frozen=True)
class _Match:
    uri: _Value | None
    method: _Value | None
    authority: _Value | None
    headers: tuple[tuple[str, _Value], ...]
    without_headers: tuple[tuple[str, _Value], ...]
    query: tuple[tuple[str, _Value], ...]
    port: int | None
    source_labels: Mapping[str, str]
    source_namespace: str

    @property
    def prefix(self) -> str | None:
        """The matched prefix when this match is by uri prefix (what rewrite.uri replaces)."""
        if self.uri is not None and self.uri.type is StringMatchType.PREFIX:
            return self.uri.value
        return None


@dataclass(frozen=True)
class _Dest:
    namespace: str
    name: str
    port: int | None  # None: names no Service (or port): 500
    subset: str
    weight: int
    request_ops: HeaderOps
    response_ops: HeaderOps
    host: str


@dataclass(frozen=True)
class _Rule:
    key: ResourceKey
    index: int
    rule: HTTPRoute
    matches: tuple[_Match, ...]  # empty: every request
    dests: tuple[_Dest, ...]
    mirror: MirrorTarget | None
    timeouts: Timeouts | None
    retry: Retry
    request_ops: HeaderOps
    response_ops: HeaderOps


@dataclass(frozen=True)
class VSTable:
    service_namespace: str
    service_name: str
    port: int
    rules: tuple[_Rule, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.rules


def _ops(o: HeaderOperations) -> HeaderOps:
    return HeaderOps(o.set, o.add, o.remove)


def _resolve(
    dest: Destination, namespace: str, port: int, service_ports: ServicePorts
) -> tuple[str, str, int | None]:
    svc = service_of_host(dest.host, namespace)
    if svc is None:
        return "", dest.host, None
    ports = service_ports(*svc)
    if ports is None:
        return svc[0], svc[1], None
    if dest.port is not None:
        return svc[0], svc[1], dest.port if dest.port in ports else None
    if len(ports) == 1:
        return svc[0], svc[1], ports[0]
    return svc[0], svc[1], port if port in ports else None


def _compile_match(m: HTTPMatchRequest) -> _Match:
    fold = m.ignore_uri_case
    return _Match(
        None if m.uri is None else _value(m.uri, fold=fold),
        None if m.method is None else _value(m.method),
        None if m.authority is None else _value(m.authority),
        tuple((n.lower(), _value(v)) for n, v in m.headers),
        tuple((n.lower(), _value(v)) for n, v in m.without_headers),
        tuple((n, _value(v)) for n, v in m.query_params),
        m.port,
        m.source_labels,
        m.source_namespace,
    )


def build_vs_table(
    services: Iterable[VirtualService],
    *,
    service_namespace: str,
    service_name: str,
    port: int,
    service_ports: ServicePorts,
) -> VSTable:
    """The rules of every VirtualService whose hosts name this Service, in order."""
    rules: list[_Rule] = []
    chosen = [
        vs
        for vs in services
        if any(
            host_matches(h, vs.metadata.namespace, service_namespace, service_name)
            for h in vs.hosts
        )
    ]
    for vs in sorted(chosen, key=lambda v: (v.metadata.namespace, v.metadata.name)):
        ns = vs.metadata.namespace
        for i, rule in enumerate(vs.http):
            matches = tuple(_compile_match(m) for m in rule.match)
            if rule.match and not any(m.port in (None, port) for m in matches):
                continue  # every match names another port: not this table's rule
            dests = []
            for d in rule.route:
                dns, dname, dport = _resolve(d.destination, ns, port, service_ports)
                dests.append(
                    _Dest(
                        dns,
                        dname,
                        dport,
                        d.destination.subset,
                        d.weight if len(rule.route) > 1 else 1,
                        _ops(d.headers.request),
                        _ops(d.headers.response),
                        d.destination.host,
                    )
                )
            mirror = None
            if rule.mirror is not None:
                mns, mname, mport = _resolve(rule.mirror, ns, port, service_ports)
                if mport is not None:  # a mirror that names no Service is dropped
                    mirror = MirrorTarget(mns, mname, mport)
            rules.append(
                _Rule(
                    vs.key,
                    i,
                    rule,
                    matches,
                    tuple(dests),
                    mirror,
                    to_timeouts(rule),
                    to_retry(rule.retries),
                    _ops(rule.headers.request),
                    _ops(rule.headers.response),
                )
            )
    return VSTable(service_namespace, service_name, port, tuple(rules))


# --- matching --------------------------------------------------------------------------------


def _matches(m: _Match, view: _RequestView, port: int) -> bool:
    request = view.request
    if m.port is not None and m.port != port:
        return False
    if m.uri is not None and not m.uri.test(view.path):
        return False
    if m.method is not None and not m.method.test(request.method):
        return False
    if m.authority is not None and not m.authority.test(request.authority):
        return False
    if m.source_namespace and m.source_namespace != request.client_namespace:
        return False
    if m.source_labels:
        labels = request.source_labels or {}
        if any(labels.get(k) != v for k, v in m.source_labels.items()):
            return False
    return (
        all(v.test(view.header(n)) for n, v in m.headers)
        and not any(v.test(view.header(n)) for n, v in m.without_headers)
        and all(v.test(view.query(n)) for n, v in m.query)
    )


def _chance(percentage: float, rand: Callable[[], float]) -> bool:
    """True with `percentage` % probability; no draw for 0 or 100."""
    if percentage <= 0:
        return False
    return percentage >= 100 or rand() * 100 < percentage


def draw_fault(rule: HTTPRoute, rand: Callable[[], float]) -> Fault | None:
    """Whether this request is delayed and/or aborted by the rule's `fault`."""
    fault = rule.fault
    if fault is None:
        return None
    delay = 0.0
    if fault.delay is not None and _chance(fault.delay.percentage, rand):
        delay = fault.delay.fixed_delay
    status = grpc = None
    if fault.abort is not None and _chance(fault.abort.percentage, rand):
        if fault.abort.http_status is not None:
            status = fault.abort.http_status
        else:
            grpc = GRPC_CODES[fault.abort.grpc_status]
            status = _HTTP_FOR_GRPC.get(grpc, 500)
    if not delay and status is None:
        return None
    return Fault(delay, status, grpc)


def route_vs(table: VSTable, request: Request, rand: Callable[[], float]) -> Decision:
    """Decide what the waypoint does with one request by the table's VirtualService rules."""
    view = _RequestView(request)
    for rule in table.rules:
        if not rule.matches:
            return _apply(rule, view, None, table.port, rand)
        for m in rule.matches:
            if _matches(m, view, table.port):
                return _apply(rule, view, m, table.port, rand)
    return Respond(404, reason="no VirtualService rule matched")


def _pick(dests: Sequence[_Dest], rand: Callable[[], float]) -> _Dest | None:
    live = [d for d in dests if d.weight > 0]
    if len(live) <= 1:
        return live[0] if live else None
    point = rand() * sum(d.weight for d in live)
    running = 0
    for d in live:
        running += d.weight
        if point < running:
            return d
    return live[-1]


def _apply(
    rule: _Rule, view: _RequestView, m: _Match | None, port: int, rand: Callable[[], float]
) -> Decision:
    request = view.request
    spec = rule.rule

    def respond(status: int, headers: Headers, reason: str) -> Respond:
        return Respond(
            status,
            modify_headers(headers, (rule.response_ops,)),
            reason,
            None,
            rule.key,
            rule.index,
            spec.name,
        )

    if spec.redirect is not None:
        r = spec.redirect
        scheme = r.scheme or request.scheme or "http"
        host = r.authority or _split_host(request.authority)
        port_part = f":{r.port}" if r.port is not None else ""
        if r.port is None and not r.authority and ":" in request.authority.rpartition("]")[2]:
            port_part = ":" + request.authority.rpartition(":")[2]  # the request's own port
        path = r.uri or view.path
        query = f"?{view.query_string}" if view.has_query else ""
        location = f"{scheme}://{host}{port_part}{path}{query}"
        return respond(r.redirect_code, (("location", location),), "redirect")
    dest = _pick(rule.dests, rand)
    if dest is None:
        return respond(500, (), "every destination has weight 0")
    if dest.port is None:
        return respond(500, (), f"destination {dest.host!r} names no Service port")
    fault = draw_fault(spec, rand)
    path = view.target
    host = request.authority
    headers = request.headers
    for ops in (rule.request_ops, dest.request_ops):
        if not (ops.set or ops.add or ops.remove):
            continue
        headers = modify_headers(headers, (ops,))
        if any(n.lower() == "host" for n, _ in ops.set + ops.add):
            host = next(v for n, v in reversed(headers) if n.lower() == "host")
    if spec.rewrite is not None:
        if spec.rewrite.authority:
            host = spec.rewrite.authority
            headers = tuple(
                (n, host) if n.lower() in ("host", ":authority") else (n, v) for n, v in headers
            )
        if spec.rewrite.uri is not None:
            prefix = m.prefix if m is not None else None
            raw, sep, query = path.partition("?")
            if prefix is not None and len(raw) >= len(prefix):
                raw = spec.rewrite.uri + raw[len(prefix) :]
            else:
                raw = spec.rewrite.uri
            path = (raw or "/") + sep + query
    mirrors: tuple[MirrorTarget, ...] = ()
    if rule.mirror is not None and _chance(spec.mirror_percentage, rand):
        mirrors = (rule.mirror,)
    response_ops = tuple(
        o for o in (rule.response_ops, dest.response_ops) if o.set or o.add or o.remove
    )
    return Forward(
        dest.namespace,
        dest.name,
        dest.port,
        path,
        host,
        headers,
        response_ops,
        mirrors,
        rule.timeouts,
        rule.retry,
        rule.key,
        rule.index,
        spec.name,
        subset=dest.subset,
        fault=fault,
    )
