"""Outlier detection in metrics: the ejections counter and the ejected-endpoints gauge, read
from the live state at scrape time (an endpoint that came back is not counted)."""

from __future__ import annotations

import random

from prometheus_client import REGISTRY

from meshcore.resources.destinationrule import OutlierDetection, TrafficPolicy
from waypoint import outlier_metrics
from waypoint.trafficpolicy import ClusterKey, TrafficPolicies

HOSTS = ["10.0.0.1:80", "10.0.0.2:80"]
SERVICE = "metrics-test.ns.svc.cluster.local"


def test_an_ejection_is_counted_and_shown_until_the_endpoint_returns() -> None:
    now = [100.0]
    policies = outlier_metrics.watch(
        TrafficPolicies(lambda: now[0], random.Random(1), on_eject=outlier_metrics.ejected)
    )
    policy = TrafficPolicy(outlier_detection=OutlierDetection(1, 0, 1.0, 5.0, 50))
    cluster = policies.cluster(ClusterKey("ns", "metrics-test", 80), policy, SERVICE)
    cluster.order(HOSTS, lambda h: h, None)
    before = (
        REGISTRY.get_sample_value("weft_waypoint_outlier_ejections_total", {"service": SERVICE})
        or 0.0
    )
    cluster.attempt_started(HOSTS[0])
    cluster.attempt_done(HOSTS[0], 500)
    assert (
        REGISTRY.get_sample_value("weft_waypoint_outlier_ejections_total", {"service": SERVICE})
        == before + 1
    )
    gauge = "weft_waypoint_outlier_ejected_endpoints"
    assert REGISTRY.get_sample_value(gauge, {"service": SERVICE}) == 1
    now[0] += 5
    assert REGISTRY.get_sample_value(gauge, {"service": SERVICE}) == 0
