"""What `weftctl why` reads (typed snapshots of live state) and what it says (an Explanation).

Inputs are what the processes themselves serve: the controller's mesh state (the same values
every node is sent), and per node what its agent captures and which certificates its ztunnel
holds. The output is plain, frozen data; `to_json()` is what `weftctl why -o json` prints.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meshcore.meshstate import StateValue
from meshcore.resources import ResourceKey

# Verdicts of the whole path; a policy's own verdict may also be "no-match", "not-reached",
# "depends" (on request attributes not given) or "n/a" (listed, does not decide here).
ALLOW = "allow"
DENY = "deny"


@dataclass(frozen=True, slots=True)
class Certificate:
    identity: str
    not_after: str
    expires_in_s: int


@dataclass(frozen=True)
class NodeFacts:
    """One node as its processes report it. None: that process could not be read (the
    reason is in `errors`), so whatever depends on it is said to be unknown."""

    name: str
    captured: frozenset[str] | None = None  # "namespace/pod" the agent captures
    certificates: Mapping[str, Certificate] | None = None  # held by the ztunnel, by identity
    errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class MeshSnapshot:
    """The controller's mesh state (what nodes are sent) and each node's facts."""

    state: Mapping[ResourceKey, StateValue]
    version: int = 0
    nodes: Mapping[str, NodeFacts] = field(default_factory=dict)


@dataclass(frozen=True)
class RequestSpec:
    """The request to judge L7 rules by (`--method/--path/--header`); "" = not given."""

    method: str = ""
    path: str = ""
    headers: tuple[tuple[str, str], ...] = ()

    @property
    def given(self) -> bool:
        return bool(self.method or self.path or self.headers)


# --- the explanation -----------------------------------------------------------------------


@dataclass(frozen=True)
class Side:
    """One end of the path."""

    kind: str  # "pod" | "service" | "address"
    namespace: str = ""
    name: str = ""
    address: str = ""  # ip, or ip:port for the destination
    node: str = ""
    enrolled: bool | None = None  # the controller's workload `enrolled`
    captured: bool | None = None  # the node agent captures it (None: unknown)
    identity: str = ""
    certificate: Certificate | None = None  # held by its node's ztunnel
    certificate_held: bool | None = None  # None: unknown (ztunnel not read, or not enrolled)
    service: str = ""  # "ns/name" for a Service destination
    port: int = 0
    waypoint: str = ""  # the waypoint its binding names ("" none)


@dataclass(frozen=True)
class Hop:
    """One process on the path, and what it decides."""

    component: str  # "ztunnel" | "waypoint" | "kernel" (no mesh process)
    role: str  # "source" | "waypoint" | "destination"
    node: str
    target: str  # ip:port this hop handles
    verdict: str  # allow | deny | depends
    reason: str
    security: str = "mutual_tls"  # of the leg into this hop: mutual_tls | none
    peer: str = ""  # the identity (or address for plaintext) this hop sees


@dataclass(frozen=True)
class PolicyResult:
    """One resource that applies, as the hop enforcing it judged it."""

    kind: str  # PeerAuthentication | AuthorizationPolicy | WaypointGuard | WaypointBinding
    name: str  # "ns/name" ("" for a built-in guard)
    enforced_by: str  # "ztunnel node-2" | "waypoint ns/name"
    layer: str  # L4 | L7
    action: str  # ALLOW/DENY/CUSTOM/AUDIT, or the mTLS mode
    verdict: str  # allow | deny | no-match | not-reached | depends | n/a
    rule: int | None = None  # index in spec.rules that matched
    decides: bool = False
    detail: str = ""


@dataclass(frozen=True)
class RouteResult:
    kind: str  # HTTPRoute | VirtualService | none
    name: str  # "ns/name" ("" when no route applies)
    service: str  # the Service port the route is for, "ns/name:port"
    rule: int | None
    backends: tuple[str, ...]  # "ns/name:port (weight w)"
    decision: str  # what the waypoint does with the request judged


@dataclass(frozen=True)
class PathInfo:
    kind: str  # ztunnel-to-ztunnel | waypoint | passthrough | plaintext | refused
    summary: str
    hops: tuple[Hop, ...] = ()
    waypoint: str = ""
    replicas: tuple[str, ...] = ()  # "ns/pod ip (node)"


@dataclass(frozen=True)
class Explanation:
    verdict: str  # allow | deny
    deciding_policy: str | None
    reason: str
    source: Side
    destination: Side
    path: PathInfo
    policies: tuple[PolicyResult, ...] = ()
    routes: tuple[RouteResult, ...] = ()
    endpoints: tuple[Side, ...] = ()  # the destination workloads judged (each side's facts)
    depends_on_request: bool = False
    notes: tuple[str, ...] = ()
    state_version: int = 0

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = dataclasses.asdict(self)
        return data


class TargetError(ValueError):
    """SRC or DST names nothing the mesh knows; the message lists close matches."""
