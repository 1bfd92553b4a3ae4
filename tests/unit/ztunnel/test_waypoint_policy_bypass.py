"""L7 authorization cannot be bypassed by calling a pod directly (ztunnel/waypointguard.py and
ztunnel/admission.py): when an AuthorizationPolicy with HTTP attributes applies to a workload
through its Service's waypoint, the destination ztunnel admits only that waypoint's identity.
Everything else keeps Istio's behaviour: pod-IP traffic to a `for: service` waypoint's
backends may skip routes."""

from __future__ import annotations

import dataclasses
import textwrap
from dataclasses import dataclass

import pytest

from meshcore.meshstate import (
    MeshService,
    ServiceMembership,
    ServicePort,
    StateValue,
    TrafficType,
    Waypoint,
    Workload,
)
from meshcore.resources import ResourceKey, documents_from_text, parse_documents
from meshcore.resources.security import AuthorizationPolicy, PolicyTargetRef, TargetKind
from ztunnel.admission import Attempt, Listener, Verdict, admit
from ztunnel.state import MeshView
from ztunnel.waypointguard import guarded_workloads

TD = "cluster.local"
NODE1, NODE2, NODE9 = "198.18.0.1", "198.18.0.2", "198.18.0.9"
WEB = f"spiffe://{TD}/ns/shop/sa/web"
API = f"spiffe://{TD}/ns/shop/sa/api"
WAYPOINT_ID = f"spiffe://{TD}/ns/shop/sa/waypoint"
OTHER_WAYPOINT_ID = f"spiffe://{TD}/ns/shop/sa/other-waypoint"


def workload(
    name: str, ip: str, *, node: str, node_address: str, sa: str, **kw: object
) -> Workload:
    return Workload(
        uid=f"uid-{name}",
        name=name,
        namespace="shop",
        service_account=sa,
        identity=f"spiffe://{TD}/ns/shop/sa/{sa}",
        node=node,
        node_address=node_address,
        addresses=(ip,),
        labels={"app": name},
        enrolled=True,
        ready=True,
        **kw,  # type: ignore[arg-type]
    )


API_POD = workload("api", "10.0.1.10", node="node-1", node_address=NODE1, sa="api",
                   services=(ServiceMembership("shop", "api", {80: 8080}),))  # fmt: skip
PLAIN_POD = workload("plain", "10.0.1.12", node="node-1", node_address=NODE1, sa="api",
                     services=(ServiceMembership("shop", "plain", {80: 8080}),))  # fmt: skip
WEB_POD = workload("web", "10.0.2.20", node="node-2", node_address=NODE2, sa="web")
WAYPOINT_POD = workload("waypoint-0", "10.0.9.9", node="node-9", node_address=NODE9,
                        sa="waypoint")  # fmt: skip
API_SVC = MeshService("api", "shop", "api.shop.svc.cluster.local", ("10.96.0.10",),
                      (ServicePort("http", 80),), waypoint="shop/waypoint")  # fmt: skip
PLAIN_SVC = MeshService("plain", "shop", "plain.shop.svc.cluster.local", ("10.96.0.12",),
                        (ServicePort("http", 80),), waypoint="shop/waypoint")  # fmt: skip
UNBOUND_API_SVC = dataclasses.replace(API_SVC, waypoint="")
WAYPOINT = Waypoint("waypoint", "shop", ("10.96.0.99",), TrafficType.SERVICE, WAYPOINT_ID)
OTHER_WAYPOINT = Waypoint("other-waypoint", "shop", ("10.96.0.98",), TrafficType.SERVICE,
                          OTHER_WAYPOINT_ID)  # fmt: skip


def policy(name: str, target: str, rules: str, *, namespace: str = "shop") -> str:
    kind, _, target_name = target.partition("/")
    group = "" if kind == "Service" else "gateway.networking.k8s.io"
    return f"""
    apiVersion: security.weft.dev/v1
    kind: AuthorizationPolicy
    metadata: {{name: {name}, namespace: {namespace}}}
    spec:
      targetRefs: [{{group: "{group}", kind: {kind}, name: {target_name}}}]
      action: ALLOW
      rules: {rules}
    """


GET_ONLY = "[{to: [{operation: {methods: [GET]}}]}]"
PATHS = "[{to: [{operation: {paths: [/api/*]}}]}]"
NOT_HOSTS = "[{to: [{operation: {notHosts: [evil.example]}}]}]"
REQUEST_PRINCIPALS = "[{from: [{source: {requestPrincipals: ['*']}}]}]"
HEADER_WHEN = "[{when: [{key: 'request.headers[x-team]', values: [blue]}]}]"
L4_ONLY = "[{from: [{source: {namespaces: [shop]}}]}]"
L4_WHEN = "[{when: [{key: source.namespace, values: [shop]}]}]"


