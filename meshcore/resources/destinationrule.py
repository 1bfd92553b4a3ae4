"""Istio's DestinationRule, served as `networking.weft.dev/v1`: what happens to traffic for a
Service once routing has chosen it (subsets, load balancing, circuit breaking, outlier
detection), with the fields and meaning of `networking.istio.io/v1`.

A waypoint applies it; what a waypoint cannot carry out is accepted and reported as ignored
(`exportTo`, `workloadSelector`, `trafficPolicy.tls`, `portLevelSettings`, the connection-pool
timeouts, locality settings), the way other manifests' unsupported fields are.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from meshcore.resources.core import ObjectMeta, ResourceKey, parse_metadata
from meshcore.resources.errors import ManifestError
from meshcore.resources.fields import Fields
from meshcore.resources.groups import NETWORKING
from meshcore.resources.names import (
    check_dns_label,
    check_dns_subdomain,
    check_labels,
    service_of_host,
)

DESTINATION_RULE_VERSIONS: frozenset[str] = NETWORKING.versions
CLUSTER_DOMAIN = "svc.cluster.local"


class SimpleLB(enum.Enum):
    UNSPECIFIED = "UNSPECIFIED"  # Istio: the default, which is LEAST_REQUEST in Envoy's
    ROUND_ROBIN = "ROUND_ROBIN"
    LEAST_REQUEST = "LEAST_REQUEST"
    RANDOM = "RANDOM"
    PASSTHROUGH = "PASSTHROUGH"
    LEAST_CONN = "LEAST_CONN"  # Istio's deprecated name for LEAST_REQUEST


@dataclass(frozen=True)
class HttpCookie:
    name: str
    path: str = ""
    ttl: float | None = None  # seconds; None: a session cookie


@dataclass(frozen=True)
class ConsistentHash:
    """Exactly one of the three keys is set."""

    http_header_name: str = ""
    http_cookie: HttpCookie | None = None
    use_source_ip: bool = False


@dataclass(frozen=True)
class LoadBalancer:
    simple: SimpleLB = SimpleLB.UNSPECIFIED
    consistent_hash: ConsistentHash | None = None


@dataclass(frozen=True)
class ConnectionPool:
    """Limits per waypoint replica; None: not set (no limit, Envoy's 2^32-1)."""

    max_connections: int | None = None  # tcp.maxConnections
    http1_max_pending_requests: int | None = None
    http2_max_requests: int | None = None
    max_requests_per_connection: int | None = None
    max_retries: int | None = None


@dataclass(frozen=True)
class OutlierDetection:
    """Istio's defaults: 5 consecutive 5xx, 10 s interval, 30 s base ejection, 10 %."""

    consecutive_5xx_errors: int = 5  # 0: off
    consecutive_gateway_errors: int = 0  # 0: off
    interval: float = 10.0  # seconds
    base_ejection_time: float = 30.0  # seconds
    max_ejection_percent: int = 10


@dataclass(frozen=True)
class TrafficPolicy:
    load_balancer: LoadBalancer | None = None
    connection_pool: ConnectionPool | None = None
    outlier_detection: OutlierDetection | None = None

    def merged_over(self, base: TrafficPolicy | None) -> TrafficPolicy:
        """This (a subset's) policy over the rule's: each part set here wins whole, as Istio."""
        if base is None:
            return self
        return TrafficPolicy(
            self.load_balancer or base.load_balancer,
            self.connection_pool or base.connection_pool,
            self.outlier_detection or base.outlier_detection,
        )


@dataclass(frozen=True)
class Subset:
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    traffic_policy: TrafficPolicy | None = None


@dataclass(frozen=True)
class DestinationRule:
    metadata: ObjectMeta
    host: str
    traffic_policy: TrafficPolicy | None = None
    subsets: tuple[Subset, ...] = ()
    kind = "DestinationRule"

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.kind, self.metadata.namespace, self.metadata.name)

    @property
    def is_wildcard(self) -> bool:
        return self.host.startswith("*")

    def service(self) -> tuple[str, str] | None:
        """The Service (namespace, name) the host names; None for a wildcard host."""
        return service_of_host(self.host, self.metadata.namespace)

    def matches(self, namespace: str, name: str) -> bool:
        if self.is_wildcard:
            return f"{name}.{namespace}.{CLUSTER_DOMAIN}".endswith(self.host[1:])
        return self.service() == (namespace, name)

    def subset(self, name: str) -> Subset | None:
        return next((s for s in self.subsets if s.name == name), None)

    def policy_for(self, subset: str = "") -> TrafficPolicy | None:
        """The traffic policy for the Service, or for one of its subsets."""
        sub = self.subset(subset) if subset else None
        if sub is not None and sub.traffic_policy is not None:
            return sub.traffic_policy.merged_over(self.traffic_policy)
        return self.traffic_policy


