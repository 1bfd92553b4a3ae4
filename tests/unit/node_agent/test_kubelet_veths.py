"""Choosing a pod's host-side veth from link and route dumps (node_agent.veths), pure: the
pod's default-route interface, its peer index, and the node end pointing back."""

from __future__ import annotations

from node_agent.veths import Link, PodDevice, Route, host_peer, pod_interface

LO = Link(1, "lo", "", 0)
ETH0 = Link(3, "eth0", "veth", 17)  # peer is ifindex 17 in the node's netns
NET1 = Link(4, "net1", "veth", 18)  # a second network (Multus)
DEFAULT = Route(oif=3, dst_len=0)


def test_the_default_routes_veth_is_the_pods_interface() -> None:
    assert pod_interface([LO, NET1, ETH0], [Route(4, 24), DEFAULT]) == ETH0


def test_a_default_route_in_another_table_is_not_the_pods() -> None:
    assert pod_interface([LO, ETH0, NET1], [Route(4, 0, table=100)]) is None


def test_a_lone_veth_without_default_route_is_the_pods() -> None:
    # Calico and Cilium install the default via 169.254.1.1 / a /32 gateway route; a pod
    # caught before its routes are in still has one veth.
    assert pod_interface([LO, ETH0], []) == ETH0


def test_no_veth_no_interface() -> None:
    assert pod_interface([LO], [Route(1, 0)]) is None
    assert pod_interface([LO, Link(5, "eth0", "ipvlan", 2)], [Route(5, 0)]) is None


def test_a_veth_without_peer_index_is_ignored() -> None:
    assert pod_interface([Link(3, "eth0", "veth", 0)], [DEFAULT]) is None


NODE = [
    LO,
    Link(2, "ens5", "", 0),
    Link(9, "cni0", "bridge", 0),
    Link(17, "veth1a2b3c4d", "veth", 3),
    Link(18, "cali0123456789a", "veth", 4),
]


def test_the_node_end_is_the_peer_index_pointing_back() -> None:
    assert host_peer(ETH0, NODE) == PodDevice("veth1a2b3c4d", 17)


def test_an_index_that_does_not_point_back_is_a_coincidence_not_the_peer() -> None:
    # index 17 exists on the node but its own peer is not the pod's eth0 (another netns)
    assert host_peer(Link(3, "eth0", "veth", 17), [Link(17, "lxc1", "veth", 8)]) is None


def test_a_non_veth_with_the_index_is_not_the_peer() -> None:
    assert host_peer(Link(3, "eth0", "veth", 9), NODE) is None


def test_a_peer_not_in_the_nodes_netns_is_not_found() -> None:
    assert host_peer(Link(3, "eth0", "veth", 99), NODE) is None
