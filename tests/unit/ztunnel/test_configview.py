"""ztunnel.configview and `weftctl ztunnel-config services|policies|connections` tables: what
the config dump says of services (VIPs, ports, endpoints, waypoint) and of policies (kind,
scope, action, rules), and how the CLI shows them."""

from __future__ import annotations

from meshcore.meshstate import MeshService, ServiceMembership, ServicePort, Workload
from meshcore.resources import documents_from_text, parse_documents
from meshcore.resources.security import AuthorizationPolicy, PeerAuthentication
from weftctl.ztunnel_commands import connections_table, policies_table, services_table
from ztunnel import configview
from ztunnel.state import MeshView

POLICIES = """
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: web-from-client, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/shop/sa/client"]}}]
    to: [{operation: {ports: ["8080"]}}]
  - {}
---
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata: {name: no-delete, namespace: shop}
spec:
  targetRefs: [{kind: Service, group: "", name: web}]
  action: DENY
  rules: [{to: [{operation: {methods: ["DELETE"]}}]}]
---
apiVersion: security.weft.dev/v1
kind: PeerAuthentication
metadata: {name: strict, namespace: weft-system}
spec:
  mtls: {mode: STRICT}
---
apiVersion: security.weft.dev/v1
kind: PeerAuthentication
metadata: {name: web-metrics, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  portLevelMtls: {"9000": {mode: PERMISSIVE}}
"""


def _view() -> MeshView:
    view = MeshView("node-1")
    web = Workload(
        uid="u1", name="web-1", namespace="shop", service_account="web",
        identity="spiffe://cluster.local/ns/shop/sa/web", node="node-2",
        node_address="10.0.0.2", addresses=("10.1.2.7",), labels={"app": "web"},
        enrolled=True, ready=True,
        services=(ServiceMembership("shop", "web", {80: 8080}),),
    )  # fmt: skip
    starting = Workload(
        uid="u2", name="web-2", namespace="shop", service_account="web",
        identity="spiffe://cluster.local/ns/shop/sa/web", node="node-1",
        node_address="10.0.0.1", addresses=("10.1.1.9",), labels={"app": "web"},
        enrolled=True, ready=False,
        services=(ServiceMembership("shop", "web", {80: 8080}),),
    )  # fmt: skip
    svc = MeshService(
        "web", "shop", "web.shop.svc.cluster.local", ("10.96.0.20",),
        (ServicePort("http", 80),), waypoint="shop/waypoint",
    )  # fmt: skip
    view.by_vip = {"10.96.0.20": svc}
    view.members = {("shop", "web"): [web, starting]}
    view.root_namespace = "weft-system"
    for parsed in parse_documents(documents_from_text(POLICIES, "policies.yaml")):
        if isinstance(parsed.resource, AuthorizationPolicy):
            view.policies.append(parsed.resource)
        elif isinstance(parsed.resource, PeerAuthentication):
            view.peer_authentications.append(parsed.resource)
    return view


def test_services_have_vips_ports_endpoints_and_waypoint() -> None:
    (svc,) = configview.services(_view())
    assert svc["addresses"] == ["10.96.0.20"] and svc["waypoint"] == "shop/waypoint"
    assert svc["hostname"] == "web.shop.svc.cluster.local"
    assert svc["ports"] == [{"name": "http", "port": 80, "protocol": "TCP"}]
    assert svc["endpoints"] == [
        {"workload": "shop/web-1", "address": "10.1.2.7", "node": "node-2", "ready": True,
         "ports": {"80": 8080}},
        {"workload": "shop/web-2", "address": "10.1.1.9", "node": "node-1", "ready": False,
         "ports": {"80": 8080}},
    ]  # fmt: skip
    _, rows = services_table([svc])
    assert rows == [["shop", "web", "10.96.0.20", "80/TCP", "1/2", "shop/waypoint"]]


def test_policies_have_kind_scope_action_and_rule_summaries() -> None:
    rows = configview.policies(_view())
    by_name = {p["name"]: p for p in rows}
    allow = by_name["web-from-client"]
    assert allow["kind"] == "AuthorizationPolicy" and allow["action"] == "ALLOW"
    assert allow["scope"] == "workloads: app=web" and allow["enforced_by"] == "ztunnel"
    assert allow["rules"] == [
        "from: principals=cluster.local/ns/shop/sa/client; to: ports=8080",
        "any",
    ]
    deny = by_name["no-delete"]
    assert deny["scope"] == "targetRefs: Service/web" and deny["enforced_by"] == "waypoint"
    assert deny["rules"] == ["to: methods=DELETE"]
    strict = by_name["strict"]
    assert (strict["kind"], strict["scope"], strict["action"]) == (
        "PeerAuthentication",
        "mesh",
        "STRICT",
    )
    assert strict["rules"] == []
    metrics = by_name["web-metrics"]
    assert (metrics["scope"], metrics["action"]) == ("workloads: app=web", "UNSET")
    assert metrics["rules"] == ["port 9000: PERMISSIVE"]
    _, table_rows = policies_table(rows)
    assert ["shop", "web-from-client", "AuthorizationPolicy", "workloads: app=web", "ALLOW",
            "2 rules: from: principals=cluster.local/ns/shop/sa/client; to: ports=8080; ..."] in table_rows  # fmt: skip


def test_connections_table_shortens_identities() -> None:
    _, rows = connections_table(
        [
            {
                "direction": "inbound", "source": "demo/client",
                "source_principal": "spiffe://cluster.local/ns/demo/sa/client",
                "destination": "demo/server", "destination_principal": "",
                "target": "10.1.2.3:8080", "via": "", "security": "none",
                "bytes_sent": 5, "bytes_received": 7, "age_s": 2.5,
            }
        ]
    )  # fmt: skip
    assert rows == [
        ["inbound", "demo/client", "demo/client", "demo/server", "-", "none", 5, 7, "2.5s"]
    ]
