"""Which node a TokenReview'd ServiceAccount token proves (controller.nodeauth)."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from controller.nodeauth import (
    NODE_NAME,
    POD_NAME,
    POD_UID,
    NodeGrant,
    NodeTokenPolicy,
    PodFacts,
    TokenRefusal,
    WaypointGrant,
    authorize_token,
    authorize_waypoint_token,
)

POLICY = NodeTokenPolicy("weft-system/weft-node")
PODS = {
    ("weft-system", "weft-node-abcde"): PodFacts("uid-1", "weft-node", "node-a"),
    ("weft-system", "weft-node-unscheduled"): PodFacts("uid-2", "weft-node", ""),
    ("weft-system", "other-pod"): PodFacts("uid-3", "default", "node-a"),
    ("shop", "web-1"): PodFacts("uid-5", "default", "node-a"),
    ("shop", "waypoint-7f9"): PodFacts("uid-6", "waypoint", "node-b"),
}

GOOD: dict[str, Any] = {
    "authenticated": True,
    "audiences": ["weft"],
    "user": {
        "username": "system:serviceaccount:weft-system:weft-node",
        "uid": "sa-uid",
        "groups": ["system:serviceaccounts", "system:serviceaccounts:weft-system"],
        "extra": {
            POD_NAME: ["weft-node-abcde"],
            POD_UID: ["uid-1"],
            NODE_NAME: ["node-a"],
        },
    },
}


def review(**changes: Any) -> dict[str, Any]:
    out = copy.deepcopy(GOOD)
    for path, value in changes.items():
        *parents, leaf = path.split("__")
        target = out
        for p in parents:
            target = target[p]
        if value is None:
            target.pop(leaf, None)
        else:
            target[leaf] = value
    return out


def decide(status: dict[str, Any]) -> NodeGrant | TokenRefusal:
    return authorize_token(status, POLICY, lambda ns, name: PODS.get((ns, name)))


def test_the_daemonset_pods_token_makes_the_node_the_pod_runs_on() -> None:
    assert decide(GOOD) == NodeGrant("node-a", "weft-system/weft-node-abcde")


def test_a_token_without_node_name_is_judged_by_the_pod_alone() -> None:
    status = review()
    del status["user"]["extra"][NODE_NAME]
    assert decide(status) == NodeGrant("node-a", "weft-system/weft-node-abcde")


@pytest.mark.parametrize(
    ("status", "reason"),
    [
        (review(authenticated=False, error="token expired"), "token expired"),
        (review(authenticated=None), "did not authenticate"),
        (review(audiences=["https://kubernetes.default.svc"]), "audience 'weft'"),
        (review(audiences=None), "audience 'weft'"),
        (review(user=None), "names no user"),
        (
            review(
                user__username="system:serviceaccount:shop:default",
                user__extra={POD_NAME: ["web-1"], POD_UID: ["uid-5"]},
            ),
            "only the node DaemonSet's ServiceAccount",
        ),
        (
            review(user__username="system:serviceaccount:shop:default"),
            "not known to the controller",
        ),
        (review(user__username="admin"), "not a ServiceAccount's"),
        (review(user__extra={}), "not bound to a pod"),
        (review(user__extra={POD_NAME: ["weft-node-abcde"]}), "not bound to a pod"),
        (
            review(user__extra={POD_NAME: ["a", "b"], POD_UID: ["uid-1"]}),
            "not bound to a pod",
        ),
        (
            review(user__extra={POD_NAME: ["weft-node-gone"], POD_UID: ["uid-9"]}),
            "not known to the controller",
        ),
        (
            review(user__extra={POD_NAME: ["weft-node-abcde"], POD_UID: ["uid-old"]}),
            "has uid 'uid-1'",
        ),
        (
            review(user__extra={POD_NAME: ["other-pod"], POD_UID: ["uid-3"]}),
            "runs as 'default', the token is 'weft-node''s",
        ),
        (
            review(user__extra={POD_NAME: ["weft-node-unscheduled"], POD_UID: ["uid-2"]}),
            "not scheduled on a node",
        ),
        (
            review(
                user__extra={
                    POD_NAME: ["weft-node-abcde"],
                    POD_UID: ["uid-1"],
                    NODE_NAME: ["node-b"],
                }
            ),
            "names node 'node-b' but pod weft-system/weft-node-abcde is on 'node-a'",
        ),
    ],
)
def test_refusals_say_why(status: dict[str, Any], reason: str) -> None:
    verdict = decide(status)
    assert isinstance(verdict, TokenRefusal), verdict
    assert reason in verdict.reason


def test_another_policy_service_account() -> None:
    policy = NodeTokenPolicy("mesh/agent")
    assert policy.username == "system:serviceaccount:mesh:agent"
    pods = {("mesh", "agent-x"): PodFacts("u", "agent", "n1")}
    status = review(
        user__username="system:serviceaccount:mesh:agent",
        user__extra={POD_NAME: ["agent-x"], POD_UID: ["u"]},
    )
    assert authorize_token(status, policy, lambda ns, n: pods.get((ns, n))) == NodeGrant(
        "n1", "mesh/agent-x"
    )


WAYPOINTS = {"spiffe://cluster.local/ns/shop/sa/waypoint"}


def waypoint_review(**changes: Any) -> dict[str, Any]:
    return review(
        user__username="system:serviceaccount:shop:waypoint",
        user__extra={POD_NAME: ["waypoint-7f9"], POD_UID: ["uid-6"], NODE_NAME: ["node-b"]},
        **changes,
    )


def decide_waypoint(status: dict[str, Any]) -> WaypointGrant | TokenRefusal:
    return authorize_waypoint_token(
        status, "weft", "cluster.local", WAYPOINTS, lambda ns, name: PODS.get((ns, name))
    )


def test_a_waypoint_pods_token_proves_its_waypoint_identity() -> None:
    assert decide_waypoint(waypoint_review()) == WaypointGrant(
        "spiffe://cluster.local/ns/shop/sa/waypoint", "shop/waypoint-7f9"
    )


def test_a_pod_that_is_no_waypoint_gets_nothing() -> None:
    status = review(
        user__username="system:serviceaccount:shop:default",
        user__extra={POD_NAME: ["web-1"], POD_UID: ["uid-5"]},
    )
    verdict = decide_waypoint(status)
    assert isinstance(verdict, TokenRefusal)
    assert "not the identity of a waypoint" in verdict.reason


def test_a_waypoint_token_for_another_audience_is_refused() -> None:
    verdict = decide_waypoint(waypoint_review(audiences=["api"]))
    assert isinstance(verdict, TokenRefusal) and "audience" in verdict.reason
