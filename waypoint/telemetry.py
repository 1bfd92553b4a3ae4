"""Istio's L7 metrics, reporter="waypoint", with Istio's names, labels and buckets, and one
access-log line per request. TCP passthrough is counted with ztunnel.metrics (Istio's TCP
metrics), with reporter="waypoint".

Trace context is read, never changed: `traceparent`, `tracestate` and `baggage` go to the
backend as they came; the trace id in the access log is the one `traceparent` carries.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from dataclasses import dataclass
from typing import Any, TextIO

import structlog
from prometheus_client import Counter, Histogram

from meshcore.accessevents import AccessEvent, TapHub
from meshcore.meshstate import Workload

log = structlog.get_logger("waypoint.access")

# This process's access events (`/tap` on the admin listener, OTLP logs): one per request
# and one per TCP stream passed through. Built only while someone listens (TAP.active).
TAP = TapHub("waypoint")

REPORTER = "waypoint"
CLUSTER = "Kubernetes"  # Istio's default cluster id

LABELS = (
    "reporter",
    "source_workload",
    "source_workload_namespace",
    "source_principal",
    "source_app",
    "source_version",
    "source_cluster",
    "destination_workload",
    "destination_workload_namespace",
    "destination_principal",
    "destination_app",
    "destination_version",
    "destination_service",
    "destination_service_name",
    "destination_service_namespace",
    "destination_cluster",
    "request_protocol",
    "response_code",
    "grpc_response_status",
    "response_flags",
    "connection_security_policy",
)
# Istio's default buckets (ms; bytes)
DURATION_BUCKETS = (
    0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000,
    600000, 1800000, 3600000,
)  # fmt: skip
SIZE_BUCKETS = tuple(float(10**i) for i in range(10))

REQUESTS = Counter("istio_requests", "Requests handled.", LABELS)
DURATION = Histogram(
    "istio_request_duration_milliseconds", "Request duration.", LABELS, buckets=DURATION_BUCKETS
)
REQUEST_BYTES = Histogram("istio_request_bytes", "Request sizes.", LABELS, buckets=SIZE_BUCKETS)
RESPONSE_BYTES = Histogram("istio_response_bytes", "Response sizes.", LABELS, buckets=SIZE_BUCKETS)

# Envoy's response flags, the ones a waypoint sets
NO_ROUTE = "NR"
UPSTREAM_FAILURE = "UF"  # could not connect (or the CONNECT was refused)
UPSTREAM_RESET = "UR"  # reset (or closed) before a full response
UPSTREAM_TIMEOUT = "UT"  # the route's timeout went by
NO_HEALTHY_UPSTREAM = "UH"
DOWNSTREAM_PROTOCOL_ERROR = "DPE"
DOWNSTREAM_RESET = "DC"  # the client went away before the response was done
FAULT_INJECTED = "FI"  # aborted by a VirtualService fault: answered here, no backend
DELAY_INJECTED = "DI"  # delayed by a VirtualService fault


def fault_flags(fault: object) -> str:
    """The response flags of an injected fault (a `routing.Fault`), as Envoy's ("DI,FI")."""
    delayed = bool(getattr(fault, "delay", 0))
    aborted = bool(getattr(fault, "aborts", False))
    return ",".join(f for f, on in ((DELAY_INJECTED, delayed), (FAULT_INJECTED, aborted)) if on)


@dataclass(frozen=True)
class Peer:
    """One side of a request for the labels: a workload if known, and the principal."""

    workload: Workload | None
    principal: str

    def labels(self, side: str) -> dict[str, str]:
        w = self.workload
        return {
            f"{side}_workload": (w.workload_name or w.name) if w else "unknown",
            f"{side}_workload_namespace": w.namespace if w else "unknown",
            f"{side}_principal": self.principal or "unknown",
            f"{side}_app": (w.labels.get("app") or w.labels.get("app.kubernetes.io/name", ""))
            if w
            else "",
            f"{side}_version": (
                w.labels.get("version") or w.labels.get("app.kubernetes.io/version", "")
            )
            if w
            else "",
            f"{side}_cluster": CLUSTER,
        }


