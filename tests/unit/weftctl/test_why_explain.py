"""`weftctl why`'s explanation on built snapshots (weftctl/explain): the path chosen, the
policies in evaluation order with the rule that matched, the verdict and deciding policy, and
SRC/DST resolution errors. The decisions come from the data plane's own functions; these
tests pin what the explanation says about them. Also the probe's comparison (weftctl.whyprobe)
of what the data plane reported with the explanation."""

from __future__ import annotations

import textwrap

import pytest

from meshcore.meshstate import (
    GATEWAY_NAME_LABEL,
    MeshService,
    ServiceMembership,
    ServicePort,
    StateValue,
    TrafficType,
    TrustBundle,
    Waypoint,
    Workload,
)
from meshcore.resources import ResourceKey, documents_from_text, parse_documents
from weftctl.explain.engine import MAX_ENDPOINTS, explain
from weftctl.explain.model import (
    Certificate,
    MeshSnapshot,
    NodeFacts,
    RequestSpec,
    TargetError,
)
from weftctl.explain.render import explanation_text
from weftctl.whyprobe import compare, expected_by_reporter, observed_verdict

TD = "cluster.local"
N1, N2 = "198.18.0.1", "198.18.0.2"


def pod(
    name: str, ip: str, node: str, *, ns: str = "shop", sa: str = "", enrolled: bool = True,
    labels: dict[str, str] | None = None, services: tuple[ServiceMembership, ...] = (),
) -> Workload:  # fmt: skip
    return Workload(
        uid=f"uid-{name}",
        name=name,
        namespace=ns,
        service_account=sa or name,
        identity=f"spiffe://{TD}/ns/{ns}/sa/{sa or name}",
        node=node,
        node_address=N1 if node == "node-1" else N2,
        addresses=(ip,),
        labels=labels or {"app": name},
        enrolled=enrolled,
        ready=True,
        services=services,
    )


CLIENT = pod("client", "10.1.0.2", "node-1")
LEGACY = pod("legacy", "10.1.0.3", "node-1", ns="outside", enrolled=False)
API = pod("api", "10.2.0.2", "node-2", services=(ServiceMembership("shop", "api", {80: 8080}),))
WEB = pod("web", "10.2.0.3", "node-2", services=(ServiceMembership("shop", "web", {80: 8080}),))
WAYPOINT_POD = pod(
    "waypoint-0", "10.1.0.9", "node-1", sa="waypoint", enrolled=False,
    labels={GATEWAY_NAME_LABEL: "waypoint"},
)  # fmt: skip
API_SVC = MeshService("api", "shop", "api.shop.svc.cluster.local", ("10.96.0.10",),
                      (ServicePort("http", 80),))  # fmt: skip
WEB_SVC = MeshService("web", "shop", "web.shop.svc.cluster.local", ("10.96.0.11",),
                      (ServicePort("http", 80),), waypoint="shop/waypoint")  # fmt: skip
WAYPOINT = Waypoint("waypoint", "shop", ("10.96.0.99",), TrafficType.SERVICE,
                    f"spiffe://{TD}/ns/shop/sa/waypoint")  # fmt: skip
BASE: tuple[StateValue, ...] = (
    CLIENT, LEGACY, API, WEB, WAYPOINT_POD, API_SVC, WEB_SVC, WAYPOINT,
    TrustBundle(TD, ("-----BEGIN CERTIFICATE-----",)),
)  # fmt: skip


def resources(text: str) -> list[StateValue]:
    docs = documents_from_text(textwrap.dedent(text), "t.yaml")
    return [p.resource for p in parse_documents(docs)]  # type: ignore[misc]


def snapshot(
    policies: str = "", *, values: tuple[StateValue, ...] = BASE, captured: set[str] | None = None
) -> MeshSnapshot:
    state: dict[ResourceKey, StateValue] = {v.key: v for v in values}
    if policies:
        state |= {v.key: v for v in resources(policies)}
    default = {f"{w.namespace}/{w.name}" for w in values if isinstance(w, Workload) and w.enrolled}
    held = {CLIENT.identity: Certificate(CLIENT.identity, "2030-01-01T00:00:00+00:00", 3600)}
    nodes = {
        n: NodeFacts(n, frozenset(captured if captured is not None else default), held)
        for n in ("node-1", "node-2")
    }
    return MeshSnapshot(state, 7, nodes)


