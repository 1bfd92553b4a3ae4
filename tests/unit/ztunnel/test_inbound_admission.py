"""Inbound admission (ztunnel/admission.py) as a table: target local/remote/unenrolled,
peer identity (workload, other trust domain, node, odd path), SNI, `forwarded` claims (vouched
for, spoofed, malformed), plaintext under PeerAuthentication, AuthorizationPolicy verdicts."""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

import pytest

from meshcore.meshstate import Workload
from meshcore.resources import documents_from_text, parse_documents
from meshcore.resources.security import AuthorizationPolicy, PeerAuthentication
from ztunnel.admission import (
    Attempt,
    ForwardedError,
    Listener,
    Verdict,
    admit,
    parse_forwarded,
    peer_refusal,
)
from ztunnel.state import MeshView

TD = "cluster.local"
NODE1, NODE2 = "198.18.0.1", "198.18.0.2"
WEB = f"spiffe://{TD}/ns/shop/sa/web"
API = f"spiffe://{TD}/ns/shop/sa/api"
SLEEP = f"spiffe://{TD}/ns/other/sa/sleep"


def workload(
    name: str,
    ip: str,
    *,
    node: str = "node-1",
    node_address: str = NODE1,
    sa: str = "web",
    namespace: str = "shop",
    enrolled: bool = True,
) -> Workload:
    return Workload(
        uid=f"uid-{name}",
        name=name,
        namespace=namespace,
        service_account=sa,
        identity=f"spiffe://{TD}/ns/{namespace}/sa/{sa}",
        node=node,
        node_address=node_address,
        addresses=(ip,),
        labels={"app": name},
        enrolled=enrolled,
        ready=True,
    )


API_POD = workload("api", "10.0.1.10", sa="api")  # the destination, on this node (node-1)
LEGACY = workload("legacy", "10.0.1.11", enrolled=False)  # on this node, not in the mesh
REMOTE_API = workload("api-2", "10.0.2.10", node="node-2", node_address=NODE2, sa="api")
WEB_ON_2 = workload("web", "10.0.2.20", node="node-2", node_address=NODE2)  # a client
SLEEP_ON_2 = workload("sleep", "10.0.2.21", node="node-2", node_address=NODE2, sa="sleep",
                      namespace="other")  # fmt: skip
WEB_ON_3 = workload("web-3", "10.0.3.20", node="node-3", node_address="198.18.0.3")


def resources(text: str) -> list[object]:
    return [p.resource for p in parse_documents(documents_from_text(textwrap.dedent(text), "t"))]


DENY_WEB_IP = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: deny-web-ip, namespace: shop}
spec:
  action: DENY
  rules: [{from: [{source: {ipBlocks: ["10.0.2.20/32"]}}]}]
"""
DENY_WEB_PRINCIPAL = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: deny-web, namespace: shop}
spec:
  action: DENY
  rules: [{from: [{source: {principals: ["cluster.local/ns/shop/sa/web"]}}]}]
"""
ALLOW_SHOP_NAMESPACE = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: only-shop, namespace: shop}
spec:
  action: ALLOW
  rules: [{from: [{source: {namespaces: ["shop"]}}]}]
"""
AUDIT_ALL = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: audit-all, namespace: shop}
spec:
  action: AUDIT
  rules: [{}]
"""
STRICT_SHOP = """
apiVersion: security.weft.dev/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: shop}
spec: {mtls: {mode: STRICT}}
"""


def view(*policy_texts: str) -> MeshView:
    v = MeshView("node-1")
    for w in (API_POD, LEGACY, REMOTE_API, WEB_ON_2, SLEEP_ON_2, WEB_ON_3):
        for ip in w.addresses:
            v.by_ip[ip] = w
    for text in policy_texts:
        for r in resources(text):
            if isinstance(r, AuthorizationPolicy):
                v.policies.append(r)
            elif isinstance(r, PeerAuthentication):
                v.peer_authentications.append(r)
    return v


def hbone(
    target: str = "10.0.1.10",
    *,
    port: int = 8080,
    peer: str | None = WEB,
    peer_address: str = NODE2,
    sni: str = API,
    forwarded: str | None = "for=10.0.2.20",
) -> Attempt:
    return Attempt(Listener.HBONE, target, port, peer_address, peer, sni, forwarded)


def plaintext(target: str = "10.0.1.10", *, port: int = 8080, peer: str = "10.0.2.20") -> Attempt:
    return Attempt(Listener.PLAINTEXT, target, port, peer)


@dataclass(frozen=True)
class Case:
    name: str
    attempt: Attempt
    policies: tuple[str, ...]
    verdict: Verdict
    status: int
    source_ip: str = ""
    bind: bool | None = None


