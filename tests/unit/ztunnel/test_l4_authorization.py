"""L4 AuthorizationPolicy evaluation at the ztunnel, against Istio's documented examples.

Policies are written as manifests (Istio's, with the group changed to security.weft.dev) and
parsed by meshcore, so each case reads like the Istio page it comes from. The destination is
workload `httpbin` in namespace `foo` unless a case says otherwise.
"""

from __future__ import annotations

import gc
import ipaddress
import textwrap
import weakref
from dataclasses import dataclass, field
from typing import Any

import pytest

from meshcore.identity.spiffe import IdentityError
from meshcore.meshstate import Workload
from meshcore.resources import (
    AuthorizationPolicy,
    PolicyAction,
    documents_from_text,
    parse_documents,
)
from ztunnel.rbac import (
    Connection,
    Decision,
    PolicyMatcher,
    applicable,
    applies_to,
    evaluate,
    matcher_for,
)

ROOT = "weft-system"
SLEEP = "spiffe://cluster.local/ns/foo/sa/sleep"
BAR_CLIENT = "spiffe://cluster.local/ns/bar/sa/client"
ADMIN = "spiffe://cluster.local/ns/admin/sa/admin"
PLAINTEXT = None
HTTPBIN = {"app": "httpbin", "version": "v1"}


def policies(text: str) -> list[AuthorizationPolicy]:
    parsed = parse_documents(documents_from_text(textwrap.dedent(text), "policies.yaml"))
    found = [p.resource for p in parsed]
    assert all(isinstance(p, AuthorizationPolicy) for p in found)
    return found  # type: ignore[return-value]


def conn(
    principal: str | None = SLEEP,
    *,
    port: int = 8000,
    source_ip: str = "10.1.0.5",
    destination_ip: str = "10.1.1.10",
    namespace: str = "foo",
    labels: dict[str, str] | None = None,
) -> Connection:
    return Connection.build(
        namespace=namespace,
        name="httpbin-7d9f",
        labels=HTTPBIN if labels is None else labels,
        destination_ip=destination_ip,
        destination_port=port,
        source_ip=source_ip,
        source_principal=principal,
    )


def decide(text: str, connection: Connection, **kwargs: Any) -> Decision:
    return evaluate(policies(text), connection, **kwargs)


# --- Istio's examples, as manifests --------------------------------------------------------

ALLOW_NOTHING = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: allow-nothing
  namespace: foo
spec: {}
"""

DENY_ALL = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: deny-all
  namespace: foo
spec:
  action: DENY
  rules:
  - {}
"""

ALLOW_ALL = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: allow-all
  namespace: foo
spec:
  rules:
  - {}
"""

MESH_ALLOW_NOTHING = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: allow-nothing
  namespace: weft-system
spec: {}
"""

# Istio's L4 task: allow sleep to httpbin's port 8000 only.
ALLOW_SLEEP_PORT_8000 = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: httpbin-viewer
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/foo/sa/sleep"]
    to:
    - operation:
        ports: ["8000"]
"""

DENY_NAMESPACE_BAR = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: deny-bar
  namespace: foo
spec:
  action: DENY
  rules:
  - from:
    - source:
        namespaces: ["bar"]
"""

DENY_OTHER_NAMESPACES = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: deny-other-namespaces
  namespace: foo
spec:
  action: DENY
  rules:
  - from:
    - source:
        notNamespaces: ["foo"]
"""

# Istio's "require mTLS" pattern: deny when the principal is empty.
REQUIRE_MTLS = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: require-mtls
  namespace: foo
spec:
  action: DENY
  rules:
  - from:
    - source:
        notPrincipals: ["*"]
"""

ALLOW_ANY_MTLS = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: allow-mtls
  namespace: foo
spec:
  rules:
  - from:
    - source:
        principals: ["*"]
"""

IP_BLOCKS = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: office-network
  namespace: foo
spec:
  rules:
  - from:
    - source:
        ipBlocks: ["10.1.0.0/16", "fd00:1::/64"]
        notIpBlocks: ["10.1.2.0/24"]
"""

SINGLE_IP = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: one-host
  namespace: foo
spec:
  rules:
  - from:
    - source:
        ipBlocks: ["10.1.0.5"]
"""

WHEN_SOURCE_NAMESPACE = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: from-foo-or-admin
  namespace: foo
spec:
  rules:
  - when:
    - key: source.namespace
      values: ["foo", "adm*"]
"""

