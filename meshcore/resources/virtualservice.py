"""Istio's VirtualService (`networking.istio.io/v1`), served as `networking.weft.dev/v1`.

The same fields and meaning as Istio's, for what a mesh waypoint applies: `hosts` (mesh hosts:
a Service's short name, `name.namespace`, or its FQDN), and `http[]` with `match`, `route`
(weighted destinations with a subset and port), `timeout`, `retries`, `fault`, `mirror` +
`mirrorPercentage`, `rewrite`, `redirect` and `headers`. What Istio's validation refuses is
refused here too, with the field path.

Not for a mesh waypoint, and so ignored with the reason in the list of ignored fields:
`gateways` (a waypoint is the mesh), `tcp` and `tls` (a waypoint routes HTTP; TCP is passed
through), `exportTo`. Fields that would change what a request gets if they were dropped
(`corsPolicy`, `directResponse`, `delegate`, `mirrors`, `uriRegexRewrite`, a match's
`scheme`) are refused as not supported yet rather than silently dropped.

Istio's defaults are kept: a fault's `percentage` left out faults no request (istio/api#2522),
`retries` left out is Istio's default policy (see `waypoint.vsrouting`), `redirectCode`
defaults to 301.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from meshcore.resources.core import ObjectMeta, ResourceKey, parse_metadata
from meshcore.resources.errors import ManifestError
from meshcore.resources.fields import Fields
from meshcore.resources.groups import NETWORKING
from meshcore.resources.names import check_dns_subdomain, check_labels, service_of_host

VIRTUAL_SERVICE_VERSIONS: frozenset[str] = NETWORKING.versions

# --- types -----------------------------------------------------------------------------------


class StringMatchType(enum.Enum):
    EXACT = "exact"
    PREFIX = "prefix"
    REGEX = "regex"


@dataclass(frozen=True)
class StringMatch:
    type: StringMatchType
    value: str


@dataclass(frozen=True)
class HTTPMatchRequest:
    """One `match[]` entry: its conditions are ANDed; the entries of a rule are ORed."""

    name: str = ""
    uri: StringMatch | None = None
    method: StringMatch | None = None
    authority: StringMatch | None = None
    headers: tuple[tuple[str, StringMatch], ...] = ()  # names lower-cased
    without_headers: tuple[tuple[str, StringMatch], ...] = ()
    query_params: tuple[tuple[str, StringMatch], ...] = ()
    port: int | None = None  # the Service port the request came to
    source_labels: Mapping[str, str] = field(default_factory=dict)
    source_namespace: str = ""
    ignore_uri_case: bool = False


@dataclass(frozen=True)
class Destination:
    host: str
    subset: str = ""
    port: int | None = None  # None: the port the request came to


@dataclass(frozen=True)
class HeaderOperations:
    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.set or self.add or self.remove)


@dataclass(frozen=True)
class Headers:
    request: HeaderOperations = HeaderOperations()
    response: HeaderOperations = HeaderOperations()


@dataclass(frozen=True)
class RouteDestination:
    destination: Destination
    weight: int = 0
    headers: Headers = Headers()


@dataclass(frozen=True)
class Retries:
    attempts: int = 0
    per_try_timeout: float | None = None  # seconds
    retry_on: tuple[str, ...] = ()  # as written: "5xx", "gateway-error", "503"...
    backoff: float | None = None


@dataclass(frozen=True)
class Delay:
    fixed_delay: float  # seconds
    percentage: float = 0.0  # 0-100; left out: 0, no request (Istio's behaviour)


@dataclass(frozen=True)
class Abort:
    http_status: int | None = None
    grpc_status: str = ""  # a gRPC code name: "UNAVAILABLE"...
    percentage: float = 0.0


@dataclass(frozen=True)
class Fault:
    delay: Delay | None = None
    abort: Abort | None = None


@dataclass(frozen=True)
class Rewrite:
    uri: str | None = None
    authority: str = ""


@dataclass(frozen=True)
class Redirect:
    uri: str = ""  # "": the request's path
    authority: str = ""  # "": the request's
    redirect_code: int = 301
    scheme: str = ""  # "": the request's
    port: int | None = None


@dataclass(frozen=True)
class HTTPRoute:
    """One `http[]` rule of a VirtualService."""

    name: str = ""
    match: tuple[HTTPMatchRequest, ...] = ()  # empty: every request
    route: tuple[RouteDestination, ...] = ()
    redirect: Redirect | None = None
    rewrite: Rewrite | None = None
    timeout: float | None = None  # seconds; 0 disables
    retries: Retries | None = None  # None: Istio's default policy
    fault: Fault | None = None
    mirror: Destination | None = None
    mirror_percentage: float = 100.0
    headers: Headers = Headers()


@dataclass(frozen=True)
class VirtualService:
    metadata: ObjectMeta
    hosts: tuple[str, ...]
    http: tuple[HTTPRoute, ...] = ()
    kind = "VirtualService"

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.kind, self.metadata.namespace, self.metadata.name)


# gRPC status code names (google.rpc.Code), for abort.grpcStatus.
GRPC_CODES: Mapping[str, int] = {
    "OK": 0,
    "CANCELLED": 1,
    "UNKNOWN": 2,
    "INVALID_ARGUMENT": 3,
    "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5,
    "ALREADY_EXISTS": 6,
    "PERMISSION_DENIED": 7,
    "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9,
    "ABORTED": 10,
    "OUT_OF_RANGE": 11,
    "UNIMPLEMENTED": 12,
    "INTERNAL": 13,
    "UNAVAILABLE": 14,
    "DATA_LOSS": 15,
    "UNAUTHENTICATED": 16,
}

# Envoy's retry_on policies Istio passes through (x-envoy-retry-on and x-envoy-retry-grpc-on).
RETRY_ON = frozenset(
    {
        "5xx",
        "gateway-error",
        "reset",
        "reset-before-request",
        "connect-failure",
        "envoy-ratelimited",
        "retriable-4xx",
        "refused-stream",
        "retriable-status-codes",
        "retriable-headers",
        "http3-post-connect-failure",
        "cancelled",
        "deadline-exceeded",
        "internal",
        "resource-exhausted",
        "unavailable",
    }
)

# --- parsing ---------------------------------------------------------------------------------

_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]+")
_HOST = re.compile(r"(\*|(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*)")
# Go's time.ParseDuration, as Istio's CRD takes it: "10s", "1.5s", "100ms", "1h30m".
_DURATION = re.compile(r"(?:[0-9]+(?:\.[0-9]*)?(?:ns|us|µs|ms|s|m|h))+")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?)(ns|us|µs|ms|s|m|h)")
_UNIT = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}

_NOT_FOR_A_WAYPOINT = {
    "gateways": "a mesh waypoint applies a VirtualService to mesh traffic only",
    "tcp": "a waypoint routes HTTP; TCP is passed through",
    "tls": "a waypoint routes HTTP; TLS is passed through",
    "exportTo": "weft has no export scoping: every waypoint sees the VirtualService",
}
_NOT_SUPPORTED = {
    "corsPolicy": "not supported by weft yet",
    "directResponse": "not supported by weft yet",
    "delegate": "not supported by weft yet",
    "mirrors": "not supported by weft yet: use mirror and mirrorPercentage",
    "mirror_percent": "deprecated in Istio: use mirrorPercentage",
}


def parse_duration(value: object, path: str, *, minimum: float = 0.001) -> float:
    """An Istio duration (Go's syntax: `10s`, `1.5s`, `250ms`, `1h30m`) in seconds."""
    if not isinstance(value, str) or not _DURATION.fullmatch(value):
        raise ManifestError(
            f"{value!r} is not a duration (a number and a unit h, m, s, ms, us or ns, such as "
            "10s, 1.5s or 250ms)",
            field=path,
        )
    seconds = sum(float(n) * _UNIT[u] for n, u in _DURATION_PART.findall(value))
    if seconds < minimum:
        raise ManifestError(f"must be at least {minimum * 1000:g}ms, got {value!r}", field=path)
    return seconds


def _duration(f: Fields, name: str, *, minimum: float = 0.001) -> float | None:
    raw = f.raw(name)
    return None if raw is None else parse_duration(raw, f.sub(name), minimum=minimum)


def _number(f: Fields, name: str, *, default: float, lo: float, hi: float) -> float:
    raw = f.raw(name)
    if raw is None:
        return default
    if isinstance(raw, bool) or not isinstance(raw, int | float):
        raise f.fail(name, f"expected a number, got {type(raw).__name__}")
    if not lo <= raw <= hi:
        raise f.fail(name, f"must be between {lo:g} and {hi:g}, got {raw:g}")
    return float(raw)


def _percentage(f: Fields, name: str, *, default: float) -> float:
    if f.raw(name) is None:
        return default
    pf = Fields(f.raw(name), f.sub(name))
    value = _number(pf, "value", default=0.0, lo=0.0, hi=100.0)
    pf.done()
    return value


def _check_regex(value: str, path: str) -> None:
    from meshcore.routecheck import check_re2  # the one RE2 check (routecheck imports us late)

    try:
        re.compile(value)
    except re.error as err:
        raise ManifestError(
            f"{value!r} is not a valid regular expression: {err}", field=path
        ) from None
    why = check_re2(value)
    if why is not None:
        raise ManifestError(f"{value!r}: {why}", field=path)


def _string_match(raw: object, path: str) -> StringMatch:
    f = Fields(raw, path)
    found = [(t, f.raw(t.value)) for t in StringMatchType if f.raw(t.value) is not None]
    f.done()
    if len(found) != 1:
        raise ManifestError("give exactly one of exact, prefix or regex", field=path)
    kind, value = found[0]
    if not isinstance(value, str):
        raise ManifestError("expected a string", field=f"{path}.{kind.value}")
    if kind is StringMatchType.REGEX:
        _check_regex(value, f"{path}.{kind.value}")
    return StringMatch(kind, value)


def _string_matches(
    f: Fields, name: str, *, header_names: bool
) -> tuple[tuple[str, StringMatch], ...]:
    raw = f.raw(name)
    if raw is None:
        return ()
    if not isinstance(raw, dict):
        raise f.fail(name, "expected an object of name: {exact|prefix|regex: value}")
    out = []
    for key, item in raw.items():
        path = f"{f.sub(name)}.{key}"
        if not isinstance(key, str) or (header_names and not _HEADER_NAME.fullmatch(key)):
            raise ManifestError(f"{key!r} is not a valid header name", field=path)
        if header_names and item in (None, {}):  # Istio: an empty match checks presence
            out.append((key.lower(), StringMatch(StringMatchType.REGEX, ".*")))
            continue
        out.append((key.lower() if header_names else key, _string_match(item, path)))
    return tuple(out)


def _parse_match(raw: object, path: str, ignored: list[str]) -> HTTPMatchRequest:
    f = Fields(raw, path, ignored=frozenset({"gateways", "statPrefix"}))
    if f.raw("scheme") is not None:
        raise f.fail("scheme", "not supported by weft yet (a waypoint's traffic is http)")
    name = f.string("name")

    def opt(key: str) -> StringMatch | None:
        return None if f.raw(key) is None else _string_match(f.raw(key), f.sub(key))

    uri, method, authority = opt("uri"), opt("method"), opt("authority")
    headers = _string_matches(f, "headers", header_names=True)
    without = _string_matches(f, "withoutHeaders", header_names=True)
    query = _string_matches(f, "queryParams", header_names=False)
    port = None
    if f.raw("port") is not None:
        port = f.integer("port", minimum=1, maximum=65535)
    labels = f.string_map("sourceLabels")
    check_labels(labels, f.sub("sourceLabels"))
    source_namespace = f.string("sourceNamespace")
    ignore_case = f.raw("ignoreUriCase")
    if ignore_case is not None and not isinstance(ignore_case, bool):
        raise f.fail("ignoreUriCase", "expected a boolean")
    for item in f.done():
        ignored.append(f"{item} ({_NOT_FOR_A_WAYPOINT.get(item.rsplit('.', 1)[-1], 'unused')})")
    return HTTPMatchRequest(
        name,
        uri,
        method,
        authority,
        headers,
        without,
        query,
        port,
        labels,
        source_namespace,
        bool(ignore_case),
    )


def _host(value: str, path: str) -> str:
    if not value or len(value) > 253 or not _HOST.fullmatch(value):
        raise ManifestError(
            f"{value!r} is not a mesh host (a Service name, name.namespace, or its FQDN)",
            field=path,
        )
    return value


def _parse_destination(raw: object, path: str) -> Destination:
    f = Fields(raw, path)
    host = _host(f.string("host", required=True), f.sub("host"))
    subset = f.string("subset")
    if subset:
        check_dns_subdomain(subset, f.sub("subset"))
    port = None
    if f.raw("port") is not None:
        pf = Fields(f.raw("port"), f.sub("port"))
        port = pf.integer("number", required=True, minimum=1, maximum=65535)
        pf.done()
    f.done()
    return Destination(host, subset, port)


def _header_ops(raw: object, path: str) -> HeaderOperations:
    f = Fields(raw, path)
    ops = {}
    for op in ("set", "add"):
        values = f.string_map(op)
        for name in values:
            if not _HEADER_NAME.fullmatch(name):
                raise ManifestError(f"{name!r} is not a valid header name", field=f"{path}.{op}")
        ops[op] = tuple(values.items())
    remove = f.string_list("remove")
    f.done()
    return HeaderOperations(ops["set"], ops["add"], remove)


def _parse_headers(raw: object, path: str) -> Headers:
    f = Fields(raw, path)
    request = response = HeaderOperations()
    if f.raw("request") is not None:
        request = _header_ops(f.raw("request"), f.sub("request"))
    if f.raw("response") is not None:
        response = _header_ops(f.raw("response"), f.sub("response"))
    f.done()
    return Headers(request, response)


def _parse_route_destination(raw: object, path: str) -> RouteDestination:
    f = Fields(raw, path)
    if f.raw("destination") is None:
        raise f.fail("destination", "required field is missing")
    dest = _parse_destination(f.raw("destination"), f.sub("destination"))
    weight = f.integer("weight", minimum=0)
    headers = Headers()
    if f.raw("headers") is not None:
        headers = _parse_headers(f.raw("headers"), f.sub("headers"))
    f.done()
    return RouteDestination(dest, weight, headers)


def _parse_retries(raw: object, path: str) -> Retries:
    f = Fields(raw, path, ignored=frozenset({"retryRemoteLocalities", "retryIgnorePreviousHosts"}))
    attempts = f.integer("attempts", minimum=0)
    per_try = _duration(f, "perTryTimeout")
    backoff = _duration(f, "backoff")
    retry_on: tuple[str, ...] = ()
    if f.raw("retryOn") is not None:
        text = f.string("retryOn")
        retry_on = tuple(p.strip() for p in text.split(",") if p.strip())
        for policy in retry_on:
            if policy not in RETRY_ON and not (policy.isdigit() and 100 <= int(policy) <= 599):
                raise f.fail(
                    "retryOn",
                    f"{policy!r} is not a retry policy ({', '.join(sorted(RETRY_ON))}, or an "
                    "HTTP status code)",
                )
    f.done()
    return Retries(attempts, per_try, retry_on, backoff)


def _parse_fault(raw: object, path: str) -> Fault:
    f = Fields(raw, path)
    delay = abort = None
    if f.raw("delay") is not None:
        df = Fields(f.raw("delay"), f.sub("delay"))
        if df.raw("exponentialDelay") is not None:
            raise df.fail("exponentialDelay", "not supported (nor by Istio): use fixedDelay")
        if df.raw("percent") is not None:
            raise df.fail("percent", "deprecated in Istio: use percentage.value")
        fixed = _duration(df, "fixedDelay")
        if fixed is None:
            raise df.fail("fixedDelay", "required field is missing")
        delay = Delay(fixed, _percentage(df, "percentage", default=0.0))
        df.done()
    if f.raw("abort") is not None:
        af = Fields(f.raw("abort"), f.sub("abort"))
        if af.raw("http2Error") is not None:
            raise af.fail("http2Error", "not supported by weft yet: use httpStatus or grpcStatus")
        http_status = None
        if af.raw("httpStatus") is not None:
            http_status = af.integer("httpStatus", minimum=200, maximum=599)
        grpc_status = af.string("grpcStatus")
        if grpc_status and grpc_status not in GRPC_CODES:
            raise af.fail(
                "grpcStatus", f"{grpc_status!r} is not a gRPC status code name (e.g. UNAVAILABLE)"
            )
        if (http_status is None) == (not grpc_status):
            raise ManifestError(
                "give exactly one of httpStatus or grpcStatus", field=f.sub("abort")
            )
        abort = Abort(http_status, grpc_status, _percentage(af, "percentage", default=0.0))
        af.done()
    f.done()
    if delay is None and abort is None:
        raise ManifestError("give delay, abort or both", field=path)
    return Fault(delay, abort)


def _parse_redirect(raw: object, path: str) -> Redirect:
    f = Fields(raw, path)
    if f.raw("derivePort") is not None:
        raise f.fail("derivePort", "not supported by weft yet: give port, or leave it out")
    uri = f.string("uri")
    authority = f.string("authority")
    code = f.integer("redirectCode", default=301)
    if code not in (301, 302, 303, 307, 308):
        raise f.fail("redirectCode", f"must be 301, 302, 303, 307 or 308, got {code}")
    scheme = f.string("scheme")
    if scheme not in ("", "http", "https"):
        raise f.fail("scheme", f"must be http or https, got {scheme!r}")
    port = None
    if f.raw("port") is not None:
        port = f.integer("port", minimum=1, maximum=65535)
    f.done()
    return Redirect(uri, authority, code, scheme, port)


def _parse_rewrite(raw: object, path: str) -> Rewrite:
    f = Fields(raw, path)
    if f.raw("uriRegexRewrite") is not None:
        raise f.fail("uriRegexRewrite", "not supported by weft yet: use uri")
    uri = f.string("uri") if f.raw("uri") is not None else None
    authority = f.string("authority")
    f.done()
    if uri is None and not authority:
        raise ManifestError("give uri, authority or both", field=path)
    return Rewrite(uri, authority)


def _parse_http(raw: object, path: str, ignored: list[str]) -> HTTPRoute:
    f = Fields(raw, path)
    for name, why in _NOT_SUPPORTED.items():
        if f.raw(name) is not None:
            raise f.fail(name, why)
    name = f.string("name")
    matches = tuple(_parse_match(item, p, ignored) for p, item in f.objects("match"))
    route = tuple(_parse_route_destination(item, p) for p, item in f.objects("route"))
    redirect = rewrite = None
    if f.raw("redirect") is not None:
        redirect = _parse_redirect(f.raw("redirect"), f.sub("redirect"))
    if f.raw("rewrite") is not None:
        rewrite = _parse_rewrite(f.raw("rewrite"), f.sub("rewrite"))
    timeout = _duration(f, "timeout", minimum=0.0)
    retries = None
    if f.raw("retries") is not None:
        retries = _parse_retries(f.raw("retries"), f.sub("retries"))
    fault = None
    if f.raw("fault") is not None:
        fault = _parse_fault(f.raw("fault"), f.sub("fault"))
    mirror = None
    if f.raw("mirror") is not None:
        mirror = _parse_destination(f.raw("mirror"), f.sub("mirror"))
    mirror_percentage = _percentage(f, "mirrorPercentage", default=100.0)
    headers = Headers()
    if f.raw("headers") is not None:
        headers = _parse_headers(f.raw("headers"), f.sub("headers"))
    f.done()
    if redirect is not None:
        for other, value in (("route", route), ("rewrite", rewrite), ("mirror", mirror)):
            if value:
                raise f.fail(other, "may not be given together with redirect")
    elif not route:
        raise f.fail("route", "required unless redirect is given")
    if len(route) > 1 and not any(r.weight for r in route):
        raise f.fail("route", "the weights of several destinations must not all be 0")
    return HTTPRoute(
        name,
        matches,
        route,
        redirect,
        rewrite,
        timeout,
        retries,
        fault,
        mirror,
        mirror_percentage,
        headers,
    )


def parse_virtual_service(f: Fields, ignored: list[str]) -> VirtualService:
    NETWORKING.check(f, "VirtualService")
    meta, ign = parse_metadata(f.raw("metadata"), "metadata", namespaced=True)
    check_dns_subdomain(meta.name, "metadata.name")
    ignored.extend(ign)
    if not f.has("spec"):
        raise f.fail("spec", "required field is missing")
    spec = Fields(f.raw("spec"), "spec", ignored=frozenset(_NOT_FOR_A_WAYPOINT))
    hosts = spec.string_list("hosts")
    if not hosts:
        raise spec.fail("hosts", "must name at least one host")
    for i, host in enumerate(hosts):
        _host(host, f"spec.hosts[{i}]")
    http = tuple(_parse_http(item, p, ignored) for p, item in spec.objects("http"))
    names = [r.name for r in http if r.name]
    if len(names) != len(set(names)):
        raise spec.fail("http", "rule names must be unique")
    for item in spec.done():
        ignored.append(f"{item} ({_NOT_FOR_A_WAYPOINT[item.rsplit('.', 1)[-1]]})")
    return VirtualService(meta, hosts, http)


# --- hosts -----------------------------------------------------------------------------------


def host_matches(host: str, namespace: str, service_namespace: str, service_name: str) -> bool:
    """Whether a VirtualService host (in `namespace`) names this Service; a wildcard host
    (`*`, `*.ns.svc.cluster.local`) names every Service whose FQDN it covers."""
    if "*" in host:
        if host == "*":
            return True
        suffix = host[1:]  # ".ns.svc.cluster.local"
        fqdn = f"{service_name}.{service_namespace}.svc.cluster.local"
        return any(
            name.endswith(suffix) for name in (fqdn, f"{service_name}.{service_namespace}.svc")
        )
    return service_of_host(host, namespace) == (service_namespace, service_name)
