"""Gateway API kinds: Gateway (waypoints), HTTPRoute and GRPCRoute (GAMMA mesh routing).

Fields, defaults and validation follow the Gateway API CRDs (`gateway.networking.k8s.io/v1`),
including the CEL rules the API server applies, so a route that Kubernetes would refuse is
refused here with its field path. Where the API leaves a choice to the implementation, weft's
answer is the narrow one and the error says so: parents are Gateways or Services, backends are
Services, and a few newer filters (CORS, ExternalAuth) are not supported yet. Defaults the API
server would fill in are filled in here, so consumers never see a missing path match or weight.
"""

from __future__ import annotations

import enum
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import ClassVar, TypeVar

from meshcore.resources.core import ObjectMeta, ResourceKey, parse_metadata
from meshcore.resources.errors import ManifestError
from meshcore.resources.fields import Fields
from meshcore.resources.names import check_dns_label, check_dns_subdomain, check_labels

GROUP = "gateway.networking.k8s.io"
GATEWAY_VERSIONS = frozenset({f"{GROUP}/v1", f"{GROUP}/v1beta1"})
HTTPROUTE_VERSIONS = frozenset({f"{GROUP}/v1", f"{GROUP}/v1beta1"})
GRPCROUTE_VERSIONS = frozenset({f"{GROUP}/v1", f"{GROUP}/v1alpha2"})
WAYPOINT_CLASS = "weft-waypoint"

# --- Gateway -------------------------------------------------------------------------------


class ListenerProtocol(enum.Enum):
    HTTP = "HTTP"
    HTTPS = "HTTPS"
    TLS = "TLS"
    TCP = "TCP"
    UDP = "UDP"
    HBONE = "HBONE"  # a waypoint's mTLS tunnel listener (Istio's convention, port 15008)


class FromNamespaces(enum.Enum):
    ALL = "All"
    SELECTOR = "Selector"
    SAME = "Same"


class AddressType(enum.Enum):
    IP_ADDRESS = "IPAddress"
    HOSTNAME = "Hostname"
    NAMED_ADDRESS = "NamedAddress"


@dataclass(frozen=True)
class RouteGroupKind:
    kind: str
    group: str = GROUP


@dataclass(frozen=True)
class AllowedRoutes:
    """Which routes may attach to a listener; the default admits its own namespace's."""

    namespaces: FromNamespaces = FromNamespaces.SAME
    selector: Mapping[str, str] = field(default_factory=dict)  # with FromNamespaces.SELECTOR
    kinds: tuple[RouteGroupKind, ...] = ()  # empty: whatever the protocol supports


@dataclass(frozen=True)
class Listener:
    name: str
    port: int
    protocol: ListenerProtocol
    hostname: str = ""  # empty: any
    allowed_routes: AllowedRoutes = AllowedRoutes()


@dataclass(frozen=True)
class GatewayAddress:
    value: str  # empty: the implementation picks one of this type
    type: AddressType = AddressType.IP_ADDRESS


@dataclass(frozen=True)
class Gateway:
    metadata: ObjectMeta
    gateway_class_name: str
    listeners: tuple[Listener, ...]
    addresses: tuple[GatewayAddress, ...] = ()
    kind = "Gateway"

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.kind, self.metadata.namespace, self.metadata.name)

    @property
    def is_waypoint(self) -> bool:
        return self.gateway_class_name == WAYPOINT_CLASS


# --- routes: references --------------------------------------------------------------------


class ParentKind(enum.Enum):
    GATEWAY = "Gateway"  # north-south, or a waypoint
    SERVICE = "Service"  # GAMMA: the route applies to traffic addressed to the Service

    @property
    def group(self) -> str:
        return GROUP if self is ParentKind.GATEWAY else ""


@dataclass(frozen=True)
class ParentRef:
    kind: ParentKind
    name: str
    namespace: str  # filled in with the route's own when not given
    section_name: str = ""  # a Gateway's listener name, or a Service's port name
    port: int | None = None  # None: every listener, or every Service port

    @property
    def group(self) -> str:
        return self.kind.group


@dataclass(frozen=True)
class BackendObjectRef:
    """A Service port, e.g. where a mirror sends its copies."""

    name: str
    namespace: str  # filled in with the route's own when not given
    port: int


# --- routes: filters -----------------------------------------------------------------------


class FilterType(enum.Enum):
    REQUEST_HEADER_MODIFIER = "RequestHeaderModifier"
    RESPONSE_HEADER_MODIFIER = "ResponseHeaderModifier"
    REQUEST_REDIRECT = "RequestRedirect"
    URL_REWRITE = "URLRewrite"
    REQUEST_MIRROR = "RequestMirror"
    EXTENSION_REF = "ExtensionRef"


class PathModifierType(enum.Enum):
    REPLACE_FULL_PATH = "ReplaceFullPath"
    REPLACE_PREFIX_MATCH = "ReplacePrefixMatch"


@dataclass(frozen=True)
class HTTPHeader:
    name: str
    value: str


@dataclass(frozen=True)
class _HeaderModifier:
    set: tuple[HTTPHeader, ...] = ()  # replace the header's value
    add: tuple[HTTPHeader, ...] = ()  # append a value
    remove: tuple[str, ...] = ()


