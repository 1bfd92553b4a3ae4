"""RequestAuthentication manifests in, typed policies (and their wire form) or located errors
out. The good ones are Istio's documented examples with the group changed."""

from __future__ import annotations

import json
import re
import textwrap

import pytest

from meshcore.api.convert import from_proto, to_proto
from meshcore.resources.requestauthn import (
    DEFAULT_FROM_HEADERS,
    ClaimToHeader,
    JwtHeader,
    RequestAuthentication,
)
from meshcore.resources.security import PolicyTargetRef, TargetKind
from tests.manifest_parsing import ManifestParser

_parser = ManifestParser("authn.yaml")
parse_one, only_error = _parser.parse_one, _parser.only_error

JWKS = json.dumps({"keys": [{"kty": "RSA", "kid": "k1", "n": "AQAB", "e": "AQAB"}]})


def authn(spec: str, *, api: str = "security.weft.dev/v1") -> str:
    body = textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ")
    return (
        f"apiVersion: {api}\nkind: RequestAuthentication\nmetadata:\n  name: jwt\n"
        f"  namespace: foo\nspec:\n{body}\n"
    )


def test_istio_example_with_target_ref_and_every_field_parses() -> None:
    value = parse_one(
        authn(
            """
            targetRefs:
            - kind: Service
              group: ""
              name: httpbin
            jwtRules:
            - issuer: "issuer-foo"
              audiences: ["bookstore_android.apps.example.com", "bookstore_web.apps.example.com"]
              jwksUri: https://example.com/.well-known/jwks.json
              fromHeaders:
              - name: x-jwt-assertion
                prefix: "Bearer "
              fromParams: ["my_token"]
              fromCookies: ["session"]
              forwardOriginalToken: true
              outputClaimToHeaders:
              - header: x-jwt-sub
                claim: sub
              - header: X-Jwt-Nested
                claim: a.b
              outputPayloadToHeader: x-jwt-payload
            """
        )
    )
    assert isinstance(value, RequestAuthentication)
    assert value.target_refs == (PolicyTargetRef(TargetKind.SERVICE, "httpbin"),)
    (rule,) = value.jwt_rules
    assert rule.issuer == "issuer-foo"
    assert rule.audiences == (
        "bookstore_android.apps.example.com",
        "bookstore_web.apps.example.com",
    )
    assert rule.from_headers == (JwtHeader("x-jwt-assertion", "Bearer "),)
    assert rule.from_params == ("my_token",) and rule.from_cookies == ("session",)
    assert rule.forward_original_token
    assert rule.output_claim_to_headers == (
        ClaimToHeader("x-jwt-sub", "sub"),
        ClaimToHeader("x-jwt-nested", "a.b"),
    )
    assert rule.output_payload_to_header == "x-jwt-payload"
    assert from_proto(to_proto(value)) == value


def test_selector_and_inline_jwks_with_default_token_places() -> None:
    value = parse_one(
        authn(
            f"""
            selector:
              matchLabels: {{app: httpbin}}
            jwtRules:
            - issuer: testing@secure.istio.io
              jwks: '{JWKS}'
            """
        )
    )
    assert isinstance(value, RequestAuthentication)
    assert value.selector == {"app": "httpbin"} and not value.for_waypoint
    (rule,) = value.jwt_rules
    assert rule.token_sources == (DEFAULT_FROM_HEADERS, ("access_token",), ())
    assert not rule.forward_original_token
    assert from_proto(to_proto(value)) == value