def rule_for(rules: Iterable[DestinationRule], namespace: str, name: str) -> DestinationRule | None:
    """The rule that applies to a Service: an exact host before a wildcard, then the rule in
    the Service's namespace, then the oldest by name (Istio merges nothing across rules)."""
    best: tuple[tuple[int, int, str, str], DestinationRule] | None = None
    for rule in rules:
        if not rule.matches(namespace, name):
            continue
        rank = (
            int(rule.is_wildcard),
            int(rule.metadata.namespace != namespace),
            rule.metadata.namespace,
            rule.metadata.name,
        )
        if best is None or rank < best[0]:
            best = (rank, rule)
    return best[1] if best else None


def subset_labels(
    rules: Iterable[DestinationRule], service: tuple[str, str], subset: str
) -> Mapping[str, str] | None:
    """The pod labels of `subset` of `service` (namespace, name); None when no rule for the
    Service defines that subset (Envoy then has no such cluster: 503, no healthy upstream)."""
    rule = rule_for(rules, *service)
    sub = rule.subset(subset) if rule is not None else None
    return sub.labels if sub is not None else None


# --- parsing -------------------------------------------------------------------------------

# Istio writes durations as protobuf Durations in Go's notation: 1h, 30s, 1.5s, 500ms, 1m30s.
_GO_DURATION = re.compile(r"(?:\d+(?:\.\d+)?(?:h|m|s|ms|us|µs|ns))+")
_GO_PART = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}

# Known Istio fields a waypoint does not carry out: accepted, reported as ignored.
_IGNORED_SPEC = frozenset({"exportTo", "workloadSelector"})
_IGNORED_POLICY = frozenset({"tls", "portLevelSettings", "tunnel", "proxyProtocol"})
_IGNORED_LB = frozenset({"localityLbSetting", "warmupDurationSecs", "warmup"})
_IGNORED_HASH = frozenset(
    {"httpQueryParameterName", "ringHash", "maglev", "minimumRingSize"}
)  # one of these as the only key is still refused below: no key would be left
_IGNORED_TCP = frozenset({"connectTimeout", "tcpKeepalive", "maxConnectionDuration", "idleTimeout"})
_IGNORED_HTTP = frozenset(
    {"idleTimeout", "h2UpgradePolicy", "useClientProtocol", "maxConcurrentStreams"}
)
_IGNORED_OUTLIER = frozenset(
    {"splitExternalLocalOriginErrors", "consecutiveLocalOriginFailures", "minHealthPercent"}
)


def parse_go_duration(value: str, field: str) -> float:
    """An Istio duration in seconds (`30s`, `1.5s`, `100ms`, `1m30s`); at least 1 ms."""
    if not _GO_DURATION.fullmatch(value):
        raise ManifestError(
            f"{value!r} is not a duration (a number and a unit h, m, s or ms, such as 30s, "
            "1.5s, 100ms or 1m30s)",
            field=field,
        )
    seconds = sum(float(n) * _UNIT_SECONDS[u] for n, u in _GO_PART.findall(value))
    if seconds < 1e-3:
        raise ManifestError(f"must be at least 1ms, got {value!r}", field=field)
    return seconds


