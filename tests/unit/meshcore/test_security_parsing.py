"""AuthorizationPolicy and PeerAuthentication manifests in, typed policies or located errors out.

The good manifests are Istio's documented examples with the group changed to security.weft.dev;
the bad ones are what Istio's API server or istiod's webhook refuses, plus weft's own limits.
"""

from __future__ import annotations

import textwrap
from ipaddress import ip_network

import pytest

from meshcore.api import mesh_pb2 as pb
from meshcore.api.convert import from_proto, to_proto
from meshcore.resources import (
    AuthorizationPolicy,
    Condition,
    ManifestError,
    MtlsMode,
    ObjectMeta,
    Operation,
    PeerAuthentication,
    PolicyAction,
    ResourceKey,
    Rule,
    Source,
)
from meshcore.resources.security import PolicyTargetRef, TargetKind, parse_ip_block
from tests.manifest_parsing import ManifestParser

SOURCE = "policy.yaml"


_parser = ManifestParser(SOURCE)
parse, parse_one, only_error = _parser.parse, _parser.parse_one, _parser.only_error


def policy(
    spec: str,
    *,
    kind: str = "AuthorizationPolicy",
    api: str = "security.weft.dev/v1",
    name: str = "p",
    namespace: str = "foo",
) -> str:
    """A policy manifest around a `spec:` body given at column 0."""
    body = textwrap.indent(textwrap.dedent(spec).strip("\n"), "  ")
    return (
        f"apiVersion: {api}\nkind: {kind}\nmetadata:\n  name: {name}\n  namespace: {namespace}\n"
        f"spec:\n{body}\n"
    )


def peer(spec: str, **kwargs: str) -> str:
    return policy(spec, kind="PeerAuthentication", **kwargs)


def meta(
    name: str = "p", namespace: str = "foo", *, annotations: dict[str, str] | None = None
) -> ObjectMeta:
    return ObjectMeta(name, namespace, {}, annotations or {})


# --- AuthorizationPolicy: good manifests --------------------------------------------------------

