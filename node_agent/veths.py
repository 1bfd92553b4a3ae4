"""A pod's host-side veth, found from the pod's own network namespace, whatever the CNI.

Every CNI that gives pods a veth (Flannel and k3s's flannel: `veth*` into the `cni0` bridge;
Calico: `cali*`, routed, no bridge; Cilium chaining: `lxc*`; kindnet: `veth*`, routed) puts
one end in the pod, as the interface of its default route, and the other in the node's netns.
The pod end's IFLA_LINK is the ifindex of its peer in the node's netns, and the node end's
IFLA_LINK points back: checking both ways refuses a coincidence of indexes between
namespaces. Choosing from link and route dumps is pure (`pod_interface`, `host_peer`);
`read_pod_side` and `read_host_links` do the netlink reads (pyroute2).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from pyroute2 import IPRoute

from meshcore.nsenter import run_in_netns

MAIN_TABLE = 254


@dataclass(frozen=True)
class Link:
    index: int
    name: str
    kind: str  # IFLA_INFO_KIND: "veth", "bridge", "" when the kernel gives none (lo)
    peer_index: int  # IFLA_LINK: a veth's peer, in the peer's netns; 0 when none


@dataclass(frozen=True)
class Route:
    oif: int
    dst_len: int
    table: int = MAIN_TABLE


@dataclass(frozen=True)
class PodSide:
    """What the pod's netns says about its network: its interface and IPv4 addresses."""

    interface: Link | None
    addresses: tuple[str, ...]


@dataclass(frozen=True)
class PodDevice:
    """A pod's host-side veth."""

    name: str
    index: int


def pod_interface(links: Iterable[Link], routes: Iterable[Route]) -> Link | None:
    """The pod's veth: the one its IPv4 default route leaves by (main table), else its only
    veth. None when neither tells (no network yet, or not a veth CNI)."""
    veths = {link.index: link for link in links if link.kind == "veth" and link.peer_index}
    for route in routes:
        if route.dst_len == 0 and route.table == MAIN_TABLE and route.oif in veths:
            return veths[route.oif]
    if len(veths) == 1:
        return next(iter(veths.values()))
    return None


def host_peer(pod_if: Link, host_links: Iterable[Link]) -> PodDevice | None:
    """The node-side end of `pod_if`, if it is in the node's netns (`host_links`)."""
    for link in host_links:
        if (
            link.index == pod_if.peer_index
            and link.kind == "veth"
            and link.peer_index == pod_if.index
        ):
            return PodDevice(link.name, link.index)
    return None


def _link(msg: Any) -> Link:
    info = msg.get_attr("IFLA_LINKINFO")
    kind = info.get_attr("IFLA_INFO_KIND") if info is not None else None
    return Link(
        index=int(msg["index"]),
        name=str(msg.get_attr("IFLA_IFNAME")),
        kind=str(kind or ""),
        peer_index=int(msg.get_attr("IFLA_LINK") or 0),
    )


def read_host_links(ipr: IPRoute) -> list[Link]:
    return [_link(m) for m in ipr.get_links()]


def read_here() -> PodSide:
    """The pod side, read in the calling thread's netns."""
    with IPRoute() as ipr:
        links = [_link(m) for m in ipr.get_links()]
        routes = [
            Route(int(r.get_attr("RTA_OIF") or 0), int(r["dst_len"]), int(r["table"]))
            for r in ipr.get_routes(family=2)
        ]
        interface = pod_interface(links, routes)
        addresses: list[str] = []
        if interface is not None:
            for a in ipr.get_addr(family=2, index=interface.index):
                address = a.get_attr("IFA_ADDRESS")
                if address and not ipaddress.IPv4Address(address).is_loopback:
                    addresses.append(str(address))
    return PodSide(interface, tuple(addresses))


def read_pod_side(pid: int) -> PodSide:
    """The pod's interface and addresses, read in the netns of process `pid`."""
    return run_in_netns(f"/proc/{pid}/ns/net", read_here)
