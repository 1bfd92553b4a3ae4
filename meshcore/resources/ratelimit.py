"""RateLimitPolicy (`policy.weft.dev/v1`): request rate limits a waypoint enforces.

Shaped after Envoy Gateway's BackendTrafficPolicy `rateLimit` (`type: Local|Global`, `rules[]`
of `limit {requests, unit}` and `clientSelectors[]`), attached with `targetRefs` to a Service,
an HTTPRoute or a waypoint Gateway of the policy's namespace:

```yaml
spec:
  targetRefs: [{group: "", kind: Service, name: echo}]
  type: Local            # Local: per waypoint replica; Global: shared by all replicas (Redis)
  failureMode: Allow     # Global only: what to do when the counter store is unreachable
  rules:
  - limit: {requests: 10, unit: Minute}           # Second | Minute | Hour | Day
    clientSelectors:                               # all must match; none: every request
    - headers: [{name: x-user, type: Distinct}]    # Exact (with value) | Distinct
      sourcePrincipals: ["cluster.local/ns/a/sa/b"]
      path: {type: PathPrefix, value: /api}
```

As in Envoy Gateway: the selectors of a rule, and the fields of a selector, are ANDed; a
`Distinct` header keys a bucket per value and does not match a request without the header;
the first rule that matches a request decides (Envoy Gateway applies every matching rule;
weft's issue 12 asks for the first). `failureMode` defaults to `Allow` (Envoy Gateway's
`failClosed: false`).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass
from typing import TypeVar

from meshcore.resources.core import ObjectMeta, ResourceKey, parse_metadata
from meshcore.resources.errors import ManifestError
from meshcore.resources.fields import Fields
from meshcore.resources.names import check_dns_subdomain

GROUP = "policy.weft.dev"
RATELIMIT_VERSIONS: frozenset[str] = frozenset({f"{GROUP}/v1"})
GATEWAY_API_GROUP = "gateway.networking.k8s.io"

_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")  # an HTTP header name (RFC 9110 token)


class RateLimitType(enum.Enum):
    LOCAL = "Local"  # a bucket per waypoint replica
    GLOBAL = "Global"  # counters in Redis, shared by every replica


class FailureMode(enum.Enum):
    ALLOW = "Allow"  # the store is unreachable: let the request through (fail open)
    DENY = "Deny"  # ... answer 429 (fail closed)


class RateLimitUnit(enum.Enum):
    SECOND = "Second"
    MINUTE = "Minute"
    HOUR = "Hour"
    DAY = "Day"

    @property
    def seconds(self) -> int:
        return _UNIT_SECONDS[self]


_UNIT_SECONDS = {
    RateLimitUnit.SECOND: 1,
    RateLimitUnit.MINUTE: 60,
    RateLimitUnit.HOUR: 3600,
    RateLimitUnit.DAY: 86400,
}


class HeaderMatchType(enum.Enum):
    EXACT = "Exact"  # the header has this value
    DISTINCT = "Distinct"  # the header is present; each value has a bucket of its own


class PathMatchType(enum.Enum):
    PATH_PREFIX = "PathPrefix"  # by path elements, as Gateway API's: /api matches /api/x, not /apix
    EXACT = "Exact"


class TargetKind(enum.Enum):
    SERVICE = "Service"
    HTTPROUTE = "HTTPRoute"
    GATEWAY = "Gateway"  # a waypoint's: every Service bound to it

    @property
    def group(self) -> str:
        return "" if self is TargetKind.SERVICE else GATEWAY_API_GROUP


@dataclass(frozen=True)
class RateLimitTargetRef:
    kind: TargetKind
    name: str  # in the policy's namespace

    @property
    def group(self) -> str:
        return self.kind.group


@dataclass(frozen=True)
class HeaderSelector:
    name: str  # lower case
    type: HeaderMatchType = HeaderMatchType.EXACT
    value: str = ""  # Exact only


@dataclass(frozen=True)
class PathSelector:
    type: PathMatchType
    value: str


@dataclass(frozen=True)
class ClientSelector:
    """Every field given must match; an empty selector matches every request."""

    headers: tuple[HeaderSelector, ...] = ()
    source_principals: tuple[str, ...] = ()  # any of them (`trust-domain/ns/N/sa/S`, or "*")
    path: PathSelector | None = None


@dataclass(frozen=True)
class RateLimit:
    requests: int
    unit: RateLimitUnit


@dataclass(frozen=True)
class RateLimitRule:
    limit: RateLimit
    client_selectors: tuple[ClientSelector, ...] = ()  # all must match; none: every request


@dataclass(frozen=True)
class RateLimitPolicy:
    metadata: ObjectMeta
    target_refs: tuple[RateLimitTargetRef, ...]
    rules: tuple[RateLimitRule, ...]
    type: RateLimitType = RateLimitType.LOCAL
    failure_mode: FailureMode = FailureMode.ALLOW
    kind = "RateLimitPolicy"

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.kind, self.metadata.namespace, self.metadata.name)


# --- parsing -------------------------------------------------------------------------------


_E = TypeVar("_E", bound=enum.Enum)


def _choice(f: Fields, name: str, enum_type: type[_E], default: _E | None = None) -> _E:
    text = f.string(name, required=default is None, default=str(default.value) if default else "")
    try:
        return enum_type(text)
    except ValueError:
        allowed = [str(m.value) for m in enum_type]
        listed = ", ".join(allowed[:-1]) + " or " + allowed[-1]
        raise f.fail(name, f"must be {listed}, got {text!r}") from None


def _target_ref(raw: object, path: str) -> RateLimitTargetRef:
    f = Fields(raw, path)
    group = f.string("group")
    kind_text = f.string("kind", required=True)
    name = f.string("name", required=True)
    namespace = f.string("namespace")
    f.raw("sectionName")  # Envoy Gateway's; a port or listener of the target
    if f.has("sectionName"):
        raise f.fail("sectionName", "not supported: a policy applies to the whole target")
    f.done()
    if namespace:
        raise f.fail(
            "namespace",
            "cross-namespace references are not supported; leave it out to name an object in "
            "the policy's namespace",
        )
    try:
        kind = TargetKind(kind_text)
    except ValueError:
        raise f.fail(
            "kind",
            "a RateLimitPolicy attaches to a Service, an HTTPRoute or a Gateway, "
            f"not {kind_text!r}",
        ) from None
    accepted = ("", "core") if kind is TargetKind.SERVICE else (GATEWAY_API_GROUP,)
    if group not in accepted:
        raise f.fail("group", f"a {kind.value} is in group {kind.group!r}, not {group!r}")
    check_dns_subdomain(name, f.sub("name"))
    return RateLimitTargetRef(kind, name)


def _header(raw: object, path: str) -> HeaderSelector:
    f = Fields(raw, path)
    name = f.string("name", required=True)
    kind = _choice(f, "type", HeaderMatchType, HeaderMatchType.EXACT)
    has_value = f.has("value")
    value = f.string("value")
    f.done()
    if not _TOKEN.match(name):
        raise f.fail("name", f"{name!r} is not an HTTP header name")
    if kind is HeaderMatchType.EXACT and not has_value:
        raise f.fail("value", "required when type is Exact")
    if kind is HeaderMatchType.DISTINCT and has_value:
        raise f.fail("value", "not allowed when type is Distinct (each value has its own bucket)")
    return HeaderSelector(name.lower(), kind, value)


def _path(raw: object, path: str) -> PathSelector:
    f = Fields(raw, path)
    kind = _choice(f, "type", PathMatchType, PathMatchType.PATH_PREFIX)
    value = f.string("value", default="/")
    f.done()
    if not value.startswith("/"):
        raise f.fail("value", f"must start with '/', got {value!r}")
    if "?" in value or "#" in value:
        raise f.fail("value", "a path, without query or fragment")
    if kind is PathMatchType.PATH_PREFIX and len(value) > 1:
        value = value.rstrip("/")  # /api/ matches as /api, as Gateway API's PathPrefix
    return PathSelector(kind, value)


def _selector(raw: object, path: str) -> ClientSelector:
    f = Fields(raw, path)
    headers = tuple(_header(item, p) for p, item in f.objects("headers"))
    principals = f.string_list("sourcePrincipals")
    for i, value in enumerate(principals):
        if not value:
            raise ManifestError("must not be empty", field=f"{f.sub('sourcePrincipals')}[{i}]")
        if value.startswith("spiffe://"):
            raise ManifestError(
                f"write it without spiffe:// ({value[len('spiffe://') :]!r}), as Istio's "
                "principals are",
                field=f"{f.sub('sourcePrincipals')}[{i}]",
            )
    path_selector = _path(f.raw("path"), f.sub("path")) if f.has("path") else None
    f.done()
    names = [h.name for h in headers]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise ManifestError(f"header {name!r} is named twice", field=f"{f.sub('headers')}[{i}]")
    return ClientSelector(headers, principals, path_selector)


def _rule(raw: object, path: str) -> RateLimitRule:
    f = Fields(raw, path)
    if not f.has("limit"):
        raise f.fail("limit", "required field is missing")
    lf = Fields(f.raw("limit"), f.sub("limit"))
    requests = lf.integer("requests", required=True, minimum=1, maximum=2**31 - 1)
    unit = _choice(lf, "unit", RateLimitUnit)
    lf.done()
    selectors = tuple(_selector(item, p) for p, item in f.objects("clientSelectors"))
    f.done()
    return RateLimitRule(RateLimit(requests, unit), selectors)


def parse_rate_limit_policy(f: Fields, ignored: list[str]) -> RateLimitPolicy:
    meta, ign = parse_metadata(f.raw("metadata"), "metadata", namespaced=True)
    check_dns_subdomain(meta.name, "metadata.name")
    ignored.extend(ign)
    spec = Fields(f.raw("spec"), "spec")
    target_refs = tuple(_target_ref(item, p) for p, item in spec.objects("targetRefs"))
    if not target_refs:
        raise spec.fail("targetRefs", "required: the Service, HTTPRoute or Gateway to limit")
    seen = set()
    for i, ref in enumerate(target_refs):
        if ref in seen:
            raise ManifestError("named twice", field=f"spec.targetRefs[{i}]")
        seen.add(ref)
    kind = _choice(spec, "type", RateLimitType)
    has_failure_mode = spec.has("failureMode")
    failure_mode = _choice(spec, "failureMode", FailureMode, FailureMode.ALLOW)
    if has_failure_mode and kind is RateLimitType.LOCAL:
        raise spec.fail(
            "failureMode", "only for type Global (a Local limit has no store that can fail)"
        )
    rules = tuple(_rule(item, p) for p, item in spec.objects("rules"))
    if not rules:
        raise spec.fail("rules", "required: at least one rule with a limit")
    ignored.extend(spec.done())
    return RateLimitPolicy(meta, target_refs, rules, kind, failure_mode)