def parsed(text: str) -> list[AuthorizationPolicy]:
    docs = documents_from_text(textwrap.dedent(text), "t")
    return [
        p.resource for p in parse_documents(docs) if isinstance(p.resource, AuthorizationPolicy)
    ]


def mesh(
    *policy_texts: str,
    services: tuple[MeshService, ...] = (API_SVC, PLAIN_SVC),
    extra: tuple[StateValue, ...] = (),
    api_pod: Workload = API_POD,
) -> MeshView:
    values: list[StateValue] = [api_pod, PLAIN_POD, WEB_POD, WAYPOINT_POD, WAYPOINT,
                                OTHER_WAYPOINT, *services, *extra]  # fmt: skip
    for text in policy_texts:
        values.extend(parsed(text))
    state: dict[ResourceKey, StateValue] = {v.key: v for v in values}
    v = MeshView("node-1")
    v.update(state)
    return v


def direct(target: str = "10.0.1.10", peer: str = WEB, peer_address: str = NODE2) -> Attempt:
    return Attempt(Listener.HBONE, target, 8080, peer_address, peer, API, "for=10.0.2.20")


def via_waypoint(peer: str = WAYPOINT_ID) -> Attempt:
    return Attempt(Listener.HBONE, "10.0.1.10", 8080, NODE9, peer, API, "for=10.0.2.20")


def plaintext() -> Attempt:
    return Attempt(Listener.PLAINTEXT, "10.0.1.10", 8080, "10.0.2.20")


@dataclass(frozen=True)
class Case:
    name: str
    policies: tuple[str, ...]
    attempt: Attempt
    verdict: Verdict
    services: tuple[MeshService, ...] = (API_SVC, PLAIN_SVC)


