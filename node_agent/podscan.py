"""The pods running on this node, as the kernel shows them: cgroup, netns, address, host veth.

Found from the pods cgroup tree alone, before (or without) the controller saying anything:
every pod cgroup with a process leads to the pod's netns (cookie), and from there to its
interface, its IPv4 address and the node end of its veth (node_agent/veths.py). A pod is read
once and kept until its cgroup goes, unless something was missing (no address yet, no veth
yet), then it is read again on the next pass. A pod in the node's own netns (hostNetwork) is
kept apart: it is never enrolled nor held, and has no veth of its own.

`unknown_pods` is the pure decision of what to hold: see docs/node-agent.md, "On Kubernetes".
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import structlog
from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from meshcore.nsenter import run_in_netns
from node_agent import pods, veths
from node_agent.reconcile import DesiredPod

log = structlog.get_logger("node_agent.podscan")

HELD_NAMESPACE = "(not yet known)"


@dataclass(frozen=True)
class FoundPod:
    uid: str
    cgroup: Path
    netns_cookie: int
    host_network: bool
    ip: str = ""  # the pod interface's first IPv4 address, "" while it has none
    device: veths.PodDevice | None = None  # the node end of its veth

    @property
    def complete(self) -> bool:
        return self.host_network or (bool(self.ip) and self.device is not None)


def _cookie_and_side() -> tuple[int, veths.PodSide]:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        raw = s.getsockopt(socket.SOL_SOCKET, pods.SO_NETNS_COOKIE, 8)
    return int(struct.unpack("=Q", raw)[0]), veths.read_here()


def read_pod(
    uid: str, cgroup: Path, host_cookie: int, host_links: list[veths.Link]
) -> FoundPod | None:
    """What the pod's netns says, or None while the pod has no process."""
    pid = pods.first_pid(cgroup)
    if pid is None:
        return None
    try:
        cookie, side = run_in_netns(f"/proc/{pid}/ns/net", _cookie_and_side)
    except (FileNotFoundError, ProcessLookupError):
        return None  # the process just exited
    if cookie == host_cookie:
        return FoundPod(uid, cgroup, cookie, host_network=True)
    device = veths.host_peer(side.interface, host_links) if side.interface else None
    ip = side.addresses[0] if side.addresses else ""
    return FoundPod(uid, cgroup, cookie, False, ip, device)


def read_netns(uid: str, netns: str, host_cookie: int) -> FoundPod:
    """A pod read from its netns path (the CNI plugin's CNI_NETNS), before it has a process."""
    cookie, side = run_in_netns(netns, _cookie_and_side)
    if cookie == host_cookie:
        return FoundPod(uid, Path(), cookie, host_network=True)
    with IPRoute() as ipr:
        host_links = veths.read_host_links(ipr)
    device = veths.host_peer(side.interface, host_links) if side.interface else None
    return FoundPod(uid, Path(), cookie, False, side.addresses[0] if side.addresses else "", device)


def scan(root: Path, previous: Mapping[str, FoundPod], host_cookie: int) -> dict[str, FoundPod]:
    """Every pod under `root` with a process, re-reading only new or incomplete ones."""
    cgroups = pods.pod_cgroups(root)
    out: dict[str, FoundPod] = {}
    host_links: list[veths.Link] | None = None
    for uid, cgroup in sorted(cgroups.items()):
        known = previous.get(uid)
        if known is not None and known.complete and known.cgroup == cgroup:
            out[uid] = known
            continue
        if host_links is None:
            with IPRoute() as ipr:
                host_links = veths.read_host_links(ipr)
        try:
            found = read_pod(uid, cgroup, host_cookie, host_links)
        except (OSError, NetlinkError) as err:  # one pod's trouble is not the others'
            log.warning("pod.scan_failed", uid=uid, cgroup=str(cgroup), error=str(err))
            continue
        if found is not None:
            out[uid] = found
    return out


def unknown_pods(found: Mapping[str, FoundPod], known_uids: set[str]) -> dict[str, DesiredPod]:
    """Pods running here that the controller has not told about: held (captured, so that
    ztunnel, which knows no workload at their address, refuses their connections) until it
    does. Only pods with an address: one without has no network to reach anything by."""
    return {
        uid: DesiredPod(uid, HELD_NAMESPACE, uid, pod.ip)
        for uid, pod in found.items()
        if uid not in known_uids and not pod.host_network and pod.ip
    }
