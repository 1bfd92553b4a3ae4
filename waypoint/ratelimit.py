"""RateLimitPolicy at the waypoint: which policy and rule a request falls under, and the
Local limiter. Pure but for the clock it is given (the Global counters' I/O, Redis, is in
`waypoint.ratelimit_store`).

Which policy: per request, the most specific one attached: to the HTTPRoute that routed it,
else to its Service, else to this waypoint's Gateway (as Envoy Gateway lets a route's
policy override its Gateway's); two at one level: the first by namespace/name (and logged).
Within a policy the first rule whose client selectors all match decides; a request no rule
matches is not limited.

Local limits are token buckets, one per rule and per Distinct value, per replica: `requests`
tokens, refilled continuously at `requests / unit`. A bucket allows a burst of the whole
limit and then the steady rate, with no doubled burst at a window's edge as a fixed window
has (Envoy's local rate limit is a token bucket too). A policy keeps at most `max_buckets`
(MAX_BUCKETS) buckets; past that the least recently used bucket is dropped (counted in
`weft_waypoint_ratelimit_buckets_evicted_total`): a dropped key starts again with a full
bucket, so the bound errs on allowing rather than refusing a client never seen.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TypeVar

import structlog
from prometheus_client import Counter

from meshcore.meshstate import MeshService
from meshcore.resources import ResourceKey
from meshcore.resources.gateway import HTTPRoute
from meshcore.resources.ratelimit import (
    ClientSelector,
    FailureMode,
    HeaderMatchType,
    PathMatchType,
    RateLimitPolicy,
    RateLimitRule,
    RateLimitType,
    TargetKind,
)

log = structlog.get_logger("waypoint.ratelimit")

Clock = Callable[[], float]
Headers = tuple[tuple[str, str], ...]  # names lower case

_K = TypeVar("_K")

RATE_LIMITED = "RL"  # Envoy's response flag for a request its rate limit refused
GRPC_RESOURCE_EXHAUSTED = 8  # what a gRPC call over its limit gets

MAX_BUCKETS = 10_000  # Local buckets per policy (rules x Distinct values)

DECISIONS = Counter(
    "weft_waypoint_ratelimit_decisions",
    "Rate limit decisions, by policy (namespace/name) and verdict: allowed, limited, "
    "store_error_allowed, store_error_denied (Global, Redis unreachable or slow).",
    ("policy", "verdict"),
)
STORE_ERRORS = Counter(
    "weft_waypoint_ratelimit_store_errors",
    "Global rate limit decisions the counter store (Redis) did not answer in time.",
    ("policy",),
)
EVICTIONS = Counter(
    "weft_waypoint_ratelimit_buckets_evicted",
    "Local buckets dropped (least recently used) to keep a policy within its bound.",
    ("policy",),
)


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    limit: int  # the matched rule's requests per unit
    remaining: int  # after this request
    reset_after: float  # seconds until the next request would be allowed (or the window ends)

    def headers(self) -> Headers:
        """The 429 answer's headers: `retry-after` in whole seconds, at least 1."""
        return (
            ("x-ratelimit-limit", str(self.limit)),
            ("x-ratelimit-remaining", str(self.remaining)),
            ("retry-after", str(max(1, math.ceil(self.reset_after)))),
        )


@dataclass(frozen=True)
class Hit:
    """A request matched `rule` of a policy; `bucket` names its counter (the rule's index
    and its Distinct values)."""

    rule: RateLimitRule
    bucket: str


# --- matching -----------------------------------------------------------------------------


def _path_only(target: str) -> str:
    cut = len(target)
    for sep in ("?", "#"):
        i = target.find(sep)
        if i != -1:
            cut = min(cut, i)
    return target[:cut] or "/"


def _principal_matches(wanted: tuple[str, ...], principal: str) -> bool:
    bare = principal[len("spiffe://") :] if principal.startswith("spiffe://") else principal
    for w in wanted:
        if w == "*" or w == bare:
            return True
        if w.endswith("*") and bare.startswith(w[:-1]):  # Istio's prefix/suffix wildcards
            return True
        if w.startswith("*") and bare.endswith(w[1:]):
            return True
    return False