BAD = [
    ("jwtRules:\n- jwksUri: https://x/jwks\n", "spec.jwtRules[0].issuer", "required"),
    ("jwtRules:\n- issuer: a\n", "spec.jwtRules[0].issuer", "jwksUri or jwks"),
    ("jwtRules:\n- issuer: ftp://a/x\n", "spec.jwtRules[0].issuer", "not an http(s) URL"),
    ("jwtRules:\n- issuer: https://a/?x=1\n", "spec.jwtRules[0].issuer", "query"),
    ("jwtRules:\n- issuer: https://a\n  timeout: 5\n", "spec.jwtRules[0].timeout", "duration"),
    ("jwtRules:\n- issuer: https://a\n  timeout: 5 s\n", "spec.jwtRules[0].timeout", "duration"),
    ("jwtRules:\n- issuer: https://a\n  timeout: 0s\n", "spec.jwtRules[0].timeout", "at least"),
    ("jwtRules:\n- issuer: https://a\n  timeout: 2m\n", "spec.jwtRules[0].timeout", "at most 60s"),
    (
        f"jwtRules:\n- issuer: a\n  jwksUri: https://x/j\n  jwks: '{JWKS}'\n",
        "spec.jwtRules[0].jwks",
        "together",
    ),
    ("jwtRules:\n- issuer: a\n  jwksUri: ftp://x/j\n", "spec.jwtRules[0].jwksUri", "http"),
    ("jwtRules:\n- issuer: a\n  jwks: 'not json'\n", "spec.jwtRules[0].jwks", "JSON"),
    ("jwtRules:\n- issuer: a\n  jwks: '{\"keys\": []}'\n", "spec.jwtRules[0].jwks", "JWKS"),
    (
        "jwtRules:\n- issuer: a\n  jwksUri: https://x/j\n  audiences: ['']\n",
        "spec.jwtRules[0].audiences[0]",
        "empty",
    ),
    (
        "jwtRules:\n- issuer: a\n  jwksUri: https://x/j\n  fromHeaders:\n  - prefix: 'Bearer '\n",
        "spec.jwtRules[0].fromHeaders[0].name",
        "required",
    ),
    (
        "jwtRules:\n- issuer: a\n  jwksUri: https://x/j\n  fromHeaders:\n  - name: 'bad header'\n",
        "spec.jwtRules[0].fromHeaders[0].name",
        "header name",
    ),
    (
        "jwtRules:\n- issuer: a\n  jwksUri: https://x/j\n  outputClaimToHeaders:\n  - header: x\n",
        "spec.jwtRules[0].outputClaimToHeaders[0].claim",
        "required",
    ),
    (
        "jwtRules:\n- issuer: a\n  jwksUri: https://x/j\n  outputClaimToHeaders:\n"
        "  - header: ':path'\n    claim: sub\n",
        "spec.jwtRules[0].outputClaimToHeaders[0].header",
        "header name",
    ),
    (
        "jwtRules:\n- issuer: a\n  jwksUri: https://x/j\n  outputClaimToHeaders:\n"
        "  - header: host\n    claim: sub\n",
        "spec.jwtRules[0].outputClaimToHeaders[0].header",
        "may set",
    ),
    (
        "jwtRules:\n- issuer: a\n  jwksUri: https://x/j\n  forwardOriginalToken: 'yes'\n",
        "spec.jwtRules[0].forwardOriginalToken",
        "boolean",
    ),
    (
        "jwtRules:\n- issuer: a\n  jwksUri: https://x/j\n  bogus: 1\n",
        "spec.jwtRules[0].bogus",
        "unknown",
    ),
    (
        "selector:\n  matchLabels: {app: a}\ntargetRefs:\n- kind: Service\n  name: a\n",
        "spec.targetRefs",
        "selector",
    ),
    ("targetRefs:\n- kind: Pod\n  name: a\n", "spec.targetRefs[0].kind", "Pod"),
]


@pytest.mark.parametrize(("spec", "field", "words"), BAD, ids=[b[1] + ":" + b[2] for b in BAD])
def test_bad_request_authentication_is_refused_with_its_field(
    spec: str, field: str, words: str
) -> None:
    error = only_error(authn(spec))
    assert error.field == field
    assert words in error.reason


def test_gateway_class_target_is_taken_from_the_root_namespace_only() -> None:
    spec = """
    targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, name: weft-waypoint}]
    jwtRules: [{issuer: x, jwksUri: "https://x/j"}]
    """
    value = parse_one(authn(spec).replace("namespace: foo", "namespace: weft-system"))
    assert isinstance(value, RequestAuthentication)
    assert value.target_refs == (PolicyTargetRef(TargetKind.GATEWAY_CLASS, "weft-waypoint"),)
    assert from_proto(to_proto(value)) == value
    assert only_error(authn(spec)).field == "spec.targetRefs[0].kind"


def test_istio_group_is_refused_naming_ours() -> None:
    error = only_error(authn("{}", api="security.istio.io/v1"))
    assert error.field == "apiVersion"
    assert "security.weft.dev/v1" in error.reason


def test_issuer_without_keys_discovers_them_and_timeout_is_carried() -> None:
    value = parse_one(
        authn(
            """
            targetRefs: [{kind: Service, name: api}]
            jwtRules:
            - issuer: https://accounts.example.com/realms/shop
              timeout: 1.5s
            - issuer: https://other.example
              jwksUri: https://other.example/keys
              timeout: 500ms
            - issuer: https://third.example
            """
        )
    )
    assert isinstance(value, RequestAuthentication)
    discovered, remote, default = value.jwt_rules
    assert discovered.discovers_keys and discovered.timeout == 1.5
    assert not remote.discovers_keys and remote.fetch_timeout == 0.5
    assert default.timeout == 0.0 and default.fetch_timeout == 5.0  # Istio's default
    assert from_proto(to_proto(value)) == value


def test_proto_with_a_bad_timeout_or_undiscoverable_issuer_is_refused() -> None:
    from meshcore.api.errors import ConversionError

    value = parse_one(
        authn("targetRefs: [{kind: Service, name: api}]\njwtRules:\n- issuer: https://a\n")
    )
    assert isinstance(value, RequestAuthentication)
    for mutate, words in (
        (lambda r: setattr(r, "timeout", -1.0), "timeout"),
        (lambda r: setattr(r, "timeout", float("nan")), "timeout"),
        (lambda r: setattr(r, "issuer", "not-a-url"), "http(s)"),
    ):
        msg = to_proto(value)
        mutate(msg.request_authentication.jwt_rules[0])
        with pytest.raises(ConversionError, match=re.escape(words)):
            from_proto(msg)
