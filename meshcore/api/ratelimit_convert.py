"""RateLimitPolicy <-> protobuf (the manifest's words for its enums, on both sides)."""

from __future__ import annotations

from meshcore.api import mesh_pb2 as pb
from meshcore.api.errors import ConversionError
from meshcore.resources import ObjectMeta
from meshcore.resources.ratelimit import (
    ClientSelector,
    FailureMode,
    HeaderMatchType,
    HeaderSelector,
    PathMatchType,
    PathSelector,
    RateLimit,
    RateLimitPolicy,
    RateLimitRule,
    RateLimitTargetRef,
    RateLimitType,
    RateLimitUnit,
    TargetKind,
)


def rate_limit_to_proto(value: RateLimitPolicy, out: pb.Resource) -> None:
    out.rate_limit_policy.CopyFrom(
        pb.RateLimitPolicy(
            name=value.metadata.name,
            namespace=value.metadata.namespace,
            target_refs=[
                pb.RateLimitTargetRef(kind=t.kind.value, name=t.name) for t in value.target_refs
            ],
            type=value.type.value,
            failure_mode=value.failure_mode.value,
            rules=[
                pb.RateLimitRule(
                    requests=r.limit.requests,
                    unit=r.limit.unit.value,
                    client_selectors=[
                        pb.RateLimitClientSelector(
                            headers=[
                                pb.RateLimitHeader(name=h.name, type=h.type.value, value=h.value)
                                for h in s.headers
                            ],
                            source_principals=list(s.source_principals),
                            path_type=s.path.type.value if s.path else "",
                            path_value=s.path.value if s.path else "",
                        )
                        for s in r.client_selectors
                    ],
                )
                for r in value.rules
            ],
        )
    )


def _selector(s: pb.RateLimitClientSelector) -> ClientSelector:
    return ClientSelector(
        headers=tuple(
            HeaderSelector(h.name.lower(), HeaderMatchType(h.type), h.value) for h in s.headers
        ),
        source_principals=tuple(s.source_principals),
        path=PathSelector(PathMatchType(s.path_type), s.path_value) if s.path_type else None,
    )


def rate_limit_from_proto(msg: pb.Resource) -> RateLimitPolicy:
    m = msg.rate_limit_policy
    try:
        rules = []
        for r in m.rules:
            if r.requests < 1:
                raise ValueError("a rule's limit must be at least 1 request")
            rules.append(
                RateLimitRule(
                    RateLimit(r.requests, RateLimitUnit(r.unit)),
                    tuple(_selector(s) for s in r.client_selectors),
                )
            )
        return RateLimitPolicy(
            metadata=ObjectMeta(m.name, m.namespace),
            target_refs=tuple(
                RateLimitTargetRef(TargetKind(t.kind), t.name) for t in m.target_refs
            ),
            rules=tuple(rules),
            type=RateLimitType(m.type),
            failure_mode=FailureMode(m.failure_mode or FailureMode.ALLOW.value),
        )
    except ValueError as err:
        raise ConversionError(f"rate_limit_policy {m.namespace}/{m.name}: {err}") from None
