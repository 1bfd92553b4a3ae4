"""What the kernel maps should hold for this node, and the operations to get there. Pure.

The agent knows pods by uid (from the controller) and the kernel knows them by network
namespace cookie; `cookies` is the agent's discovered mapping. A pod whose cookie is not
known yet (no process running) stays pending and is retried.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from meshcore.meshstate import StateValue, Workload
from meshcore.resources import ResourceKey


@dataclass(frozen=True)
class DesiredPod:
    uid: str
    namespace: str
    name: str
    ip: str
    excluded_ports: tuple[int, ...] = ()

    @property
    def label(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class MapEntry:
    ip: str
    flags: int = 0


@dataclass
class Plan:
    enroll: dict[int, MapEntry] = field(default_factory=dict)  # cookie -> entry to write
    unenroll: list[int] = field(default_factory=list)  # cookies to delete
    ips_put: dict[str, int] = field(default_factory=dict)  # pod ip -> flags
    ips_delete: list[str] = field(default_factory=list)
    ports_put: set[tuple[int, int]] = field(default_factory=set)  # (cookie, port)
    ports_delete: set[tuple[int, int]] = field(default_factory=set)
    pending: list[DesiredPod] = field(default_factory=list)  # cookie not known yet

    @property
    def empty(self) -> bool:
        return not (
            self.enroll
            or self.unenroll
            or self.ips_put
            or self.ips_delete
            or self.ports_put
            or self.ports_delete
        )


def desired_pods(state: Mapping[ResourceKey, StateValue], node: str) -> dict[str, DesiredPod]:
    """Enrolled workloads scheduled on `node`, by pod uid."""
    out = {}
    for value in state.values():
        if (
            isinstance(value, Workload)
            and value.node == node
            and value.enrolled
            and value.addresses
        ):
            out[value.uid] = DesiredPod(
                value.uid, value.namespace, value.name, value.addresses[0], value.excluded_ports
            )
    return out


def plan(
    desired: Mapping[str, DesiredPod],
    cookies: Mapping[str, int],
    enrolled: Mapping[int, MapEntry],
    enrolled_ips: Mapping[str, int],
    excluded: set[tuple[int, int]],
    global_excluded: frozenset[int] = frozenset(),
) -> Plan:
    """Operations that make the maps (`enrolled`, `enrolled_ips`, `excluded`) match."""
    p = Plan()
    want_enrolled: dict[int, MapEntry] = {}
    want_ips: dict[str, int] = {}
    want_ports: set[tuple[int, int]] = {(0, port) for port in global_excluded}
    for uid, pod in sorted(desired.items()):
        # The inbound path needs only the IP, so it is enrolled even before the cookie is known.
        want_ips[pod.ip] = 0
        cookie = cookies.get(uid)
        if cookie is None:
            p.pending.append(pod)
            continue
        want_enrolled[cookie] = MapEntry(pod.ip)
        want_ports |= {(cookie, port) for port in pod.excluded_ports}
    for cookie, entry in want_enrolled.items():
        if enrolled.get(cookie) != entry:
            p.enroll[cookie] = entry
    if not p.pending:
        # While some pod's cookie is unknown, an entry we cannot place may be that pod's:
        # keep it rather than open a gap in its capture (after an agent restart, say).
        p.unenroll = sorted(set(enrolled) - set(want_enrolled))
    for ip, flags in want_ips.items():
        if enrolled_ips.get(ip) != flags:
            p.ips_put[ip] = flags
    p.ips_delete = sorted(set(enrolled_ips) - set(want_ips))
    p.ports_put = want_ports - excluded
    p.ports_delete = excluded - want_ports
    if p.pending:  # keep the exclusions of entries kept above, as their capture goes on
        kept = set(enrolled) - set(want_enrolled)
        p.ports_delete = {(c, port) for c, port in p.ports_delete if c not in kept}
    return p
