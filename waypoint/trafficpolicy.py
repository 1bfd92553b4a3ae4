"""A DestinationRule's traffic policy at the waypoint, as small state machines with an
injectable clock and random source, no I/O: which endpoint a request goes to (load balancing
over the endpoints outlier detection has not ejected), whether it may go at all (the
connection pool's circuit breaker), and what a try's outcome does to its endpoint.

State is kept per cluster, as Envoy's: a Service port, or one subset of it. Every table is
bounded: at most MAX_CLUSTERS clusters (the least recently used dropped), and a cluster keeps
entries only for the endpoints it was last given (those that left are dropped).

The proxy uses a cluster like this::

    cluster = policies.cluster(key, policy, hostname)
    ordered = cluster.order(endpoints, hash_key)      # ejected endpoints left out, LB order
    admission = cluster.admit()                        # ACTIVE, PENDING (wait) or OVERFLOW
    cluster.attempt_started(host) ... cluster.attempt_done(host, status)   # per try
    cluster.release()                                  # when the request is done
"""

from __future__ import annotations

import contextlib
import enum
import hashlib
import math
import random
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

from meshcore.resources.destinationrule import (
    ConnectionPool,
    ConsistentHash,
    OutlierDetection,
    SimpleLB,
    TrafficPolicy,
)

MAX_CLUSTERS = 1024
GATEWAY_ERRORS = frozenset({502, 503, 504})
OVERLOADED_HEADER = "x-weft-overloaded"  # Envoy's x-envoy-overloaded
UPSTREAM_OVERFLOW = "UO"  # Envoy's response flag: circuit breaker open

E = TypeVar("E")  # an endpoint, as the proxy holds it: (Workload, port)


@dataclass(frozen=True)
class ClusterKey:
    """What Envoy would call a cluster: a Service port, or one subset of it."""

    namespace: str
    name: str
    port: int
    subset: str = ""


# --- load balancing --------------------------------------------------------------------------


def rendezvous_order(key: str, hosts: Sequence[str]) -> list[int]:
    """Indexes of `hosts` by highest random weight for `key`: the first is the same for the
    same key while the set of hosts is unchanged, and only keys on a host that left move."""

    def weight(host: str) -> bytes:
        return hashlib.blake2b(f"{key}\0{host}".encode(), digest_size=8).digest()

    return sorted(range(len(hosts)), key=lambda i: weight(hosts[i]), reverse=True)


class Balancer:
    """Orders a cluster's endpoints for one request: the first is the pick, the rest are
    where a retry or an unreachable first goes next."""

    def __init__(self, simple: SimpleLB, hashing: ConsistentHash | None, rng: random.Random):
        self.simple = simple
        self.hashing = hashing
        self._rng = rng
        self._next = 0  # round robin position

    def order(
        self,
        hosts: Sequence[str],
        hash_key: str | None,
        active: Mapping[str, int],
    ) -> list[int]:
        n = len(hosts)
        if n <= 1:
            return list(range(n))
        if self.hashing is not None and hash_key:
            return rendezvous_order(hash_key, hosts)
        if self.simple is SimpleLB.LEAST_REQUEST or self.simple is SimpleLB.LEAST_CONN:
            # Envoy's "power of two choices" for equal weights: two at random, the one with
            # fewer requests in flight (the first on a tie), then the rest by load.
            a, b = self._rng.sample(range(n), 2)
            pick = b if active.get(hosts[b], 0) < active.get(hosts[a], 0) else a
            rest = sorted((i for i in range(n) if i != pick), key=lambda i: active.get(hosts[i], 0))
            return [pick, *rest]
        if (
            self.simple in (SimpleLB.RANDOM, SimpleLB.PASSTHROUGH)
            or self.hashing is not None  # a hash with no key on this request: Envoy picks at random
        ):
            out = list(range(n))
            self._rng.shuffle(out)
            return out
        # ROUND_ROBIN, and the default: the endpoints in a stable order, one step further
        # each request.
        start = self._next % n
        self._next = start + 1
        by_host = sorted(range(n), key=lambda i: hosts[i])
        return by_host[start:] + by_host[:start]


# --- circuit breaking ------------------------------------------------------------------------


class Admission(enum.Enum):
    ACTIVE = "active"  # go ahead: a connection slot is held until release()
    PENDING = "pending"  # wait for a slot: granted by a later release()
    OVERFLOW = "overflow"  # over a limit: answer 503 at once (UO, x-weft-overloaded)