def ap(name: str, spec: str, ns: str = "shop", kind: str = "AuthorizationPolicy") -> str:
    body = textwrap.indent(textwrap.dedent(spec).strip(), "  ")
    return (
        f"---\napiVersion: security.weft.dev/v1\nkind: {kind}\n"
        f"metadata: {{name: {name}, namespace: {ns}}}\nspec:\n{body}\n"
    )


FROM_CLIENT = f'[{{from: [{{source: {{principals: ["{TD}/ns/shop/sa/client"]}}}}]}}]'
FROM_OTHER = f'[{{from: [{{source: {{principals: ["{TD}/ns/shop/sa/other"]}}}}]}}]'


def lines(found: object) -> list[tuple[str, str, str, int | None, bool]]:
    return [(p.name, p.action, p.verdict, p.rule, p.decides) for p in found.policies]  # type: ignore[attr-defined]


def test_no_policy_is_allowed_over_hbone_between_the_two_ztunnels() -> None:
    found = explain(snapshot(), "shop/client", "api.shop")
    assert found.verdict == "allow" and found.deciding_policy is None
    assert found.path.kind == "ztunnel-to-ztunnel"
    assert [(h.role, h.node, h.target) for h in found.path.hops] == [
        ("source", "node-1", "10.2.0.2:8080"),
        ("destination", "node-2", "10.2.0.2:8080"),
    ]
    assert found.source.captured is True and found.source.certificate_held is True
    assert found.destination.service == "shop/api" and found.destination.port == 80


def test_deny_policies_come_before_allow_and_the_matching_rule_is_named() -> None:
    policies = ap("a-allow", f"""
        action: ALLOW
        rules:
        - from: [{{source: {{namespaces: [elsewhere]}}}}]
        - from: [{{source: {{principals: ["{TD}/ns/shop/sa/client"]}}}}]
        """) + ap("z-deny", "action: DENY\nrules: [{to: [{operation: {ports: ['9090']}}]}]")  # fmt: skip
    found = explain(snapshot(policies), "shop/client", "api.shop")
    assert found.verdict == "allow" and found.deciding_policy == "shop/a-allow"
    assert lines(found) == [
        ("shop/z-deny", "DENY", "no-match", None, False),
        ("shop/a-allow", "ALLOW", "allow", 1, True),
    ]


def test_a_matching_deny_decides_and_the_allow_after_it_is_not_reached() -> None:
    policies = ap("deny-client", f"action: DENY\nrules: {FROM_CLIENT}") + ap(
        "allow-client", f"action: ALLOW\nrules: {FROM_CLIENT}"
    )
    found = explain(snapshot(policies), "shop/client", "api.shop")
    assert found.verdict == "deny" and found.deciding_policy == "shop/deny-client"
    assert lines(found) == [
        ("shop/deny-client", "DENY", "deny", 0, True),
        ("shop/allow-client", "ALLOW", "not-reached", None, False),
    ]
    assert "deny-client" in explanation_text(found.to_json())


def test_an_allow_for_someone_else_denies_and_is_named_as_deciding() -> None:
    found = explain(snapshot(ap("other", f"action: ALLOW\nrules: {FROM_OTHER}")), "shop/client",
                    "api.shop")  # fmt: skip
    assert found.verdict == "deny" and found.deciding_policy == "shop/other"
    assert lines(found) == [("shop/other", "ALLOW", "no-match", None, True)]


def test_allow_nothing_denies_but_only_where_its_selector_applies() -> None:
    everything = explain(snapshot(ap("nothing", "{}")), "shop/client", "api.shop")
    assert everything.verdict == "deny" and everything.deciding_policy == "shop/nothing"
    other = ap("nothing", "selector: {matchLabels: {app: other}}")
    assert explain(snapshot(other), "shop/client", "api.shop").verdict == "allow"


