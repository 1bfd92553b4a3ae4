"""The controller sends RateLimitPolicies to waypoints as parsed, and reports a policy whose
target does not exist or that no waypoint serves."""

from __future__ import annotations

import textwrap

import pytest

from controller.meshbuilder import MeshBuilder, Problem
from meshcore.meshstate import StateValue, TrustBundle
from meshcore.resources import ResourceKey, documents_from_text, parse_documents
from meshcore.resources.ratelimit import RateLimitPolicy

BUNDLE = TrustBundle(
    "cluster.local", ("-----BEGIN CERTIFICATE-----\nr\n-----END CERTIFICATE-----\n",)
)

MESH = """
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {weft.dev/dataplane-mode: ambient}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: weft-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: v1
kind: Service
metadata: {name: cart, namespace: shop, labels: {weft.dev/use-waypoint: waypoint}}
spec:
  clusterIP: 10.96.0.20
  selector: {app: cart}
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: plain, namespace: shop}
spec:
  clusterIP: 10.96.0.21
  selector: {app: plain}
  ports: [{name: http, port: 80}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: cart, namespace: shop}
spec:
  parentRefs: [{group: "", kind: Service, name: cart, port: 80}]
  rules: [{backendRefs: [{name: cart, port: 80}]}]
"""

KEY = ResourceKey("RateLimitPolicy", "shop", "limit")


def policy(kind: str, name: str) -> str:
    group = "" if kind == "Service" else "gateway.networking.k8s.io"
    return f"""
---
apiVersion: policy.weft.dev/v1
kind: RateLimitPolicy
metadata: {{name: limit, namespace: shop}}
spec:
  targetRefs: [{{group: "{group}", kind: {kind}, name: {name}}}]
  type: Local
  rules: [{{limit: {{requests: 5, unit: Second}}}}]
"""


def build(text: str) -> tuple[dict[ResourceKey, StateValue], dict[ResourceKey, Problem]]:
    docs = documents_from_text(textwrap.dedent(text), "mesh.yaml")
    resources = {p.resource.key: p.resource for p in parse_documents(docs)}
    builder = MeshBuilder("cluster.local")
    state = builder.build(resources, BUNDLE)
    return state, builder.problems()


@pytest.mark.parametrize(
    ("kind", "name"), [("Service", "cart"), ("HTTPRoute", "cart"), ("Gateway", "waypoint")]
)
def test_a_policy_on_an_existing_target_is_sent_as_parsed_without_problems(kind, name):
    state, problems = build(MESH + policy(kind, name))
    assert isinstance(state[KEY], RateLimitPolicy)
    assert KEY not in problems


@pytest.mark.parametrize(
    ("kind", "name", "reason"),
    [
        ("Service", "nope", "no Service shop/nope"),
        ("Service", "plain", "no waypoint serves Service shop/plain"),
        ("HTTPRoute", "nope", "no HTTPRoute shop/nope"),
        ("Gateway", "nope", "no waypoint Gateway shop/nope"),
    ],
)
def test_a_policy_whose_target_is_missing_or_unserved_is_reported(kind, name, reason):
    state, problems = build(MESH + policy(kind, name))
    assert isinstance(state[KEY], RateLimitPolicy)  # still sent: it applies once the target is
    problem = problems[KEY]
    assert problem.field == "spec.targetRefs[0]"
    assert reason in problem.reason
