"""AuthorizationPolicy and PeerAuthentication <-> protobuf (same field names on both sides)."""

from __future__ import annotations

import ipaddress
from typing import Any

from meshcore.api import mesh_pb2 as pb
from meshcore.api.errors import ConversionError
from meshcore.ports import parse_port
from meshcore.resources import ObjectMeta
from meshcore.resources.security import (
    AuthorizationPolicy,
    Condition,
    MtlsMode,
    Operation,
    PeerAuthentication,
    PolicyAction,
    PolicyTargetRef,
    Rule,
    Source,
    TargetKind,
)

_SOURCE_STRINGS = (
    "principals",
    "not_principals",
    "request_principals",
    "not_request_principals",
    "namespaces",
    "not_namespaces",
)
_SOURCE_BLOCKS = ("ip_blocks", "not_ip_blocks", "remote_ip_blocks", "not_remote_ip_blocks")
_OPERATION_STRINGS = ("hosts", "not_hosts", "methods", "not_methods", "paths", "not_paths")


def policy_to_proto(value: object, out: pb.Resource) -> None:
    if isinstance(value, AuthorizationPolicy):
        out.authorization_policy.CopyFrom(_authz_to_proto(value))
    elif isinstance(value, PeerAuthentication):
        out.peer_authentication.CopyFrom(
            pb.PeerAuthentication(
                name=value.metadata.name,
                namespace=value.metadata.namespace,
                selector=dict(value.selector or {}),
                has_selector=value.selector is not None,
                mode=pb.MtlsMode.Value(value.mode.value),
                port_level={
                    p: pb.MtlsMode.Value(m.value) for p, m in value.port_level_mtls.items()
                },
            )
        )
    else:
        raise TypeError(f"no wire form for {type(value).__name__}")


def _authz_to_proto(p: AuthorizationPolicy) -> pb.AuthorizationPolicy:
    return pb.AuthorizationPolicy(
        name=p.metadata.name,
        namespace=p.metadata.namespace,
        selector=dict(p.selector or {}),
        has_selector=p.selector is not None,
        target_refs=[
            pb.PolicyTargetRef(
                group=t.group, kind=t.kind.value, name=t.name, namespace=p.metadata.namespace
            )
            for t in p.target_refs
        ],
        action=pb.PolicyAction.Value(p.action.value),
        provider=p.provider,
        rules=[
            pb.Rule(
                sources=[
                    pb.Source(
                        **{f: list(getattr(s, f)) for f in _SOURCE_STRINGS},
                        **{f: [str(n) for n in getattr(s, f)] for f in _SOURCE_BLOCKS},
                    )
                    for s in r.sources
                ],
                operations=[
                    pb.Operation(
                        **{f: list(getattr(o, f)) for f in _OPERATION_STRINGS},
                        ports=[str(x) for x in o.ports],
                        not_ports=[str(x) for x in o.not_ports],
                    )
                    for o in r.operations
                ],
                conditions=[
                    pb.Condition(key=c.key, values=list(c.values), not_values=list(c.not_values))
                    for c in r.conditions
                ],
            )
            for r in p.rules
        ],
    )


def policy_from_proto(msg: pb.Resource) -> AuthorizationPolicy | PeerAuthentication:
    body = msg.WhichOneof("body")
    try:
        if body == "peer_authentication":
            m = msg.peer_authentication
            return PeerAuthentication(
                metadata=ObjectMeta(m.name, m.namespace),
                mode=MtlsMode(pb.MtlsMode.Name(m.mode)),
                port_level_mtls={p: MtlsMode(pb.MtlsMode.Name(v)) for p, v in m.port_level.items()},
                selector=dict(m.selector) if m.has_selector else None,
            )
        a = msg.authorization_policy
        return AuthorizationPolicy(
            metadata=ObjectMeta(a.name, a.namespace),
            action=PolicyAction(pb.PolicyAction.Name(a.action)),
            selector=dict(a.selector) if a.has_selector else None,
            target_refs=tuple(PolicyTargetRef(TargetKind(t.kind), t.name) for t in a.target_refs),
            provider=a.provider,
            rules=tuple(
                Rule(
                    sources=tuple(
                        _source(
                            **{f: tuple(getattr(s, f)) for f in _SOURCE_STRINGS},
                            **{
                                f: tuple(
                                    ipaddress.ip_network(n, strict=False) for n in getattr(s, f)
                                )
                                for f in _SOURCE_BLOCKS
                            },
                        )
                        for s in r.sources
                    ),
                    operations=tuple(
                        Operation(
                            **{f: tuple(getattr(o, f)) for f in _OPERATION_STRINGS},
                            ports=tuple(parse_port(x) for x in o.ports),
                            not_ports=tuple(parse_port(x) for x in o.not_ports),
                        )
                        for o in r.operations
                    ),
                    conditions=tuple(_condition(c) for c in r.conditions),
                )
                for r in a.rules
            ),
        )
    except ValueError as err:
        raise ConversionError(f"{body} {msg.key.namespace}/{msg.key.name}: {err}") from None


def _condition(c: pb.Condition) -> Condition:
    """Port conditions are checked here, at the edge, so the node's policy engine can read
    them as numbers without checking again."""
    if c.key == "destination.port":
        for value in (*c.values, *c.not_values):
            parse_port(value)
    return Condition(c.key, tuple(c.values), tuple(c.not_values))


def _source(**fields: Any) -> Source:
    return Source(**fields)
