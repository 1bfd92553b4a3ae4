"""DestinationRule (networking.weft.dev/v1): Istio's fields and meaning, errors with field paths."""

from __future__ import annotations

import textwrap

import pytest

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
    parse_go_duration,
    rule_for,
    subset_labels,
)
from tests.manifest_parsing import ManifestParser

_parser = ManifestParser("dr.yaml")
parse, parse_one, only_error = _parser.parse, _parser.parse_one, _parser.only_error


def dr(spec: str, *, api: str = "networking.weft.dev/v1", name: str = "r", ns: str = "foo") -> str:
    body = textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ")
    return (
        f"apiVersion: {api}\nkind: DestinationRule\nmetadata:\n  name: {name}\n"
        f"  namespace: {ns}\nspec:\n{body}\n"
    )


def test_full_rule_parses_into_typed_values() -> None:
    rule = parse_one(
        dr(
            """
            host: reviews
            trafficPolicy:
              loadBalancer: {simple: LEAST_REQUEST}
              connectionPool:
                tcp: {maxConnections: 10}
                http: {http1MaxPendingRequests: 1, http2MaxRequests: 5,
                       maxRequestsPerConnection: 2, maxRetries: 3}
              outlierDetection:
                consecutive5xxErrors: 2
                consecutiveGatewayErrors: 1
                interval: 1s
                baseEjectionTime: 1m30s
                maxEjectionPercent: 50
            subsets:
            - name: v1
              labels: {version: v1}
            - name: v2
              labels: {version: v2}
              trafficPolicy:
                loadBalancer:
                  consistentHash: {httpCookie: {name: user, ttl: 0.5s}}
            """
        )
    )
    assert rule == DestinationRule(
        ObjectMeta("r", "foo"),
        "reviews",
        TrafficPolicy(
            LoadBalancer(SimpleLB.LEAST_REQUEST),
            ConnectionPool(10, 1, 5, 2, 3),
            OutlierDetection(2, 1, 1.0, 90.0, 50),
        ),
        (
            Subset("v1", {"version": "v1"}),
            Subset(
                "v2",
                {"version": "v2"},
                TrafficPolicy(
                    LoadBalancer(
                        consistent_hash=ConsistentHash(http_cookie=HttpCookie("user", "", 0.5))
                    )
                ),
            ),
        ),
    )
    assert rule.service() == ("foo", "reviews")
    merged = rule.policy_for("v2")
    assert merged is not None and merged.connection_pool == ConnectionPool(10, 1, 5, 2, 3)
    assert merged.load_balancer is not None and merged.load_balancer.consistent_hash is not None


def test_outlier_detection_defaults_are_istios() -> None:
    rule = parse_one(dr("host: a\ntrafficPolicy: {outlierDetection: {}}"))
    assert isinstance(rule, DestinationRule) and rule.traffic_policy is not None
    assert rule.traffic_policy.outlier_detection == OutlierDetection(5, 0, 10.0, 30.0, 10)


def test_zero_connection_limits_are_unset_as_in_istio() -> None:
    rule = parse_one(dr("host: a\ntrafficPolicy: {connectionPool: {http: {http2MaxRequests: 0}}}"))
    assert isinstance(rule, DestinationRule) and rule.traffic_policy is not None
    assert rule.traffic_policy.connection_pool == ConnectionPool()


def test_fields_a_waypoint_does_not_apply_are_reported_as_ignored() -> None:
    (parsed,) = parse(
        dr(
            """
            host: a
            exportTo: ["."]
            trafficPolicy:
              tls: {mode: ISTIO_MUTUAL}
              portLevelSettings: [{port: {number: 80}}]
              connectionPool: {tcp: {connectTimeout: 1s}}
            """
        )
    )
    assert parsed.ignored_fields == (
        "spec.trafficPolicy.connectionPool.tcp.connectTimeout",
        "spec.trafficPolicy.tls",
        "spec.trafficPolicy.portLevelSettings",
        "spec.exportTo",
    )


