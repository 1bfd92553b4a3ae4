"""RateLimitPolicy manifests in, typed policies or errors naming the field out; and the
policy's round trip over the wire (meshcore/api/ratelimit_convert.py)."""

from __future__ import annotations

import textwrap

import pytest

from meshcore.api import mesh_pb2 as pb
from meshcore.api.convert import ConversionError, from_proto, to_proto
from meshcore.resources import ObjectMeta, ResourceKey
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
from tests.manifest_parsing import ManifestParser

_parser = ManifestParser("limits.yaml")

ISSUE_EXAMPLE = """
targetRefs: [{group: "", kind: Service, name: echo}]
type: Global
failureMode: Deny
rules:
- limit: {requests: 10, unit: Minute}
  clientSelectors:
  - headers: [{name: X-User, type: Distinct}]
    sourcePrincipals: ["cluster.local/ns/a/sa/b"]
    path: {type: PathPrefix, value: /api/}
- limit: {requests: 100, unit: Second}
"""


def manifest(spec: str, *, api_version: str = "policy.weft.dev/v1") -> str:
    body = textwrap.indent(textwrap.dedent(spec).strip(), "  ")
    return (
        f"apiVersion: {api_version}\nkind: RateLimitPolicy\n"
        f"metadata: {{name: limits, namespace: shop}}\nspec:\n{body}\n"
    )


def test_the_issue_example_parses_into_typed_values():
    policy = _parser.parse_one(manifest(ISSUE_EXAMPLE))
    assert policy == RateLimitPolicy(
        metadata=ObjectMeta("limits", "shop"),
        target_refs=(RateLimitTargetRef(TargetKind.SERVICE, "echo"),),
        rules=(
            RateLimitRule(
                RateLimit(10, RateLimitUnit.MINUTE),
                (
                    ClientSelector(
                        headers=(HeaderSelector("x-user", HeaderMatchType.DISTINCT),),
                        source_principals=("cluster.local/ns/a/sa/b",),
                        path=PathSelector(PathMatchType.PATH_PREFIX, "/api"),
                    ),
                ),
            ),
            RateLimitRule(RateLimit(100, RateLimitUnit.SECOND)),
        ),
        type=RateLimitType.GLOBAL,
        failure_mode=FailureMode.DENY,
    )
    assert policy.key == ResourceKey("RateLimitPolicy", "shop", "limits")


def test_defaults_local_allow_and_targets_of_each_kind():
    policy = _parser.parse_one(
        manifest(
            """
            targetRefs:
            - {kind: Service, name: echo}
            - {group: gateway.networking.k8s.io, kind: HTTPRoute, name: r}
            - {group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}
            type: Local
            rules: [{limit: {requests: 1, unit: Day}, clientSelectors: [{headers: [{name: a, value: b}]}]}]
            """
        )
    )
    assert isinstance(policy, RateLimitPolicy)
    assert [t.kind for t in policy.target_refs] == [
        TargetKind.SERVICE,
        TargetKind.HTTPROUTE,
        TargetKind.GATEWAY,
    ]
    assert policy.failure_mode is FailureMode.ALLOW
    assert policy.rules[0].limit.unit.seconds == 86400
    assert policy.rules[0].client_selectors[0].headers == (
        HeaderSelector("a", HeaderMatchType.EXACT, "b"),
    )


RULE = "rules: [{limit: {requests: 5, unit: Second}}]"
TARGET = "targetRefs: [{kind: Service, name: echo}]"

