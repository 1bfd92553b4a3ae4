"""Who may use the controller's RPCs, pure: the identity a caller's client certificate
proves, and the mesh state, decide.

- A node (`spiffe://<td>/weft/node/<name>`, its node credential): the config stream, and
  certificates for the workloads scheduled on it and for its own node identity (checked by
  the CA, `sign_for_node`).
- A waypoint replica (`spiffe://<td>/ns/<ns>/sa/<gateway>`, the workload credential its pod
  was given, as Kubernetes projects a ServiceAccount token; or its SVID, once it has one):
  only while that identity is the identity of a Waypoint in the mesh state. The config
  stream (the whole state, as nodes get: a waypoint needs Services, Workloads, routes and
  policies from every namespace its clients and backends live in), and a certificate for
  exactly its own identity.
- Any other workload identity is refused: the mesh state is not every pod's to read.

Kubernetes' TokenReview (issue #14) changes how the identity is proved, not this rule.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Container
from dataclasses import dataclass

from meshcore.identity.spiffe import SpiffeId


class CallerKind(enum.StrEnum):
    NODE = "node"
    WAYPOINT = "waypoint"


@dataclass(frozen=True)
class Caller:
    """An authenticated caller, and when the credential it connected with stops being valid."""

    identity: SpiffeId
    kind: CallerKind
    not_after: dt.datetime

    @property
    def name(self) -> str:
        """How sessions and logs name it: the node's name, or the waypoint's identity."""
        if self.kind is CallerKind.NODE and self.identity.node_name is not None:
            return self.identity.node_name
        return str(self.identity)


@dataclass(frozen=True)
class Refusal:
    reason: str


def authorize(
    identity: SpiffeId, not_after: dt.datetime, waypoints: Container[str]
) -> Caller | Refusal:
    """`identity` (already verified against our roots and trust domain) as a caller, or why
    not. `waypoints`: the identities of the Waypoints in the current mesh state."""
    if identity.node_name is not None:
        return Caller(identity, CallerKind.NODE, not_after)
    if identity.namespace is not None and identity.service_account is not None:
        if str(identity) in waypoints:
            return Caller(identity, CallerKind.WAYPOINT, not_after)
        return Refusal(
            f"{identity} is not the identity of a waypoint in the mesh state: only nodes "
            "and waypoint replicas may use the controller"
        )
    return Refusal(f"{identity} is neither a node nor a workload identity")
