"""DestinationRule <-> protobuf. Durations travel as milliseconds, unset limits as 0 (as in
Istio's own protobuf); a node checks every enum-like string on the way in."""

from __future__ import annotations

from meshcore.api import mesh_pb2 as pb
from meshcore.api.errors import ConversionError
from meshcore.resources import ObjectMeta
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


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


def _policy_to_proto(p: TrafficPolicy, out: pb.DRTrafficPolicy) -> None:
    if p.load_balancer is not None:
        lb = p.load_balancer
        out.load_balancer.simple = lb.simple.value
        if lb.consistent_hash is not None:
            ch, msg = lb.consistent_hash, out.load_balancer.consistent_hash
            msg.http_header_name = ch.http_header_name
            msg.use_source_ip = ch.use_source_ip
            if ch.http_cookie is not None:
                msg.cookie_name = ch.http_cookie.name
                msg.cookie_path = ch.http_cookie.path
                if ch.http_cookie.ttl is not None:
                    msg.has_cookie_ttl = True
                    msg.cookie_ttl_ms = _ms(ch.http_cookie.ttl)
    if p.connection_pool is not None:
        cp = p.connection_pool
        out.connection_pool.CopyFrom(
            pb.DRConnectionPool(
                max_connections=cp.max_connections or 0,
                http1_max_pending_requests=cp.http1_max_pending_requests or 0,
                http2_max_requests=cp.http2_max_requests or 0,
                max_requests_per_connection=cp.max_requests_per_connection or 0,
                max_retries=cp.max_retries or 0,
            )
        )
    if p.outlier_detection is not None:
        od = p.outlier_detection
        out.outlier_detection.CopyFrom(
            pb.DROutlierDetection(
                consecutive_5xx_errors=od.consecutive_5xx_errors,
                consecutive_gateway_errors=od.consecutive_gateway_errors,
                interval_ms=_ms(od.interval),
                base_ejection_time_ms=_ms(od.base_ejection_time),
                max_ejection_percent=od.max_ejection_percent,
            )
        )


def destination_rule_to_proto(value: DestinationRule, out: pb.Resource) -> None:
    msg = out.destination_rule
    msg.name, msg.namespace, msg.host = value.metadata.name, value.metadata.namespace, value.host
    if value.traffic_policy is not None:
        _policy_to_proto(value.traffic_policy, msg.traffic_policy)
    for s in value.subsets:
        sub = msg.subsets.add(name=s.name, labels=dict(s.labels))
        if s.traffic_policy is not None:
            _policy_to_proto(s.traffic_policy, sub.traffic_policy)


def _policy_from_proto(msg: pb.DRTrafficPolicy, what: str) -> TrafficPolicy:
    lb = pool = od = None
    if msg.HasField("load_balancer"):
        m = msg.load_balancer
        try:
            simple = SimpleLB(m.simple or SimpleLB.UNSPECIFIED.value)
        except ValueError:
            raise ConversionError(f"{what}: unknown load balancer {m.simple!r}") from None
        ch = None
        if m.HasField("consistent_hash"):
            c = m.consistent_hash
            cookie = None
            if c.cookie_name:
                ttl = c.cookie_ttl_ms / 1000 if c.has_cookie_ttl else None
                cookie = HttpCookie(c.cookie_name, c.cookie_path, ttl)
            if sum((bool(c.http_header_name), cookie is not None, c.use_source_ip)) != 1:
                raise ConversionError(f"{what}: consistent hash needs exactly one key")
            ch = ConsistentHash(c.http_header_name, cookie, c.use_source_ip)
        lb = LoadBalancer(simple, ch)
    if msg.HasField("connection_pool"):
        c2 = msg.connection_pool
        pool = ConnectionPool(
            c2.max_connections or None,
            c2.http1_max_pending_requests or None,
            c2.http2_max_requests or None,
            c2.max_requests_per_connection or None,
            c2.max_retries or None,
        )
    if msg.HasField("outlier_detection"):
        o = msg.outlier_detection
        if o.max_ejection_percent > 100:
            raise ConversionError(f"{what}: maxEjectionPercent {o.max_ejection_percent} > 100")
        od = OutlierDetection(
            o.consecutive_5xx_errors,
            o.consecutive_gateway_errors,
            o.interval_ms / 1000,
            o.base_ejection_time_ms / 1000,
            o.max_ejection_percent,
        )
    return TrafficPolicy(lb, pool, od)


def destination_rule_from_proto(msg: pb.Resource) -> DestinationRule:
    m = msg.destination_rule
    what = f"DestinationRule {m.namespace}/{m.name}"
    if not m.host:
        raise ConversionError(f"{what}: no host")
    policy = _policy_from_proto(m.traffic_policy, what) if m.HasField("traffic_policy") else None
    subsets = tuple(
        Subset(
            s.name,
            dict(s.labels),
            _policy_from_proto(s.traffic_policy, f"{what} subset {s.name}")
            if s.HasField("traffic_policy")
            else None,
        )
        for s in m.subsets
    )
    return DestinationRule(ObjectMeta(m.name, m.namespace), m.host, policy, subsets)