WHEN_NOT_SOURCE_NAMESPACE = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: deny-unless-foo
  namespace: foo
spec:
  action: DENY
  rules:
  - when:
    - key: source.namespace
      notValues: ["foo"]
"""

WHEN_DESTINATION_PORT = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: port-8000-not-9000
  namespace: foo
spec:
  rules:
  - when:
    - key: destination.port
      values: ["8000", "8080"]
    - key: destination.port
      notValues: ["8080"]
"""

WHEN_IPS_AND_PRINCIPAL = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: conditions
  namespace: foo
spec:
  rules:
  - when:
    - key: source.ip
      values: ["10.1.0.0/24"]
      notValues: ["10.1.0.9"]
    - key: destination.ip
      values: ["10.1.1.0/24"]
    - key: source.principal
      values: ["*/sa/sleep"]
"""

WILDCARD_PRINCIPALS = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: wildcards
  namespace: foo
spec:
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/admin/*", "*/sa/sleep"]
"""

PORTS_AND_NOT_PORTS = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: ports
  namespace: foo
spec:
  rules:
  - to:
    - operation:
        notPorts: ["9000"]
    - operation:
        ports: ["9000"]
        notPorts: ["9000"]
"""

# from AND to, two sources ORed, two rules ORed.
COMBINED = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: combined
  namespace: foo
spec:
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/foo/sa/sleep"]
    - source:
        namespaces: ["bar"]
    to:
    - operation:
        ports: ["8000"]
  - from:
    - source:
        namespaces: ["admin"]
        ipBlocks: ["10.9.0.0/16"]
"""

SELECTOR_HTTPBIN_NOTHING = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: httpbin-nothing
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
"""

EMPTY_SELECTOR_NOTHING = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: everyone-nothing
  namespace: foo
spec:
  selector:
    matchLabels: {}
"""

ROOT_SELECTOR_DENY = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: deny-plaintext-to-httpbins
  namespace: weft-system
spec:
  selector:
    matchLabels:
      app: httpbin
  action: DENY
  rules:
  - from:
    - source:
        notPrincipals: ["*"]
"""

TARGET_REFS = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: waypoint-deny-all
  namespace: foo
spec:
  targetRefs:
  - kind: Service
    group: ""
    name: httpbin
  action: DENY
  rules:
  - {}
---
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: gateway-allow-nothing
  namespace: foo
spec:
  targetRef:
    kind: Gateway
    group: gateway.networking.k8s.io
    name: waypoint
"""

# Istio's ext-authz task.
CUSTOM_EXT_AUTHZ = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: ext-authz
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: CUSTOM
  provider:
    name: sample-ext-authz-grpc
  rules:
  - to:
    - operation:
        paths: ["/headers"]
"""

CUSTOM_ON_PORT_9000 = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: ext-authz-admin-port
  namespace: foo
spec:
  action: CUSTOM
  provider:
    name: opa
  rules:
  - to:
    - operation:
        ports: ["9000"]
"""

ALLOW_GET_ONLY = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: allow-get
  namespace: foo
spec:
  rules:
  - to:
    - operation:
        methods: ["GET"]
        ports: ["8000"]
"""

ALLOW_L7_AND_L4_RULES = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: mixed
  namespace: foo
spec:
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/foo/sa/sleep"]
    to:
    - operation:
        paths: ["/info*"]
  - from:
    - source:
        namespaces: ["bar"]
"""

ALLOW_JWT_SOURCE = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: jwt-or-sleep
  namespace: foo
spec:
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/foo/sa/sleep"]
    - source:
        requestPrincipals: ["*"]
"""

ALLOW_WHEN_HEADER = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: header
  namespace: foo
spec:
  rules:
  - from:
    - source:
        namespaces: ["foo"]
    when:
    - key: request.headers[version]
      values: ["v1"]
"""

# Istio's explicit-deny task.
DENY_METHOD_GET = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: deny-method-get
  namespace: foo
spec:
  selector:
    matchLabels:
      app: httpbin
  action: DENY
  rules:
  - to:
    - operation:
        methods: ["GET"]
"""

DENY_ADMIN_PATHS = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: deny-admin-path
  namespace: foo
spec:
  action: DENY
  rules:
  - from:
    - source:
        namespaces: ["bar"]
    to:
    - operation:
        paths: ["/admin*"]
        ports: ["8000"]
"""