def _duration(f: Fields, name: str, default: float) -> float:
    if f.raw(name) is None:
        return default
    return parse_go_duration(f.string(name, required=True), f.sub(name))


def _limit(f: Fields, name: str) -> int | None:
    """A connection-pool limit: 0 or absent is unset, as in Istio's protobuf."""
    value = f.integer(name, minimum=0, maximum=2**31 - 1)
    return value or None


def _parse_consistent_hash(raw: object, path: str, ignored: list[str]) -> ConsistentHash:
    f = Fields(raw, path, ignored=_IGNORED_HASH)
    header = f.string("httpHeaderName")
    cookie = None
    if f.raw("httpCookie") is not None:
        cf = Fields(f.raw("httpCookie"), f.sub("httpCookie"))
        name = cf.string("name", required=True)
        cookie_path = cf.string("path")
        ttl = None if cf.raw("ttl") is None else _duration(cf, "ttl", 0.0)
        cf.done()
        cookie = HttpCookie(name, cookie_path, ttl)
    source_ip = f.raw("useSourceIp")
    if source_ip is not None and not isinstance(source_ip, bool):
        raise f.fail("useSourceIp", "expected a boolean")
    keys = [n for n, v in (("httpHeaderName", header), ("httpCookie", cookie)) if v]
    if source_ip:
        keys.append("useSourceIp")
    ignored.extend(f.done())
    if len(keys) > 1:
        raise ManifestError(f"set only one hash key, got {' and '.join(keys)}", field=path)
    if not keys:
        raise ManifestError(
            "set one hash key: httpHeaderName, httpCookie or useSourceIp "
            "(httpQueryParameterName is not supported by weft's waypoint)",
            field=path,
        )
    return ConsistentHash(header, cookie, bool(source_ip))


def _parse_load_balancer(raw: object, path: str, ignored: list[str]) -> LoadBalancer:
    f = Fields(raw, path, ignored=_IGNORED_LB)
    simple = SimpleLB.UNSPECIFIED
    if f.raw("simple") is not None:
        text = f.string("simple")
        try:
            simple = SimpleLB(text)
        except ValueError:
            allowed = ", ".join(m.value for m in SimpleLB)
            raise f.fail("simple", f"must be one of {allowed}, got {text!r}") from None
    consistent = None
    if f.raw("consistentHash") is not None:
        consistent = _parse_consistent_hash(
            f.raw("consistentHash"), f.sub("consistentHash"), ignored
        )
    ignored.extend(f.done())
    if f.has("simple") and consistent is not None:
        raise ManifestError("set simple or consistentHash, not both", field=path)
    return LoadBalancer(simple, consistent)


def _parse_connection_pool(raw: object, path: str, ignored: list[str]) -> ConnectionPool:
    f = Fields(raw, path)
    tcp = Fields(f.raw("tcp"), f.sub("tcp"), ignored=_IGNORED_TCP)
    max_connections = _limit(tcp, "maxConnections")
    ignored.extend(tcp.done())
    http = Fields(f.raw("http"), f.sub("http"), ignored=_IGNORED_HTTP)
    pool = ConnectionPool(
        max_connections=max_connections,
        http1_max_pending_requests=_limit(http, "http1MaxPendingRequests"),
        http2_max_requests=_limit(http, "http2MaxRequests"),
        max_requests_per_connection=_limit(http, "maxRequestsPerConnection"),
        max_retries=_limit(http, "maxRetries"),
    )
    ignored.extend(http.done())
    ignored.extend(f.done())
    return pool