GOOD_POLICIES: list[tuple[str, str, AuthorizationPolicy]] = [
    (
        "allow-nothing: an empty spec is ALLOW with no rules, which matches nothing",
        """
        apiVersion: security.weft.dev/v1
        kind: AuthorizationPolicy
        metadata:
          name: allow-nothing
          namespace: foo
        spec:
          {}
        """,
        AuthorizationPolicy(meta("allow-nothing")),
    ),
    (
        "no spec at all reads like an empty one",
        "apiVersion: security.weft.dev/v1\nkind: AuthorizationPolicy\n"
        "metadata: {name: allow-nothing, namespace: foo}\n",
        AuthorizationPolicy(meta("allow-nothing")),
    ),
    (
        "allow-all: one empty rule matches every request",
        policy("rules:\n- {}", name="allow-all"),
        AuthorizationPolicy(meta("allow-all"), rules=(Rule(),)),
    ),
    (
        "allow-nothing for the selected workloads",
        policy(
            "selector:\n  matchLabels:\n    app: httpbin", name="allow-nothing", namespace="bar"
        ),
        AuthorizationPolicy(meta("allow-nothing", "bar"), selector={"app": "httpbin"}),
    ),
    (
        "deny requests from other namespaces (the v1beta1 version is served too)",
        policy(
            """
            action: DENY
            rules:
            - from:
              - source:
                  notNamespaces: ["foo"]
            """,
            api="security.weft.dev/v1beta1",
            name="deny-other-namespaces",
        ),
        AuthorizationPolicy(
            meta("deny-other-namespaces"),
            action=PolicyAction.DENY,
            rules=(Rule(sources=(Source(not_namespaces=("foo",)),)),),
        ),
    ),
    (
        "Istio's reference example: principals or namespace, to GET /info* or POST /data, "
        "with a JWT issuer",
        policy(
            """
            action: ALLOW
            rules:
            - from:
              - source:
                  principals: ["cluster.local/ns/default/sa/curl"]
              - source:
                  namespaces: ["dev"]
              to:
              - operation:
                  methods: ["GET"]
                  paths: ["/info*"]
              - operation:
                  methods: ["POST"]
                  paths: ["/data"]
              when:
              - key: request.auth.claims[iss]
                values: ["https://accounts.google.com"]
            """,
            name="httpbin",
        ),
        AuthorizationPolicy(
            meta("httpbin"),
            rules=(
                Rule(
                    sources=(
                        Source(principals=("cluster.local/ns/default/sa/curl",)),
                        Source(namespaces=("dev",)),
                    ),
                    operations=(
                        Operation(methods=("GET",), paths=("/info*",)),
                        Operation(methods=("POST",), paths=("/data",)),
                    ),
                    conditions=(
                        Condition("request.auth.claims[iss]", ("https://accounts.google.com",)),
                    ),
                ),
            ),
        ),
    ),
    (
        "TCP: allow a principal to two ports, written as strings and as numbers",
        policy(
            """
            selector:
              matchLabels:
                app: tcp-echo
            action: ALLOW
            rules:
            - from:
              - source:
                  principals: ["cluster.local/ns/default/sa/sleep"]
              to:
              - operation:
                  ports: ["9000", 9001]
                  notPorts: ["09002"]
            """,
            name="tcp-policy",
        ),
        AuthorizationPolicy(
            meta("tcp-policy"),
            selector={"app": "tcp-echo"},
            rules=(
                Rule(
                    sources=(Source(principals=("cluster.local/ns/default/sa/sleep",)),),
                    operations=(Operation(ports=(9000, 9001), not_ports=(9002,)),),
                ),
            ),
        ),
    ),
    (
        "ip blocks, v4 and v6, single addresses and CIDRs, with exceptions",
        policy(
            """
            action: ALLOW
            rules:
            - from:
              - source:
                  ipBlocks: ["1.2.3.4", "5.6.7.0/24", "fd00::/8"]
                  notIpBlocks: ["5.6.7.8", "fd00::1"]
                  remoteIpBlocks: ["203.0.113.7/32"]
                  notRemoteIpBlocks: ["10.1.2.3/16"]
            """,
            name="ingress",
        ),
        AuthorizationPolicy(
            meta("ingress"),
            rules=(
                Rule(
                    sources=(
                        Source(
                            ip_blocks=(
                                ip_network("1.2.3.4/32"),
                                ip_network("5.6.7.0/24"),
                                ip_network("fd00::/8"),
                            ),
                            not_ip_blocks=(ip_network("5.6.7.8/32"), ip_network("fd00::1/128")),
                            remote_ip_blocks=(ip_network("203.0.113.7/32"),),
                            not_remote_ip_blocks=(ip_network("10.1.0.0/16"),),
                        ),
                    ),
                ),
            ),
        ),
    ),
    (
        "when source.namespace, with values and notValues",
        policy(
            """
            rules:
            - when:
              - key: source.namespace
                values: ["foo", "bar"]
                notValues: ["baz"]
              - key: destination.port
                values: ["8080"]
              - key: request.headers[User-Agent]
                notValues: ["curl/*"]
            """
        ),
        AuthorizationPolicy(
            meta(),
            rules=(
                Rule(
                    conditions=(
                        Condition("source.namespace", ("foo", "bar"), ("baz",)),
                        Condition("destination.port", ("8080",)),
                        Condition("request.headers[User-Agent]", (), ("curl/*",)),
                    )
                ),
            ),
        ),
    ),
    (
        "the dry-run example: a DENY on a path for selected workloads",
        """
        apiVersion: security.weft.dev/v1
        kind: AuthorizationPolicy
        metadata:
          name: dry-run-example
          namespace: foo
          annotations:
            "istio.io/dry-run": "true"
        spec:
          selector:
            matchLabels:
              app: httpbin
          action: DENY
          rules:
          - to:
            - operation:
                paths: ["/headers"]
        """,
        AuthorizationPolicy(
            meta("dry-run-example", annotations={"istio.io/dry-run": "true"}),
            action=PolicyAction.DENY,
            selector={"app": "httpbin"},
            rules=(Rule(operations=(Operation(paths=("/headers",)),)),),
        ),
    ),
    (
        "CUSTOM delegates to a named extension provider",
        policy(
            """
            selector:
              matchLabels:
                app: istio-ingressgateway
            action: CUSTOM
            provider:
              name: "my-custom-authz"
            rules:
            - to:
              - operation:
                  paths: ["/admin/*"]
            """,
            name="ext-authz",
            namespace="istio-system",
        ),
        AuthorizationPolicy(
            meta("ext-authz", "istio-system"),
            action=PolicyAction.CUSTOM,
            selector={"app": "istio-ingressgateway"},
            provider="my-custom-authz",
            rules=(Rule(operations=(Operation(paths=("/admin/*",)),)),),
        ),
    ),
    (
        "targetRefs to a waypoint's Service (core group spelled '' or core) and a Gateway",
        policy(
            """
            targetRefs:
            - kind: Service
              group: ""
              name: reviews
            - kind: Service
              group: core
              name: ratings
            - kind: Gateway
              group: gateway.networking.k8s.io
              name: waypoint
            action: AUDIT
            rules:
            - to:
              - operation:
                  methods: ["DELETE"]
                  hosts: ["*.example.com"]
                  notHosts: ["admin.example.com"]
                  notMethods: ["GET"]
                  notPaths: ["/healthz"]
            """
        ),
        AuthorizationPolicy(
            meta(),
            action=PolicyAction.AUDIT,
            target_refs=(
                PolicyTargetRef(TargetKind.SERVICE, "reviews"),
                PolicyTargetRef(TargetKind.SERVICE, "ratings"),
                PolicyTargetRef(TargetKind.GATEWAY, "waypoint"),
            ),
            rules=(
                Rule(
                    operations=(
                        Operation(
                            hosts=("*.example.com",),
                            not_hosts=("admin.example.com",),
                            methods=("DELETE",),
                            not_methods=("GET",),
                            not_paths=("/healthz",),
                        ),
                    )
                ),
            ),
        ),
    ),
    (
        "targetRefs to the GatewayClass of every waypoint, from the root namespace",
        policy(
            """
            targetRefs:
            - kind: GatewayClass
              group: gateway.networking.k8s.io
              name: weft-waypoint
            action: DENY
            rules:
            - to:
              - operation:
                  paths: ["/admin*"]
            """,
            name="mesh-deny-admin",
            namespace="weft-system",
        ),
        AuthorizationPolicy(
            meta("mesh-deny-admin", "weft-system"),
            action=PolicyAction.DENY,
            target_refs=(PolicyTargetRef(TargetKind.GATEWAY_CLASS, "weft-waypoint"),),
            rules=(Rule(operations=(Operation(paths=("/admin*",)),)),),
        ),
    ),
    (
        "the older singular targetRef",
        policy("targetRef: {kind: Gateway, group: gateway.networking.k8s.io, name: ingress}"),
        AuthorizationPolicy(meta(), target_refs=(PolicyTargetRef(TargetKind.GATEWAY, "ingress"),)),
    ),
    (
        "request principals and every other negative source field",
        policy(
            """
            rules:
            - from:
              - source:
                  requestPrincipals: ["issuer.example.com/*"]
                  notRequestPrincipals: ["issuer.example.com/banned"]
                  notPrincipals: ["*/ns/legacy/sa/*"]
            - when:
              - key: experimental.envoy.filters.network.mysql_proxy[db.table]
                values: ["[update]"]
              - key: connection.sni
                values: ["www.example.com"]
            """
        ),
        AuthorizationPolicy(
            meta(),
            rules=(
                Rule(
                    sources=(
                        Source(
                            not_principals=("*/ns/legacy/sa/*",),
                            request_principals=("issuer.example.com/*",),
                            not_request_principals=("issuer.example.com/banned",),
                        ),
                    )
                ),
                Rule(
                    conditions=(
                        Condition(
                            "experimental.envoy.filters.network.mysql_proxy[db.table]",
                            ("[update]",),
                        ),
                        Condition("connection.sni", ("www.example.com",)),
                    )
                ),
            ),
        ),
    ),
]