CASES = [
    Case("vouched forwarded address is the source", hbone(), (), Verdict.ALLOW, 200,
         "10.0.2.20", True),
    Case("no forwarded: the peer node is the source", hbone(forwarded=None), (), Verdict.ALLOW,
         200, NODE2, False),
    Case("forwarded naming another identity's pod is ignored", hbone(forwarded="for=10.0.2.21"),
         (), Verdict.ALLOW, 200, NODE2, False),
    Case("forwarded naming a pod on another node is ignored", hbone(forwarded="for=10.0.3.20"),
         (), Verdict.ALLOW, 200, NODE2, False),
    Case("forwarded naming an unknown address is ignored", hbone(forwarded="for=192.0.2.1"),
         (), Verdict.ALLOW, 200, NODE2, False),
    Case("spoofed forwarded cannot slip past an ipBlocks DENY",
         hbone(forwarded="for=10.0.2.21", peer=WEB), (DENY_WEB_IP,), Verdict.ALLOW, 200, NODE2),
    Case("honest forwarded meets the ipBlocks DENY", hbone(), (DENY_WEB_IP,), Verdict.DENIED,
         403, "10.0.2.20"),
    Case("malformed forwarded (by= only) is a 400", hbone(forwarded="by=10.0.0.1"), (),
         Verdict.BAD_REQUEST, 400),
    Case("forwarded that is not an address is a 400", hbone(forwarded="for=nobody"), (),
         Verdict.BAD_REQUEST, 400),
    Case("target not in the mesh view", hbone("10.9.9.9"), (), Verdict.UNKNOWN_DESTINATION, 404,
         "10.0.2.20"),
    Case("target on another node", hbone("10.0.2.10"), (), Verdict.UNKNOWN_DESTINATION, 404,
         "10.0.2.20"),
    Case("target not enrolled", hbone("10.0.1.11"), (), Verdict.UNKNOWN_DESTINATION, 404,
         "10.0.2.20"),
    Case("target runs as another identity than the SNI asked", hbone(sni=WEB), (),
         Verdict.WRONG_IDENTITY, 403, "10.0.2.20"),
    Case("another trust domain's workload", hbone(peer="spiffe://evil.example/ns/shop/sa/web"),
         (), Verdict.BAD_PEER, 403),
    Case("a node's own credential", hbone(peer=f"spiffe://{TD}/weft/node/node-2"), (),
         Verdict.BAD_PEER, 403),
    Case("a non-workload path", hbone(peer=f"spiffe://{TD}/ns/shop"), (), Verdict.BAD_PEER, 403),
    Case("no identity at all", hbone(peer=None), (), Verdict.BAD_PEER, 403),
    Case("DENY on principal stops it", hbone(), (DENY_WEB_PRINCIPAL,), Verdict.DENIED, 403,
         "10.0.2.20"),
    Case("ALLOW namespaces admits the same trust domain", hbone(), (ALLOW_SHOP_NAMESPACE,),
         Verdict.ALLOW, 200, "10.0.2.20"),
    Case("ALLOW namespaces refuses another namespace",
         hbone(peer=SLEEP, forwarded="for=10.0.2.21"), (ALLOW_SHOP_NAMESPACE,), Verdict.DENIED,
         403, "10.0.2.21"),
    Case("AUDIT never decides", hbone(), (AUDIT_ALL,), Verdict.ALLOW, 200, "10.0.2.20"),
    Case("plaintext, PERMISSIVE: the client is the source", plaintext(), (), Verdict.ALLOW, 200,
         "10.0.2.20", True),
    Case("plaintext, STRICT: refused", plaintext(), (STRICT_SHOP,), Verdict.STRICT, 403,
         "10.0.2.20"),
    Case("plaintext meets ipBlocks DENY", plaintext(), (DENY_WEB_IP,), Verdict.DENIED, 403,
         "10.0.2.20"),
    Case("plaintext has no namespace to ALLOW", plaintext(), (ALLOW_SHOP_NAMESPACE,),
         Verdict.DENIED, 403, "10.0.2.20"),
    Case("plaintext to a pod not in the mesh", plaintext("10.0.1.11"), (),
         Verdict.UNKNOWN_DESTINATION, 404),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_admission_table(case: Case) -> None:
    got = admit(case.attempt, view(*case.policies), trust_domain=TD)
    assert (got.verdict, got.status) == (case.verdict, case.status), got.reason
    if case.source_ip:
        assert got.source_ip == case.source_ip
    if case.bind is not None:
        assert got.bind_source is case.bind
    assert got.allowed is (case.verdict is Verdict.ALLOW)


def test_namespaces_rule_does_not_match_a_namespace_of_another_trust_domain() -> None:
    # Even if such a peer got this far, `namespaces: [shop]` means this mesh's shop.
    from ztunnel.rbac import Connection, evaluate

    policies = view(ALLOW_SHOP_NAMESPACE).policies
    base = dict(namespace="shop", name="api", destination_ip="10.0.1.10", destination_port=80)
    ours = Connection.build(**base, source_ip="10.0.2.20", source_principal=WEB)  # type: ignore[arg-type]
    assert evaluate(policies, ours).allowed
    foreign = Connection(
        "shop", "api", {}, "10.0.1.10", 80, "10.0.2.20",  # type: ignore[arg-type]
        "spiffe://evil.example/ns/shop/sa/web", trust_domain=TD,
    )  # fmt: skip
    assert foreign.source_namespace is None
    assert not evaluate(policies, foreign).allowed


def test_what_a_peer_is_told_names_no_policy_and_no_port_state() -> None:
    got = admit(hbone(), view(DENY_WEB_PRINCIPAL), trust_domain=TD)
    assert got.peer_reason == "denied" and "deny-web" in got.reason


def test_the_decision_lists_audit_matches_for_the_log() -> None:
    got = admit(hbone(), view(AUDIT_ALL), trust_domain=TD)
    assert got.decision is not None and got.decision.audit == ("shop/audit-all",)


@pytest.mark.parametrize(
    ("header", "address"),
    [
        ("for=10.0.2.20", "10.0.2.20"),
        ("For=10.0.2.20;proto=http", "10.0.2.20"),
        ('for="10.0.2.20:4711"', "10.0.2.20"),
        ('for="[fd00::1]:4711"', "fd00::1"),
        ('for="[fd00::1]"', "fd00::1"),
        ("for=10.0.2.20, for=10.0.9.9", "10.0.2.20"),
        ("proto=http;for=10.0.2.20", "10.0.2.20"),
    ],
)
def test_forwarded_gives_the_first_for_address(header: str, address: str) -> None:
    assert parse_forwarded(header) == address


@pytest.mark.parametrize(
    "header",
    ["", "by=10.0.0.1", "for=", "for=unknown", "for=_hidden", "for=10.0.2", "for=\uff11\uff10.0.0.1",
     "garbage", "for=\udcff"],
)  # fmt: skip
def test_forwarded_without_a_usable_address_is_an_error(header: str) -> None:
    with pytest.raises(ForwardedError):
        parse_forwarded(header)


@pytest.mark.parametrize(
    ("identity", "ok"),
    [
        (WEB, True),
        (f"spiffe://{TD}/ns/a-b/sa/x.y", True),
        ("spiffe://other.td/ns/shop/sa/web", False),
        (f"spiffe://{TD}/weft/node/node-1", False),
        (f"spiffe://{TD}/ns/shop/sa/web/extra", False),
        (f"spiffe://{TD}/sa/web/ns/shop", False),
        (f"spiffe://{TD}", False),
        ("not a uri", False),
        ("", False),
    ],
)
def test_only_workload_identities_of_our_trust_domain_may_open_streams(
    identity: str, ok: bool
) -> None:
    assert (peer_refusal(identity, TD) is None) is ok


# --- waypoints -------------------------------------------------------------------------------

WAYPOINT_ID = f"spiffe://{TD}/ns/shop/sa/waypoint"


def with_waypoint(v: MeshView, traffic_type: str = "service", bind_api: bool = False) -> MeshView:
    import dataclasses

    from meshcore.meshstate import Waypoint

    wp = Waypoint("waypoint", "shop", ("10.96.0.99",))
    fields = {f.name for f in dataclasses.fields(Waypoint)}
    if "traffic_type" in fields:
        wp = dataclasses.replace(wp, traffic_type=traffic_type)  # type: ignore[call-arg]
    elif traffic_type != "service":
        pytest.skip("the state does not carry waypoint-for yet")
    v.waypoints["shop/waypoint"] = wp
    if bind_api:
        bound = dataclasses.replace(API_POD, waypoint="shop/waypoint")
        v.by_ip[bound.addresses[0]] = bound
    return v


def test_a_waypoint_may_name_any_client_in_forwarded() -> None:
    # The waypoint runs elsewhere and forwards for clients on other nodes: believed, as Istio.
    got = admit(
        hbone(peer=WAYPOINT_ID, peer_address="198.18.0.9", forwarded="for=10.0.2.21"),
        with_waypoint(view(DENY_WEB_IP)),
        trust_domain=TD,
    )
    assert got.allowed and got.source_ip == "10.0.2.21" and got.bind_source
    assert got.source is SLEEP_ON_2


def test_an_identity_that_is_no_waypoint_is_not_believed() -> None:
    got = admit(
        hbone(peer=f"spiffe://{TD}/ns/shop/sa/impostor", forwarded="for=10.0.2.21"),
        with_waypoint(view()),
        trust_domain=TD,
    )
    assert got.source_ip == NODE2 and not got.bind_source


@pytest.mark.parametrize(("traffic_type", "bypass"), [("service", False), ("workload", True),
                                                      ("all", True)])  # fmt: skip
def test_a_workload_bound_to_a_waypoint_is_reached_only_through_it(
    traffic_type: str, bypass: bool
) -> None:
    v = with_waypoint(view(), traffic_type, bind_api=True)
    direct = admit(hbone(), v, trust_domain=TD)
    assert (direct.verdict is Verdict.WAYPOINT_BYPASS) is bypass
    via = admit(hbone(peer=WAYPOINT_ID, peer_address="198.18.0.9"), v, trust_domain=TD)
    assert via.allowed
    plain = admit(plaintext(), v, trust_domain=TD)
    assert (plain.verdict is Verdict.WAYPOINT_BYPASS) is bypass