P = policy
CASES = [
    Case("no policy: pod-IP traffic skips the service waypoint (Istio)", (), direct(),
         Verdict.ALLOW),
    Case("methods on the Service: a direct call is refused",
         (P("get", "Service/api", GET_ONLY),), direct(), Verdict.WAYPOINT_POLICY_BYPASS),
    Case("methods on the Service: through its waypoint is admitted",
         (P("get", "Service/api", GET_ONLY),), via_waypoint(), Verdict.ALLOW),
    Case("paths on the waypoint Gateway: a direct call is refused",
         (P("paths", "Gateway/waypoint", PATHS),), direct(), Verdict.WAYPOINT_POLICY_BYPASS),
    Case("paths on the waypoint Gateway: every Service it serves is guarded",
         (P("paths", "Gateway/waypoint", PATHS),), direct("10.0.1.12"),
         Verdict.WAYPOINT_POLICY_BYPASS),
    Case("paths on the waypoint Gateway: through it is admitted",
         (P("paths", "Gateway/waypoint", PATHS),), via_waypoint(), Verdict.ALLOW),
    Case("notHosts counts as L7", (P("h", "Service/api", NOT_HOSTS),), direct(),
         Verdict.WAYPOINT_POLICY_BYPASS),
    Case("requestPrincipals counts as L7", (P("jwt", "Service/api", REQUEST_PRINCIPALS),),
         direct(), Verdict.WAYPOINT_POLICY_BYPASS),
    Case("a request.headers when key counts as L7", (P("hdr", "Service/api", HEADER_WHEN),),
         direct(), Verdict.WAYPOINT_POLICY_BYPASS),
    Case("a policy on one Service leaves another Service's pods reachable",
         (P("get", "Service/api", GET_ONLY),), direct("10.0.1.12"), Verdict.ALLOW),
    Case("an L4-only targetRefs policy does not guard", (P("l4", "Service/api", L4_ONLY),),
         direct(), Verdict.ALLOW),
    Case("an L4-only when key does not guard", (P("l4w", "Service/api", L4_WHEN),), direct(),
         Verdict.ALLOW),
    Case("another waypoint's identity is refused", (P("get", "Service/api", GET_ONLY),),
         via_waypoint(OTHER_WAYPOINT_ID), Verdict.WAYPOINT_POLICY_BYPASS),
    Case("a policy on a Gateway that serves nothing here does not guard",
         (P("get", "Gateway/other-waypoint", GET_ONLY),), direct(), Verdict.ALLOW),
    Case("a Service bound to no waypoint is not guarded (nothing could enforce it)",
         (P("get", "Service/api", GET_ONLY),), direct(), Verdict.ALLOW,
         (UNBOUND_API_SVC, PLAIN_SVC)),
    Case("plaintext to a guarded workload is refused", (P("get", "Service/api", GET_ONLY),),
         plaintext(), Verdict.WAYPOINT_POLICY_BYPASS),
    Case("plaintext without a policy keeps Istio's behaviour", (), plaintext(), Verdict.ALLOW),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_waypoint_policy_bypass_table(case: Case) -> None:
    got = admit(case.attempt, mesh(*case.policies, services=case.services), trust_domain=TD)
    assert got.verdict is case.verdict, got.reason
    if case.verdict is Verdict.WAYPOINT_POLICY_BYPASS:
        assert got.status == 403 and got.by_policy
        assert "shop/waypoint" in got.reason


def test_the_reason_names_the_workload_the_waypoint_and_the_peer() -> None:
    got = admit(direct(), mesh(policy("get", "Service/api", GET_ONLY)), trust_domain=TD)
    assert got.reason == (
        "shop/api has an L7 AuthorizationPolicy enforced by waypoint shop/waypoint: reached "
        f"only through it, not from {WEB}"
    )
    assert got.peer_reason == "denied"  # the peer learns nothing of the policy


def test_the_waypoint_identity_comes_from_the_certificate_not_forwarded() -> None:
    # A client naming the waypoint's pod in `forwarded` is still itself.
    attempt = Attempt(Listener.HBONE, "10.0.1.10", 8080, NODE2, WEB, API, "for=10.0.9.9")
    got = admit(attempt, mesh(policy("get", "Service/api", GET_ONLY)), trust_domain=TD)
    assert got.verdict is Verdict.WAYPOINT_POLICY_BYPASS


def test_the_waypoint_passes_on_to_l4_policy() -> None:
    deny_waypoint = """
    apiVersion: security.weft.dev/v1
    kind: AuthorizationPolicy
    metadata: {name: deny-all, namespace: shop}
    spec: {action: DENY, rules: [{}]}
    """
    v = mesh(policy("get", "Service/api", GET_ONLY), deny_waypoint)
    assert admit(via_waypoint(), v, trust_domain=TD).verdict is Verdict.DENIED


def test_a_workload_behind_two_guarded_services_admits_either_waypoint() -> None:
    other = MeshService("api-v2", "shop", "api-v2.shop.svc.cluster.local", ("10.96.0.11",),
                        (ServicePort("http", 80),), waypoint="shop/other-waypoint")  # fmt: skip
    pod = dataclasses.replace(
        API_POD, services=(*API_POD.services, ServiceMembership("shop", "api-v2", {80: 8080}))
    )
    v = mesh(
        policy("a", "Service/api", GET_ONLY),
        policy("b", "Service/api-v2", GET_ONLY),
        services=(API_SVC, PLAIN_SVC, other),
        api_pod=pod,
    )
    assert v.waypoint_guard[("shop", "api")] == {"shop/waypoint", "shop/other-waypoint"}
    for peer in (WAYPOINT_ID, OTHER_WAYPOINT_ID):
        assert admit(via_waypoint(peer), v, trust_domain=TD).allowed
    assert admit(direct(), v, trust_domain=TD).verdict is Verdict.WAYPOINT_POLICY_BYPASS


def _gateway_class_policy(namespace: str) -> AuthorizationPolicy:
    (base,) = parsed(policy("all", "Service/api", GET_ONLY, namespace=namespace))
    # built by hand: the parser takes a GatewayClass only in the root namespace
    ref = PolicyTargetRef(TargetKind.GATEWAY_CLASS, "weft-waypoint")
    return dataclasses.replace(base, target_refs=(ref,))


def test_a_gateway_class_policy_from_the_root_namespace_guards_every_waypoint() -> None:
    guard = guarded_workloads(
        [_gateway_class_policy("weft-system")],
        [API_SVC, PLAIN_SVC],
        [API_POD, PLAIN_POD, WEB_POD],
        {"shop/waypoint": WAYPOINT},
        root_namespace="weft-system",
    )
    assert guard == {("shop", "api"): {"shop/waypoint"}, ("shop", "plain"): {"shop/waypoint"}}


def test_a_gateway_class_policy_outside_the_root_namespace_guards_nothing() -> None:
    guard = guarded_workloads(
        [_gateway_class_policy("shop")],
        [API_SVC],
        [API_POD],
        {"shop/waypoint": WAYPOINT},
        root_namespace="weft-system",
    )
    assert guard == {}


def test_the_guard_follows_state_updates() -> None:
    v = mesh(policy("get", "Service/api", GET_ONLY))
    assert ("shop", "api") in v.waypoint_guard
    v.update({WAYPOINT.key: WAYPOINT, API_POD.key: API_POD, API_SVC.key: API_SVC})
    assert v.waypoint_guard == {}
    assert admit(direct(), v, trust_domain=TD).verdict is not Verdict.WAYPOINT_POLICY_BYPASS