BAD = [
    (f"{TARGET}\ntype: Local\n{RULE}\nfoo: 1", "spec.foo", "unknown field"),
    (f"type: Local\n{RULE}", "spec.targetRefs", "required"),
    (f"{TARGET}\n{RULE}", "spec.type", "required field is missing"),
    (f"{TARGET}\ntype: Shared\n{RULE}", "spec.type", "must be Local or Global"),
    (f"{TARGET}\ntype: Local", "spec.rules", "at least one rule"),
    (
        f"{TARGET}\ntype: Local\nfailureMode: Deny\n{RULE}",
        "spec.failureMode",
        "only for type Global",
    ),
    (f"{TARGET}\ntype: Global\nfailureMode: Maybe\n{RULE}", "spec.failureMode", "Allow or Deny"),
    (
        f"targetRefs: [{{kind: Pod, name: p}}]\ntype: Local\n{RULE}",
        "spec.targetRefs[0].kind",
        "not 'Pod'",
    ),
    (
        f"targetRefs: [{{group: x, kind: Service, name: p}}]\ntype: Local\n{RULE}",
        "spec.targetRefs[0].group",
        "in group ''",
    ),
    (
        f"targetRefs: [{{kind: HTTPRoute, name: r}}]\ntype: Local\n{RULE}",
        "spec.targetRefs[0].group",
        "gateway.networking.k8s.io",
    ),
    (
        f"targetRefs: [{{kind: Service, name: e, namespace: other}}]\ntype: Local\n{RULE}",
        "spec.targetRefs[0].namespace",
        "cross-namespace",
    ),
    (
        f"targetRefs: [{{kind: Service, name: e}}, {{kind: Service, name: e}}]\ntype: Local\n{RULE}",
        "spec.targetRefs[1]",
        "named twice",
    ),
    (
        f"targetRefs: [{{kind: Service, name: Bad_Name}}]\ntype: Local\n{RULE}",
        "spec.targetRefs[0].name",
        "",
    ),
    (f"{TARGET}\ntype: Local\nrules: [{{}}]", "spec.rules[0].limit", "required"),
    (
        f"{TARGET}\ntype: Local\nrules: [{{limit: {{requests: 0, unit: Second}}}}]",
        "spec.rules[0].limit.requests",
        "at least 1",
    ),
    (
        f"{TARGET}\ntype: Local\nrules: [{{limit: {{requests: '5', unit: Second}}}}]",
        "spec.rules[0].limit.requests",
        "expected an integer",
    ),
    (
        f"{TARGET}\ntype: Local\nrules: [{{limit: {{requests: 5, unit: Week}}}}]",
        "spec.rules[0].limit.unit",
        "Second, Minute, Hour or Day",
    ),
    (
        f"{TARGET}\ntype: Local\nrules: [{{limit: {{requests: 5}}}}]",
        "spec.rules[0].limit.unit",
        "required",
    ),
    (
        f"{TARGET}\ntype: Local\nrules: [{{limit: {{requests: 5, unit: Second}}, "
        "clientSelectors: [{headers: [{name: x, type: Exact}]}]}]",
        "spec.rules[0].clientSelectors[0].headers[0].value",
        "required when type is Exact",
    ),
    (
        f"{TARGET}\ntype: Local\nrules: [{{limit: {{requests: 5, unit: Second}}, "
        "clientSelectors: [{headers: [{name: x, type: Distinct, value: v}]}]}]",
        "spec.rules[0].clientSelectors[0].headers[0].value",
        "not allowed when type is Distinct",
    ),
    (
        f"{TARGET}\ntype: Local\nrules: [{{limit: {{requests: 5, unit: Second}}, "
        "clientSelectors: [{headers: [{name: x, type: RegularExpression, value: v}]}]}]",
        "spec.rules[0].clientSelectors[0].headers[0].type",
        "Exact or Distinct",
    ),
    (
        f"{TARGET}\ntype: Local\nrules: [{{limit: {{requests: 5, unit: Second}}, "
        "clientSelectors: [{headers: [{name: 'a b', value: v}]}]}]",
        "spec.rules[0].clientSelectors[0].headers[0].name",
        "not an HTTP header name",
    ),
    (
        f"{TARGET}\ntype: Local\nrules: [{{limit: {{requests: 5, unit: Second}}, "
        "clientSelectors: [{headers: [{name: a, value: v}, {name: A, type: Distinct}]}]}]",
        "spec.rules[0].clientSelectors[0].headers[1]",
        "named twice",
    ),
    (
        f"{TARGET}\ntype: Local\nrules: [{{limit: {{requests: 5, unit: Second}}, "
        "clientSelectors: [{path: {type: Regex, value: /a}}]}]",
        "spec.rules[0].clientSelectors[0].path.type",
        "PathPrefix or Exact",
    ),
    (
        f"{TARGET}\ntype: Local\nrules: [{{limit: {{requests: 5, unit: Second}}, "
        "clientSelectors: [{path: {value: api}}]}]",
        "spec.rules[0].clientSelectors[0].path.value",
        "must start with '/'",
    ),
    (
        f"{TARGET}\ntype: Local\nrules: [{{limit: {{requests: 5, unit: Second}}, "
        "clientSelectors: [{sourcePrincipals: ['spiffe://cluster.local/ns/a/sa/b']}]}]",
        "spec.rules[0].clientSelectors[0].sourcePrincipals[0]",
        "without spiffe://",
    ),
    (
        f"{TARGET}\ntype: Local\nrules: [{{limit: {{requests: 5, unit: Second}}, "
        "clientSelectors: [{sourcePrincipals: ['']}]}]",
        "spec.rules[0].clientSelectors[0].sourcePrincipals[0]",
        "must not be empty",
    ),
    (
        f"{TARGET}\ntype: Local\nrules: [{{limit: {{requests: 5, unit: Second}}, "
        "clientSelectors: [{sourceCIDR: {value: 10.0.0.0/8}}]}]",
        "spec.rules[0].clientSelectors[0].sourceCIDR",
        "unknown field",
    ),
]


@pytest.mark.parametrize(("spec", "field", "reason"), BAD, ids=[b[1] for b in BAD])
def test_a_bad_policy_is_refused_naming_the_field(spec: str, field: str, reason: str):
    err = _parser.only_error(manifest(spec))
    assert err.field == field
    assert reason in err.reason
    assert err.source == "limits.yaml"
    assert err.resource == "RateLimitPolicy shop/limits"


def test_another_api_version_is_refused():
    err = _parser.only_error(manifest(f"{TARGET}\ntype: Local\n{RULE}", api_version="v1"))
    assert err.field == "apiVersion"
    assert "policy.weft.dev/v1" in err.reason


@pytest.mark.parametrize(
    "spec",
    [
        ISSUE_EXAMPLE,
        f"{TARGET}\ntype: Local\n{RULE}",
        "targetRefs: [{group: gateway.networking.k8s.io, kind: Gateway, name: w}]\n"
        "type: Global\nrules: [{limit: {requests: 3, unit: Hour}, clientSelectors: "
        "[{path: {type: Exact, value: /x}}, {headers: [{name: k, value: v}]}]}]",
    ],
)
def test_a_policy_survives_the_wire(spec: str):
    policy = _parser.parse_one(manifest(spec))
    assert isinstance(policy, RateLimitPolicy)
    msg = to_proto(policy)
    assert msg.WhichOneof("body") == "rate_limit_policy"
    again = pb.Resource()
    again.ParseFromString(msg.SerializeToString())
    assert from_proto(again) == policy


def test_a_wire_policy_with_an_unknown_unit_is_refused():
    policy = _parser.parse_one(manifest(f"{TARGET}\ntype: Local\n{RULE}"))
    assert isinstance(policy, RateLimitPolicy)
    msg = to_proto(policy)
    msg.rate_limit_policy.rules[0].unit = "Fortnight"
    with pytest.raises(ConversionError, match="rate_limit_policy shop/limits"):
        from_proto(msg)
