"""L7 AuthorizationPolicy evaluation at the waypoint, against Istio's documented examples.

Policies are manifests (Istio's, group changed to security.weft.dev) attached with targetRefs
to Service `httpbin` in namespace `foo`, whose waypoint is `foo/waypoint`, unless a case says
otherwise; requests come from `sleep` in `foo` and are GET /ip to httpbin:8000.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field
from typing import Any

import pytest

from meshcore.resources import (
    AuthorizationPolicy,
    PolicyAction,
    documents_from_text,
    parse_documents,
)
from waypoint.authz import (
    AuthzTables,
    RequestAuth,
    RequestView,
    RuleMatch,
    applicable,
    claim_values,
    evaluate,
    wire_text,
)

GATEWAY = "foo/waypoint"
SERVICE = "foo/httpbin"
SLEEP = "spiffe://cluster.local/ns/foo/sa/sleep"
BAR = "spiffe://cluster.local/ns/bar/sa/client"
TO_SERVICE = "  targetRefs: [{kind: Service, group: '', name: httpbin}]\n"


def policies(text: str) -> list[AuthorizationPolicy]:
    parsed = parse_documents(documents_from_text(textwrap.dedent(text), "policies.yaml"))
    found = [p.resource for p in parsed]
    assert all(isinstance(p, AuthorizationPolicy) for p in found)
    return found  # type: ignore[return-value]


def policy(name: str, spec: str, *, namespace: str = "foo", target: str = TO_SERVICE) -> str:
    """One manifest; `spec` is the YAML under spec (without targetRefs)."""
    body = textwrap.indent(textwrap.dedent(spec).strip(), "  ")
    return (
        "---\napiVersion: security.weft.dev/v1\nkind: AuthorizationPolicy\n"
        f"metadata: {{name: {name}, namespace: {namespace}}}\nspec:\n{target}{body}\n"
    )


def request(**kw: Any) -> RequestView:
    args: dict[str, Any] = dict(
        method="GET",
        path="/ip",
        host="httpbin.foo.svc.cluster.local",
        headers=(),
        source_principal=SLEEP,
        source_ip="10.1.0.5",
        destination_ip="10.96.0.10",
        destination_port=8000,
    )
    args.update(kw)
    return RequestView.build(**args)


@dataclass
class Case:
    name: str
    manifests: str
    request: dict[str, Any] = field(default_factory=dict)
    allowed: bool = True
    by: tuple[str, int] | None = None  # the deciding policy and rule
    audit: tuple[tuple[str, int], ...] = ()


ALLOW_GET_API = policy(
    "allow-get-api",
    """
    action: ALLOW
    rules:
    - from: [{source: {principals: [cluster.local/ns/foo/sa/sleep]}}]
      to: [{operation: {methods: [GET], paths: [/api/*]}}]
    """,
)
DENY_HEADER = policy(
    "deny-header",
    """
    action: DENY
    rules:
    - when: [{key: "request.headers[X-Token]", values: [evil, "bad*"]}]
    """,
)
JWT_CLAIMS = policy(
    "require-group",
    """
    action: ALLOW
    rules:
    - from: [{source: {requestPrincipals: ["testing@secure.istio.io/testing@secure.istio.io"]}}]
      when:
      - {key: "request.auth.claims[groups]", values: [group1]}
    """,
)
NESTED_CLAIM = policy(
    "nested-claim",
    """
    action: ALLOW
    rules:
    - when: [{key: "request.auth.claims[nested][key1]", values: [valueA]}]
    """,
)
IP_BLOCKS = policy(
    "ingress-ips",
    """
    action: ALLOW
    rules:
    - from: [{source: {ipBlocks: [10.1.0.0/24], notIpBlocks: [10.1.0.99]}}]
    """,
)
DENY_NOT_PATHS = policy(
    "deny-except-healthz",
    """
    action: DENY
    rules:
    - from: [{source: {notNamespaces: [foo]}}]
      to: [{operation: {notPaths: [/healthz]}}]
    """,
)
TOKEN = RequestAuth(
    principal="testing@secure.istio.io/testing@secure.istio.io",
    audiences=("aud-a", "aud-b"),
    presenter="frontend",
    claims={"groups": ["group1", "group2"], "nested": {"key1": "valueA"}, "admin": True},
)

CASES = [
    Case("no policy: allowed", "", {}, True),
    # Istio: "Authorization on HTTP traffic" - allow GET on /api/* from a principal
    Case(
        "allow GET /api/* from sleep",
        ALLOW_GET_API,
        {"path": "/api/v1"},
        True,
        ("foo/allow-get-api", 0),
    ),
    Case("POST is not allowed", ALLOW_GET_API, {"path": "/api/v1", "method": "POST"}, False),
    Case("other path not allowed", ALLOW_GET_API, {"path": "/admin"}, False),
    Case(
        "other principal not allowed",
        ALLOW_GET_API,
        {"path": "/api/v1", "source_principal": BAR},
        False,
    ),
    Case(
        "no principal not allowed",
        ALLOW_GET_API,
        {"path": "/api/v1", "source_principal": ""},
        False,
    ),
    # deny by header (names are case-insensitive; duplicates joined)
    Case(
        "deny by header",
        DENY_HEADER,
        {"headers": [("x-token", "evil")]},
        False,
        ("foo/deny-header", 0),
    ),
    Case(
        "deny by header prefix",
        DENY_HEADER,
        {"headers": [("X-TOKEN", "badness")]},
        False,
        ("foo/deny-header", 0),
    ),
    Case("other header value passes", DENY_HEADER, {"headers": [("x-token", "good")]}, True),
    Case("absent header passes", DENY_HEADER, {}, True),
    Case(
        "duplicates are joined",
        DENY_HEADER,
        {"headers": [("x-token", "bad1"), ("X-Token", "good")]},
        False,
        ("foo/deny-header", 0),
    ),
    Case(
        "joined duplicates are not an exact value",
        DENY_HEADER,
        {"headers": [("x-token", "good"), ("x-token", "evil")]},
        True,
    ),
    # request.auth: principal and claims (Istio's "JWT claim based routing"/"require group")
    Case(
        "jwt principal and group claim",
        JWT_CLAIMS,
        {"request_auth": TOKEN},
        True,
        ("foo/require-group", 0),
    ),
    Case("no token", JWT_CLAIMS, {}, False),
    Case(
        "token without the group",
        JWT_CLAIMS,
        {"request_auth": RequestAuth(TOKEN.principal, claims={"groups": ["other"]})},
        False,
    ),
    Case("nested claim", NESTED_CLAIM, {"request_auth": TOKEN}, True, ("foo/nested-claim", 0)),
    Case(
        "nested claim absent",
        NESTED_CLAIM,
        {"request_auth": RequestAuth("a/b", claims={"nested": "valueA"})},
        False,
    ),
    # ipBlocks / notIpBlocks
    Case("ip in block", IP_BLOCKS, {"source_ip": "10.1.0.7"}, True, ("foo/ingress-ips", 0)),
    Case("ip excluded", IP_BLOCKS, {"source_ip": "10.1.0.99"}, False),
    Case("ip outside", IP_BLOCKS, {"source_ip": "10.2.0.1"}, False),
    Case(
        "ipv4-mapped ipv6 source",
        IP_BLOCKS,
        {"source_ip": "::ffff:10.1.0.7"},
        True,
        ("foo/ingress-ips", 0),
    ),
    # notPaths in a DENY (Istio: deny requests not from foo except to /healthz)
    Case(
        "notPaths: other ns to /healthz passes",
        DENY_NOT_PATHS,
        {"source_principal": BAR, "path": "/healthz"},
        True,
    ),
    Case(
        "notPaths: other ns elsewhere denied",
        DENY_NOT_PATHS,
        {"source_principal": BAR, "path": "/ip"},
        False,
        ("foo/deny-except-healthz", 0),
    ),
    Case("notPaths: own ns passes", DENY_NOT_PATHS, {"path": "/ip"}, True),
    # DENY before ALLOW
    Case(
        "deny wins over allow",
        ALLOW_GET_API + DENY_HEADER,
        {"path": "/api/x", "headers": [("x-token", "evil")]},
        False,
        ("foo/deny-header", 0),
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_istio_documented_examples(case: Case) -> None:
    found = evaluate(
        policies(case.manifests) if case.manifests else [],
        request(**case.request),
        gateway=GATEWAY,
        service=SERVICE,
    )
    assert found.allowed is case.allowed, found.reason
    assert (found.policy, found.rule) == (case.by if case.by else ("", None))


def one(spec: str, **kw: Any) -> bool:
    """Whether a single ALLOW policy (`spec` under spec:) allows the request."""
    return evaluate(
        policies(policy("p", spec)), request(**kw), gateway=GATEWAY, service=SERVICE
    ).allowed


@pytest.mark.parametrize(
    ("field_yaml", "kw", "allowed"),
    [
        ("to: [{operation: {hosts: [httpbin.foo.svc.cluster.local]}}]", {}, True),
        ("to: [{operation: {hosts: [HTTPBIN.foo.svc.cluster.local]}}]", {}, True),  # any case
        ("to: [{operation: {hosts: ['*.cluster.local']}}]", {}, True),
        ("to: [{operation: {hosts: ['httpbin.*']}}]", {"host": "other"}, False),
        ("to: [{operation: {notHosts: ['*.cluster.local']}}]", {}, False),
        ("to: [{operation: {ports: ['8000']}}]", {}, True),
        ("to: [{operation: {ports: ['9000']}}]", {}, False),
        ("to: [{operation: {notPorts: ['8000']}}]", {}, False),
        ("to: [{operation: {methods: [GET, HEAD]}}]", {"method": "HEAD"}, True),
        ("to: [{operation: {notMethods: [DELETE]}}]", {"method": "DELETE"}, False),
        ("to: [{operation: {paths: ['*']}}]", {}, True),
        ("to: [{operation: {paths: ['*/ip']}}]", {}, True),
        ("to: [{operation: {paths: [/ip]}}]", {"path": "/IP"}, False),  # paths keep case
        ("to: [{operation: {paths: ['/foo/{*}/bar']}}]", {"path": "/foo/x/bar"}, True),
        ("to: [{operation: {paths: ['/foo/{*}/bar']}}]", {"path": "/foo/x/y/bar"}, False),
        ("to: [{operation: {paths: ['/foo/{**}']}}]", {"path": "/foo/x/y/z"}, True),
        ("to: [{operation: {paths: ['/foo/{**}']}}]", {"path": "/foobar"}, False),
        ("to: [{operation: {paths: ['/{*}/bar/{**}']}}]", {"path": "/a/bar/b.txt"}, True),
        ("to: [{operation: {paths: [/ip]}}]", {"path": None}, False),  # could not normalise
        ("from: [{source: {principals: ['*']}}]", {"source_principal": ""}, False),
        ("from: [{source: {principals: ['cluster.local/ns/foo/*']}}]", {}, True),
        ("from: [{source: {notPrincipals: ['*/sa/sleep']}}]", {}, False),
        ("from: [{source: {namespaces: [foo]}}]", {}, True),
        ("from: [{source: {namespaces: [bar]}}]", {}, False),
        ("from: [{source: {requestPrincipals: ['*']}}]", {}, False),
        ("from: [{source: {requestPrincipals: ['*']}}]", {"request_auth": TOKEN}, True),
        ("from: [{source: {notRequestPrincipals: ['*']}}]", {}, True),
        ("from: [{source: {remoteIpBlocks: [10.1.0.0/16]}}]", {}, True),
        ("from: [{source: {notRemoteIpBlocks: [10.1.0.5]}}]", {}, False),
        ("when: [{key: source.ip, values: [10.1.0.0/16]}]", {}, True),
        ("when: [{key: remote.ip, notValues: [10.1.0.5]}]", {}, False),
        ("when: [{key: source.namespace, values: [foo]}]", {}, True),
        ("when: [{key: source.principal, values: ['*/sa/sleep']}]", {}, True),
        ("when: [{key: source.principal, notValues: ['*']}]", {}, False),
        ("when: [{key: destination.ip, values: [10.96.0.0/16]}]", {}, True),
        ("when: [{key: destination.port, values: ['8000']}]", {}, True),
        ("when: [{key: destination.port, notValues: ['8000']}]", {}, False),
        ("when: [{key: connection.sni, values: ['*.foo.svc']}]", {"sni": "a.foo.svc"}, True),
        ("when: [{key: connection.sni, values: ['*']}]", {}, False),
        ("when: [{key: request.auth.principal, values: ['*']}]", {"request_auth": TOKEN}, True),
        ("when: [{key: request.auth.audiences, values: [aud-b]}]", {"request_auth": TOKEN}, True),
        ("when: [{key: request.auth.audiences, values: [aud-c]}]", {"request_auth": TOKEN}, False),
        ("when: [{key: request.auth.presenter, values: [front*]}]", {"request_auth": TOKEN}, True),
        (
            "when: [{key: 'request.auth.claims[admin]', values: ['true']}]",
            {"request_auth": TOKEN},
            True,
        ),
        (
            "when: [{key: 'request.auth.claims[groups]', notValues: [group2]}]",
            {"request_auth": TOKEN},
            False,
        ),
        ("when: [{key: 'request.headers[x-a]', notValues: ['*']}]", {}, True),
        ("when: [{key: source.serviceAccount, values: [foo/sleep]}]", {}, True),
        ("when: [{key: source.serviceAccount, values: [bar/sleep]}]", {}, False),
        ("when: [{key: source.trustDomain, values: [cluster.local]}]", {}, True),
        # what weft cannot evaluate never allows
        ("when: [{key: 'experimental.envoy.filters.a.b[c]', values: [x]}]", {}, False),
    ],
)
def test_each_l7_attribute(field_yaml: str, kw: dict[str, Any], allowed: bool) -> None:
    assert one(f"action: ALLOW\nrules:\n- {field_yaml}", **kw) is allowed


def test_a_rule_that_cannot_be_evaluated_matches_as_deny() -> None:
    found = evaluate(
        policies(
            policy("deny-exp", "action: DENY\nrules:\n- to: [{operation: {paths: [/admin]}}]")
            + policy(
                "deny-x",
                "action: DENY\nrules:\n"
                "- when: [{key: 'experimental.envoy.filters.a.b[c]', values: [x]}]",
            )
        ),
        request(path="/ip"),
        gateway=GATEWAY,
        service=SERVICE,
    )
    assert not found.allowed and found.policy == "foo/deny-x"
    assert found.notes and "cannot be evaluated" in found.notes[0]
    denied = evaluate(
        policies(policy("d", "action: DENY\nrules:\n- to: [{operation: {paths: [/admin]}}]")),
        request(path=None),
        gateway=GATEWAY,
        service=SERVICE,
    )
    assert not denied.allowed and denied.rule == 0


def test_allow_policy_with_no_rules_allows_nothing() -> None:
    found = evaluate(
        policies(policy("allow-nothing", "action: ALLOW")),
        request(),
        gateway=GATEWAY,
        service=SERVICE,
    )
    assert not found.allowed and found.policy == ""


def test_rule_index_is_the_first_matching_rule() -> None:
    found = evaluate(
        policies(
            policy(
                "p",
                """
                action: ALLOW
                rules:
                - to: [{operation: {methods: [POST]}}]
                - to: [{operation: {methods: [GET]}}]
                - {}
                """,
            )
        ),
        request(),
        gateway=GATEWAY,
        service=SERVICE,
    )
    assert found.decided_by == RuleMatch("foo/p", 1)
    assert found.decided_by.policy_id == "ns[foo]-policy[p]-rule[1]"


def test_audit_is_reported_and_does_not_decide() -> None:
    text = policy("audit-all", "action: AUDIT\nrules:\n- to: [{operation: {paths: ['/ip']}}]")
    text += policy("deny-post", "action: DENY\nrules:\n- to: [{operation: {methods: [POST]}}]")
    found = evaluate(policies(text), request(), gateway=GATEWAY, service=SERVICE)
    assert found.allowed and found.audit == (RuleMatch("foo/audit-all", 0),)
    posted = evaluate(policies(text), request(method="POST"), gateway=GATEWAY, service=SERVICE)
    assert not posted.allowed and posted.audit == (RuleMatch("foo/audit-all", 0),)


def test_custom_with_an_undefined_provider_fails_closed_where_it_applies() -> None:
    text = policy(
        "ext",
        "action: CUSTOM\nprovider: {name: opa}\nrules:\n- to: [{operation: {paths: ['/x*']}}]",
    )
    found = evaluate(policies(text), request(path="/xy"), gateway=GATEWAY, service=SERVICE)
    assert not found.allowed and found.custom == ()
    assert found.action is PolicyAction.CUSTOM and "fail closed" in found.reason
    assert "'opa'" in found.reason
    other = evaluate(policies(text), request(path="/other"), gateway=GATEWAY, service=SERVICE)
    assert other.allowed and other.custom == ()


def test_which_policies_apply_at_this_waypoint() -> None:
    gateway_ref = (
        "  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]\n"
    )
    other_gateway = (
        "  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: other}]\n"
    )
    other_service = "  targetRefs: [{kind: Service, name: other}]\n"
    text = (
        policy("to-gateway", "action: DENY\nrules:\n- {}", target=gateway_ref)
        + policy("to-other-gateway", "action: DENY\nrules:\n- {}", target=other_gateway)
        + policy("to-service", "action: DENY\nrules:\n- {}")
        + policy("to-other-service", "action: DENY\nrules:\n- {}", target=other_service)
        + policy("in-bar", "action: DENY\nrules:\n- {}", namespace="bar")
        + policy("selector", "action: DENY\nrules:\n- {}", target="  selector: {}\n")
        + policy("namespace-wide", "action: DENY\nrules:\n- {}", target="")
    )
    found = [p.metadata.name for p in applicable(policies(text), GATEWAY, SERVICE)]
    assert found == ["to-gateway", "to-service"]
    assert [p.metadata.name for p in applicable(policies(text), GATEWAY, None)] == ["to-gateway"]


def test_a_gateway_class_policy_from_the_root_namespace_applies_at_every_waypoint() -> None:
    to_class = (
        "  targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, "
        "name: weft-waypoint}]\n"
    )
    (mesh_wide,) = policies(
        policy("mesh-deny", "action: DENY\nrules:\n- {}", namespace="weft-system", target=to_class)
    )
    for gateway in (GATEWAY, "bar/other-waypoint"):
        assert applicable([mesh_wide], gateway, SERVICE) == [mesh_wide]
        assert applicable([mesh_wide], gateway, None) == [mesh_wide]
    assert applicable([mesh_wide], GATEWAY, SERVICE, root_namespace="elsewhere") == []
    tables = AuthzTables(GATEWAY)
    tables.update([mesh_wide])
    found = tables.for_destination("foo", "httpbin")
    assert found is not None and not found.evaluate(request()).allowed


def test_tables_do_one_lookup_and_none_when_nothing_applies() -> None:
    tables = AuthzTables(GATEWAY)
    tables.update(policies(policy("to-service", "action: DENY\nrules:\n- {}")))
    assert tables.for_destination("foo", "other") is None
    found = tables.for_destination("foo", "httpbin")
    assert found is not None and not found.evaluate(request()).allowed
    gateway_ref = (
        "  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]\n"
    )
    tables.update(
        policies(
            policy("wide", "action: AUDIT\nrules:\n- {}", target=gateway_ref)
            + policy("to-service", "action: DENY\nrules:\n- {}")
        )
    )
    other = tables.for_destination("foo", "other")
    assert other is not None and other.evaluate(request()).audit == (RuleMatch("foo/wide", 0),)
    both = tables.for_destination("foo", "httpbin")
    assert both is not None
    verdict = both.evaluate(request())
    assert not verdict.allowed and verdict.audit == (RuleMatch("foo/wide", 0),)
    assert tables.for_destination(None, None) is other
    tables.update([])
    assert tables.for_destination("foo", "httpbin") is None


def test_headers_with_invalid_utf8_never_crash_or_match_text() -> None:
    deny = policies(
        policy("d", "action: DENY\nrules:\n- when: [{key: 'request.headers[x-a]', values: ['é']}]")
    )
    raw = [(b"X-A", b"\xff\xfe"), ("x-b", "caf\xc3\xa9")]
    view = request(headers=raw)
    assert evaluate(deny, view, gateway=GATEWAY, service=SERVICE).allowed
    assert view.headers["x-b"] == "café"  # latin-1 text of UTF-8 bytes is read as UTF-8
    utf8 = request(headers=[("x-a", "\xc3\xa9")])
    assert not evaluate(deny, utf8, gateway=GATEWAY, service=SERVICE).allowed
    assert wire_text(b"\x80abc") == "\udc80abc"


def test_claim_values() -> None:
    claims = {"a": {"b": ["x", 1, True, {"no": 1}]}, "s": "v"}
    assert claim_values(claims, ["a", "b"]) == ["x", "1", "true"]
    assert claim_values(claims, ["s"]) == ["v"]
    assert claim_values(claims, ["s", "t"]) is None
    assert claim_values(claims, ["missing"]) is None


def test_policy_action_enum_is_the_parsers() -> None:
    assert {p.action for p in policies(DENY_HEADER + ALLOW_GET_API)} == {
        PolicyAction.DENY,
        PolicyAction.ALLOW,
    }


@pytest.mark.parametrize(
    ("spec", "kw", "allowed"),
    [
        # an ALLOW rule with HTTP fields never matches a TCP connection
        ("action: ALLOW\nrules:\n- to: [{operation: {methods: [GET]}}]", {}, False),
        ("action: ALLOW\nrules:\n- to: [{operation: {ports: ['8000']}}]", {}, True),
        ("action: ALLOW\nrules:\n- from: [{source: {namespaces: [foo]}}]", {}, True),
        # a DENY rule is applied with its HTTP fields left out: it denies more
        ("action: DENY\nrules:\n- to: [{operation: {paths: [/admin]}}]", {}, False),
        (
            "action: DENY\nrules:\n- from: [{source: {namespaces: [bar]}}]\n"
            "  to: [{operation: {paths: [/admin]}}]",
            {},
            True,
        ),
        (
            "action: DENY\nrules:\n- when: [{key: 'request.headers[x]', values: [y]}, "
            "{key: source.ip, values: [10.9.0.0/16]}]",
            {},
            True,
        ),
    ],
)
def test_tcp_through_the_waypoint_is_judged_as_at_l4(
    spec: str, kw: dict[str, Any], allowed: bool
) -> None:
    tables = AuthzTables(GATEWAY)
    tables.update(policies(policy("p", spec)))
    found = tables.for_destination("foo", "httpbin")
    assert found is not None
    view = request(method="", path=None, host="", **kw)
    assert found.evaluate(view, l4=True).allowed is allowed