@pytest.mark.parametrize(
    ("manifest", "expected"), [pytest.param(m, e, id=i) for i, m, e in GOOD_POLICIES]
)
def test_authorization_policy_round_trips_to_its_typed_value(
    manifest: str, expected: AuthorizationPolicy
) -> None:
    resource = parse_one(manifest)

    assert resource == expected
    assert resource.key == ResourceKey(
        "AuthorizationPolicy", expected.metadata.namespace, expected.metadata.name
    )


def test_gateway_class_target_survives_the_wire() -> None:
    parsed = parse_one(
        policy(
            "targetRefs: [{kind: GatewayClass, group: gateway.networking.k8s.io, "
            "name: weft-waypoint}]\naction: DENY\nrules: [{}]",
            namespace="weft-system",
        )
    )
    msg = pb.Resource.FromString(to_proto(parsed).SerializeToString())

    assert msg.authorization_policy.target_refs[0].kind == "GatewayClass"
    assert msg.authorization_policy.target_refs[0].group == "gateway.networking.k8s.io"
    assert from_proto(msg) == parsed


def test_policy_without_namespace_lands_in_default() -> None:
    resource = parse_one(
        "apiVersion: security.weft.dev/v1\nkind: AuthorizationPolicy\nmetadata: {name: p}\n"
    )

    assert str(resource.key) == "AuthorizationPolicy default/p"


@pytest.mark.parametrize(
    ("value", "network"),
    [
        ("10.1.2.3", "10.1.2.3/32"),
        ("10.1.0.0/16", "10.1.0.0/16"),
        ("10.1.2.3/16", "10.1.0.0/16"),  # host bits set, as Go's netip.ParsePrefix allows
        ("0.0.0.0/0", "0.0.0.0/0"),
        ("fd00::1", "fd00::1/128"),
        ("2001:db8::/32", "2001:db8::/32"),
        ("::/0", "::/0"),
    ],
)
def test_ip_blocks_read_single_addresses_and_cidrs(value: str, network: str) -> None:
    assert parse_ip_block(value, "f") == ip_network(network)