def test_strict_refuses_an_uncaptured_source_and_names_the_peer_authentication() -> None:
    strict = ap("strict", "mtls: {mode: STRICT}", kind="PeerAuthentication")
    found = explain(snapshot(strict), "outside/legacy", "api.shop")
    assert found.verdict == "deny" and found.deciding_policy == "shop/strict"
    assert found.path.kind == "plaintext"
    assert found.path.hops[0].component == "kernel"
    assert lines(found)[0] == ("shop/strict", "STRICT", "deny", None, True)
    permissive = ap("strict", "mtls: {mode: PERMISSIVE}", kind="PeerAuthentication")
    assert explain(snapshot(permissive), "outside/legacy", "api.shop").verdict == "allow"


def test_a_pod_the_agent_does_not_capture_goes_in_plaintext_even_if_enrolled() -> None:
    strict = ap("strict", "mtls: {mode: STRICT}", kind="PeerAuthentication")
    found = explain(snapshot(strict, captured={"shop/api"}), "shop/client", "api.shop")
    assert found.source.enrolled is True and found.source.captured is False
    assert found.path.kind == "plaintext" and found.verdict == "deny"


def test_an_address_outside_the_mesh_is_passed_through() -> None:
    found = explain(snapshot(), "shop/client", "192.0.2.7:443")
    assert found.verdict == "allow" and found.path.kind == "passthrough"
    assert found.destination.kind == "address"


def test_a_waypoint_without_ready_replica_fails_closed() -> None:
    values = tuple(v for v in BASE if v is not WAYPOINT_POD)
    found = explain(snapshot(values=values), "shop/client", "web.shop")
    assert found.verdict == "deny" and found.path.kind == "refused"
    assert "no ready replica" in found.reason


WEB_PUBLIC = ap("web-public", """
    targetRefs: [{kind: Service, group: "", name: web}]
    action: ALLOW
    rules: [{to: [{operation: {paths: ["/public*"]}}]}]
    """)  # fmt: skip


def test_waypoint_l7_allow_is_judged_on_the_given_path() -> None:
    allowed = explain(
        snapshot(WEB_PUBLIC), "shop/client", "web.shop", RequestSpec("GET", "/public/a")
    )
    assert allowed.verdict == "allow" and allowed.deciding_policy == "shop/web-public"
    assert allowed.path.kind == "waypoint" and allowed.path.waypoint == "shop/waypoint"
    assert [h.role for h in allowed.path.hops] == ["source", "waypoint", "destination"]
    # the destination ztunnel sees the waypoint's identity, not the client's
    assert allowed.path.hops[2].peer == WAYPOINT.identity
    assert not allowed.depends_on_request
    denied = explain(snapshot(WEB_PUBLIC), "shop/client", "web.shop", RequestSpec("GET", "/admin"))
    assert denied.verdict == "deny" and denied.deciding_policy == "shop/web-public"
    assert ("shop/web-public", "ALLOW", "no-match", None, True) in lines(denied)


def test_without_a_request_l7_rules_are_said_to_depend_on_it() -> None:
    found = explain(snapshot(WEB_PUBLIC), "shop/client", "web.shop")
    assert found.depends_on_request and found.verdict == "deny"  # judged as GET /
    assert any("GET /" in n for n in found.notes)


def test_calling_the_pod_ip_around_a_guarding_waypoint_is_refused() -> None:
    found = explain(snapshot(WEB_PUBLIC), "shop/client", "shop/web:8080")
    assert found.verdict == "deny" and found.path.kind == "ztunnel-to-ztunnel"
    guard = [p for p in found.policies if p.kind == "WaypointGuard"]
    assert guard and guard[0].decides and guard[0].verdict == "deny"


def test_l4_policies_at_the_destination_see_the_waypoint_identity() -> None:
    only_client = ap("only-client", f"""
        selector: {{matchLabels: {{app: web}}}}
        action: ALLOW
        rules: {FROM_CLIENT}
        """)  # fmt: skip
    found = explain(snapshot(only_client), "shop/client", "web.shop", RequestSpec("GET", "/"))
    assert found.verdict == "deny" and found.deciding_policy == "shop/only-client"