class CircuitBreaker:
    """Envoy's cluster circuit breakers, for one waypoint replica.

    A request in flight holds a backend connection (HTTP/1.1: one request per connection at a
    time), so `tcp.maxConnections` bounds the requests in flight; beyond it a request waits
    (pending) for one to finish, at most `http1MaxPendingRequests` of them; beyond that, or
    beyond `http2MaxRequests` in flight, it fails at once. `maxRetries` bounds the retries in
    flight. A waiter is any hashable token (the proxy's future); release() names the waiter it
    hands its slot to."""

    def __init__(self, pool: ConnectionPool) -> None:
        self.pool = pool
        self.active = 0
        self.retries = 0
        self.overflows = 0
        self._pending: deque[Hashable] = deque()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def admit(self, waiter: Hashable = None) -> Admission:
        p = self.pool
        if p.http2_max_requests is not None and self.active + self.pending >= p.http2_max_requests:
            self.overflows += 1
            return Admission.OVERFLOW
        if (p.max_connections is None or self.active < p.max_connections) and not self._pending:
            self.active += 1
            return Admission.ACTIVE
        limit = p.http1_max_pending_requests
        if limit is not None and self.pending >= limit:
            self.overflows += 1
            return Admission.OVERFLOW
        self._pending.append(waiter)
        return Admission.PENDING

    def release(self) -> Hashable | None:
        """A request is done: its slot goes to the first waiter, which is returned (None when
        nobody waits)."""
        if self._pending:
            return self._pending.popleft()  # the slot passes on: active stays the same
        self.active = max(0, self.active - 1)
        return None

    def cancel(self, waiter: Hashable) -> None:
        """A waiter gave up (its request timed out or the client left)."""
        with contextlib.suppress(ValueError):
            self._pending.remove(waiter)

    def may_retry(self) -> bool:
        limit = self.pool.max_retries
        return limit is None or self.retries < limit

    def retry_started(self) -> bool:
        if not self.may_retry():
            self.overflows += 1
            return False
        self.retries += 1
        return True

    def retry_done(self) -> None:
        self.retries = max(0, self.retries - 1)

    def keep_alive(self, requests_on_connection: int) -> bool:
        """Whether a backend connection that carried this many requests may carry another."""
        limit = self.pool.max_requests_per_connection
        return limit is None or requests_on_connection < limit


# --- outlier detection -----------------------------------------------------------------------


@dataclass
class _Host:
    consecutive_5xx: int = 0
    consecutive_gateway: int = 0
    times_ejected: int = 0  # the multiplier of the ejection time; decays while healthy
    ejected_until: float | None = None
    since: float = 0.0  # when it last came back (for the decay)


