"""RequestAuthentication <-> protobuf (same field names on both sides)."""

from __future__ import annotations

from meshcore.api import mesh_pb2 as pb
from meshcore.api.errors import ConversionError
from meshcore.resources import ObjectMeta
from meshcore.resources.errors import ManifestError
from meshcore.resources.requestauthn import (
    MAX_FETCH_TIMEOUT,
    ClaimToHeader,
    JwtHeader,
    JwtRule,
    RequestAuthentication,
    check_discoverable_issuer,
    check_jwks,
)
from meshcore.resources.security import PolicyTargetRef, TargetKind


def request_authentication_to_proto(value: RequestAuthentication, out: pb.Resource) -> None:
    out.request_authentication.CopyFrom(
        pb.RequestAuthentication(
            name=value.metadata.name,
            namespace=value.metadata.namespace,
            selector=dict(value.selector or {}),
            has_selector=value.selector is not None,
            target_refs=[
                pb.PolicyTargetRef(
                    group=t.group,
                    kind=t.kind.value,
                    name=t.name,
                    namespace=value.metadata.namespace,
                )
                for t in value.target_refs
            ],
            jwt_rules=[
                pb.JwtRule(
                    issuer=r.issuer,
                    audiences=list(r.audiences),
                    jwks_uri=r.jwks_uri,
                    jwks=r.jwks,
                    from_headers=[
                        pb.JwtHeader(name=h.name, prefix=h.prefix) for h in r.from_headers
                    ],
                    from_params=list(r.from_params),
                    from_cookies=list(r.from_cookies),
                    forward_original_token=r.forward_original_token,
                    output_claim_to_headers=[
                        pb.ClaimToHeader(header=c.header, claim=c.claim)
                        for c in r.output_claim_to_headers
                    ],
                    output_payload_to_header=r.output_payload_to_header,
                    timeout=r.timeout,
                )
                for r in value.jwt_rules
            ],
        )
    )


def request_authentication_from_proto(msg: pb.Resource) -> RequestAuthentication:
    m = msg.request_authentication
    what = f"request_authentication {msg.key.namespace}/{msg.key.name}"
    try:
        rules = []
        for i, r in enumerate(m.jwt_rules):
            if not r.issuer:
                raise ValueError(f"jwt_rules[{i}] has no issuer")
            if r.jwks_uri and r.jwks:
                raise ValueError(f"jwt_rules[{i}] has both jwks_uri and jwks")
            if r.jwks:
                check_jwks(r.jwks, f"jwt_rules[{i}].jwks")
            elif not r.jwks_uri:  # keys through the issuer's OIDC discovery
                check_discoverable_issuer(r.issuer, f"jwt_rules[{i}].issuer")
            if not 0 <= r.timeout <= MAX_FETCH_TIMEOUT:  # (NaN fails too)
                raise ValueError(f"jwt_rules[{i}].timeout {r.timeout} is out of range")
            rules.append(
                JwtRule(
                    issuer=r.issuer,
                    audiences=tuple(r.audiences),
                    jwks_uri=r.jwks_uri,
                    jwks=r.jwks,
                    from_headers=tuple(JwtHeader(h.name.lower(), h.prefix) for h in r.from_headers),
                    from_params=tuple(r.from_params),
                    from_cookies=tuple(r.from_cookies),
                    forward_original_token=r.forward_original_token,
                    output_claim_to_headers=tuple(
                        ClaimToHeader(c.header.lower(), c.claim) for c in r.output_claim_to_headers
                    ),
                    output_payload_to_header=r.output_payload_to_header.lower(),
                    timeout=r.timeout,
                )
            )
        return RequestAuthentication(
            metadata=ObjectMeta(m.name, m.namespace),
            jwt_rules=tuple(rules),
            selector=dict(m.selector) if m.has_selector else None,
            target_refs=tuple(PolicyTargetRef(TargetKind(t.kind), t.name) for t in m.target_refs),
        )
    except (ValueError, ManifestError) as err:
        raise ConversionError(f"{what}: {err}") from None