@pytest.mark.parametrize(
    "value",
    [
        "",
        "10.0.0",
        "10.0.0.256",
        "10.0.0.0/33",
        "10.0.0.0/",
        "10.0.0.0/08",
        "010.0.0.1",
        "10.0.0.0/255.0.0.0",
        "fe80::1%eth0",
        "fd00::/129",
        "example.com",
        "10.0.0.0/-1",
    ],
)
def test_ip_blocks_refuse_what_is_not_an_address_or_cidr(value: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_ip_block(value, "spec.x[0]")

    assert caught.value.field == "spec.x[0]"


# --- AuthorizationPolicy: helpers for the L4 proxy ----------------------------------------------

L7_CASES: list[tuple[str, Rule, tuple[str, ...]]] = [
    ("an empty rule", Rule(), ()),
    (
        "L4 source fields",
        Rule(
            sources=(
                Source(
                    principals=("a",),
                    not_principals=("b",),
                    namespaces=("c",),
                    not_namespaces=("d",),
                    ip_blocks=(ip_network("10.0.0.0/8"),),
                    not_ip_blocks=(ip_network("10.0.0.1/32"),),
                ),
            )
        ),
        (),
    ),
    ("ports", Rule(operations=(Operation(ports=(80,), not_ports=(81,)),)), ()),
    (
        "L4 conditions",
        Rule(
            conditions=tuple(
                Condition(k, ("x",))
                for k in (
                    "source.ip",
                    "source.namespace",
                    "source.principal",
                    "destination.ip",
                    "destination.port",
                )
            )
        ),
        (),
    ),
    (
        "every HTTP-only operation field",
        Rule(
            operations=(
                Operation(hosts=("h",), methods=("GET",)),
                Operation(not_hosts=("h",), not_methods=("PUT",), paths=("/",), not_paths=("/a",)),
            )
        ),
        ("hosts", "methods", "notHosts", "notMethods", "notPaths", "paths"),
    ),
    (
        "every HTTP-only source field",
        Rule(
            sources=(
                Source(request_principals=("i/s",), not_request_principals=("i/t",)),
                Source(
                    remote_ip_blocks=(ip_network("1.2.3.4/32"),),
                    not_remote_ip_blocks=(ip_network("1.2.3.5/32"),),
                ),
            )
        ),
        ("notRemoteIpBlocks", "notRequestPrincipals", "remoteIpBlocks", "requestPrincipals"),
    ),
    (
        "HTTP-only conditions, named by key; repeats listed once",
        Rule(
            operations=(Operation(ports=(80,), methods=("GET",)), Operation(methods=("POST",))),
            conditions=(
                Condition("request.headers[x-token]", ("a",)),
                Condition("request.auth.claims[iss]", ("b",)),
                Condition("remote.ip", ("10.0.0.1",)),
                Condition("connection.sni", ("c",)),
            ),
        ),
        (
            "connection.sni",
            "methods",
            "remote.ip",
            "request.auth.claims[iss]",
            "request.headers[x-token]",
        ),
    ),
]


@pytest.mark.parametrize(("rule", "fields"), [pytest.param(r, f, id=i) for i, r, f in L7_CASES])
def test_rule_lists_the_http_only_fields_a_ztunnel_cannot_see(
    rule: Rule, fields: tuple[str, ...]
) -> None:
    assert rule.l7_only_fields() == fields
    assert rule.has_l7_fields is bool(fields)


def test_policy_l7_fields_are_the_union_of_its_rules() -> None:
    p = AuthorizationPolicy(
        meta(),
        rules=(
            Rule(operations=(Operation(paths=("/a",)),)),
            Rule(),
            Rule(
                sources=(Source(request_principals=("x",)),), operations=(Operation(paths=("/b",)),)
            ),
        ),
    )

    assert p.l7_only_fields() == ("paths", "requestPrincipals")
    assert [r.matches_everything for r in p.rules] == [False, True, False]


@pytest.mark.parametrize(
    ("spec", "has_selector", "for_waypoint"),
    [
        ("{}", False, False),
        ("selector: {}", True, False),
        ("selector: {matchLabels: {app: a}}", True, False),
        ("targetRefs: [{kind: Service, group: '', name: web}]", False, True),
    ],
)
def test_policy_scope_helpers(spec: str, has_selector: bool, for_waypoint: bool) -> None:
    p = parse_one(policy(spec))

    assert isinstance(p, AuthorizationPolicy)
    assert (p.has_selector, p.for_waypoint) == (has_selector, for_waypoint)


# --- PeerAuthentication: good manifests ---------------------------------------------------------

GOOD_PEER_AUTHENTICATIONS: list[tuple[str, str, PeerAuthentication]] = [
    (
        "mesh-wide STRICT in the root namespace",
        peer("mtls:\n  mode: STRICT", name="default", namespace="istio-system"),
        PeerAuthentication(meta("default", "istio-system"), MtlsMode.STRICT),
    ),
    (
        "namespace-wide PERMISSIVE",
        peer("mtls:\n  mode: PERMISSIVE", name="default"),
        PeerAuthentication(meta("default"), MtlsMode.PERMISSIVE),
    ),
    (
        "STRICT for one workload",
        peer("selector:\n  matchLabels:\n    app: finance\nmtls:\n  mode: STRICT", name="finance"),
        PeerAuthentication(meta("finance"), MtlsMode.STRICT, selector={"app": "finance"}),
    ),
    (
        "STRICT for a workload but port 8080 in plaintext",
        peer(
            """
            selector:
              matchLabels:
                app: finance
            mtls:
              mode: STRICT
            portLevelMtls:
              8080:
                mode: DISABLE
            """,
            name="default",
        ),
        PeerAuthentication(
            meta("default"),
            MtlsMode.STRICT,
            {8080: MtlsMode.DISABLE},
            selector={"app": "finance"},
        ),
    ),
    (
        "inherit, but override two ports (keys quoted or not, modes defaulted or not)",
        peer(
            """
            selector:
              matchLabels:
                app: finance
            mtls:
              mode: UNSET
            portLevelMtls:
              "8080":
                mode: DISABLE
              9090:
                mode: STRICT
              9091: {}
            """,
            name="default",
        ),
        PeerAuthentication(
            meta("default"),
            MtlsMode.UNSET,
            {8080: MtlsMode.DISABLE, 9090: MtlsMode.STRICT, 9091: MtlsMode.UNSET},
            selector={"app": "finance"},
        ),
    ),
    (
        "an empty spec inherits everything (v1beta1 served too)",
        peer("{}", api="security.weft.dev/v1beta1"),
        PeerAuthentication(meta()),
    ),
    ("an empty mtls is UNSET", peer("mtls: {}"), PeerAuthentication(meta())),
]


@pytest.mark.parametrize(
    ("manifest", "expected"), [pytest.param(m, e, id=i) for i, m, e in GOOD_PEER_AUTHENTICATIONS]
)
def test_peer_authentication_round_trips_to_its_typed_value(
    manifest: str, expected: PeerAuthentication
) -> None:
    resource = parse_one(manifest)

    assert resource == expected
    assert resource.key == ResourceKey(
        "PeerAuthentication", expected.metadata.namespace, expected.metadata.name
    )


@pytest.mark.parametrize(("port", "mode"), [(8080, MtlsMode.DISABLE), (80, MtlsMode.STRICT)])
def test_peer_authentication_mode_for_port_prefers_the_port_level_setting(
    port: int, mode: MtlsMode
) -> None:
    pa = PeerAuthentication(meta(), MtlsMode.STRICT, {8080: MtlsMode.DISABLE}, {"app": "a"})

    assert pa.mode_for_port(port) is mode


def test_known_metadata_the_lab_ignores_is_reported_for_policies() -> None:
    (parsed,) = parse(
        """
        apiVersion: security.weft.dev/v1
        kind: PeerAuthentication
        metadata: {name: default, namespace: foo, resourceVersion: "3", generation: 2}
        spec: {mtls: {mode: STRICT}}
        status: {}
        """
    )

    assert sorted(parsed.ignored_fields) == [
        "metadata.generation",
        "metadata.resourceVersion",
        "status",
    ]


# --- bad manifests: each names file, resource and field path ------------------------------------

AP = "AuthorizationPolicy foo/p"
PA = "PeerAuthentication foo/p"
_SOURCE_FIELDS = (
    "principals, notPrincipals, requestPrincipals, notRequestPrincipals, namespaces, "
    "notNamespaces, ipBlocks, notIpBlocks, remoteIpBlocks or notRemoteIpBlocks"
)
_KNOWN_KEYS = (
    "request.headers[NAME], source.ip, remote.ip, source.namespace, source.principal, "
    "source.serviceAccount, source.trustDomain, request.auth.principal, request.auth.audiences, "
    "request.auth.presenter, request.auth.claims[NAME], destination.ip, destination.port, "
    "connection.sni, experimental.envoy.filters.*[KEY]"
)
_NOT_AN_IP = "is not an IP address or CIDR block (such as 10.1.2.3, 10.1.0.0/16 or fd00::/64)"


def rule(body: str) -> str:
    """A policy with one rule whose body is given in YAML flow style."""
    return policy(f"rules:\n- {body}")


BAD_MANIFESTS = [
    # (id, manifest, "resource: field: reason" after the file name)
    (
        "Istio's group",
        policy("{}", api="security.istio.io/v1"),
        f"{AP}: apiVersion: weft serves AuthorizationPolicy in group security.weft.dev, not "
        "security.istio.io: change apiVersion to security.weft.dev/v1 (the fields and their "
        "meaning are Istio's)",
    ),
    (
        "Istio's group at v1beta1",
        peer("{}", api="security.istio.io/v1beta1"),
        f"{PA}: apiVersion: weft serves PeerAuthentication in group security.weft.dev, not "
        "security.istio.io: change apiVersion to security.weft.dev/v1beta1 (the fields and "
        "their meaning are Istio's)",
    ),
    (
        "Istio's group at a version weft does not serve",
        policy("{}", api="security.istio.io/v1alpha1"),
        f"{AP}: apiVersion: weft serves AuthorizationPolicy in group security.weft.dev, not "
        "security.istio.io: change apiVersion to security.weft.dev/v1 (the fields and their "
        "meaning are Istio's)",
    ),
    (
        "a version of weft's group that is not served",
        policy("{}", api="security.weft.dev/v2"),
        f"{AP}: apiVersion: AuthorizationPolicy is served as security.weft.dev/v1 or "
        "security.weft.dev/v1beta1, not 'security.weft.dev/v2'",
    ),
    (
        "action in lowercase",
        policy("action: allow"),
        f"{AP}: spec.action: must be ALLOW, DENY, AUDIT or CUSTOM, got 'allow'",
    ),
    (
        "selector and targetRefs together",
        policy(
            "selector: {matchLabels: {app: a}}\ntargetRefs: [{kind: Service, group: '', name: a}]"
        ),
        f"{AP}: spec.targetRefs: may not be given together with selector: use one or the other",
    ),
    (
        "an empty selector and a targetRef together",
        policy("selector: {}\ntargetRef: {kind: Service, name: a}"),
        f"{AP}: spec.targetRef: may not be given together with selector: use one or the other",
    ),
    (
        "targetRef and targetRefs together",
        policy("targetRef: {kind: Service, name: a}\ntargetRefs: [{kind: Service, name: b}]"),
        f"{AP}: spec.targetRefs: may not be given together with targetRef",
    ),
    (
        "targetRef to a ServiceEntry",
        policy("targetRefs: [{kind: ServiceEntry, group: networking.istio.io, name: ext}]"),
        f"{AP}: spec.targetRefs[0].kind: weft attaches policies to a Service, a Gateway or the "
        "GatewayClass weft-waypoint, not 'ServiceEntry'",
    ),
    (
        "targetRef to a GatewayClass other than weft-waypoint",
        policy(
            "targetRefs:\n- {kind: GatewayClass, group: gateway.networking.k8s.io, name: istio}",
            namespace="weft-system",
        ),
        "AuthorizationPolicy weft-system/p: spec.targetRefs[0].name: the only GatewayClass a "
        "policy may target is weft-waypoint, not 'istio'",
    ),
    (
        "targetRef to the GatewayClass outside the root namespace",
        policy(
            "targetRefs:\n- {kind: Service, name: a}\n"
            "- {kind: GatewayClass, group: gateway.networking.k8s.io, name: weft-waypoint}"
        ),
        f"{AP}: spec.targetRefs[1].kind: a GatewayClass is targeted only by a policy in the root "
        "namespace weft-system (it applies to every waypoint of the mesh), not in 'foo'; target "
        "the waypoint's Gateway or a Service instead",
    ),
    (
        "targetRef to the GatewayClass without its group",
        policy("targetRef: {kind: GatewayClass, name: weft-waypoint}", namespace="weft-system"),
        "AuthorizationPolicy weft-system/p: spec.targetRef.group: a GatewayClass is in group "
        "'gateway.networking.k8s.io', not ''",
    ),
    (
        "targetRef to a Gateway without its group",
        policy("targetRefs: [{kind: Gateway, name: waypoint}]"),
        f"{AP}: spec.targetRefs[0].group: a Gateway is in group 'gateway.networking.k8s.io', "
        "not ''",
    ),
    (
        "targetRef to a Service in the Gateway API group",
        policy("targetRefs: [{kind: Service, group: gateway.networking.k8s.io, name: web}]"),
        f"{AP}: spec.targetRefs[0].group: a Service is in group '', not "
        "'gateway.networking.k8s.io'",
    ),
    (
        "targetRef across namespaces",
        policy("targetRefs: [{kind: Service, name: web, namespace: bar}]"),
        f"{AP}: spec.targetRefs[0].namespace: cross-namespace references are not supported; "
        "leave it out to name an object in the policy's namespace",
    ),
    (
        "targetRef without a name",
        policy("targetRefs: [{kind: Service}]"),
        f"{AP}: spec.targetRefs[0].name: required field is missing",
    ),
    (
        "targetRef without a kind",
        policy("targetRef: {name: web}"),
        f"{AP}: spec.targetRef.kind: required field is missing",
    ),
    (
        "a bad address deep in the rules",
        policy(
            """
            rules:
            - from:
              - source: {principals: [a]}
              - source:
                  ipBlocks: ["10.0.0.1", "fd00::/64", "10.0.0.300"]
            """
        ),
        f"{AP}: spec.rules[0].from[1].source.ipBlocks[2]: '10.0.0.300' {_NOT_AN_IP}",
    ),
    (
        "a CIDR longer than the address",
        rule("from: [{source: {notIpBlocks: ['10.0.0.0/33']}}]"),
        f"{AP}: spec.rules[0].from[0].source.notIpBlocks[0]: '10.0.0.0/33' {_NOT_AN_IP}",
    ),
    (
        "a netmask instead of a prefix length",
        rule("from: [{source: {remoteIpBlocks: ['10.0.0.0/255.0.0.0']}}]"),
        f"{AP}: spec.rules[0].from[0].source.remoteIpBlocks[0]: '10.0.0.0/255.0.0.0' {_NOT_AN_IP}",
    ),
    (
        "a hostname as an ip block",
        rule("from: [{source: {notRemoteIpBlocks: [example.com]}}]"),
        f"{AP}: spec.rules[0].from[0].source.notRemoteIpBlocks[0]: 'example.com' {_NOT_AN_IP}",
    ),
    (
        "an empty string in a source list",
        rule("from: [{source: {principals: [a, '']}}]"),
        f"{AP}: spec.rules[0].from[0].source.principals[1]: must not be empty",
    ),
    (
        "a source list that is not a list",
        rule("from: [{source: {namespaces: foo}}]"),
        f"{AP}: spec.rules[0].from[0].source.namespaces: expected an array of strings, got string",
    ),
    (
        "port zero",
        rule("to: [{operation: {ports: ['0']}}]"),
        f"{AP}: spec.rules[0].to[0].operation.ports[0]: '0' is not a port number (1 to 65535)",
    ),
    (
        "port above 65535",
        rule("to: [{operation: {notPorts: [80, 65536]}}]"),
        f"{AP}: spec.rules[0].to[0].operation.notPorts[1]: '65536' is not a port number "
        "(1 to 65535)",
    ),
    (
        "a port name instead of a number",
        rule("to: [{operation: {ports: [http]}}]"),
        f"{AP}: spec.rules[0].to[0].operation.ports[0]: 'http' is not a port number (1 to 65535)",
    ),
    (
        "a negative port",
        rule("to: [{operation: {ports: [-1]}}]"),
        f"{AP}: spec.rules[0].to[0].operation.ports[0]: '-1' is not a port number (1 to 65535)",
    ),
    (
        "a port in superscript digits",
        rule("to: [{operation: {ports: ['\u00b2']}}]"),
        f"{AP}: spec.rules[0].to[0].operation.ports[0]: '\u00b2' is not a port number (1 to 65535)",
    ),
    (
        "a port in fullwidth digits",
        rule("to: [{operation: {notPorts: ['\uff18\uff10']}}]"),
        f"{AP}: spec.rules[0].to[0].operation.notPorts[0]: '\uff18\uff10' is not a port number "
        "(1 to 65535)",
    ),
    (
        "a destination.port condition in Arabic-Indic digits",
        rule("when: [{key: destination.port, values: ['\u0668\u0660']}]"),
        f"{AP}: spec.rules[0].when[0].values[0]: '\u0668\u0660' is not a port number (1 to 65535)",
    ),
    (
        "a port as a boolean",
        rule("to: [{operation: {ports: [true]}}]"),
        f"{AP}: spec.rules[0].to[0].operation.ports[0]: expected a string, got boolean",
    ),
    (
        "an empty from",
        rule("from: []"),
        f"{AP}: spec.rules[0].from: must not be empty; leave it out to match any source",
    ),
    (
        "an empty to",
        rule("to: []"),
        f"{AP}: spec.rules[0].to: must not be empty; leave it out to match any operation",
    ),
    (
        "a from element without a source",
        rule("from: [{source: {namespaces: [a]}}, {}]"),
        f"{AP}: spec.rules[0].from[1].source: required field is missing",
    ),
    (
        "an empty source",
        rule("from: [{source: {}}]"),
        f"{AP}: spec.rules[0].from[0].source: must not be empty: give {_SOURCE_FIELDS}",
    ),
    (
        "a source whose lists are all empty",
        rule("from: [{source: {principals: [], ipBlocks: []}}]"),
        f"{AP}: spec.rules[0].from[0].source: must not be empty: give {_SOURCE_FIELDS}",
    ),
    (
        "a to element without an operation",
        rule("to: [{}]"),
        f"{AP}: spec.rules[0].to[0].operation: required field is missing",
    ),
    (
        "an empty operation",
        rule("to: [{operation: {}}]"),
        f"{AP}: spec.rules[0].to[0].operation: must not be empty: give hosts, notHosts, ports, "
        "notPorts, methods, notMethods, paths or notPaths",
    ),
    (
        "a misspelled source field",
        rule("from: [{source: {principal: [a]}}]"),
        f"{AP}: spec.rules[0].from[0].source.principal: unknown field",
    ),
    (
        "a misspelled rule field",
        rule("form: [{source: {principals: [a]}}]"),
        f"{AP}: spec.rules[0].form: unknown field",
    ),
    (
        "a null rule",
        policy("rules:\n- {}\n-"),
        f"{AP}: spec.rules[1]: expected an object (write {{}} for a rule that matches every "
        "request)",
    ),
    (
        "rules as an object",
        policy("rules: {from: []}"),
        f"{AP}: spec.rules: expected an array, got object",
    ),
    (
        "serviceAccounts, which weft does not carry yet",
        rule("from: [{source: {serviceAccounts: [default/curl]}}]"),
        f"{AP}: spec.rules[0].from[0].source.serviceAccounts: not supported by weft yet; match "
        "the identity with principals ('<trust domain>/ns/<namespace>/sa/<service account>') "
        "instead",
    ),
    (
        "trustDomains, which weft does not carry yet",
        rule("from: [{source: {notTrustDomains: [other.local]}}]"),
        f"{AP}: spec.rules[0].from[0].source.notTrustDomains: not supported by weft yet; match "
        "with principals ('<trust domain>/ns/<namespace>/sa/<service account>') instead",
    ),
    (
        "an unknown condition key",
        rule("when: [{key: source.ipp, values: ['10.0.0.1']}]"),
        f"{AP}: spec.rules[0].when[0].key: unknown condition key 'source.ipp'; known: "
        f"{_KNOWN_KEYS}",
    ),
    (
        "a header condition without the header name",
        rule("when: [{key: request.headers, values: [a]}]"),
        f"{AP}: spec.rules[0].when[0].key: 'request.headers' must have the form "
        "request.headers[NAME]",
    ),
    (
        "a claim condition with an empty name",
        rule("when: [{key: 'request.auth.claims[]', values: [a]}]"),
        f"{AP}: spec.rules[0].when[0].key: 'request.auth.claims[]' must have the form "
        "request.auth.claims[NAME]",
    ),
    (
        "an experimental key without a filter name",
        rule("when: [{key: 'experimental.envoy.filters.[a]', values: [a]}]"),
        f"{AP}: spec.rules[0].when[0].key: 'experimental.envoy.filters.[a]' must have the form "
        "experimental.envoy.filters.<filter>[KEY]",
    ),
    (
        "destination.namespace, which the policy's own namespace replaced",
        rule("when: [{key: destination.namespace, values: [a]}]"),
        f"{AP}: spec.rules[0].when[0].key: condition key 'destination.namespace' is replaced "
        "by the policy's metadata.namespace",
    ),
    (
        "destination.labels, which the selector replaced",
        rule("when: [{key: 'destination.labels[app]', values: [a]}]"),
        f"{AP}: spec.rules[0].when[0].key: condition key 'destination.labels[app]' is replaced "
        "by the policy's selector",
    ),
    (
        "destination.user from the retired RBAC",
        rule("when: [{key: destination.user, values: [a]}]"),
        f"{AP}: spec.rules[0].when[0].key: condition key 'destination.user' is only supported "
        "by Istio's retired v1alpha1 RBAC",
    ),
    (
        "a condition without a key",
        rule("when: [{values: [a]}]"),
        f"{AP}: spec.rules[0].when[0].key: required field is missing",
    ),
    (
        "a condition without values",
        rule("when: [{key: source.namespace}]"),
        f"{AP}: spec.rules[0].when[0]: give values or notValues (or both)",
    ),
    (
        "a condition with empty value lists",
        rule("when: [{key: source.namespace, values: [], notValues: []}]"),
        f"{AP}: spec.rules[0].when[0]: give values or notValues (or both)",
    ),
    (
        "a source.ip condition with a bad address",
        rule("when: [{key: source.ip, values: ['10.0.0.1', 'ten']}]"),
        f"{AP}: spec.rules[0].when[0].values[1]: 'ten' {_NOT_AN_IP}",
    ),
    (
        "a destination.port condition with a bad port",
        rule("when: [{key: destination.port, notValues: ['8o']}]"),
        f"{AP}: spec.rules[0].when[0].notValues[0]: '8o' is not a port number (1 to 65535)",
    ),
    (
        "a source.serviceAccount condition with a wildcard",
        rule("when: [{key: source.serviceAccount, values: ['default/*']}]"),
        f"{AP}: spec.rules[0].when[0].values[0]: 'default/*' is not a service account: write "
        "'NAME' (the policy's namespace) or 'NAMESPACE/NAME', without wildcards",
    ),
    (
        "a source.trustDomain condition with a wildcard in the middle",
        rule("when: [{key: source.trustDomain, values: ['clus*.local']}]"),
        f"{AP}: spec.rules[0].when[0].values[0]: 'clus*.local' is not a trust domain match: no "
        "'/', and at most one '*' at the start or the end",
    ),
    (
        "a path template with {**} before {*}",
        rule("to: [{operation: {paths: ['/foo/{**}/bar/{*}']}}]"),
        f"{AP}: spec.rules[0].to[0].operation.paths[0]: invalid path template "
        "'/foo/{**}/bar/{*}': {**} must be the last operator",
    ),
    (
        "a path with braces that are not a template operator",
        rule("to: [{operation: {notPaths: ['/foo/{*}.txt']}}]"),
        f"{AP}: spec.rules[0].to[0].operation.notPaths[0]: invalid path '/foo/{{*}}.txt': '{{' "
        "and '}' may only appear as the whole-segment operators {*} and {**}",
    ),
    (
        "a path template mixing '*' with an operator",
        rule("to: [{operation: {paths: ['/*/baz/{*}']}}]"),
        f"{AP}: spec.rules[0].to[0].operation.paths[0]: invalid path template '/*/baz/{{*}}': "
        "segment '*' may only hold the characters allowed in a URL path segment, and not '*'",
    ),
    (
        "CUSTOM without a provider",
        policy("action: CUSTOM\nrules: [{}]"),
        f"{AP}: spec.provider.name: required when action is CUSTOM",
    ),
    (
        "CUSTOM with an empty provider name",
        policy("action: CUSTOM\nprovider: {name: ''}\nrules: [{}]"),
        f"{AP}: spec.provider.name: required when action is CUSTOM",
    ),
    (
        "CUSTOM without rules",
        policy("action: CUSTOM\nprovider: {name: ext}"),
        f"{AP}: spec.rules: a CUSTOM policy without rules never matches; add an empty rule {{}} "
        "to match every request",
    ),
    (
        "DENY without rules",
        policy("action: DENY"),
        f"{AP}: spec.rules: a DENY policy without rules never matches; add an empty rule {{}} "
        "to match every request",
    ),
    (
        "a provider with a DENY policy",
        policy("action: DENY\nprovider: {name: ext}\nrules: [{}]"),
        f"{AP}: spec.provider: only allowed with action CUSTOM, not DENY",
    ),
    (
        "a provider with the default action",
        policy("provider: {name: ext}"),
        f"{AP}: spec.provider: only allowed with action CUSTOM, not ALLOW",
    ),
    (
        "a misspelled provider field",
        policy("action: CUSTOM\nprovider: {nmae: ext}\nrules: [{}]"),
        f"{AP}: spec.provider.nmae: unknown field",
    ),
    (
        "CUSTOM matching on principals",
        policy(
            "action: CUSTOM\nprovider: {name: ext}\nrules: [{from: [{source: {principals: [a]}}]}]"
        ),
        f"{AP}: spec.rules[0].from[0].source.principals: not supported with action CUSTOM",
    ),
    (
        "CUSTOM matching on a JWT claim",
        policy(
            "action: CUSTOM\nprovider: {name: ext}\n"
            "rules: [{when: [{key: 'request.auth.claims[iss]', values: [a]}]}]"
        ),
        f"{AP}: spec.rules[0].when[0].key: condition key 'request.auth.claims[iss]' is not "
        "supported with action CUSTOM",
    ),
    (
        "a selector with a wildcard value",
        policy("selector: {matchLabels: {app: 'web*'}}"),
        f"{AP}: spec.selector.matchLabels.app: 'web*' is not a valid label value "
        "(alphanumerics, '-', '_' or '.', at most 63 characters)",
    ),
    (
        "a selector with matchExpressions",
        policy("selector: {matchExpressions: [{key: app, operator: In, values: [a]}]}"),
        f"{AP}: spec.selector.matchExpressions: unknown field",
    ),
    (
        "an unknown spec field",
        policy("rule: []"),
        f"{AP}: spec.rule: unknown field",
    ),
    (
        "an uppercase name",
        policy("{}", name="Allow"),
        "AuthorizationPolicy foo/Allow: metadata.name: 'Allow' is not a valid DNS-1123 subdomain "
        "(lowercase letters, digits, '-' and '.', at most 253 characters)",
    ),
    (
        "mtls mode in lowercase",
        peer("mtls: {mode: strict}"),
        f"{PA}: spec.mtls.mode: must be UNSET, DISABLE, PERMISSIVE or STRICT, got 'strict'",
    ),
    (
        "a misspelled mtls field",
        peer("mtls: {mdoe: STRICT}"),
        f"{PA}: spec.mtls.mdoe: unknown field",
    ),
    (
        "port-level mTLS in a namespace-wide policy",
        peer("mtls: {mode: STRICT}\nportLevelMtls: {8080: {mode: DISABLE}}"),
        f"{PA}: spec.portLevelMtls: only a policy with selector.matchLabels may set port-level "
        "mTLS: a namespace or mesh-wide policy cannot, because ports belong to workloads",
    ),
    (
        "port-level mTLS with a selector that has no labels",
        peer("selector: {}\nportLevelMtls: {8080: {mode: DISABLE}}"),
        f"{PA}: spec.portLevelMtls: only a policy with selector.matchLabels may set port-level "
        "mTLS: a namespace or mesh-wide policy cannot, because ports belong to workloads",
    ),
    (
        "an empty port-level map",
        peer("selector: {matchLabels: {app: a}}\nportLevelMtls: {}"),
        f"{PA}: spec.portLevelMtls: must name at least one port when given",
    ),
    (
        "port-level mTLS as a list",
        peer("selector: {matchLabels: {app: a}}\nportLevelMtls: [{port: 8080, mode: DISABLE}]"),
        f"{PA}: spec.portLevelMtls: expected an object of port number -> {{mode}}",
    ),
    (
        "port zero at port level",
        peer("selector: {matchLabels: {app: a}}\nportLevelMtls: {0: {mode: DISABLE}}"),
        f"{PA}: spec.portLevelMtls.0: '0' is not a port number (1 to 65535)",
    ),
    (
        "a port name at port level",
        peer("selector: {matchLabels: {app: a}}\nportLevelMtls: {http: {mode: DISABLE}}"),
        f"{PA}: spec.portLevelMtls.http: 'http' is not a port number (1 to 65535)",
    ),
    (
        "the same port twice, once quoted",
        peer(
            "selector: {matchLabels: {app: a}}\n"
            "portLevelMtls: {8080: {mode: DISABLE}, '8080': {mode: STRICT}}"
        ),
        f"{PA}: spec.portLevelMtls.8080: port 8080 is given twice",
    ),
    (
        "a bad mode at port level",
        peer("selector: {matchLabels: {app: a}}\nportLevelMtls: {8080: {mode: DISABLED}}"),
        f"{PA}: spec.portLevelMtls.8080.mode: must be UNSET, DISABLE, PERMISSIVE or STRICT, "
        "got 'DISABLED'",
    ),
    (
        "a mode YAML reads as a boolean",
        peer("selector: {matchLabels: {app: a}}\nportLevelMtls: {8080: {mode: OFF}}"),
        f"{PA}: spec.portLevelMtls.8080.mode: expected a string, got boolean",
    ),
    (
        "a bare mode at port level",
        peer("selector: {matchLabels: {app: a}}\nportLevelMtls: {8080: DISABLE}"),
        f"{PA}: spec.portLevelMtls.8080: expected an object, got string",
    ),
    (
        "an AuthorizationPolicy field in a PeerAuthentication",
        peer("action: DENY"),
        f"{PA}: spec.action: unknown field",
    ),
]


@pytest.mark.parametrize(
    ("manifest", "expected"), [pytest.param(m, e, id=i) for i, m, e in BAD_MANIFESTS]
)
def test_bad_policy_is_rejected_naming_file_resource_and_field(
    manifest: str, expected: str
) -> None:
    error = only_error(manifest)

    assert str(error) == f"{SOURCE}: {expected}"


@pytest.mark.parametrize(
    ("manifest", "field"),
    [pytest.param(m, e.split(": ", 2)[1], id=i) for i, m, e in BAD_MANIFESTS],
)
def test_bad_policy_error_carries_the_field_path_on_its_own(manifest: str, field: str) -> None:
    assert only_error(manifest).field == field
