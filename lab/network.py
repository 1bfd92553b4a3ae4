"""Wire the lab's networks with netlink (pyroute2): underlay bridge, nodes, pod veths.

Topology, all inside namespaces this lab created (the host's own namespace is untouched):

    underlay netns: bridge weftbr0 ── weft-node-1 ... weft-node-N
    node netns:     eth0 (underlay address), routes to other nodes' pod CIDRs,
                    one routed veth per pod (node side holds the pod gateway 169.254.1.1)
    pod netns:      eth0 with the pod's /32 address, default via 169.254.1.1

Routed /32 pods (as Calico does) make every packet of a pod cross its node's IP stack, where
the kube-proxy rules, and later the mesh's eBPF programs, see it.

Each step runs on a thread inside the namespace it changes (`netns.run_in`), with a plain
IPRoute socket opened there.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Callable

from pyroute2 import IPRoute

from lab import netns
from lab.addressing import NodePlan
from lab.config import POD_GATEWAY
from lab.naming import LabNames

_SCOPE_LINK = 253


def _in(ns: str, fn: Callable[[IPRoute], None]) -> None:
    def run() -> None:
        with IPRoute() as ipr:
            fn(ipr)

    netns.run_in(ns, run)


def _index(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise RuntimeError(f"interface {ifname} not found")
    return int(found[0])


def _up(ipr: IPRoute, ifname: str) -> int:
    idx = _index(ipr, ifname)
    ipr.link("set", index=idx, state="up")
    return idx


def _veth_to(ipr: IPRoute, ifname: str, peer: str, peer_netns: str) -> None:
    """Create a veth pair here whose peer lands directly in `peer_netns`."""
    fd = os.open(netns.NETNS_DIR / peer_netns, os.O_RDONLY)
    try:
        ipr.link("add", ifname=ifname, kind="veth", peer={"ifname": peer, "net_ns_fd": fd})
    finally:
        os.close(fd)


def build_underlay(names: LabNames) -> None:
    netns.create(names.underlay_netns)

    def wire(ipr: IPRoute) -> None:
        _up(ipr, "lo")
        ipr.link("add", ifname=names.BRIDGE, kind="bridge")
        _up(ipr, names.BRIDGE)

    _in(names.underlay_netns, wire)


def build_node(
    names: LabNames,
    node: NodePlan,
    all_nodes: list[NodePlan],
    underlay_cidr: str,
    service_cidr: str,
) -> None:
    ns = names.node_netns(node.name)
    netns.create(ns)
    port = names.underlay_port(node.name)
    prefix = ipaddress.IPv4Network(underlay_cidr).prefixlen

    def underlay_side(ipr: IPRoute) -> None:
        _veth_to(ipr, port, names.NODE_IFNAME, ns)
        idx = _index(ipr, port)
        ipr.link("set", index=idx, master=_index(ipr, names.BRIDGE))
        ipr.link("set", index=idx, state="up")

    def node_side(ipr: IPRoute) -> None:
        _up(ipr, "lo")
        idx = _up(ipr, names.NODE_IFNAME)
        ipr.addr("add", index=idx, address=node.underlay_ip, prefixlen=prefix)
        for other in all_nodes:
            if other.name != node.name:
                ipr.route("add", dst=other.pod_cidr, gateway=other.underlay_ip, oif=idx)
        # Service VIPs need a route for the node's own connects to reach the NAT hook.
        ipr.route("add", dst=service_cidr, oif=idx, scope=_SCOPE_LINK)

    _in(names.underlay_netns, underlay_side)
    _in(ns, node_side)
    netns.write_sysctl(ns, "net.ipv4.ip_forward", "1")


def build_control_plane(
    names: LabNames, ip: str, underlay_cidr: str, nodes: list[NodePlan]
) -> None:
    """A namespace on the underlay for the controller, reachable from every node and, as a
    cluster's control plane is, from every pod (routes to each node's pod CIDR)."""
    ns = names.control_netns
    netns.create(ns)
    prefix = ipaddress.IPv4Network(underlay_cidr).prefixlen

    def underlay_side(ipr: IPRoute) -> None:
        _veth_to(ipr, names.CONTROL_PORT, names.NODE_IFNAME, ns)
        idx = _index(ipr, names.CONTROL_PORT)
        ipr.link("set", index=idx, master=_index(ipr, names.BRIDGE))
        ipr.link("set", index=idx, state="up")

    def control_side(ipr: IPRoute) -> None:
        _up(ipr, "lo")
        idx = _up(ipr, names.NODE_IFNAME)
        ipr.addr("add", index=idx, address=ip, prefixlen=prefix)
        for node in nodes:
            ipr.route("add", dst=node.pod_cidr, gateway=node.underlay_ip, oif=idx)

    _in(names.underlay_netns, underlay_side)
    _in(ns, control_side)


def add_pod(names: LabNames, node: NodePlan, pod_netns: str, pod_uid: str, ip: str) -> None:
    node_ns = names.node_netns(node.name)
    host_if = names.host_veth(pod_uid)
    netns.create(pod_netns)

    def node_side(ipr: IPRoute) -> None:
        _veth_to(ipr, host_if, names.POD_IFNAME, pod_netns)
        idx = _up(ipr, host_if)
        ipr.addr("add", index=idx, address=POD_GATEWAY, prefixlen=32)
        ipr.route("add", dst=f"{ip}/32", oif=idx, scope=_SCOPE_LINK, prefsrc=node.underlay_ip)

    def pod_side(ipr: IPRoute) -> None:
        _up(ipr, "lo")
        idx = _up(ipr, names.POD_IFNAME)
        ipr.addr("add", index=idx, address=ip, prefixlen=32)
        ipr.route("add", dst=f"{POD_GATEWAY}/32", oif=idx, scope=_SCOPE_LINK)
        ipr.route("add", dst="0.0.0.0/0", gateway=POD_GATEWAY, oif=idx)

    _in(node_ns, node_side)
    _in(pod_netns, pod_side)


def remove_pod(pod_netns: str) -> None:
    """Deleting the pod's namespace destroys its veth pair and the node's route with it."""
    netns.delete(pod_netns)