def test_routes_at_the_waypoint_list_the_matching_rule_and_its_backends() -> None:
    route = """
        ---
        apiVersion: gateway.networking.k8s.io/v1
        kind: HTTPRoute
        metadata: {name: web, namespace: shop}
        spec:
          parentRefs: [{group: "", kind: Service, name: web, port: 80}]
          rules:
          - matches: [{path: {type: PathPrefix, value: /api}}]
            backendRefs: [{name: api, port: 80, weight: 90}, {name: web, port: 80, weight: 10}]
        """
    found = explain(snapshot(route), "shop/client", "web.shop", RequestSpec("GET", "/api/x"))
    (r,) = found.routes
    assert r.name == "shop/web" and r.rule == 0
    assert r.backends == ("shop/api:80 (weight 90)", "shop/web:80 (weight 10)")
    destinations = {h.target for h in found.path.hops if h.role == "destination"}
    assert destinations == {"10.2.0.2:8080", "10.2.0.3:8080"}  # both backends judged
    assert found.verdict == "allow"


@pytest.mark.parametrize(
    ("src", "dst", "message"),
    [
        ("shop/clinet", "api.shop", "did you mean: shop/client"),
        ("client", "api.shop", "expected NAMESPACE/POD"),
        ("shop/client", "apj.shop", "did you mean: api.shop"),
        ("shop/client", "shop/api", "shop/api:PORT (its Services target 8080)"),
        ("shop/client", "api.shop:81", "has no port 81 (ports: 80)"),
        ("shop/client", "10.2.0.2", "IP:PORT needs a port"),
        ("shop/client", "api.shop:http", "port 'http' is not a number"),
    ],
)
def test_unknown_sources_and_destinations_are_clear_errors(
    src: str, dst: str, message: str
) -> None:
    with pytest.raises(TargetError, match=message.replace("(", r"\(").replace(")", r"\)")):
        explain(snapshot(), src, dst)


def test_a_node_whose_agent_was_not_read_is_said_to_be_unknown() -> None:
    snap = snapshot()
    snap = MeshSnapshot(snap.state, 1, {"node-2": snap.nodes["node-2"]})
    found = explain(snap, "shop/client", "api.shop")
    assert found.source.captured is None
    assert any("could not be read" in n for n in found.notes)


# --- the probe's comparison --------------------------------------------------------------


def test_the_client_outcome_is_read_as_a_verdict() -> None:
    assert observed_verdict({"outcome": "response", "status": 200}) == "allow"
    assert observed_verdict({"outcome": "response", "status": 404, "body": ""}) == "allow"
    rbac = {"outcome": "response", "status": 403, "body": "RBAC: access denied"}
    assert observed_verdict(rbac) == "deny"
    assert observed_verdict({"outcome": "reset"}) == "deny"


def test_a_probe_that_saw_otherwise_disagrees_and_says_where() -> None:
    data = explain(snapshot(), "shop/client", "api.shop").to_json()
    agrees, diffs = compare(data, {"outcome": "response", "status": 200}, [])
    assert agrees and diffs == []
    agrees, diffs = compare(data, {"outcome": "reset"}, [])
    assert not agrees and "the client saw deny" in diffs[0]
    event = {"component": "ztunnel", "reporter": "destination", "verdict": "deny",
             "node": "node-2", "policy": "shop/x", "reason": "denied"}  # fmt: skip
    agrees, diffs = compare(data, {"outcome": "response", "status": 200}, [event])
    assert not agrees and "ztunnel destination on node-2 reported deny" in diffs[0]


def test_the_source_ztunnel_is_expected_to_report_the_destination_refusal() -> None:
    denied = explain(snapshot(ap("nothing", "{}")), "shop/client", "api.shop").to_json()
    assert expected_by_reporter(denied) == {
        ("ztunnel", "destination"): "deny",
        ("ztunnel", "source"): "deny",
    }
    l7 = explain(snapshot(WEB_PUBLIC), "shop/client", "web.shop", RequestSpec("GET", "/x"))
    # a waypoint's 403 is a request it reports; the source's connection was carried
    assert expected_by_reporter(l7.to_json()) == {
        ("waypoint", "waypoint"): "deny",
        ("ztunnel", "source"): "allow",
    }