@dataclass
class RequestRecord:
    """What one request did, filled in as it goes, then `done()`."""

    method: str
    path: str
    authority: str
    source: Peer
    source_address: str
    protocol: str = "http"
    destination: Peer = Peer(None, "")
    destination_service: str = ""  # FQDN of the Service the request went to
    destination_service_name: str = ""
    destination_service_namespace: str = ""
    upstream_host: str = ""  # endpoint ip:port
    response_code: int = 0
    response_flags: str = "-"
    reason: str = ""  # why it failed, when it did
    request_bytes: int = 0  # body bytes
    response_bytes: int = 0
    trace_id: str = ""
    user_agent: str = ""
    request_id: str = ""
    retries: int = 0  # tries after the first (the route's retry policy)
    rbac_policy: str = ""  # the AuthorizationPolicy rule that denied (Istio's policy id)
    target: str = ""  # ip:port the client's CONNECT named (a Service VIP or a pod)

    def labels(self) -> dict[str, str]:
        return {
            "reporter": REPORTER,
            **self.source.labels("source"),
            **self.destination.labels("destination"),
            "destination_service": self.destination_service or "unknown",
            "destination_service_name": self.destination_service_name or "unknown",
            "destination_service_namespace": self.destination_service_namespace or "unknown",
            "request_protocol": self.protocol,
            "response_code": str(self.response_code),
            "grpc_response_status": self.grpc_response_status(),
            "response_flags": self.response_flags,
            "connection_security_policy": "mutual_tls",
        }

    def grpc_response_status(self) -> str:
        return ""

    def done(self, duration_ms: float) -> None:
        requests, duration, request_bytes, response_bytes = _series(self)
        requests.inc()
        duration.observe(duration_ms)
        request_bytes.observe(self.request_bytes)
        response_bytes.observe(self.response_bytes)
        fields = dict(
            reporter=REPORTER,
            method=self.method,
            path=self.path,
            authority=self.authority,
            protocol=self.protocol,
            response_code=self.response_code,
            response_flags=self.response_flags,
            reason=self.reason or None,
            duration_ms=round(duration_ms, 3),
            bytes_received=self.request_bytes,
            bytes_sent=self.response_bytes,
            upstream_host=self.upstream_host or None,
            destination_service=self.destination_service or None,
            source_address=self.source_address,
            source_principal=self.source.principal or None,
            destination_principal=self.destination.principal or None,
            trace_id=self.trace_id or None,
            user_agent=self.user_agent or None,
            request_id=self.request_id or None,
            retries=self.retries or None,
            rbac_policy=self.rbac_policy or None,
        )
        if TAP.active:
            TAP.publish(self.event(duration_ms))
        if ACCESS_LOG.stream is not None:
            ACCESS_LOG.write(fields)
        else:
            log.info("request.completed", **fields)

    def verdict(self) -> str:
        """allow; deny when the waypoint refused it (policy, authentication, rate limit,
        ext_authz); error when it failed (a response flag) or got no answer at all."""
        if (
            self.rbac_policy
            or self.response_flags in DENY_FLAGS
            or (self.response_code in (401, 403) and not self.upstream_host)
        ):
            return "deny"
        if self.response_flags not in ("-", DELAY_INJECTED) or not self.response_code:
            return "error"
        return "allow"

    def event(self, duration_ms: float) -> AccessEvent:
        """This request as an access event (meshcore.accessevents)."""
        source, destination = self.source.workload, self.destination.workload
        verdict = self.verdict()
        return AccessEvent(
            time=time.time(),
            component=TAP.component,
            reporter=REPORTER,
            kind="request",
            node=TAP.node,
            source_workload=source.name if source else "",
            source_namespace=source.namespace if source else "",
            source_principal=self.source.principal,
            source_address=self.source_address,
            destination_workload=destination.name if destination else "",
            destination_namespace=destination.namespace if destination else "",
            destination_principal=self.destination.principal,
            destination_service=self.destination_service,
            destination_address=self.upstream_host or self.target,
            verdict=verdict,
            policy=policy_name(self.rbac_policy),
            reason=self.reason if verdict != "allow" else "",
            security="mutual_tls",
            bytes_sent=self.request_bytes,
            bytes_received=self.response_bytes,
            duration_ms=round(duration_ms, 3),
            response_code=self.response_code,
            response_flags=self.response_flags,
            method=self.method,
            path=self.path,
            authority=self.authority,
        )


