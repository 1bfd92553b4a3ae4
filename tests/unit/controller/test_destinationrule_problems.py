"""The controller sends DestinationRules to waypoints as parsed, and reports a rule whose host
names no Service or whose subset no endpoint of the Service matches."""

from __future__ import annotations

import textwrap

from controller.meshbuilder import MeshBuilder, Problem
from meshcore.meshstate import StateValue, TrustBundle
from meshcore.resources import ResourceKey, documents_from_text, parse_documents
from meshcore.resources.destinationrule import DestinationRule

BUNDLE = TrustBundle(
    "cluster.local", ("-----BEGIN CERTIFICATE-----\nr\n-----END CERTIFICATE-----\n",)
)

MESH = """
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {weft.dev/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: cart-v1, namespace: shop, labels: {app: cart, version: v1}}
spec:
  nodeName: node-a
  containers: [{name: app, image: cart:1, ports: [{name: http, containerPort: 8080}]}]
status: {phase: Running, podIP: 10.244.1.7, hostIP: 192.168.50.11,
         conditions: [{type: Ready, status: "True"}]}
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop}
spec:
  clusterIP: 10.96.0.20
  selector: {app: cart}
  ports: [{name: http, port: 80, targetPort: http}]
"""


def rule(host: str, subset: str = "v1") -> str:
    return f"""
---
apiVersion: networking.weft.dev/v1
kind: DestinationRule
metadata: {{name: cart, namespace: shop}}
spec:
  host: {host}
  subsets: [{{name: {subset}, labels: {{version: {subset}}}}}]
"""


def build(text: str) -> tuple[dict[ResourceKey, StateValue], dict[ResourceKey, Problem]]:
    docs = documents_from_text(textwrap.dedent(text), "mesh.yaml")
    resources = {p.resource.key: p.resource for p in parse_documents(docs)}
    builder = MeshBuilder("cluster.local")
    state = builder.build(resources, BUNDLE)
    return state, builder.problems()


KEY = ResourceKey("DestinationRule", "shop", "cart")


def test_a_rule_for_a_service_goes_to_the_waypoints_as_parsed_without_problems() -> None:
    state, problems = build(MESH + rule("cart"))
    assert isinstance(state[KEY], DestinationRule)
    assert KEY not in problems


def test_a_host_naming_no_service_is_a_problem_of_spec_host() -> None:
    state, problems = build(MESH + rule("carts.shop.svc.cluster.local"))
    assert KEY in state
    problem = problems[KEY]
    assert problem.field == "spec.host"
    assert "no Service shop/carts" in problem.reason


def test_a_subset_no_endpoint_matches_is_a_problem_naming_the_subset() -> None:
    _, problems = build(MESH + rule("cart", subset="v2"))
    problem = problems[KEY]
    assert problem.field == "spec.subsets[0].labels"
    assert "'v2'" in problem.reason and "503" in problem.reason