def test_past_the_endpoint_bound_only_the_first_are_judged_and_it_is_said() -> None:
    many = tuple(
        pod(f"api-{i:02d}", f"10.2.1.{i}", "node-2", labels={"app": "api"},
            services=(ServiceMembership("shop", "api", {80: 8080}),))
        for i in range(MAX_ENDPOINTS + 2)
    )  # fmt: skip
    found = explain(snapshot(values=(*BASE, *many)), "shop/client", "api.shop")
    judged = [h for h in found.path.hops if h.role == "destination"]
    assert len(judged) == MAX_ENDPOINTS
    assert f"{MAX_ENDPOINTS + 3} endpoints: the first {MAX_ENDPOINTS} are judged" in found.notes


GRPC_SVC = MeshService("rpc", "shop", "rpc.shop.svc.cluster.local", ("10.96.0.12",),
                       (ServicePort("grpc", 7070),), waypoint="shop/waypoint")  # fmt: skip
RPC = pod("rpc", "10.2.0.4", "node-2", services=(ServiceMembership("shop", "rpc", {7070: 7070}),))


def test_a_grpc_port_is_routed_by_its_grpc_routes() -> None:
    route = """
        ---
        apiVersion: gateway.networking.k8s.io/v1
        kind: GRPCRoute
        metadata: {name: rpc, namespace: shop}
        spec:
          parentRefs: [{group: "", kind: Service, name: rpc, port: 7070}]
          rules:
          - matches: [{method: {service: shop.Cart, method: Add}}]
            backendRefs: [{name: rpc, port: 7070}]
        """
    values = (*BASE, GRPC_SVC, RPC)
    found = explain(snapshot(route, values=values), "shop/client", "rpc.shop",
                    RequestSpec("POST", "/shop.Cart/Add"))  # fmt: skip
    (r,) = found.routes
    assert (r.kind, r.name, r.rule) == ("GRPCRoute", "shop/rpc", 0)
    assert found.verdict == "allow"
    other = explain(snapshot(route, values=values), "shop/client", "rpc.shop",
                    RequestSpec("POST", "/shop.Cart/Remove"))  # fmt: skip
    assert other.routes[0].decision.startswith("answered 404")


def test_a_request_authentication_at_the_waypoint_is_said() -> None:
    jwt = """
        ---
        apiVersion: security.weft.dev/v1
        kind: RequestAuthentication
        metadata: {name: web-jwt, namespace: shop}
        spec:
          targetRefs: [{kind: Service, group: "", name: web}]
          jwtRules: [{issuer: https://issuer.example, jwksUri: https://issuer.example/jwks}]
        """
    found = explain(snapshot(jwt), "shop/client", "web.shop", RequestSpec("GET", "/"))
    assert any("RequestAuthentication shop/web-jwt applies" in n for n in found.notes)
    assert not any("RequestAuthentication" in n for n in
                   explain(snapshot(jwt), "shop/client", "api.shop").notes)  # fmt: skip


def test_a_disagreeing_probe_is_printed_loudly() -> None:
    data = explain(snapshot(), "shop/client", "api.shop").to_json()
    agrees, diffs = compare(data, {"outcome": "reset"}, [])
    data["probe"] = {"agrees": agrees, "summary": "one connection: reset -> deny",
                     "disagreement": "; ".join(diffs), "events": []}  # fmt: skip
    text = explanation_text(data)
    assert "!!! DISAGREEMENT" in text and "the client saw deny" in text


def test_a_service_destination_lists_each_endpoint_with_its_identity_and_capture() -> None:
    found = explain(snapshot(captured={"shop/client"}), "shop/client", "api.shop")
    (endpoint,) = found.endpoints
    assert (endpoint.namespace, endpoint.name, endpoint.node) == ("shop", "api", "node-2")
    assert endpoint.identity == API.identity and endpoint.captured is False
    assert endpoint.certificate_held is False  # node-2's ztunnel holds only the client's
    text = explanation_text(found.to_json())
    assert "    endpoint   pod shop/api 10.2.0.2 on node-2: enrolled, NOT captured" in text


def test_plaintext_to_an_enrolled_pod_its_agent_does_not_capture_is_not_policed() -> None:
    strict = ap("strict", "mtls: {mode: STRICT}", kind="PeerAuthentication")
    found = explain(snapshot(strict, captured={"shop/client"}), "outside/legacy", "api.shop")
    assert found.verdict == "allow" and found.deciding_policy is None
    assert any("not captured on node-2" in n for n in found.notes)