# Response flags of requests the waypoint refused (Envoy's): a rate limit, an ext_authz denial
DENY_FLAGS = frozenset({"RL", "UAEX"})
_POLICY_ID = re.compile(r"ns\[([^\]]*)\]-policy\[([^\]]*)\]-rule\[\d+\]")


def policy_name(policy_id: str) -> str:
    """Istio's RBAC policy id `ns[NS]-policy[NAME]-rule[I]` as `NS/NAME` ("" if none)."""
    match = _POLICY_ID.fullmatch(policy_id)
    return f"{match.group(1)}/{match.group(2)}" if match else policy_id


# The four series of a request's label set, looked up once: `labels(**...)` with 21 labels,
# and even making the label dict, cost more than the rest of the accounting. The key is what
# the labels are made of, the workloads by identity: an entry holds its workloads, so their
# ids cannot be reused by other objects while it is cached. Bounded: an entry is one (source
# workload, destination workload, code, flags...) combination; when full, it starts over.
_SERIES_CACHE_MAX = 4096
_series_cache: dict[tuple[object, ...], tuple[Any, Any, Any, Any, object]] = {}


def _series(record: RequestRecord) -> tuple[Any, Any, Any, Any]:
    source, destination = record.source, record.destination
    key = (
        id(source.workload),
        source.principal,
        id(destination.workload),
        destination.principal,
        record.destination_service,
        record.destination_service_name,
        record.destination_service_namespace,
        record.protocol,
        record.response_code,
        record.response_flags,
        record.grpc_response_status(),
    )
    cached = _series_cache.get(key)
    if cached is None:
        labels = record.labels()
        values = [labels[name] for name in LABELS]
        cached = (
            REQUESTS.labels(*values),
            DURATION.labels(*values),
            REQUEST_BYTES.labels(*values),
            RESPONSE_BYTES.labels(*values),
            (source.workload, destination.workload),  # (keeps the ids taken)
        )
        if len(_series_cache) >= _SERIES_CACHE_MAX:
            _series_cache.clear()
        _series_cache[key] = cached
    return cached[0], cached[1], cached[2], cached[3]


class AccessLog:
    """The access log of a waypoint process: a JSON line per request, as the structlog
    lines beside it look (`event`, `level`, `timestamp`), written in batches (at most
    FLUSH_INTERVAL late, or once MAX_BUFFERED bytes wait) instead of a write() per request,
    as Envoy's access log does. Off (lines go through structlog) until `open()`: in-process
    tests capture them there."""

    FLUSH_INTERVAL = 0.1
    MAX_BUFFERED = 64 * 1024

    def __init__(self) -> None:
        self.stream: TextIO | None = None
        self._lines: list[str] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._stamp = ""

    def open(self, stream: TextIO) -> None:
        self.stream = stream

    def close(self) -> None:
        self.flush()
        self.stream = None

    def write(self, fields: dict[str, object]) -> None:
        fields["event"] = "request.completed"
        fields["level"] = "info"
        fields["timestamp"] = self._now()
        line = json.dumps(fields) + "\n"
        self._lines.append(line)
        self._size += len(line)
        if self._size >= self.MAX_BUFFERED:
            self.flush()
        elif self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self.FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._lines and self.stream is not None:
            self.stream.write("".join(self._lines))
            self.stream.flush()
        self._lines.clear()
        self._size = 0

    def _now(self) -> str:
        """structlog's `TimeStamper(fmt="iso", utc=True)` format, the date part made once
        a second."""
        now = time.time()
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._stamp}.{int((now - second) * 1_000_000):06d}Z"


ACCESS_LOG = AccessLog()


_TRACEPARENT = re.compile(r"[0-9a-f]{2}-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}")


def trace_id(traceparent: str | None) -> str:
    """The trace id of a W3C `traceparent` ("" if absent, malformed or all zeros)."""
    if not traceparent:
        return ""
    match = _TRACEPARENT.fullmatch(traceparent.strip().lower())
    if match is None or match.group(1) == "0" * 32 or traceparent.startswith("ff"):
        return ""
    return match.group(1)