@dataclass(frozen=True)
class RequestHeaderModifier(_HeaderModifier):
    type: ClassVar[FilterType] = FilterType.REQUEST_HEADER_MODIFIER


@dataclass(frozen=True)
class ResponseHeaderModifier(_HeaderModifier):
    type: ClassVar[FilterType] = FilterType.RESPONSE_HEADER_MODIFIER


@dataclass(frozen=True)
class PathModifier:
    type: PathModifierType
    value: str  # the full path, or what replaces the matched prefix


@dataclass(frozen=True)
class RequestRedirect:
    scheme: str = ""  # "http" or "https"; empty: the request's
    hostname: str = ""  # empty: the request's
    path: PathModifier | None = None
    port: int | None = None  # None: derived from the scheme or the listener
    status_code: int = 302
    type: ClassVar[FilterType] = FilterType.REQUEST_REDIRECT


@dataclass(frozen=True)
class URLRewrite:
    hostname: str = ""
    path: PathModifier | None = None
    type: ClassVar[FilterType] = FilterType.URL_REWRITE


@dataclass(frozen=True)
class RequestMirror:
    backend: BackendObjectRef
    percent: float = 100.0  # share of requests mirrored, from `percent` or `fraction`
    type: ClassVar[FilterType] = FilterType.REQUEST_MIRROR


@dataclass(frozen=True)
class ExtensionRef:
    """An implementation-specific filter; weft defines none yet, so routes using one are
    accepted here and reported by the data plane."""

    group: str
    kind: str
    name: str
    type: ClassVar[FilterType] = FilterType.EXTENSION_REF


HTTPRouteFilter = (
    RequestHeaderModifier
    | ResponseHeaderModifier
    | RequestRedirect
    | URLRewrite
    | RequestMirror
    | ExtensionRef
)
GRPCRouteFilter = RequestHeaderModifier | ResponseHeaderModifier | RequestMirror | ExtensionRef


@dataclass(frozen=True)
class BackendRef:
    """A weighted Service port; weight 0 keeps the backend in the route but sends it nothing."""

    name: str
    namespace: str  # filled in with the route's own when not given
    port: int
    weight: int = 1
    filters: tuple[HTTPRouteFilter, ...] = ()


# --- routes: matches -----------------------------------------------------------------------


class PathMatchType(enum.Enum):
    EXACT = "Exact"
    PATH_PREFIX = "PathPrefix"
    REGULAR_EXPRESSION = "RegularExpression"


class MatchType(enum.Enum):
    """How a header, query parameter or gRPC method value is compared."""

    EXACT = "Exact"
    REGULAR_EXPRESSION = "RegularExpression"


class HTTPMethod(enum.Enum):
    GET = "GET"
    HEAD = "HEAD"
    POST = "POST"
    PUT = "PUT"
    DELETE = "DELETE"
    CONNECT = "CONNECT"
    OPTIONS = "OPTIONS"
    TRACE = "TRACE"
    PATCH = "PATCH"


@dataclass(frozen=True)
class PathMatch:
    type: PathMatchType = PathMatchType.PATH_PREFIX
    value: str = "/"


@dataclass(frozen=True)
class HeaderMatch:
    name: str
    value: str
    type: MatchType = MatchType.EXACT


@dataclass(frozen=True)
class QueryParamMatch:
    name: str
    value: str
    type: MatchType = MatchType.EXACT


@dataclass(frozen=True)
class HTTPRouteMatch:
    """All of these must match; the default path matches every request."""

    path: PathMatch = PathMatch()
    headers: tuple[HeaderMatch, ...] = ()
    query_params: tuple[QueryParamMatch, ...] = ()
    method: HTTPMethod | None = None


@dataclass(frozen=True)
class GRPCMethodMatch:
    type: MatchType = MatchType.EXACT
    service: str = ""  # empty: any service
    method: str = ""  # empty: any method


@dataclass(frozen=True)
class GRPCRouteMatch:
    method: GRPCMethodMatch | None = None
    headers: tuple[HeaderMatch, ...] = ()


# --- routes ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Timeouts:
    """In seconds; 0 disables the timeout, None leaves it to the implementation."""

    request: float | None = None  # the whole request, retries included
    backend_request: float | None = None  # each try to a backend


@dataclass(frozen=True)
class Retry:
    codes: tuple[int, ...] = ()  # HTTP statuses (400-599) that are retried
    attempts: int | None = None
    backoff: float | None = None  # seconds between tries, at least


_DEFAULT_HTTP_MATCHES: tuple[HTTPRouteMatch, ...] = (HTTPRouteMatch(),)


@dataclass(frozen=True)
class HTTPRouteRule:
    matches: tuple[HTTPRouteMatch, ...] = _DEFAULT_HTTP_MATCHES  # any one of them
    filters: tuple[HTTPRouteFilter, ...] = ()
    backend_refs: tuple[BackendRef, ...] = ()
    timeouts: Timeouts | None = None
    retry: Retry | None = None
    name: str = ""


