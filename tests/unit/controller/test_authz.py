"""Who may call the controller: nodes, and the replicas of waypoints in the mesh state."""

from __future__ import annotations

import datetime as dt

import pytest

from controller.authz import Caller, CallerKind, Refusal, authorize
from meshcore.identity.spiffe import SpiffeId

WHEN = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
WAYPOINTS = frozenset({"spiffe://cluster.local/ns/shop/sa/waypoint"})


@pytest.mark.parametrize(
    ("identity", "kind", "name"),
    [
        ("spiffe://cluster.local/weft/node/node-1", CallerKind.NODE, "node-1"),
        (
            "spiffe://cluster.local/ns/shop/sa/waypoint",
            CallerKind.WAYPOINT,
            "spiffe://cluster.local/ns/shop/sa/waypoint",
        ),
    ],
)
def test_nodes_and_waypoint_replicas_are_callers(
    identity: str, kind: CallerKind, name: str
) -> None:
    verdict = authorize(SpiffeId.parse(identity), WHEN, WAYPOINTS)
    assert isinstance(verdict, Caller)
    assert verdict.kind is kind and verdict.name == name and verdict.not_after == WHEN


@pytest.mark.parametrize(
    ("identity", "reason"),
    [
        ("spiffe://cluster.local/ns/shop/sa/web", "not the identity of a waypoint"),
        ("spiffe://cluster.local/ns/other/sa/waypoint", "not the identity of a waypoint"),
        ("spiffe://cluster.local/something/else", "neither a node nor a workload"),
    ],
)
def test_other_identities_are_refused_with_a_reason(identity: str, reason: str) -> None:
    verdict = authorize(SpiffeId.parse(identity), WHEN, WAYPOINTS)
    assert isinstance(verdict, Refusal) and reason in verdict.reason


def test_a_waypoint_identity_is_refused_once_its_waypoint_is_gone() -> None:
    identity = SpiffeId.parse("spiffe://cluster.local/ns/shop/sa/waypoint")
    assert isinstance(authorize(identity, WHEN, frozenset()), Refusal)