BAD: list[tuple[str, str, str]] = [
    ("host: ''", "spec.host", "must not be empty"),
    ("{}", "spec.host", "required"),
    ("host: a.b.example.com", "spec.host", "not a Service of this cluster"),
    ("host: 'a*b'", "spec.host", "wildcard"),
    ("host: a\nfoo: 1", "spec.foo", "unknown field"),
    (
        "host: a\ntrafficPolicy: {loadBalancer: {simple: FASTEST}}",
        "spec.trafficPolicy.loadBalancer.simple",
        "must be one of",
    ),
    (
        "host: a\ntrafficPolicy: {loadBalancer: {simple: RANDOM, consistentHash: {useSourceIp: true}}}",
        "spec.trafficPolicy.loadBalancer",
        "not both",
    ),
    (
        "host: a\ntrafficPolicy: {loadBalancer: {consistentHash: {httpHeaderName: x, useSourceIp: true}}}",
        "spec.trafficPolicy.loadBalancer.consistentHash",
        "only one hash key",
    ),
    (
        "host: a\ntrafficPolicy: {loadBalancer: {consistentHash: {}}}",
        "spec.trafficPolicy.loadBalancer.consistentHash",
        "set one hash key",
    ),
    (
        "host: a\ntrafficPolicy: {loadBalancer: {consistentHash: {useSourceIp: 'yes'}}}",
        "spec.trafficPolicy.loadBalancer.consistentHash.useSourceIp",
        "boolean",
    ),
    (
        "host: a\ntrafficPolicy: {loadBalancer: {consistentHash: {httpCookie: {ttl: 1s}}}}",
        "spec.trafficPolicy.loadBalancer.consistentHash.httpCookie.name",
        "required",
    ),
    (
        "host: a\ntrafficPolicy: {connectionPool: {http: {http2MaxRequests: -1}}}",
        "spec.trafficPolicy.connectionPool.http.http2MaxRequests",
        "at least 0",
    ),
    (
        "host: a\ntrafficPolicy: {connectionPool: {tcp: {maxConnections: many}}}",
        "spec.trafficPolicy.connectionPool.tcp.maxConnections",
        "integer",
    ),
    (
        "host: a\ntrafficPolicy: {outlierDetection: {maxEjectionPercent: 101}}",
        "spec.trafficPolicy.outlierDetection.maxEjectionPercent",
        "at most 100",
    ),
    (
        "host: a\ntrafficPolicy: {outlierDetection: {interval: 10}}",
        "spec.trafficPolicy.outlierDetection.interval",
        "expected a string",
    ),
    (
        "host: a\ntrafficPolicy: {outlierDetection: {baseEjectionTime: 30 seconds}}",
        "spec.trafficPolicy.outlierDetection.baseEjectionTime",
        "not a duration",
    ),
    (
        "host: a\ntrafficPolicy: {outlierDetection: {consecutiveErrors: 5}}",
        "spec.trafficPolicy.outlierDetection.consecutiveErrors",
        "consecutive5xxErrors",
    ),
    ("host: a\nsubsets: [{labels: {v: '1'}}]", "spec.subsets[0].name", "required"),
    ("host: a\nsubsets: [{name: V_1}]", "spec.subsets[0].name", ""),
    ("host: a\nsubsets: [{name: v1, labels: {v: 1}}]", "spec.subsets[0].labels.v", "quote it"),
    ("host: a\nsubsets: [{name: v1}, {name: v1}]", "spec.subsets[1].name", "defined twice"),
    (
        "host: a\nsubsets: [{name: v1, trafficPolicy: {loadBalancer: {simple: X}}}]",
        "spec.subsets[0].trafficPolicy.loadBalancer.simple",
        "must be one of",
    ),
]


@pytest.mark.parametrize(("spec", "field", "reason"), BAD, ids=[b[1] + ":" + b[2] for b in BAD])
def test_bad_rule_is_refused_with_its_field_path(spec: str, field: str, reason: str) -> None:
    error = only_error(dr(spec))
    assert error.field == field
    assert reason in error.reason
    assert error.resource == "DestinationRule foo/r"


def test_istio_group_is_refused_saying_what_to_change() -> None:
    error = only_error(dr("host: a", api="networking.istio.io/v1"))
    assert error.field == "apiVersion"
    assert "change apiVersion to networking.weft.dev/v1" in error.reason


@pytest.mark.parametrize(
    ("value", "seconds"),
    [("30s", 30.0), ("1.5s", 1.5), ("100ms", 0.1), ("1m30s", 90.0), ("1h", 3600.0)],
)
def test_durations_read_as_istio_writes_them(value: str, seconds: float) -> None:
    assert parse_go_duration(value, "f") == pytest.approx(seconds)


def _rule(name: str, ns: str, host: str, *subsets: Subset) -> DestinationRule:
    return DestinationRule(ObjectMeta(name, ns), host, None, subsets)


def test_subset_labels_takes_the_exact_rule_over_a_wildcard() -> None:
    wildcard = _rule("all", "foo", "*.svc.cluster.local", Subset("v1", {"w": "1"}))
    exact = _rule("zz", "foo", "reviews", Subset("v1", {"version": "v1"}))
    assert subset_labels([wildcard, exact], ("foo", "reviews"), "v1") == {"version": "v1"}
    assert subset_labels([wildcard, exact], ("foo", "other"), "v1") == {"w": "1"}
    assert subset_labels([exact], ("foo", "reviews"), "v9") is None
    assert subset_labels([exact], ("bar", "reviews"), "v1") is None
    assert rule_for([], "foo", "reviews") is None


def test_rule_in_the_services_namespace_wins() -> None:
    elsewhere = _rule("a", "other", "reviews.foo", Subset("v1", {"x": "other"}))
    home = _rule("b", "foo", "reviews", Subset("v1", {"x": "home"}))
    assert rule_for([elsewhere, home], "foo", "reviews") is home