@dataclass(frozen=True)
class GRPCRouteRule:
    matches: tuple[GRPCRouteMatch, ...] = ()  # any one of them; empty: every request
    filters: tuple[GRPCRouteFilter, ...] = ()
    backend_refs: tuple[BackendRef, ...] = ()
    name: str = ""


@dataclass(frozen=True)
class HTTPRoute:
    metadata: ObjectMeta
    parent_refs: tuple[ParentRef, ...]
    rules: tuple[HTTPRouteRule, ...] = (HTTPRouteRule(),)
    hostnames: tuple[str, ...] = ()  # empty: any
    kind = "HTTPRoute"

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.kind, self.metadata.namespace, self.metadata.name)


@dataclass(frozen=True)
class GRPCRoute:
    metadata: ObjectMeta
    parent_refs: tuple[ParentRef, ...]
    rules: tuple[GRPCRouteRule, ...] = ()
    hostnames: tuple[str, ...] = ()  # empty: any
    kind = "GRPCRoute"

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.kind, self.metadata.namespace, self.metadata.name)


# --- parsing: shared -------------------------------------------------------------------------

_E = TypeVar("_E", bound=enum.Enum)

_HOSTNAME = re.compile(r"(\*\.)?[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_PRECISE_HOSTNAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_HEADER_NAME = re.compile(r"[A-Za-z0-9!#$%&'*+\-.^_`|~]+")
_PATH_CHARS = re.compile(r"(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|%[0-9a-fA-F]{2})+")
_DURATION = re.compile(r"([0-9]{1,5}(h|m|s|ms)){1,4}")
_DURATION_PART = re.compile(r"([0-9]{1,5})(ms|h|m|s)")
_DURATION_MS = {"h": 3_600_000, "m": 60_000, "s": 1_000, "ms": 1}
_GRPC_SERVICE = re.compile(r"\.?[a-z_][a-z_0-9]*(\.[a-z_][a-z_0-9]*)*", re.IGNORECASE)
_GRPC_METHOD = re.compile(r"[A-Za-z_][A-Za-z_0-9]*")
_IGNORED_GATEWAY_SPEC = frozenset({"infrastructure", "tls", "allowedListeners", "defaultScope"})
_IGNORED_ROUTE_SPEC = frozenset({"useDefaultGateways"})
_IGNORED_ROUTE_RULE = frozenset({"sessionPersistence"})


def _one_of(values: list[str]) -> str:
    return ", ".join(values[:-1]) + " or " + values[-1] if len(values) > 1 else values[0]


def _choice(f: Fields, name: str, enum_type: type[_E], default: _E | None = None) -> _E:
    if default is None:
        text = f.string(name, required=True)
    else:
        text = f.string(name, default=str(default.value))
    try:
        return enum_type(text)
    except ValueError:
        allowed = _one_of([str(m.value) for m in enum_type])
        raise f.fail(name, f"must be {allowed}, got {text!r}") from None


def _metadata(f: Fields, ignored: list[str]) -> ObjectMeta:
    meta, ign = parse_metadata(f.raw("metadata"), "metadata", namespaced=True)
    check_dns_subdomain(meta.name, "metadata.name")
    ignored.extend(ign)
    return meta


def _spec(f: Fields, ignored: frozenset[str]) -> Fields:
    if not f.has("spec"):
        raise f.fail("spec", "required field is missing")
    return Fields(f.raw("spec"), "spec", ignored=ignored)


def _unique(values: list[str], path: str, what: str) -> None:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            raise ManifestError(f"duplicate {what} {v!r}", field=path)
        seen.add(v)


def _is_ip(value: str) -> bool:
    try:
        ipaddress.ip_address(value)
    except ValueError:
        return False
    return True


def _check_hostname(value: str, field: str, *, wildcard: bool = True) -> None:
    pattern = _HOSTNAME if wildcard else _PRECISE_HOSTNAME
    if _is_ip(value) or len(value) > 253 or not pattern.fullmatch(value):
        allowed = "an optional '*.' then " if wildcard else ""
        raise ManifestError(
            f"{value!r} is not a valid hostname ({allowed}lowercase DNS labels joined by '.'; "
            "not an IP address)",
            field=field,
        )


def _check_header_name(value: str, field: str) -> None:
    if len(value) > 256 or not _HEADER_NAME.fullmatch(value):
        raise ManifestError(f"{value!r} is not a valid HTTP header name", field=field)


def _check_regex(value: str, field: str) -> None:
    try:
        re.compile(value)
    except re.error as err:
        raise ManifestError(
            f"{value!r} is not a valid regular expression: {err}", field=field
        ) from None


def parse_duration(value: str, field: str) -> float:
    """A Gateway API (GEP-2257) duration in seconds: `10s`, `500ms`, `1h30m`..."""
    if not _DURATION.fullmatch(value):
        raise ManifestError(
            f"{value!r} is not a Gateway API duration (1 to 4 parts, each up to 5 digits and a "
            "unit h, m, s or ms, such as 10s, 500ms or 1h30m)",
            field=field,
        )
    millis = sum(int(n) * _DURATION_MS[unit] for n, unit in _DURATION_PART.findall(value))
    return millis / 1000


def _duration(f: Fields, name: str) -> float | None:
    if f.raw(name) is None:
        return None
    return parse_duration(f.string(name), f.sub(name))


def _port(f: Fields, name: str) -> int | None:
    if f.raw(name) is None:
        return None
    return f.integer(name, required=True, minimum=1, maximum=65535)


def _label_selector(raw: object, path: str) -> Mapping[str, str]:
    f = Fields(raw, path)
    if f.has("matchExpressions"):
        raise f.fail("matchExpressions", "not supported here; use matchLabels")
    labels = f.string_map("matchLabels")
    f.done()
    check_labels(labels, f.sub("matchLabels"))
    return labels


# --- parsing: Gateway ------------------------------------------------------------------------

_NO_TLS = (ListenerProtocol.HTTP, ListenerProtocol.TCP, ListenerProtocol.UDP)
_NO_HOSTNAME = (ListenerProtocol.TCP, ListenerProtocol.UDP)


def _parse_allowed_routes(raw: object, path: str) -> AllowedRoutes:
    f = Fields(raw, path)
    namespaces, selector = FromNamespaces.SAME, {}
    if f.raw("namespaces") is not None:
        nf = Fields(f.raw("namespaces"), f.sub("namespaces"))
        namespaces = _choice(nf, "from", FromNamespaces, FromNamespaces.SAME)
        if nf.raw("selector") is not None:
            selector = dict(_label_selector(nf.raw("selector"), nf.sub("selector")))
        nf.done()
        if namespaces is FromNamespaces.SELECTOR and not selector:
            raise nf.fail("selector", "required when from is Selector")
    kinds = []
    for item_path, item in f.objects("kinds"):
        kf = Fields(item, item_path)
        group = kf.string("group", default=GROUP)
        kinds.append(RouteGroupKind(kf.string("kind", required=True), group))
        kf.done()
    f.done()
    return AllowedRoutes(namespaces, selector, tuple(kinds))


def _parse_listener(raw: object, path: str, ignored: list[str]) -> Listener:
    f = Fields(raw, path, ignored=frozenset({"tls"}))
    name = f.string("name", required=True)
    check_dns_subdomain(name, f.sub("name"))
    port = f.integer("port", required=True, minimum=1, maximum=65535)
    protocol = _choice(f, "protocol", ListenerProtocol)
    hostname = f.string("hostname")
    if hostname:
        if protocol in _NO_HOSTNAME:
            raise f.fail("hostname", f"must not be given for protocol {protocol.value}")
        _check_hostname(hostname, f.sub("hostname"))
    if f.has("tls") and protocol in _NO_TLS:
        raise f.fail("tls", f"must not be given for protocol {protocol.value}")
    allowed = AllowedRoutes()
    if f.raw("allowedRoutes") is not None:
        allowed = _parse_allowed_routes(f.raw("allowedRoutes"), f.sub("allowedRoutes"))
    ignored.extend(f.done())
    return Listener(name, port, protocol, hostname, allowed)


def _parse_address(raw: object, path: str) -> GatewayAddress:
    f = Fields(raw, path)
    kind = _choice(f, "type", AddressType, AddressType.IP_ADDRESS)
    value = f.string("value")
    f.done()
    if value and kind is AddressType.IP_ADDRESS and not _is_ip(value):
        raise f.fail("value", f"{value!r} is not an IP address")
    elif value and kind is AddressType.HOSTNAME:
        _check_hostname(value, f.sub("value"))
    return GatewayAddress(value, kind)


def parse_gateway(f: Fields, ignored: list[str]) -> Gateway:
    meta = _metadata(f, ignored)
    spec = _spec(f, _IGNORED_GATEWAY_SPEC)
    class_name = spec.string("gatewayClassName", required=True)
    check_dns_subdomain(class_name, spec.sub("gatewayClassName"))
    listeners = tuple(_parse_listener(item, p, ignored) for p, item in spec.objects("listeners"))
    if not listeners:
        raise spec.fail("listeners", "a Gateway needs at least one listener")
    _unique([li.name for li in listeners], spec.sub("listeners"), "listener name")
    _unique(
        [f"{li.port}/{li.protocol.value}/{li.hostname or '*'}" for li in listeners],
        spec.sub("listeners"),
        "listener port/protocol/hostname",
    )
    addresses = tuple(_parse_address(item, p) for p, item in spec.objects("addresses"))
    _unique(
        [
            f"{a.type.value} {a.value}"
            for a in addresses
            if a.value and a.type is not AddressType.NAMED_ADDRESS
        ],
        spec.sub("addresses"),
        "address",
    )
    ignored.extend(spec.done())
    return Gateway(meta, class_name, listeners, addresses)


# --- parsing: references ---------------------------------------------------------------------


def _parse_parent_ref(raw: object, path: str, namespace: str) -> ParentRef:
    f = Fields(raw, path)
    group = f.string("group", default=GROUP)
    kind = _choice(f, "kind", ParentKind, ParentKind.GATEWAY)
    name = f.string("name", required=True)
    check_dns_subdomain(name, f.sub("name"))
    ns = f.string("namespace") or namespace
    check_dns_label(ns, f.sub("namespace"))
    section = f.string("sectionName")
    if section:
        check_dns_subdomain(section, f.sub("sectionName"))
    port = _port(f, "port")
    f.done()
    if group != kind.group:
        hint = ' (the core group: write group: "")' if kind is ParentKind.SERVICE else ""
        raise f.fail("group", f"a {kind.value} is in group {kind.group!r}{hint}, not {group!r}")
    return ParentRef(kind, name, ns, section, port)


def _parse_parent_refs(spec: Fields, namespace: str) -> tuple[ParentRef, ...]:
    refs = tuple(_parse_parent_ref(item, p, namespace) for p, item in spec.objects("parentRefs"))
    if not refs:
        raise spec.fail("parentRefs", "a route needs at least one parent (a Gateway or a Service)")
    for i, ref in enumerate(refs):
        for other in refs[:i]:
            same_parent = (other.kind, other.namespace, other.name) == (
                ref.kind,
                ref.namespace,
                ref.name,
            )
            if same_parent and (
                (other.section_name, other.port) == (ref.section_name, ref.port)
                or not (ref.section_name or ref.port)
                or not (other.section_name or other.port)
            ):
                raise ManifestError(
                    f"{ref.kind.value} {ref.namespace}/{ref.name} is referenced more than once; "
                    "give each reference its own sectionName or port",
                    field=f"{spec.sub('parentRefs')}[{i}]",
                )
    return refs


def _backend_target(f: Fields, namespace: str) -> tuple[str, str, int]:
    """Read a BackendObjectReference's fields: (name, namespace, port) of a Service port."""
    group = f.string("group")
    kind = f.string("kind", default="Service")
    name = f.string("name", required=True)
    ns = f.string("namespace") or namespace
    port = _port(f, "port")
    if kind != "Service":
        raise f.fail("kind", f"weft routes to Services only, not {kind!r}")
    if group:
        raise f.fail("group", f'a Service is in the core group: write group: "", not {group!r}')
    check_dns_label(name, f.sub("name"))
    check_dns_label(ns, f.sub("namespace"))
    if port is None:
        raise f.fail("port", "required for a Service backend")
    return name, ns, port


# --- parsing: filters ------------------------------------------------------------------------

_FILTER_FIELDS = {
    FilterType.REQUEST_HEADER_MODIFIER: "requestHeaderModifier",
    FilterType.RESPONSE_HEADER_MODIFIER: "responseHeaderModifier",
    FilterType.REQUEST_REDIRECT: "requestRedirect",
    FilterType.URL_REWRITE: "urlRewrite",
    FilterType.REQUEST_MIRROR: "requestMirror",
    FilterType.EXTENSION_REF: "extensionRef",
}
_HTTP_FILTERS = tuple(FilterType)
_GRPC_FILTERS = (
    FilterType.REQUEST_HEADER_MODIFIER,
    FilterType.RESPONSE_HEADER_MODIFIER,
    FilterType.REQUEST_MIRROR,
    FilterType.EXTENSION_REF,
)
_UNSUPPORTED_FILTERS = ("CORS", "ExternalAuth")
_SINGLE_USE_FILTERS = (
    FilterType.REQUEST_HEADER_MODIFIER,
    FilterType.RESPONSE_HEADER_MODIFIER,
    FilterType.REQUEST_REDIRECT,
    FilterType.URL_REWRITE,
)


def _parse_headers(f: Fields, name: str) -> tuple[HTTPHeader, ...]:
    out = []
    for item_path, item in f.objects(name):
        hf = Fields(item, item_path)
        header = hf.string("name", required=True)
        _check_header_name(header, hf.sub("name"))
        value = hf.string("value", required=True)
        hf.done()
        out.append(HTTPHeader(header, value))
    _unique([h.name for h in out], f.sub(name), "header name")
    return tuple(out)


def _parse_header_modifier(
    raw: object, path: str
) -> tuple[tuple[HTTPHeader, ...], tuple[HTTPHeader, ...], tuple[str, ...]]:
    f = Fields(raw, path)
    set_, add = _parse_headers(f, "set"), _parse_headers(f, "add")
    remove = f.string_list("remove")
    for i, header in enumerate(remove):
        _check_header_name(header, f"{f.sub('remove')}[{i}]")
    _unique(list(remove), f.sub("remove"), "header name")
    f.done()
    return set_, add, remove


_PATH_MODIFIER_FIELDS = {
    PathModifierType.REPLACE_FULL_PATH: "replaceFullPath",
    PathModifierType.REPLACE_PREFIX_MATCH: "replacePrefixMatch",
}


def _parse_path_modifier(raw: object, path: str) -> PathModifier:
    f = Fields(raw, path)
    kind = _choice(f, "type", PathModifierType)
    for other, name in _PATH_MODIFIER_FIELDS.items():
        if other is not kind and f.raw(name) is not None:
            raise f.fail(name, f"must not be given when type is {kind.value}")
    own = _PATH_MODIFIER_FIELDS[kind]
    if f.raw(own) is None:
        raise f.fail(own, f"required when type is {kind.value}")
    value = f.string(own)
    f.done()
    if len(value) > 1024:
        raise f.fail(own, "must be at most 1024 characters")
    return PathModifier(kind, value)


def _parse_redirect(raw: object, path: str) -> RequestRedirect:
    f = Fields(raw, path)
    scheme = f.string("scheme")
    if scheme and scheme not in ("http", "https"):
        raise f.fail("scheme", f"must be http or https, got {scheme!r}")
    hostname = f.string("hostname")
    if hostname:
        _check_hostname(hostname, f.sub("hostname"), wildcard=False)
    path_mod = None
    if f.raw("path") is not None:
        path_mod = _parse_path_modifier(f.raw("path"), f.sub("path"))
    port = _port(f, "port")
    status = f.integer("statusCode", default=302)
    if status not in (301, 302, 303, 307, 308):
        raise f.fail("statusCode", f"must be 301, 302, 303, 307 or 308, got {status}")
    f.done()
    return RequestRedirect(scheme, hostname, path_mod, port, status)


def _parse_rewrite(raw: object, path: str) -> URLRewrite:
    f = Fields(raw, path)
    hostname = f.string("hostname")
    if hostname:
        _check_hostname(hostname, f.sub("hostname"), wildcard=False)
    path_mod = None
    if f.raw("path") is not None:
        path_mod = _parse_path_modifier(f.raw("path"), f.sub("path"))
    f.done()
    return URLRewrite(hostname, path_mod)


def _parse_mirror(raw: object, path: str, namespace: str) -> RequestMirror:
    f = Fields(raw, path)
    if f.raw("backendRef") is None:
        raise f.fail("backendRef", "required field is missing")
    bf = Fields(f.raw("backendRef"), f.sub("backendRef"))
    backend = BackendObjectRef(*_backend_target(bf, namespace))
    bf.done()
    if f.raw("percent") is not None and f.raw("fraction") is not None:
        raise f.fail("fraction", "give percent or fraction, not both")
    percent = 100.0
    if f.raw("percent") is not None:
        percent = float(f.integer("percent", minimum=0, maximum=100))
    if f.raw("fraction") is not None:
        ff = Fields(f.raw("fraction"), f.sub("fraction"))
        numerator = ff.integer("numerator", required=True, minimum=0)
        denominator = ff.integer("denominator", default=100, minimum=1)
        ff.done()
        if numerator > denominator:
            raise ff.fail("numerator", f"must be at most the denominator ({denominator})")
        percent = 100.0 * numerator / denominator
    f.done()
    return RequestMirror(backend, percent)


def _parse_extension_ref(raw: object, path: str) -> ExtensionRef:
    f = Fields(raw, path)
    group = f.string("group")
    kind = f.string("kind", required=True)
    name = f.string("name", required=True)
    if f.raw("group") is None:
        raise f.fail("group", 'required field is missing (write "" for the core group)')
    f.done()
    return ExtensionRef(group, kind, name)


def _parse_filter(
    raw: object, path: str, namespace: str, allowed: tuple[FilterType, ...]
) -> HTTPRouteFilter:
    f = Fields(raw, path)
    text = f.string("type", required=True)
    if text in _UNSUPPORTED_FILTERS:
        raise f.fail("type", f"the {text} filter is not supported by weft yet")
    try:
        kind = FilterType(text)
        if kind not in allowed:
            raise ValueError(text)
    except ValueError:
        names = _one_of([t.value for t in allowed])
        raise f.fail("type", f"must be {names}, got {text!r}") from None
    for other, name in _FILTER_FIELDS.items():
        if other is not kind and f.has(name):
            raise f.fail(name, f"must not be given when type is {kind.value}")
    own = _FILTER_FIELDS[kind]
    raw_own = f.raw(own)
    if raw_own is None:
        raise f.fail(own, f"required when type is {kind.value}")
    own_path = f.sub(own)
    f.done()
    out: HTTPRouteFilter
    if kind is FilterType.REQUEST_HEADER_MODIFIER:
        out = RequestHeaderModifier(*_parse_header_modifier(raw_own, own_path))
    elif kind is FilterType.RESPONSE_HEADER_MODIFIER:
        out = ResponseHeaderModifier(*_parse_header_modifier(raw_own, own_path))
    elif kind is FilterType.REQUEST_REDIRECT:
        out = _parse_redirect(raw_own, own_path)
    elif kind is FilterType.URL_REWRITE:
        out = _parse_rewrite(raw_own, own_path)
    elif kind is FilterType.REQUEST_MIRROR:
        out = _parse_mirror(raw_own, own_path, namespace)
    else:
        out = _parse_extension_ref(raw_own, own_path)
    return out


def _parse_filters(
    f: Fields, namespace: str, allowed: tuple[FilterType, ...]
) -> tuple[HTTPRouteFilter, ...]:
    filters = tuple(_parse_filter(item, p, namespace, allowed) for p, item in f.objects("filters"))
    seen: set[FilterType] = set()
    for i, flt in enumerate(filters):
        if flt.type in _SINGLE_USE_FILTERS and flt.type in seen:
            raise ManifestError(
                f"{flt.type.value} may appear only once", field=f"{f.sub('filters')}[{i}]"
            )
        seen.add(flt.type)
    if {FilterType.REQUEST_REDIRECT, FilterType.URL_REWRITE} <= seen:
        raise f.fail("filters", "RequestRedirect and URLRewrite may not be used together")
    return filters


def _replaces_prefix(filters: tuple[HTTPRouteFilter, ...]) -> bool:
    return any(
        isinstance(flt, RequestRedirect | URLRewrite)
        and flt.path is not None
        and flt.path.type is PathModifierType.REPLACE_PREFIX_MATCH
        for flt in filters
    )


def _parse_backend_ref(
    raw: object, path: str, namespace: str, allowed: tuple[FilterType, ...]
) -> BackendRef:
    f = Fields(raw, path)
    name, ns, port = _backend_target(f, namespace)
    weight = f.integer("weight", default=1, minimum=0, maximum=1_000_000)
    filters = _parse_filters(f, namespace, allowed)
    f.done()
    return BackendRef(name, ns, port, weight, filters)


# --- parsing: matches ------------------------------------------------------------------------


def _parse_path_match(raw: object, path: str) -> PathMatch:
    f = Fields(raw, path)
    kind = _choice(f, "type", PathMatchType, PathMatchType.PATH_PREFIX)
    value = f.string("value", default="/")
    f.done()
    field_path = f.sub("value")
    if len(value) > 1024:
        raise ManifestError("must be at most 1024 characters", field=field_path)
    if kind is PathMatchType.REGULAR_EXPRESSION:
        _check_regex(value, field_path)
        return PathMatch(kind, value)
    if not value.startswith("/"):
        raise ManifestError(
            f"{value!r} must be an absolute path starting with '/'", field=field_path
        )
    for bad in ("//", "/./", "/../", "%2f", "%2F", "#"):
        if bad in value:
            raise ManifestError(f"{value!r} must not contain {bad!r}", field=field_path)
    for bad in ("/..", "/."):
        if value.endswith(bad):
            raise ManifestError(f"{value!r} must not end with {bad!r}", field=field_path)
    if not _PATH_CHARS.fullmatch(value):
        raise ManifestError(
            f"{value!r} holds characters not allowed in a URL path (percent-encode them)",
            field=field_path,
        )
    return PathMatch(kind, value)


def _parse_value_matches(
    f: Fields, name: str, max_length: int
) -> tuple[tuple[str, str, MatchType], ...]:
    out = []
    for item_path, item in f.objects(name):
        mf = Fields(item, item_path)
        kind = _choice(mf, "type", MatchType, MatchType.EXACT)
        key = mf.string("name", required=True)
        _check_header_name(key, mf.sub("name"))
        value = mf.string("value", required=True)
        if len(value) > max_length:
            raise mf.fail("value", f"must be at most {max_length} characters")
        if kind is MatchType.REGULAR_EXPRESSION:
            _check_regex(value, mf.sub("value"))
        mf.done()
        out.append((key, value, kind))
    _unique([key for key, _, _ in out], f.sub(name), "name")
    return tuple(out)


def _parse_http_match(raw: object, path: str) -> HTTPRouteMatch:
    f = Fields(raw, path)
    path_match = PathMatch()
    if f.raw("path") is not None:
        path_match = _parse_path_match(f.raw("path"), f.sub("path"))
    headers = tuple(HeaderMatch(*m) for m in _parse_value_matches(f, "headers", 4096))
    query = tuple(QueryParamMatch(*m) for m in _parse_value_matches(f, "queryParams", 1024))
    method = None
    if f.raw("method") is not None:
        method = _choice(f, "method", HTTPMethod)
    f.done()
    return HTTPRouteMatch(path_match, headers, query, method)


def _parse_grpc_method(raw: object, path: str) -> GRPCMethodMatch:
    f = Fields(raw, path)
    kind = _choice(f, "type", MatchType, MatchType.EXACT)
    service, method = f.string("service"), f.string("method")
    f.done()
    if not service and not method:
        raise ManifestError("give service or method (or both)", field=path)
    for name, value, pattern in (
        ("service", service, _GRPC_SERVICE),
        ("method", method, _GRPC_METHOD),
    ):
        if not value:
            continue
        if len(value) > 1024:
            raise f.fail(name, "must be at most 1024 characters")
        if kind is MatchType.REGULAR_EXPRESSION:
            _check_regex(value, f.sub(name))
        elif not pattern.fullmatch(value):
            raise f.fail(name, f"{value!r} is not a valid gRPC {name} name")
    return GRPCMethodMatch(kind, service, method)


def _parse_grpc_match(raw: object, path: str) -> GRPCRouteMatch:
    f = Fields(raw, path)
    method = None
    if f.raw("method") is not None:
        method = _parse_grpc_method(f.raw("method"), f.sub("method"))
    headers = tuple(HeaderMatch(*m) for m in _parse_value_matches(f, "headers", 4096))
    f.done()
    return GRPCRouteMatch(method, headers)


# --- parsing: routes -------------------------------------------------------------------------


def _rule_name(f: Fields) -> str:
    name = f.string("name")
    if name:
        check_dns_subdomain(name, f.sub("name"))
    return name


def _parse_timeouts(raw: object, path: str) -> Timeouts:
    f = Fields(raw, path)
    request, backend = _duration(f, "request"), _duration(f, "backendRequest")
    f.done()
    if request and backend is not None and backend > request:
        raise f.fail(
            "backendRequest", "must not be longer than the request timeout (which covers retries)"
        )
    return Timeouts(request, backend)


def _parse_retry(raw: object, path: str) -> Retry:
    f = Fields(raw, path)
    codes = []
    for item_path, item in f.objects("codes"):
        if isinstance(item, bool) or not isinstance(item, int) or not 400 <= item <= 599:
            raise ManifestError(
                f"must be an HTTP status from 400 to 599, got {item!r}", field=item_path
            )
        codes.append(item)
    _unique([str(c) for c in codes], f.sub("codes"), "code")
    attempts = f.integer("attempts", minimum=1) if f.raw("attempts") is not None else None
    backoff = _duration(f, "backoff")
    f.done()
    return Retry(tuple(codes), attempts, backoff)


def _check_prefix_rewrites(
    filters: tuple[HTTPRouteFilter, ...], matches: tuple[HTTPRouteMatch, ...], field: str
) -> None:
    if _replaces_prefix(filters) and (
        len(matches) != 1 or matches[0].path.type is not PathMatchType.PATH_PREFIX
    ):
        raise ManifestError(
            "a ReplacePrefixMatch path modifier needs exactly one match, of type PathPrefix",
            field=field,
        )


def _parse_http_rule(raw: object, path: str, namespace: str, ignored: list[str]) -> HTTPRouteRule:
    f = Fields(raw, path, ignored=_IGNORED_ROUTE_RULE)
    name = _rule_name(f)
    matches = _DEFAULT_HTTP_MATCHES
    if f.raw("matches") is not None:
        matches = tuple(_parse_http_match(item, p) for p, item in f.objects("matches"))
    filters = _parse_filters(f, namespace, _HTTP_FILTERS)
    backends = tuple(
        _parse_backend_ref(item, p, namespace, _HTTP_FILTERS)
        for p, item in f.objects("backendRefs")
    )
    timeouts = None
    if f.raw("timeouts") is not None:
        timeouts = _parse_timeouts(f.raw("timeouts"), f.sub("timeouts"))
    retry = None
    if f.raw("retry") is not None:
        retry = _parse_retry(f.raw("retry"), f.sub("retry"))
    ignored.extend(f.done())
    if backends and any(isinstance(flt, RequestRedirect) for flt in filters):
        raise f.fail("backendRefs", "must not be given with a RequestRedirect filter")
    _check_prefix_rewrites(filters, matches, f.sub("filters"))
    for i, backend in enumerate(backends):
        _check_prefix_rewrites(backend.filters, matches, f"{f.sub('backendRefs')}[{i}].filters")
    return HTTPRouteRule(matches, filters, backends, timeouts, retry, name)


def _parse_grpc_rule(raw: object, path: str, namespace: str, ignored: list[str]) -> GRPCRouteRule:
    f = Fields(raw, path, ignored=_IGNORED_ROUTE_RULE)
    name = _rule_name(f)
    matches = tuple(_parse_grpc_match(item, p) for p, item in f.objects("matches"))
    filters = _parse_filters(f, namespace, _GRPC_FILTERS)
    backends = tuple(
        _parse_backend_ref(item, p, namespace, _GRPC_FILTERS)
        for p, item in f.objects("backendRefs")
    )
    ignored.extend(f.done())
    # The parser admitted only gRPC filter types; this narrows the static type to match.
    grpc_filters = tuple(flt for flt in filters if isinstance(flt, GRPCRouteFilter))
    return GRPCRouteRule(matches, grpc_filters, backends, name)


def _parse_hostnames(spec: Fields) -> tuple[str, ...]:
    hostnames = spec.string_list("hostnames")
    for i, hostname in enumerate(hostnames):
        _check_hostname(hostname, f"{spec.sub('hostnames')}[{i}]")
    return hostnames


def parse_http_route(f: Fields, ignored: list[str]) -> HTTPRoute:
    meta = _metadata(f, ignored)
    spec = _spec(f, _IGNORED_ROUTE_SPEC)
    parents = _parse_parent_refs(spec, meta.namespace)
    hostnames = _parse_hostnames(spec)
    rules: tuple[HTTPRouteRule, ...] = (HTTPRouteRule(),)
    if spec.raw("rules") is not None:
        rules = tuple(
            _parse_http_rule(item, p, meta.namespace, ignored) for p, item in spec.objects("rules")
        )
        if not rules:
            raise spec.fail("rules", "must not be empty; leave it out to route every request")
    _unique([r.name for r in rules if r.name], spec.sub("rules"), "rule name")
    ignored.extend(spec.done())
    return HTTPRoute(meta, parents, rules, hostnames)


def parse_grpc_route(f: Fields, ignored: list[str]) -> GRPCRoute:
    meta = _metadata(f, ignored)
    spec = _spec(f, _IGNORED_ROUTE_SPEC)
    parents = _parse_parent_refs(spec, meta.namespace)
    hostnames = _parse_hostnames(spec)
    rules = tuple(
        _parse_grpc_rule(item, p, meta.namespace, ignored) for p, item in spec.objects("rules")
    )
    _unique([r.name for r in rules if r.name], spec.sub("rules"), "rule name")
    ignored.extend(spec.done())
    return GRPCRoute(meta, parents, rules, hostnames)