class OutlierDetector:
    """Envoy's consecutive-5xx and consecutive-gateway-error detection for one cluster.

    A try's outcome is a status code, or None when there was no response (unreachable, reset,
    timed out: Envoy counts those as a 503 from the host). After `consecutive5xxErrors` 5xx in
    a row, or `consecutiveGatewayErrors` 502/503/504 in a row, the host is ejected for
    `baseEjectionTime` times the number of times it was ejected, unless `maxEjectionPercent` of
    the hosts are out already (at least one may be ejected, as Envoy, but never the last one).
    It comes back when the time is over; each `interval` it then stays healthy takes one off
    its multiplier."""

    def __init__(self, config: OutlierDetection, clock: Callable[[], float]) -> None:
        self.config = config
        self._clock = clock
        self.hosts: dict[str, _Host] = {}
        self.ejections_total = 0

    def sync(self, hosts: Sequence[str]) -> None:
        """Keep state only for these hosts (the cluster's endpoints now)."""
        if len(hosts) != len(self.hosts) or any(h not in self.hosts for h in hosts):
            self.hosts = {h: self.hosts.get(h) or _Host(since=self._clock()) for h in hosts}

    def _sweep(self, now: float) -> None:
        interval = self.config.interval
        for host in self.hosts.values():
            if host.ejected_until is not None and now >= host.ejected_until:
                host.ejected_until = None
                host.since = now
            if host.ejected_until is None and host.times_ejected and interval > 0:
                steps = int((now - host.since) // interval)
                if steps:
                    host.times_ejected = max(0, host.times_ejected - steps)
                    host.since += steps * interval

    def ejected(self) -> list[str]:
        self._sweep(self._clock())
        return sorted(h for h, s in self.hosts.items() if s.ejected_until is not None)

    def is_ejected(self, host: str) -> bool:
        s = self.hosts.get(host)
        return s is not None and s.ejected_until is not None and self._clock() < s.ejected_until

    def max_ejected(self) -> int:
        n = len(self.hosts)
        if self.config.max_ejection_percent <= 0 or n <= 1:
            return 0
        return min(n - 1, max(1, math.floor(n * self.config.max_ejection_percent / 100)))

    def record(self, host: str, status: int | None) -> bool:
        """One try's outcome at `host`; whether it ejected the host."""
        s = self.hosts.get(host)
        if s is None:
            return False  # not (or no longer) one of the cluster's endpoints
        code = 503 if status is None else status
        if code < 500:
            s.consecutive_5xx = s.consecutive_gateway = 0
            return False
        s.consecutive_5xx += 1
        if code in GATEWAY_ERRORS:
            s.consecutive_gateway += 1
        else:
            s.consecutive_gateway = 0
        c = self.config
        tripped = (c.consecutive_5xx_errors and s.consecutive_5xx >= c.consecutive_5xx_errors) or (
            c.consecutive_gateway_errors and s.consecutive_gateway >= c.consecutive_gateway_errors
        )
        if not tripped:
            return False
        s.consecutive_5xx = s.consecutive_gateway = 0
        now = self._clock()
        self._sweep(now)
        if s.ejected_until is not None:
            return False
        if sum(1 for h in self.hosts.values() if h.ejected_until is not None) >= self.max_ejected():
            return False
        s.times_ejected += 1
        s.ejected_until = now + c.base_ejection_time * s.times_ejected
        self.ejections_total += 1
        return True

    def usable(self, hosts: Sequence[str]) -> list[int]:
        """Indexes of the hosts not ejected (all of them if every one is: Envoy's panic)."""
        self._sweep(self._clock())
        keep = [
            i
            for i, h in enumerate(hosts)
            if (s := self.hosts.get(h)) is None or s.ejected_until is None
        ]
        return keep or list(range(len(hosts)))

    def describe(self) -> list[dict[str, object]]:
        now = self._clock()
        return [
            {
                "endpoint": h,
                "times_ejected": s.times_ejected,
                "back_in_s": round(max(0.0, s.ejected_until - now), 3),
            }
            for h, s in sorted(self.hosts.items())
            if s.ejected_until is not None and now < s.ejected_until
        ]


# --- one cluster, and all of them ------------------------------------------------------------


@dataclass
class ClusterState:
    key: ClusterKey
    hostname: str  # the Service's, for metrics
    policy: TrafficPolicy | None
    balancer: Balancer
    breaker: CircuitBreaker | None
    outlier: OutlierDetector | None
    active: dict[str, int] = field(default_factory=dict)  # requests in flight per endpoint
    on_eject: Callable[[ClusterState, str], None] | None = None

    def order(
        self, endpoints: Sequence[E], host_of: Callable[[E], str], hash_key: str | None
    ) -> list[E]:
        """The endpoints for one request, best first, ejected ones left out."""
        hosts = [host_of(e) for e in endpoints]
        if self.outlier is not None:
            self.outlier.sync(hosts)
            usable = self.outlier.usable(hosts)
            if len(usable) < len(hosts):
                endpoints = [endpoints[i] for i in usable]
                hosts = [hosts[i] for i in usable]
        if len(self.active) > 4 * len(hosts) + 16:  # endpoints that left: drop their entries
            keep = set(hosts)
            self.active = {h: n for h, n in self.active.items() if h in keep and n}
        return [endpoints[i] for i in self.balancer.order(hosts, hash_key, self.active)]

    def admit(self, waiter: object = None) -> Admission:
        if self.breaker is None:
            return Admission.ACTIVE
        return self.breaker.admit(waiter)

    def release(self) -> object | None:
        return self.breaker.release() if self.breaker is not None else None

    def may_retry(self) -> bool:
        return self.breaker is None or self.breaker.may_retry()

    def retry_started(self) -> bool:
        return self.breaker is None or self.breaker.retry_started()

    def retry_done(self) -> None:
        if self.breaker is not None:
            self.breaker.retry_done()

    def keep_alive(self, requests_on_connection: int) -> bool:
        return self.breaker is None or self.breaker.keep_alive(requests_on_connection)

    def attempt_abandoned(self, host: str) -> None:
        """A try given up by us (the client left, a route timeout): no outcome to count."""
        n = self.active.get(host, 0) - 1
        if n > 0:
            self.active[host] = n
        else:
            self.active.pop(host, None)

    def attempt_started(self, host: str) -> None:
        self.active[host] = self.active.get(host, 0) + 1

    def attempt_done(self, host: str, status: int | None) -> None:
        """A try at `host` ended: with a response status, or None for no response."""
        n = self.active.get(host, 0) - 1
        if n > 0:
            self.active[host] = n
        else:
            self.active.pop(host, None)
        ejected = self.outlier is not None and self.outlier.record(host, status)
        if ejected and self.on_eject is not None:
            self.on_eject(self, host)

    def describe(self) -> dict[str, object]:
        out: dict[str, object] = {
            "service": self.hostname,
            "port": self.key.port,
            "subset": self.key.subset or None,
        }
        if self.breaker is not None:
            out["in_flight"] = self.breaker.active
            out["pending"] = self.breaker.pending
            out["overflows"] = self.breaker.overflows
        if self.outlier is not None:
            out["ejected"] = self.outlier.describe()
            out["ejections_total"] = self.outlier.ejections_total
        return out


class TrafficPolicies:
    """Every cluster's state in one waypoint replica (bounded; least recently used dropped)."""

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        max_clusters: int = MAX_CLUSTERS,
        on_eject: Callable[[ClusterState, str], None] | None = None,
    ) -> None:
        self._clock = clock
        self._rng = rng or random.Random()
        self._max = max_clusters
        self._on_eject = on_eject
        self.clusters: OrderedDict[ClusterKey, ClusterState] = OrderedDict()

    def cluster(self, key: ClusterKey, policy: TrafficPolicy | None, hostname: str) -> ClusterState:
        """The state of one cluster under `policy`: kept while the policy is unchanged, made
        anew when it changes (a new DestinationRule starts from a clean slate)."""
        state = self.clusters.get(key)
        if state is not None and state.policy is policy:
            self.clusters.move_to_end(key)
            return state
        if state is not None and state.policy == policy:
            state.policy = policy
            self.clusters.move_to_end(key)
            return state
        lb = policy.load_balancer if policy else None
        pool = policy.connection_pool if policy else None
        od = policy.outlier_detection if policy else None
        state = ClusterState(
            key,
            hostname,
            policy,
            Balancer(
                lb.simple if lb else SimpleLB.ROUND_ROBIN,
                lb.consistent_hash if lb else None,
                self._rng,
            ),
            CircuitBreaker(pool) if pool is not None and pool != ConnectionPool() else None,
            OutlierDetector(od, self._clock) if od is not None else None,
            on_eject=self._on_eject,
        )
        self.clusters[key] = state
        self.clusters.move_to_end(key)
        while len(self.clusters) > self._max:
            self.clusters.popitem(last=False)
        return state

    def ejected(self) -> dict[str, list[str]]:
        """Ejected endpoints by Service hostname (for status and gauges)."""
        out: dict[str, list[str]] = {}
        for state in self.clusters.values():
            if state.outlier is not None:
                hosts = state.outlier.ejected()
                if hosts or state.hostname not in out:
                    out.setdefault(state.hostname, []).extend(hosts)
        return out

    def describe(self) -> list[dict[str, object]]:
        return [
            s.describe()
            for s in self.clusters.values()
            if s.breaker is not None or s.outlier is not None
        ]