def _selector_values(
    s: ClientSelector, path: str, headers: Mapping[str, str], principal: str
) -> list[str] | None:
    """None if `s` does not match; else the Distinct header values it keys by."""
    if s.path is not None:
        p = _path_only(path)
        if s.path.type is PathMatchType.EXACT:
            if p != s.path.value:
                return None
        elif s.path.value != "/" and not (p == s.path.value or p.startswith(s.path.value + "/")):
            return None
    if s.source_principals and not _principal_matches(s.source_principals, principal):
        return None
    values: list[str] = []
    for h in s.headers:
        got = headers.get(h.name)
        if got is None:
            return None
        if h.type is HeaderMatchType.EXACT:
            if got != h.value:
                return None
        else:
            values.append(got)
    return values


def _joined(headers: Headers) -> dict[str, str]:
    out: dict[str, str] = {}
    for n, v in headers:
        n = n.lower()
        out[n] = f"{out[n]},{v}" if n in out else v
    return out


def match(policy: RateLimitPolicy, path: str, headers: Headers, principal: str) -> Hit | None:
    """The first rule of `policy` whose selectors all match the request, and its bucket."""
    joined: dict[str, str] | None = None
    for i, rule in enumerate(policy.rules):
        if not rule.client_selectors:
            return Hit(rule, str(i))
        if joined is None:
            joined = _joined(headers)
        values: list[str] = []
        for s in rule.client_selectors:
            got = _selector_values(s, path, joined, principal)
            if got is None:
                break
            values.extend(got)
        else:
            # values are length-prefixed so no two value lists make one key
            return Hit(rule, ":".join((str(i), *(f"{len(v)}={v}" for v in values))))
    return None


# --- Local: token buckets ------------------------------------------------------------------


class _Bucket:
    __slots__ = ("at", "tokens")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens = tokens
        self.at = at


class LocalBuckets:
    """A policy's token buckets on this replica, at most `max_buckets` of them (LRU)."""

    def __init__(self, policy: str, clock: Clock, max_buckets: int = MAX_BUCKETS) -> None:
        self.policy = policy
        self.clock = clock
        self.max_buckets = max_buckets
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._buckets)

    def take(self, hit: Hit) -> Verdict:
        limit = hit.rule.limit.requests
        rate = limit / hit.rule.limit.unit.seconds  # tokens per second
        now = self.clock()
        b = self._buckets.get(hit.bucket)
        if b is None:
            if len(self._buckets) >= self.max_buckets:
                self._buckets.popitem(last=False)
                self.evicted += 1
                EVICTIONS.labels(self.policy).inc()
            b = self._buckets[hit.bucket] = _Bucket(float(limit), now)
        else:
            self._buckets.move_to_end(hit.bucket)
            if now > b.at:
                b.tokens = min(float(limit), b.tokens + (now - b.at) * rate)
                b.at = now
        if b.tokens >= 1.0:
            b.tokens -= 1.0
            return Verdict(True, limit, int(b.tokens), max(0.0, (1.0 - b.tokens) / rate))
        return Verdict(False, limit, 0, (1.0 - b.tokens) / rate)


# --- which policy applies ------------------------------------------------------------------


