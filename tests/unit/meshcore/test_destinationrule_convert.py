"""DestinationRule <-> protobuf: what the controller sends is what a waypoint reads back."""

from __future__ import annotations

import pytest

from meshcore.api import mesh_pb2 as pb
from meshcore.api.convert import from_proto, to_proto
from meshcore.api.errors import ConversionError
from meshcore.resources.core import ObjectMeta
from meshcore.resources.destinationrule import (
    ConnectionPool,
    ConsistentHash,
    DestinationRule,
    HttpCookie,
    LoadBalancer,
    OutlierDetection,
    SimpleLB,
    Subset,
    TrafficPolicy,
)

RULES = [
    DestinationRule(ObjectMeta("bare", "foo"), "reviews"),
    DestinationRule(
        ObjectMeta("full", "foo"),
        "reviews.foo.svc.cluster.local",
        TrafficPolicy(
            LoadBalancer(SimpleLB.LEAST_REQUEST),
            ConnectionPool(10, 1, 5, 2, 3),
            OutlierDetection(2, 1, 0.5, 90.0, 50),
        ),
        (
            Subset("v1", {"version": "v1"}),
            Subset(
                "v2",
                {"version": "v2", "track": "x"},
                TrafficPolicy(
                    LoadBalancer(
                        consistent_hash=ConsistentHash(http_cookie=HttpCookie("u", "/", 1.5))
                    ),
                    ConnectionPool(),
                ),
            ),
            Subset(
                "v3",
                {},
                TrafficPolicy(LoadBalancer(consistent_hash=ConsistentHash(use_source_ip=True))),
            ),
            Subset("v4", {}, TrafficPolicy(LoadBalancer(consistent_hash=ConsistentHash("x-user")))),
            Subset(
                "v5",
                {},
                TrafficPolicy(
                    LoadBalancer(consistent_hash=ConsistentHash(http_cookie=HttpCookie("s")))
                ),
            ),
        ),
    ),
]


@pytest.mark.parametrize("rule", RULES, ids=[r.metadata.name for r in RULES])
def test_rule_round_trips(rule: DestinationRule) -> None:
    msg = pb.Resource.FromString(to_proto(rule).SerializeToString())
    assert from_proto(msg) == rule


def test_unknown_load_balancer_is_refused() -> None:
    msg = to_proto(DestinationRule(ObjectMeta("r", "foo"), "a", TrafficPolicy(LoadBalancer())))
    msg.destination_rule.traffic_policy.load_balancer.simple = "FASTEST"
    with pytest.raises(ConversionError, match="FASTEST"):
        from_proto(msg)


def test_hash_without_a_key_is_refused() -> None:
    rule = DestinationRule(
        ObjectMeta("r", "foo"),
        "a",
        TrafficPolicy(LoadBalancer(consistent_hash=ConsistentHash("h"))),
    )
    msg = to_proto(rule)
    msg.destination_rule.traffic_policy.load_balancer.consistent_hash.http_header_name = ""
    with pytest.raises(ConversionError, match="exactly one key"):
        from_proto(msg)