DENY_WHEN_HEADER = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: deny-header
  namespace: foo
spec:
  action: DENY
  rules:
  - from:
    - source:
        namespaces: ["bar"]
    when:
    - key: request.headers[x-token]
      notValues: ["admin"]
"""

DENY_NO_JWT = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: deny-no-jwt
  namespace: foo
spec:
  action: DENY
  rules:
  - from:
    - source:
        notRequestPrincipals: ["*"]
"""

AUDIT_BAR = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: audit-bar
  namespace: foo
spec:
  action: AUDIT
  rules:
  - from:
    - source:
        namespaces: ["bar"]
---
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: audit-headers
  namespace: foo
spec:
  action: AUDIT
  rules:
  - to:
    - operation:
        paths: ["/headers"]
"""

OTHER_NAMESPACE = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: deny-all
  namespace: bar
spec:
  action: DENY
  rules:
  - {}
---
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: allow-nothing
  namespace: bar
spec: {}
"""


@dataclass(frozen=True)
class Case:
    id: str
    manifests: str
    connection: Connection
    allowed: bool
    policy: str | None = None
    reason: str = ""  # a substring the reason must contain
    root_namespace: str = ROOT
    extra: dict[str, Any] = field(default_factory=dict)


CASES = [
    # --- defaults and scope -----------------------------------------------------------------
    Case("no policies: allowed", "", conn(), True, reason="no ALLOW policy applies"),
    Case("no policies: plaintext allowed too", "", conn(PLAINTEXT), True),
    Case(
        "allow-nothing denies mTLS",
        ALLOW_NOTHING,
        conn(),
        False,
        reason="no ALLOW policy matched (1 apply)",
    ),
    Case("allow-nothing denies plaintext", ALLOW_NOTHING, conn(PLAINTEXT), False),
    Case(
        "allow-nothing of another namespace does not apply",
        ALLOW_NOTHING,
        conn(namespace="bar"),
        True,
    ),
    Case(
        "deny-all denies",
        DENY_ALL,
        conn(),
        False,
        "foo/deny-all",
        "denied by DENY policy foo/deny-all",
    ),
    Case("deny-all denies plaintext", DENY_ALL, conn(PLAINTEXT), False, "foo/deny-all"),
    Case("allow-all allows plaintext", ALLOW_ALL, conn(PLAINTEXT), True, "foo/allow-all"),
    Case(
        "deny-all wins over allow-all",
        DENY_ALL + "---\n" + ALLOW_ALL,
        conn(),
        False,
        "foo/deny-all",
    ),
    Case(
        "mesh-wide allow-nothing in the root namespace applies to every namespace",
        MESH_ALLOW_NOTHING,
        conn(namespace="anywhere"),
        False,
        reason="no ALLOW policy matched (1 apply)",
    ),
    Case(
        "mesh-wide allow-nothing plus a namespace allow-all: the ALLOWs are ORed",
        MESH_ALLOW_NOTHING + "---\n" + ALLOW_ALL,
        conn(),
        True,
        "foo/allow-all",
    ),
    Case(
        "with another root namespace, weft-system policies are namespace policies",
        MESH_ALLOW_NOTHING,
        conn(),
        True,
        root_namespace="istio-system",
    ),
    Case(
        "policies of another namespace do not apply",
        OTHER_NAMESPACE,
        conn(PLAINTEXT),
        True,
    ),
    Case("selector matching the workload applies", SELECTOR_HTTPBIN_NOTHING, conn(), False),
    Case(
        "selector not matching the workload does not apply",
        SELECTOR_HTTPBIN_NOTHING,
        conn(labels={"app": "reviews"}),
        True,
    ),
    Case(
        "selector needs every label (subset match)",
        SELECTOR_HTTPBIN_NOTHING,
        conn(labels={"app": "httpbin", "extra": "x"}),
        False,
    ),
    Case(
        "empty matchLabels selects every workload of the namespace",
        EMPTY_SELECTOR_NOTHING,
        conn(labels={}),
        False,
    ),
    Case(
        "empty matchLabels does not reach other namespaces",
        EMPTY_SELECTOR_NOTHING,
        conn(namespace="bar"),
        True,
    ),
    Case(
        "root-namespace selector policy selects matching workloads in every namespace",
        ROOT_SELECTOR_DENY,
        conn(PLAINTEXT, namespace="shop"),
        False,
        "weft-system/deny-plaintext-to-httpbins",
    ),
    Case(
        "root-namespace selector policy skips workloads whose labels differ",
        ROOT_SELECTOR_DENY,
        conn(PLAINTEXT, namespace="shop", labels={"app": "reviews"}),
        True,
    ),
    Case(
        "targetRefs policies are for waypoints: a ztunnel ignores them",
        TARGET_REFS,
        conn(PLAINTEXT),
        True,
        reason="no ALLOW policy applies",
    ),
    # --- principals -------------------------------------------------------------------------
    Case(
        "allow by principal and port: both match",
        ALLOW_SLEEP_PORT_8000,
        conn(SLEEP, port=8000),
        True,
        "foo/httpbin-viewer",
        "allowed by ALLOW policy foo/httpbin-viewer",
    ),
    Case(
        "allow by principal and port: other port",
        ALLOW_SLEEP_PORT_8000,
        conn(SLEEP, port=9000),
        False,
    ),
    Case(
        "allow by principal and port: other principal",
        ALLOW_SLEEP_PORT_8000,
        conn(BAR_CLIENT, port=8000),
        False,
    ),
    Case(
        "allow by principal and port: plaintext never matches principals",
        ALLOW_SLEEP_PORT_8000,
        conn(PLAINTEXT),
        False,
    ),
    Case(
        "principals match the whole identity, not a trust-domain-less tail",
        ALLOW_SLEEP_PORT_8000,
        conn("spiffe://other.domain/ns/foo/sa/sleep"),
        False,
    ),
    Case(
        "principal prefix wildcard",
        WILDCARD_PRINCIPALS,
        conn("spiffe://cluster.local/ns/admin/sa/ops"),
        True,
    ),
    Case(
        "principal suffix wildcard, any trust domain and namespace",
        WILDCARD_PRINCIPALS,
        conn("spiffe://td.example/ns/zzz/sa/sleep"),
        True,
    ),
    Case("principal wildcards: no match", WILDCARD_PRINCIPALS, conn(BAR_CLIENT), False),
    Case("principal '*' matches any mTLS peer", ALLOW_ANY_MTLS, conn(BAR_CLIENT), True),
    Case("principal '*' does not match plaintext", ALLOW_ANY_MTLS, conn(PLAINTEXT), False),
    Case(
        "require mTLS: notPrincipals '*' denies plaintext",
        REQUIRE_MTLS,
        conn(PLAINTEXT),
        False,
        "foo/require-mtls",
    ),
    Case("require mTLS: mTLS passes", REQUIRE_MTLS, conn(BAR_CLIENT), True),
    # --- namespaces -------------------------------------------------------------------------
    Case(
        "deny by namespace: bar denied", DENY_NAMESPACE_BAR, conn(BAR_CLIENT), False, "foo/deny-bar"
    ),
    Case("deny by namespace: foo passes", DENY_NAMESPACE_BAR, conn(SLEEP), True),
    Case(
        "deny by namespace: plaintext has no namespace, so namespaces never match it",
        DENY_NAMESPACE_BAR,
        conn(PLAINTEXT),
        True,
    ),
    Case(
        "notNamespaces: other namespace denied",
        DENY_OTHER_NAMESPACES,
        conn(BAR_CLIENT),
        False,
        "foo/deny-other-namespaces",
    ),
    Case("notNamespaces: own namespace passes", DENY_OTHER_NAMESPACES, conn(SLEEP), True),
    Case(
        "notNamespaces matches plaintext (no namespace is not 'foo')",
        DENY_OTHER_NAMESPACES,
        conn(PLAINTEXT),
        False,
        "foo/deny-other-namespaces",
    ),
    Case(
        "a non-workload SPIFFE ID has no namespace",
        DENY_OTHER_NAMESPACES,
        conn("spiffe://cluster.local/weft/node/node-1"),
        False,
        "foo/deny-other-namespaces",
    ),
    # --- ipBlocks ---------------------------------------------------------------------------
    Case("ipBlocks: inside the block", IP_BLOCKS, conn(source_ip="10.1.7.1"), True),
    Case("ipBlocks: inside notIpBlocks", IP_BLOCKS, conn(source_ip="10.1.2.7"), False),
    Case("ipBlocks: outside", IP_BLOCKS, conn(source_ip="10.2.0.1"), False),
    Case("ipBlocks: IPv6 block", IP_BLOCKS, conn(source_ip="fd00:1::20"), True),
    Case("ipBlocks: IPv6 outside", IP_BLOCKS, conn(source_ip="fd00:2::20"), False),
    Case(
        "ipBlocks: an IPv4-mapped IPv6 source is compared as IPv4",
        IP_BLOCKS,
        conn(source_ip="::ffff:10.1.7.1"),
        True,
    ),
    Case("ipBlocks: plaintext is matched by address", IP_BLOCKS, conn(PLAINTEXT), True),
    Case("single address is a /32: equal", SINGLE_IP, conn(source_ip="10.1.0.5"), True),
    Case("single address is a /32: neighbour", SINGLE_IP, conn(source_ip="10.1.0.6"), False),
    # --- when -------------------------------------------------------------------------------
    Case("when source.namespace: exact", WHEN_SOURCE_NAMESPACE, conn(SLEEP), True),
    Case("when source.namespace: prefix", WHEN_SOURCE_NAMESPACE, conn(ADMIN), True),
    Case("when source.namespace: other", WHEN_SOURCE_NAMESPACE, conn(BAR_CLIENT), False),
    Case("when source.namespace: plaintext", WHEN_SOURCE_NAMESPACE, conn(PLAINTEXT), False),
    Case(
        "when source.namespace notValues: other denied",
        WHEN_NOT_SOURCE_NAMESPACE,
        conn(BAR_CLIENT),
        False,
        "foo/deny-unless-foo",
    ),
    Case(
        "when source.namespace notValues: plaintext denied",
        WHEN_NOT_SOURCE_NAMESPACE,
        conn(PLAINTEXT),
        False,
        "foo/deny-unless-foo",
    ),
    Case(
        "when source.namespace notValues: own passes",
        WHEN_NOT_SOURCE_NAMESPACE,
        conn(SLEEP),
        True,
    ),
    Case("when destination.port: in values", WHEN_DESTINATION_PORT, conn(port=8000), True),
    Case(
        "when destination.port: conditions are ANDed (8080 is in notValues)",
        WHEN_DESTINATION_PORT,
        conn(port=8080),
        False,
    ),
    Case("when destination.port: not in values", WHEN_DESTINATION_PORT, conn(port=9000), False),
    Case("when ips and principal: all hold", WHEN_IPS_AND_PRINCIPAL, conn(), True),
    Case(
        "when source.ip notValues",
        WHEN_IPS_AND_PRINCIPAL,
        conn(source_ip="10.1.0.9"),
        False,
    ),
    Case(
        "when destination.ip",
        WHEN_IPS_AND_PRINCIPAL,
        conn(destination_ip="10.1.2.10"),
        False,
    ),
    Case(
        "when source.principal suffix",
        WHEN_IPS_AND_PRINCIPAL,
        conn(BAR_CLIENT),
        False,
    ),
    Case(
        "when source.principal: plaintext never matches",
        WHEN_IPS_AND_PRINCIPAL,
        conn(PLAINTEXT),
        False,
    ),
    # --- ports and rule structure -----------------------------------------------------------
    Case("notPorts: another port", PORTS_AND_NOT_PORTS, conn(port=8000), True),
    Case(
        "notPorts: the excluded port (the other operation can never match)",
        PORTS_AND_NOT_PORTS,
        conn(port=9000),
        False,
    ),
    Case("rule: principal source, to 8000", COMBINED, conn(SLEEP, port=8000), True),
    Case("rule: namespace source ORed in", COMBINED, conn(BAR_CLIENT, port=8000), True),
    Case("rule: from AND to", COMBINED, conn(BAR_CLIENT, port=9000), False),
    Case(
        "second rule: namespace AND ipBlock",
        COMBINED,
        conn(ADMIN, port=9000, source_ip="10.9.3.3"),
        True,
    ),
    Case(
        "second rule: namespace without the ipBlock",
        COMBINED,
        conn(ADMIN, port=9000, source_ip="10.8.3.3"),
        False,
    ),
    # --- CUSTOM -----------------------------------------------------------------------------
    Case(
        "CUSTOM fails closed: its HTTP rule is widened to every connection",
        CUSTOM_EXT_AUTHZ,
        conn(),
        False,
        "foo/ext-authz",
        "denied by CUSTOM policy foo/ext-authz: ztunnel cannot call extension provider "
        "'sample-ext-authz-grpc', failing closed",
    ),
    Case(
        "CUSTOM not selecting the workload does not apply",
        CUSTOM_EXT_AUTHZ,
        conn(labels={"app": "reviews"}),
        True,
    ),
    Case(
        "CUSTOM for port 9000 fails closed on 9000",
        CUSTOM_ON_PORT_9000,
        conn(port=9000),
        False,
        "foo/ext-authz-admin-port",
    ),
    Case(
        "CUSTOM for port 9000 leaves 8000 alone (the provider would not be asked)",
        CUSTOM_ON_PORT_9000,
        conn(port=8000),
        True,
    ),
    Case(
        "CUSTOM is decided before DENY",
        CUSTOM_EXT_AUTHZ + "---\n" + DENY_ALL,
        conn(),
        False,
        "foo/ext-authz",
    ),
    Case(
        "CUSTOM denies even where an ALLOW matches",
        CUSTOM_EXT_AUTHZ + "---\n" + ALLOW_ALL,
        conn(),
        False,
        "foo/ext-authz",
    ),
    # --- HTTP-only fields in ALLOW ----------------------------------------------------------
    Case(
        "ALLOW with methods cannot match at L4: allow-nothing in effect",
        ALLOW_GET_ONLY,
        conn(port=8000),
        False,
        None,
        "no ALLOW policy matched (1 apply)",
    ),
    Case(
        "ALLOW: an HTTP rule is dropped, the L4 rule beside it still allows",
        ALLOW_L7_AND_L4_RULES,
        conn(BAR_CLIENT),
        True,
        "foo/mixed",
    ),
    Case(
        "ALLOW: the principal in the HTTP rule does not allow on its own",
        ALLOW_L7_AND_L4_RULES,
        conn(SLEEP),
        False,
    ),
    Case(
        "ALLOW: one requestPrincipals source drops the whole rule, L4 sources included",
        ALLOW_JWT_SOURCE,
        conn(SLEEP),
        False,
    ),
    Case(
        "ALLOW: a request.headers condition drops the rule",
        ALLOW_WHEN_HEADER,
        conn(SLEEP),
        False,
    ),
    # --- HTTP-only fields in DENY -----------------------------------------------------------
    Case(
        "DENY with methods still denies at L4, saying the methods were ignored",
        DENY_METHOD_GET,
        conn(),
        False,
        "foo/deny-method-get",
        "denied by DENY policy foo/deny-method-get (HTTP fields ignored at L4: methods)",
    ),
    Case(
        "DENY with methods denies plaintext too",
        DENY_METHOD_GET,
        conn(PLAINTEXT),
        False,
        "foo/deny-method-get",
    ),
    Case(
        "DENY with methods and a selector leaves unselected workloads alone",
        DENY_METHOD_GET,
        conn(labels={"app": "reviews"}),
        True,
    ),
    Case(
        "DENY paths from bar on 8000: bar denied on 8000 whatever the path",
        DENY_ADMIN_PATHS,
        conn(BAR_CLIENT, port=8000),
        False,
        "foo/deny-admin-path",
        "(HTTP fields ignored at L4: paths)",
    ),
    Case(
        "DENY paths from bar on 8000: the L4 fields kept still narrow it (port)",
        DENY_ADMIN_PATHS,
        conn(BAR_CLIENT, port=9000),
        True,
    ),
    Case(
        "DENY paths from bar on 8000: the L4 fields kept still narrow it (namespace)",
        DENY_ADMIN_PATHS,
        conn(SLEEP, port=8000),
        True,
    ),
    Case(
        "DENY with a request.headers condition: the condition is ignored",
        DENY_WHEN_HEADER,
        conn(BAR_CLIENT),
        False,
        "foo/deny-header",
    ),
    Case(
        "DENY with a request.headers condition: the source still narrows it",
        DENY_WHEN_HEADER,
        conn(SLEEP),
        True,
    ),
    Case(
        "DENY notRequestPrincipals '*' denies every connection at L4 (stricter than istiod's "
        "no-op, istio/istio#61126)",
        DENY_NO_JWT,
        conn(SLEEP),
        False,
        "foo/deny-no-jwt",
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_istio_semantics(case: Case) -> None:
    decision = decide(case.manifests, case.connection, root_namespace=case.root_namespace)
    assert decision.allowed is case.allowed, decision.reason
    if case.policy is not None or not case.allowed:
        assert decision.policy == case.policy, decision.reason
    assert case.reason in decision.reason


def test_deciding_action_is_reported() -> None:
    assert decide(DENY_ALL, conn()).action is PolicyAction.DENY
    assert decide(ALLOW_ALL, conn()).action is PolicyAction.ALLOW
    assert decide(CUSTOM_EXT_AUTHZ, conn()).action is PolicyAction.CUSTOM
    assert decide(ALLOW_NOTHING, conn()).action is None
    assert decide("", conn()) == Decision(True, "allowed: no ALLOW policy applies")


def test_no_allow_matched_counts_the_allow_policies_that_apply() -> None:
    text = ALLOW_NOTHING + "---\n" + MESH_ALLOW_NOTHING + "---\n" + DENY_NAMESPACE_BAR
    decision = decide(text, conn())
    assert decision == Decision(False, "no ALLOW policy matched (2 apply)")


def test_first_matching_deny_in_name_order_is_reported() -> None:
    text = DENY_NAMESPACE_BAR + "---\n" + DENY_ALL + "---\n" + DENY_OTHER_NAMESPACES
    assert decide(text, conn(BAR_CLIENT)).policy == "foo/deny-all"
    # the order the policies come in does not matter
    reversed_policies = list(reversed(policies(text)))
    assert evaluate(reversed_policies, conn(BAR_CLIENT)).policy == "foo/deny-all"


def test_audit_lists_matching_audit_policies_and_changes_nothing() -> None:
    decision = decide(AUDIT_BAR, conn(BAR_CLIENT))
    assert decision.allowed
    # audit-headers has only an HTTP field: like DENY, it is applied without it (wider)
    assert decision.audit == ("foo/audit-bar", "foo/audit-headers")
    assert decide(AUDIT_BAR, conn(SLEEP)).audit == ("foo/audit-headers",)
    denied = decide(AUDIT_BAR + "---\n" + DENY_NAMESPACE_BAR, conn(BAR_CLIENT))
    assert not denied.allowed
    assert denied.audit == ("foo/audit-bar", "foo/audit-headers")


def test_audit_policies_alone_are_not_allow_policies() -> None:
    decision = decide(AUDIT_BAR, conn(PLAINTEXT))
    assert decision.allowed
    assert decision.reason == "allowed: no ALLOW policy applies"


def test_notes_say_where_http_fields_were_left_out() -> None:
    decision = decide(DENY_METHOD_GET + "---\n" + ALLOW_L7_AND_L4_RULES, conn(BAR_CLIENT))
    assert not decision.allowed
    assert decision.notes == (
        "DENY policy foo/deny-method-get: HTTP fields (methods) ignored at L4, so it matches "
        "more connections than written",
        "ALLOW policy foo/mixed: 1 of 2 rules use HTTP fields (paths) and cannot match at L4",
    )


def test_notes_name_the_custom_provider() -> None:
    (note,) = decide(CUSTOM_ON_PORT_9000, conn(port=8000)).notes
    assert note == (
        "CUSTOM policy foo/ext-authz-admin-port: a ztunnel cannot call provider 'opa', so "
        "connections its rules match are denied (fail closed)"
    )


def test_notes_only_cover_policies_that_apply() -> None:
    assert decide(DENY_METHOD_GET, conn(labels={"app": "reviews"})).notes == ()


def test_pure_l4_policies_have_no_notes() -> None:
    assert decide(COMBINED + "---\n" + REQUIRE_MTLS, conn()).notes == ()


# --- Connection --------------------------------------------------------------------------


def test_source_namespace_comes_from_the_principal() -> None:
    assert conn(SLEEP).source_namespace == "foo"
    assert conn(BAR_CLIENT).source_namespace == "bar"
    assert conn(PLAINTEXT).source_namespace is None
    assert conn("spiffe://cluster.local/weft/node/n1").source_namespace is None


def test_a_principal_that_is_not_a_spiffe_id_is_refused() -> None:
    with pytest.raises(IdentityError):
        conn("cluster.local/ns/foo/sa/sleep")


def test_connection_is_frozen_and_holds_addresses() -> None:
    c = conn(source_ip="::ffff:10.0.0.1", destination_ip="fd00::1")
    assert c.source_ip == ipaddress.IPv4Address("10.0.0.1")
    assert c.destination_ip == ipaddress.IPv6Address("fd00::1")
    with pytest.raises(AttributeError):
        c.destination_port = 1  # type: ignore[misc]


def test_connection_to_a_mesh_workload() -> None:
    workload = Workload(
        uid="u1",
        name="httpbin-7d9f",
        namespace="foo",
        service_account="httpbin",
        identity="spiffe://cluster.local/ns/foo/sa/httpbin",
        node="node-1",
        node_address="192.168.0.2",
        addresses=("10.1.1.10",),
        labels={"app": "httpbin"},
        enrolled=True,
        ready=True,
    )
    c = Connection.to_workload(
        workload,
        destination_ip="10.1.1.10",
        destination_port=8000,
        source_ip="10.1.0.5",
        source_principal=SLEEP,
    )
    assert (c.destination_namespace, c.destination_name) == ("foo", "httpbin-7d9f")
    assert c.destination_labels == {"app": "httpbin"}
    assert evaluate(policies(ALLOW_SLEEP_PORT_8000), c).allowed


# --- applicability and compiled matchers --------------------------------------------------


def test_applies_to_follows_namespace_selector_and_target_refs() -> None:
    (ns_policy,) = policies(ALLOW_NOTHING)
    (root_selector,) = policies(ROOT_SELECTOR_DENY)
    waypoint, gateway = policies(TARGET_REFS)
    assert applies_to(ns_policy, "foo", {})
    assert not applies_to(ns_policy, "bar", {})
    assert applies_to(root_selector, "anywhere", {"app": "httpbin"})
    assert not applies_to(root_selector, "anywhere", {"app": "other"})
    assert not applies_to(waypoint, "foo", HTTPBIN)
    assert not applies_to(gateway, "foo", HTTPBIN)


def test_applicable_lists_compiled_policies_in_key_order() -> None:
    text = (
        DENY_ALL + "---\n" + MESH_ALLOW_NOTHING + "---\n" + OTHER_NAMESPACE + "---\n" + TARGET_REFS
    )
    found = applicable(policies(text), "foo", HTTPBIN)
    assert [m.key for m in found] == ["foo/deny-all", "weft-system/allow-nothing"]


def test_compiled_matchers_are_reused_and_accepted_by_evaluate() -> None:
    (policy,) = policies(ALLOW_SLEEP_PORT_8000)
    matcher = matcher_for(policy)
    assert matcher_for(policy) is matcher
    assert matcher_for(matcher) is matcher
    assert isinstance(matcher, PolicyMatcher)
    assert matcher.matches(conn(SLEEP))
    assert not matcher.matches(conn(BAR_CLIENT))
    assert evaluate([matcher], conn(SLEEP)).policy == "foo/httpbin-viewer"


def test_equal_policies_that_are_different_objects_compile_separately() -> None:
    (a,) = policies(DENY_ALL)
    (b,) = policies(DENY_ALL)
    assert a == b and a is not b
    assert matcher_for(a) is not matcher_for(b)
    assert matcher_for(a) == matcher_for(b)


def test_compiled_matchers_do_not_keep_policies_alive() -> None:
    (policy,) = policies(ALLOW_SLEEP_PORT_8000)
    matcher_for(policy)
    ref = weakref.ref(policy)
    del policy
    gc.collect()
    assert ref() is None


def test_allow_policy_without_rules_matches_nothing_and_empty_rule_everything() -> None:
    (nothing,) = policies(ALLOW_NOTHING)
    (everything,) = policies(ALLOW_ALL)
    assert matcher_for(nothing).rules == ()
    assert not matcher_for(nothing).matches(conn())
    assert matcher_for(everything).rules == ((),)
    assert matcher_for(everything).matches(conn(PLAINTEXT))


def test_many_policies_evaluate_quickly() -> None:
    # 200 namespaces' worth of policies, each compiled once; evaluating is cheap.
    text = "---\n".join(
        ALLOW_SLEEP_PORT_8000.replace("namespace: foo", f"namespace: ns{i}")
        + "---\n"
        + DENY_NAMESPACE_BAR.replace("namespace: foo", f"namespace: ns{i}")
        for i in range(200)
    )
    parsed = policies(text) + policies(ALLOW_SLEEP_PORT_8000)
    for _ in range(200):
        assert evaluate(parsed, conn(SLEEP)).allowed