def hash_key(
    hashing: ConsistentHash | None,
    header: Callable[[str], str | None],
    source_ip: str,
) -> tuple[str | None, str | None]:
    """The consistent-hash key of a request, and a cookie value to set when the hash is on a
    cookie with a ttl that the request does not carry (Envoy generates one)."""
    if hashing is None:
        return None, None
    if hashing.http_header_name:
        return header(hashing.http_header_name.lower()), None
    if hashing.use_source_ip:
        return source_ip or None, None
    cookie = hashing.http_cookie
    assert cookie is not None
    for part in (header("cookie") or "").split(";"):
        name, _, value = part.strip().partition("=")
        if name == cookie.name and value:
            return value, None
    if cookie.ttl is None:
        return None, None  # a session cookie Envoy would not generate: random
    made = f"{random.getrandbits(64):016x}"
    return made, made


def set_cookie_header(hashing: ConsistentHash, value: str) -> tuple[str, str]:
    cookie = hashing.http_cookie
    assert cookie is not None
    parts = [f"{cookie.name}={value}"]
    if cookie.path:
        parts.append(f"Path={cookie.path}")
    if cookie.ttl:
        parts.append(f"Max-Age={max(1, round(cookie.ttl))}")
    parts.append("HttpOnly")
    return "set-cookie", "; ".join(parts)