def _parse_outlier_detection(raw: object, path: str, ignored: list[str]) -> OutlierDetection:
    f = Fields(raw, path, ignored=_IGNORED_OUTLIER)
    if f.raw("consecutiveErrors") is not None:
        raise f.fail(
            "consecutiveErrors",
            "removed from Istio's API: use consecutive5xxErrors (or consecutiveGatewayErrors)",
        )
    default = OutlierDetection()
    od = OutlierDetection(
        consecutive_5xx_errors=f.integer(
            "consecutive5xxErrors", default=default.consecutive_5xx_errors, minimum=0
        ),
        consecutive_gateway_errors=f.integer("consecutiveGatewayErrors", minimum=0),
        interval=_duration(f, "interval", default.interval),
        base_ejection_time=_duration(f, "baseEjectionTime", default.base_ejection_time),
        max_ejection_percent=f.integer(
            "maxEjectionPercent", default=default.max_ejection_percent, minimum=0, maximum=100
        ),
    )
    ignored.extend(f.done())
    return od


def _parse_traffic_policy(raw: object, path: str, ignored: list[str]) -> TrafficPolicy:
    f = Fields(raw, path, ignored=_IGNORED_POLICY)
    lb = pool = od = None
    if f.raw("loadBalancer") is not None:
        lb = _parse_load_balancer(f.raw("loadBalancer"), f.sub("loadBalancer"), ignored)
    if f.raw("connectionPool") is not None:
        pool = _parse_connection_pool(f.raw("connectionPool"), f.sub("connectionPool"), ignored)
    if f.raw("outlierDetection") is not None:
        od = _parse_outlier_detection(f.raw("outlierDetection"), f.sub("outlierDetection"), ignored)
    ignored.extend(f.done())
    return TrafficPolicy(lb, pool, od)


def _parse_subset(raw: object, path: str, ignored: list[str]) -> Subset:
    f = Fields(raw, path)
    name = f.string("name", required=True)
    check_dns_label(name, f.sub("name"))
    labels = f.string_map("labels")
    check_labels(labels, f.sub("labels"))
    policy = None
    if f.raw("trafficPolicy") is not None:
        policy = _parse_traffic_policy(f.raw("trafficPolicy"), f.sub("trafficPolicy"), ignored)
    ignored.extend(f.done())
    return Subset(name, labels, policy)


def _check_host(host: str, field: str) -> None:
    if host == "*" or host.startswith("*."):
        rest = host[2:]
        if rest:
            check_dns_subdomain(rest, field)
        return
    if "*" in host:
        raise ManifestError(
            f"{host!r}: a wildcard may only be the first label (*.example.com)", field=field
        )
    check_dns_subdomain(host, field)
    if "." in host and service_of_host(host, "default") is None:
        raise ManifestError(
            f"{host!r} is not a Service of this cluster: write name, name.namespace or "
            f"name.namespace.{CLUSTER_DOMAIN} (ServiceEntry hosts are not supported)",
            field=field,
        )


def parse_destination_rule(f: Fields, ignored: list[str]) -> DestinationRule:
    NETWORKING.check(f, "DestinationRule")
    meta, ign = parse_metadata(f.raw("metadata"), "metadata", namespaced=True)
    check_dns_subdomain(meta.name, "metadata.name")
    ignored.extend(ign)
    spec = Fields(f.raw("spec"), "spec", ignored=_IGNORED_SPEC)
    host = spec.string("host", required=True)
    _check_host(host, spec.sub("host"))
    policy = None
    if spec.raw("trafficPolicy") is not None:
        policy = _parse_traffic_policy(
            spec.raw("trafficPolicy"), spec.sub("trafficPolicy"), ignored
        )
    subsets: list[Subset] = []
    for path, item in spec.objects("subsets"):
        subset = _parse_subset(item, path, ignored)
        if any(s.name == subset.name for s in subsets):
            raise ManifestError(f"subset {subset.name!r} is defined twice", field=f"{path}.name")
        subsets.append(subset)
    ignored.extend(spec.done())
    return DestinationRule(meta, host, policy, tuple(subsets))
