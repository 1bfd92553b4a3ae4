"""Outlier detection in metrics: `weft_waypoint_outlier_ejections_total{service}` (a counter,
as Envoy's `outlier_detection.ejections_enforced_total`) and
`weft_waypoint_outlier_ejected_endpoints{service}` (a gauge, read from the live state at each
scrape, so an endpoint that came back is not counted)."""

from __future__ import annotations

import weakref
from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from waypoint.trafficpolicy import ClusterState, TrafficPolicies

EJECTIONS = Counter(
    "weft_waypoint_outlier_ejections",
    "Endpoints ejected by a DestinationRule's outlier detection.",
    ("service",),
)


def ejected(cluster: ClusterState, _host: str) -> None:
    EJECTIONS.labels(cluster.hostname).inc()


class _EjectedCollector(Collector):
    def __init__(self) -> None:
        self.sources: weakref.WeakSet[TrafficPolicies] = weakref.WeakSet()

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily(
            "weft_waypoint_outlier_ejected_endpoints",
            "Endpoints ejected now by a DestinationRule's outlier detection.",
            labels=("service",),
        )
        totals: dict[str, int] = {}
        for source in list(self.sources):
            for service, hosts in source.ejected().items():
                totals[service] = totals.get(service, 0) + len(hosts)
        for service, n in sorted(totals.items()):
            gauge.add_metric((service,), n)
        yield gauge


COLLECTOR = _EjectedCollector()
REGISTRY.register(COLLECTOR)


def watch(policies: TrafficPolicies) -> TrafficPolicies:
    """Count `policies`' ejected endpoints in the gauge (for as long as it lives)."""
    COLLECTOR.sources.add(policies)
    return policies