class Limiter:
    """One policy as enforced here: its matcher, and its Local buckets (Global: none)."""

    def __init__(self, policy: RateLimitPolicy, clock: Clock, max_buckets: int) -> None:
        self.policy = policy
        self.name = f"{policy.metadata.namespace}/{policy.metadata.name}"
        self.global_ = policy.type is RateLimitType.GLOBAL
        self.fail_open = policy.failure_mode is FailureMode.ALLOW
        self.local = LocalBuckets(self.name, clock, max_buckets)
        allowed, limited = (
            DECISIONS.labels(self.name, "allowed"),
            DECISIONS.labels(self.name, "limited"),
        )
        self._count = {True: allowed.inc, False: limited.inc}

    def match(self, path: str, headers: Headers, principal: str) -> Hit | None:
        return match(self.policy, path, headers, principal)

    def decide_local(self, hit: Hit) -> Verdict:
        verdict = self.local.take(hit)
        self._count[verdict.allowed]()
        return verdict

    def counted(self, verdict: Verdict) -> Verdict:
        self._count[verdict.allowed]()
        return verdict

    def store_failed(self, hit: Hit) -> Verdict:
        """The counter store did not answer: `failureMode` decides."""
        STORE_ERRORS.labels(self.name).inc()
        limit = hit.rule.limit.requests
        if self.fail_open:
            DECISIONS.labels(self.name, "store_error_allowed").inc()
            return Verdict(True, limit, limit, 0.0)
        DECISIONS.labels(self.name, "store_error_denied").inc()
        return Verdict(False, limit, 0, 1.0)


class RateLimitTables:
    """The policies that apply to this waypoint's traffic, by route and by Service: rebuilt
    when the mesh state changes; a policy that did not change keeps its Limiter (and its
    buckets). `for_request` is the hot path: two dict lookups, None when nothing applies."""

    def __init__(
        self,
        gateway: str,
        clock: Clock = time.monotonic,
        max_buckets: int = MAX_BUCKETS,
    ) -> None:
        self.gateway = gateway  # `<ns>/<name>` of this waypoint
        self.clock = clock
        self.max_buckets = max_buckets
        self.by_route: dict[ResourceKey, Limiter] = {}
        self.by_service: dict[tuple[str, str], Limiter] = {}
        self._limiters: dict[ResourceKey, Limiter] = {}
        self._gateway_wide: Limiter | None = None

    @property
    def empty(self) -> bool:
        return not (self.by_route or self.by_service or self._gateway_wide)

    def update(
        self,
        policies: Iterable[RateLimitPolicy],
        services: Iterable[MeshService],
    ) -> None:
        limiters: dict[ResourceKey, Limiter] = {}
        for p in sorted(policies, key=lambda p: (p.metadata.namespace, p.metadata.name)):
            old = self._limiters.get(p.key)
            limiters[p.key] = (
                old
                if old is not None and old.policy == p
                else Limiter(p, self.clock, self.max_buckets)
            )
        by_route: dict[ResourceKey, Limiter] = {}
        by_service: dict[tuple[str, str], Limiter] = {}
        gateway_wide: Limiter | None = None
        for limiter in limiters.values():
            ns = limiter.policy.metadata.namespace
            for ref in limiter.policy.target_refs:
                if ref.kind is TargetKind.HTTPROUTE:
                    self._first(by_route, ResourceKey(HTTPRoute.kind, ns, ref.name), limiter)
                elif ref.kind is TargetKind.SERVICE:
                    self._first(by_service, (ns, ref.name), limiter)
                elif f"{ns}/{ref.name}" == self.gateway and gateway_wide is None:
                    gateway_wide = limiter
        if gateway_wide is not None:
            for s in services:
                if s.waypoint == self.gateway:
                    by_service.setdefault((s.namespace, s.name), gateway_wide)
        self._limiters, self.by_route, self.by_service = limiters, by_route, by_service
        self._gateway_wide = gateway_wide

    @staticmethod
    def _first(table: dict[_K, Limiter], key: _K, limiter: Limiter) -> None:
        other = table.get(key)
        if other is None:
            table[key] = limiter
        elif other is not limiter:
            log.warning(
                "ratelimit.policy_conflict",
                target=str(key),
                applied=other.name,
                ignored=limiter.name,
            )

    def for_request(
        self, service: MeshService | None, route_key: ResourceKey | None
    ) -> Limiter | None:
        if route_key is not None and self.by_route:
            limiter = self.by_route.get(route_key)
            if limiter is not None:
                return limiter
        if service is None:
            return None
        return self.by_service.get((service.namespace, service.name))
