"""The PromQL the dashboard asks, and Prometheus's answers as typed samples: pure, no I/O.

Every query groups by a fixed label set, so its answer has at most one series per
(source, destination, ...) combination; the caller still bounds how many it reads.
Metric names and labels are Istio's (what weft's ztunnel and waypoint export), so the same
queries work against an Istio mesh's Prometheus.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

# Windows the API accepts: long enough for two scrapes, short enough that `rate()` over
# every series of a mesh stays cheap for Prometheus.
MIN_WINDOW_SECONDS = 30
MAX_WINDOW_SECONDS = 3600
DEFAULT_WINDOW = "1m"
_WINDOW = re.compile(r"^([1-9][0-9]{0,4})([smh])$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600}

# A Kubernetes name (DNS-1123 label): what a namespace, Service or workload name may be. The
# values go into label matchers, so nothing else is let through.
_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")

SIDE_LABELS = (
    "source_workload",
    "source_workload_namespace",
    "destination_workload",
    "destination_workload_namespace",
)
REQUEST_GROUP = (
    "reporter",
    *SIDE_LABELS,
    "destination_service",
    "response_code",
    "response_flags",
    "connection_security_policy",
)
TCP_GROUP = ("reporter", *SIDE_LABELS, "destination_service", "connection_security_policy")
DENIED_GROUP = ("reporter", *SIDE_LABELS, "destination_service")
BYTES_GROUP = ("reporter", *SIDE_LABELS, "destination_service")

QUANTILES = (0.5, 0.9, 0.99)


class QueryError(ValueError):
    """A request parameter the dashboard will not put into a query; names the parameter."""


class PrometheusError(RuntimeError):
    """Prometheus refused a query or answered in a shape we do not read."""


@dataclass(frozen=True, slots=True)
class Window:
    seconds: int
    text: str  # as PromQL writes it: "1m", "90s"


def parse_window(text: str) -> Window:
    """`30s`..`1h` (a whole number and s, m or h); QueryError naming `window` otherwise."""
    match = _WINDOW.match(text)
    if match is None:
        raise QueryError(f"window: expected a duration such as 1m or 30s, got {text[:40]!r}")
    seconds = int(match.group(1)) * _UNIT_SECONDS[match.group(2)]
    if not MIN_WINDOW_SECONDS <= seconds <= MAX_WINDOW_SECONDS:
        raise QueryError(
            f"window: must be between {MIN_WINDOW_SECONDS}s and {MAX_WINDOW_SECONDS // 60}m, "
            f"got {text}"
        )
    return Window(seconds, text)


def check_name(field: str, value: str) -> str:
    """`value` if it is a Kubernetes name (it goes into a label matcher), else QueryError."""
    if not _NAME.match(value):
        raise QueryError(f"{field}: not a Kubernetes name (lowercase DNS label): {value[:70]!r}")
    return value


def _by(labels: Sequence[str]) -> str:
    return ", ".join(labels)


def per_second(selector: str, window: Window) -> str:
    """The per-second increase over `window` of the counters `selector` picks, where a
    series born inside the window counts from zero. rate() takes a new series' first sample
    as its baseline, so the first burst of a flow (often all there is of a rare event, such
    as connections a policy refused) would count as nothing. The exporters create a series
    at its first increment, so a series absent a window ago started at zero within it."""
    w = window.text
    return (
        f"((rate({selector}[{w}]) and {selector} offset {w})"
        f" or (({selector} unless {selector} offset {w}) / {window.seconds}))"
    )


def graph_queries(window: Window) -> dict[str, str]:
    """The instant queries one graph is built from, by name (graph.GraphInput's fields,
    bytes in two halves: a rate() over two metric names at once would merge their series)."""

    def by(group: Sequence[str], selector: str) -> str:
        return f"sum by ({_by(group)}) {per_second(selector, window)}"

    return {
        "requests": by(REQUEST_GROUP, "istio_requests_total"),
        "request_bytes": by(BYTES_GROUP, "istio_request_bytes_sum"),
        "response_bytes": by(BYTES_GROUP, "istio_response_bytes_sum"),
        "tcp_opened": by(TCP_GROUP, "istio_tcp_connections_opened_total"),
        # refused by policy: ztunnel counts them closed with Envoy's flag UAEX
        "tcp_denied": by(DENIED_GROUP, 'istio_tcp_connections_closed_total{response_flags="UAEX"}'),
        # connections open now (opened - closed, both since the reporter started): a
        # long-lived connection opens once, so its edge would vanish from rate() alone
        "tcp_active": (
            f"sum by ({_by(TCP_GROUP)}) (istio_tcp_connections_opened_total)"
            f" - (sum by ({_by(TCP_GROUP)}) (istio_tcp_connections_closed_total)"
            f" or sum by ({_by(TCP_GROUP)}) (istio_tcp_connections_opened_total) * 0)"
        ),
        "tcp_sent": by(BYTES_GROUP, "istio_tcp_sent_bytes_total"),
        # the waypoints Prometheus scrapes (weft's scrape configs, the lab's and Kubernetes',
        # label them), so their hops fold in even when no lab says which pods they are
        "waypoints": 'count by (namespace, gateway) (up{component="waypoint"})',
        "tcp_received": by(BYTES_GROUP, "istio_tcp_received_bytes_total"),
    }


@dataclass(frozen=True, slots=True)
class Target:
    """What golden signals are asked for: a Service (by name) or a workload (inbound)."""

    kind: str  # "service" | "workload"
    namespace: str
    name: str

    @classmethod
    def of(cls, kind: str, namespace: str, name: str) -> Target:
        if kind not in ("service", "workload"):
            raise QueryError(f"kind: must be service or workload, got {kind[:20]!r}")
        return cls(kind, check_name("namespace", namespace), check_name("name", name))

    def request_matchers(self) -> str:
        if self.kind == "service":
            return (
                f'destination_service_name="{self.name}",'
                f'destination_service_namespace="{self.namespace}"'
            )
        return (
            f'destination_workload="{self.name}",destination_workload_namespace="{self.namespace}"'
        )

    def tcp_matchers(self) -> str:
        # ztunnel's TCP series carry the Service as its hostname only.
        if self.kind == "service":
            return rf'destination_service=~"{self.name}\\.{self.namespace}\\.svc\\..+"'
        return self.request_matchers()


def signal_queries(target: Target, window: Window) -> dict[str, str]:
    """Golden signals of one target. Requests are counted by the waypoint (weft's only L7
    reporter); TCP by whichever reporter saw more, so a connection is never counted twice."""
    req = target.request_matchers()
    tcp = target.tcp_matchers()
    queries = {
        "request_rate": "sum " + per_second(f"istio_requests_total{{{req}}}", window),
        "error_rate": "sum "
        + per_second(f'istio_requests_total{{{req},response_code=~"5..|0"}}', window),
        "denial_rate": "sum "
        + per_second(f'istio_requests_total{{{req},response_code="403"}}', window),
        "active_connections": (
            f"max(sum by (reporter) (istio_tcp_connections_opened_total{{{tcp}}})"
            f" - (sum by (reporter) (istio_tcp_connections_closed_total{{{tcp}}})"
            f" or sum by (reporter) (istio_tcp_connections_opened_total{{{tcp}}}) * 0))"
        ),
        "connection_rate": "max(sum by (reporter) "
        + per_second(f"istio_tcp_connections_opened_total{{{tcp}}}", window)
        + ")",
        "denied_connection_rate": "max(sum by (reporter) "
        + per_second(f'istio_tcp_connections_closed_total{{{tcp},response_flags="UAEX"}}', window)
        + ")",
        "tcp_bytes_rate": "max(sum by (reporter) "
        + per_second(f"istio_tcp_sent_bytes_total{{{tcp}}}", window)
        + " + sum by (reporter) "
        + per_second(f"istio_tcp_received_bytes_total{{{tcp}}}", window)
        + ")",
    }
    for q in QUANTILES:
        buckets = per_second(f"istio_request_duration_milliseconds_bucket{{{req}}}", window)
        queries[f"p{round(q * 100)}_ms"] = f"histogram_quantile({q}, sum by (le) {buckets})"
    return queries


@dataclass(frozen=True, slots=True)
class Sample:
    """One series of an instant vector: its labels and value."""

    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True, slots=True)
class Vector:
    samples: tuple[Sample, ...]
    dropped: int  # series past the caller's bound, not read


def parse_vector(body: Any, query_name: str, max_series: int) -> Vector:
    """The samples of a `/api/v1/query` answer (an instant vector), at most `max_series` of
    them (the rest counted in `dropped`); PrometheusError naming the query and the field
    when the answer is an error or not a vector."""
    where = f"query {query_name}"
    if not isinstance(body, dict):
        raise PrometheusError(f"{where}: answer is not a JSON object")
    if body.get("status") != "success":
        kind = str(body.get("errorType", "error"))[:60]
        raise PrometheusError(f"{where}: Prometheus said {kind}: {str(body.get('error'))[:300]}")
    data = body.get("data")
    if not isinstance(data, dict) or data.get("resultType") != "vector":
        got = data.get("resultType") if isinstance(data, dict) else type(data).__name__
        raise PrometheusError(f"{where}: data.resultType is {got!r}, expected 'vector'")
    result = data.get("result")
    if not isinstance(result, list):
        raise PrometheusError(f"{where}: data.result is not a list")
    samples = []
    for i, item in enumerate(result[:max_series]):
        try:
            metric = item["metric"]
            value = float(item["value"][1])
        except (KeyError, IndexError, TypeError, ValueError) as err:
            raise PrometheusError(f"{where}: data.result[{i}] is malformed ({err!r})") from None
        if not isinstance(metric, dict):
            raise PrometheusError(f"{where}: data.result[{i}].metric is not an object")
        samples.append(Sample({str(k): str(v) for k, v in metric.items()}, value))
    return Vector(tuple(samples), max(0, len(result) - max_series))


def scalar(vector: Vector) -> float | None:
    """The value of a one-series answer (an aggregate); None when empty or NaN (no data)."""
    if not vector.samples:
        return None
    value = vector.samples[0].value
    return None if math.isnan(value) or math.isinf(value) else value
