"""The kubelet's cgroup layouts and the CNIs' veth shapes, built for real, found by the agent.

No kubelet and no CNI run here: each layout's exact folder hierarchy is made in the real
cgroup v2 tree (under `weft-kl-<run>/`), a real `sleep` that entered a pod netns is moved
into a container sub-cgroup of it, and the pod netns is wired the way a CNI would: Flannel
(and k3s's flannel: `veth*` enslaved to a `cni0` bridge, /24, default via the bridge),
Calico (`cali*`, no bridge, pod /32, default via 169.254.1.1 on a link route), Cilium
chaining (`lxc*`, /32, default via a link-scoped gateway) and kindnet (`veth*`, routed /24).
A "node" netns stands for the node's own (nothing touches the machine's). Then the agent's
code (pods, podscan, veths, cgroupwatch) must find each pod's cgroup, netns cookie, address
and node-side veth, and wake within a bound when a pod's process appears.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import pytest

from lab import cgroups
from meshcore.nsenter import run_in_netns
from node_agent import kubelet, pods, podscan, tc
from node_agent.cgroupwatch import CgroupWatch
from tests.conftest import RUN_ID

pytestmark = pytest.mark.integration

T = TypeVar("T")

TOP = f"weft-kl-{RUN_ID}"
NODE_NS = f"weft-kl-{RUN_ID}-node"


@dataclass(frozen=True)
class Shape:
    cni: str
    host_if: str
    pod_ip: str  # with prefix length
    gateway: str


def _u(uid: str) -> str:
    return uid.replace("-", "_")


# (name, pods root, pod cgroup below it as a function of uid, CNI shape)
LAYOUTS = [
    ("cgroupfs-guaranteed", "kubepods", lambda u: f"pod{u}", "flannel"),
    ("cgroupfs-burstable", "kubepods", lambda u: f"burstable/pod{u}", "calico"),
    ("cgroupfs-besteffort", "kubepods", lambda u: f"besteffort/pod{u}", "cilium"),
    ("systemd-guaranteed", "kubepods.slice", lambda u: f"kubepods-pod{_u(u)}.slice", "kindnet"),
    (
        "systemd-burstable",
        "kubepods.slice",
        lambda u: f"kubepods-burstable.slice/kubepods-burstable-pod{_u(u)}.slice",
        "flannel",
    ),
    (
        "systemd-besteffort",
        "kubepods.slice",
        lambda u: f"kubepods-besteffort.slice/kubepods-besteffort-pod{_u(u)}.slice",
        "calico",
    ),
    (
        "kind-systemd-burstable",
        "kubelet.slice/kubelet-kubepods.slice",
        lambda u: f"kubelet-kubepods-burstable.slice/kubelet-kubepods-burstable-pod{_u(u)}.slice",
        "cilium",
    ),
    ("lab", "pods", lambda u: f"pod-{u}", "kindnet"),
]
CONTAINER = {  # the container sub-cgroup each runtime makes
    "kubepods": "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "kubepods.slice": "cri-containerd-0123456789abcdef.scope",
    "kubelet.slice/kubelet-kubepods.slice": "cri-containerd-fedcba9876543210.scope",
    "pods": "app",
}


@dataclass
class Pod:
    name: str
    uid: str
    root: Path
    cgroup: Path
    netns: str
    shape: Shape
    proc: subprocess.Popen[bytes]


def sh(*args: str, ns: str | None = None) -> None:
    cmd = ["ip", "netns", "exec", ns, *args] if ns else list(args)
    subprocess.run(cmd, check=True, capture_output=True, timeout=20)


def shape(cni: str, i: int) -> Shape:
    suffix = f"{RUN_ID}{i:02d}"
    if cni == "flannel":
        return Shape(cni, f"veth{suffix}", f"10.244.0.{10 + i}/24", "10.244.0.1")
    if cni == "calico":
        return Shape(cni, f"cali{suffix}", f"10.245.0.{10 + i}/32", "169.254.1.1")
    if cni == "cilium":
        return Shape(cni, f"lxc{suffix}", f"10.246.0.{10 + i}/32", "10.246.0.1")
    return Shape(cni, f"veth{suffix}k", f"10.247.0.{10 + i}/24", "10.247.0.1")


def wire(pod_ns: str, s: Shape, node_ns: str = NODE_NS) -> None:
    """The pod's veth and routes the way `s.cni` makes them, its other end in `node_ns`."""
    sh("ip", "netns", "add", pod_ns)
    sh(
        "ip",
        "link",
        "add",
        s.host_if,
        "type",
        "veth",
        "peer",
        "name",
        "eth0",
        "netns",
        pod_ns,
        ns=node_ns,
    )
    sh("ip", "link", "set", s.host_if, "up", ns=node_ns)
    sh("ip", "link", "set", "lo", "up", ns=pod_ns)
    sh("ip", "link", "set", "eth0", "up", ns=pod_ns)
    sh("ip", "addr", "add", s.pod_ip, "dev", "eth0", ns=pod_ns)
    ip = s.pod_ip.split("/")[0]
    if s.cni == "flannel":
        sh("ip", "link", "set", s.host_if, "master", "cni0", ns=node_ns)
    else:
        sh("ip", "route", "add", f"{ip}/32", "dev", s.host_if, ns=node_ns)
    if s.pod_ip.endswith("/32"):
        sh("ip", "route", "add", s.gateway, "dev", "eth0", "scope", "link", ns=pod_ns)
    sh("ip", "route", "add", "default", "via", s.gateway, "dev", "eth0", ns=pod_ns)


def start_in(cgroup: Path, netns: str | None) -> subprocess.Popen[bytes]:
    """A `sleep` moved into `cgroup` (before it execs, as runc does), in `netns` (None: the
    node's, a hostNetwork pod)."""
    enter = ["nsenter", f"--net=/run/netns/{netns}", "--"] if netns else []
    return subprocess.Popen(
        [
            "sh",
            "-c",
            'echo $$ > "$0/cgroup.procs" && exec "$@"',
            str(cgroup),
            *enter,
            "sleep",
            "600",
        ]
    )


def wait_populated(cgroup: Path) -> None:
    deadline = time.monotonic() + 5
    while not pods.first_pid(cgroup):
        assert time.monotonic() < deadline, f"nothing joined {cgroup}"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def node() -> Iterator[dict[str, Pod]]:
    base = cgroups.create(TOP)
    made: dict[str, Pod] = {}
    namespaces = [NODE_NS]
    try:
        sh("ip", "netns", "add", NODE_NS)
        sh("ip", "link", "set", "lo", "up", ns=NODE_NS)
        sh("ip", "link", "add", "cni0", "type", "bridge", ns=NODE_NS)
        sh("ip", "addr", "add", "10.244.0.1/24", "dev", "cni0", ns=NODE_NS)
        sh("ip", "link", "set", "cni0", "up", ns=NODE_NS)
        # Cilium's own veth pair on the node: a veth, but no pod's.
        sh(
            "ip",
            "link",
            "add",
            "cilium_host",
            "type",
            "veth",
            "peer",
            "name",
            "cilium_net",
            ns=NODE_NS,
        )
        for i, (name, root, relative, cni) in enumerate(LAYOUTS):
            uid = str(uuid.uuid4())
            pod_root = base / root
            cgroup = pod_root / relative(uid)
            (cgroup / CONTAINER[root]).mkdir(parents=True)
            pod_ns = f"weft-kl-{RUN_ID}-pod{i}"
            namespaces.append(pod_ns)
            s = shape(cni, i)
            wire(pod_ns, s)
            proc = start_in(cgroup / CONTAINER[root], pod_ns)
            made[name] = Pod(name, uid, pod_root, cgroup, pod_ns, s, proc)
        # A hostNetwork pod: its process stays in the node's netns.
        uid = str(uuid.uuid4())
        cgroup = (
            base
            / "kubepods.slice"
            / f"kubepods-besteffort.slice/kubepods-besteffort-pod{_u(uid)}.slice"
        )
        (cgroup / CONTAINER["kubepods.slice"]).mkdir(parents=True)
        proc = run_in_netns(
            f"/run/netns/{NODE_NS}", lambda: start_in(cgroup / CONTAINER["kubepods.slice"], None)
        )
        made["host-network"] = Pod(
            "host-network", uid, base / "kubepods.slice", cgroup, NODE_NS, shape("none", 99), proc
        )
        for pod in made.values():
            wait_populated(pod.cgroup)
        yield made
    finally:
        for pod in made.values():
            pod.proc.kill()
            pod.proc.wait(5)
        cgroups.kill(TOP)
        cgroups.remove(TOP)
        for ns in reversed(namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


PODS = [layout[0] for layout in LAYOUTS]


def in_node(fn: Callable[[], T]) -> T:
    return run_in_netns(f"/run/netns/{NODE_NS}", fn)


@pytest.mark.parametrize("name", PODS)
def test_each_layouts_pod_cgroup_is_found_by_uid(node: dict[str, Pod], name: str) -> None:
    pod = node[name]
    assert pods.pod_cgroup(pod.root, pod.uid) == pod.cgroup
    assert pods.pod_cgroups(pod.root)[pod.uid] == pod.cgroup


@pytest.mark.parametrize("name", PODS)
def test_system_cgroup_auto_finds_the_pod_a_process_runs_in(
    node: dict[str, Pod], name: str
) -> None:
    pod = node[name]
    assert pods.own_pod_cgroup(pod.root, pod.proc.pid) == pod.cgroup


def test_system_cgroup_auto_outside_any_pod_says_so(node: dict[str, Pod]) -> None:
    with pytest.raises(kubelet.KubeletLayoutError, match="--system-cgroup PATH"):
        pods.own_pod_cgroup(node["systemd-guaranteed"].root)  # the test runs in no pod


@pytest.mark.parametrize("name", PODS)
def test_each_layouts_netns_cookie_is_the_pods_own(node: dict[str, Pod], name: str) -> None:
    pod = node[name]
    expected = run_in_netns(f"/run/netns/{pod.netns}", pods.own_netns_cookie)
    assert pods.netns_cookie(pod.root, pod.uid) == expected
    others = {
        run_in_netns(f"/run/netns/{p.netns}", pods.own_netns_cookie)
        for p in node.values()
        if p.name != name
    }
    assert expected not in others


@pytest.mark.parametrize("name", PODS)
def test_each_cnis_host_veth_and_address_are_found_from_the_pods_netns(
    node: dict[str, Pod], name: str
) -> None:
    pod = node[name]
    host_cookie = in_node(pods.own_netns_cookie)
    found = in_node(lambda: podscan.scan(pod.root, {}, host_cookie))[pod.uid]
    assert found.device is not None, f"{pod.shape.cni}: no host veth found"
    assert found.device.name == pod.shape.host_if
    assert found.ip == pod.shape.pod_ip.split("/")[0]
    assert not found.host_network and found.complete


def test_a_host_network_pod_is_found_as_such_with_no_veth(node: dict[str, Pod]) -> None:
    pod = node["host-network"]
    host_cookie = in_node(pods.own_netns_cookie)
    found = in_node(lambda: podscan.scan(pod.root, {}, host_cookie))[pod.uid]
    assert found.host_network and found.device is None and found.netns_cookie == host_cookie
    assert podscan.unknown_pods({pod.uid: found}, set()) == {}


def test_pod_devices_from_netns_are_exactly_the_pods_veths(node: dict[str, Pod]) -> None:
    """What --pod-devices from-netns attaches to, against every-veth-but-the-underlay: the
    CNI's own veths (cilium_host/cilium_net) and bridges are not pods'."""
    host_cookie = in_node(pods.own_netns_cookie)
    found: dict[str, podscan.FoundPod] = {}
    for root in {p.root for p in node.values()}:
        found.update(in_node(functools.partial(podscan.scan, root, {}, host_cookie)))
    from_netns = {p.device.name for p in found.values() if p.device}
    assert from_netns == {p.shape.host_if for p in node.values() if p.name != "host-network"}

    def all_veths() -> set[str]:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            return {name for name, _ in tc.pod_devices(ipr, "eth0")}

    assert in_node(all_veths) - from_netns == {"cilium_host", "cilium_net"}


def test_a_rescan_reads_only_new_pods(node: dict[str, Pod]) -> None:
    pod = node["systemd-guaranteed"]
    host_cookie = in_node(pods.own_netns_cookie)
    first = in_node(lambda: podscan.scan(pod.root, {}, host_cookie))
    again = in_node(lambda: podscan.scan(pod.root, first, host_cookie))
    assert all(again[uid] is first[uid] for uid in first)


# --- the wake-up: a new pod's process is seen at once, not at the next 1 s pass ----------


async def measure(
    root: Path, cgroup: Path, container: str, pod_ns: str, started: list[subprocess.Popen[bytes]]
) -> tuple[float, float]:
    """Make the pod cgroup, then its container cgroup, then move a process in, each time
    waiting for the watch to wake (at most 1 s: the poll interval it replaces). Returns the
    seconds from the process start to the wake-up, and to the pod being read (cookie,
    address, host veth: all the agent needs to write its map entry)."""
    host_cookie = in_node(pods.own_netns_cookie)
    woke = asyncio.Event()
    watch = CgroupWatch(root, woke.set)
    watch.start()
    try:
        for step in (cgroup, cgroup / container):
            step.mkdir()
            await asyncio.wait_for(woke.wait(), 1.0)
            woke.clear()
        joined = time.monotonic()
        started.append(start_in(cgroup / container, pod_ns))
        await asyncio.wait_for(woke.wait(), 1.0)  # cgroup.events: populated 1
        wake = time.monotonic() - joined
        found = await asyncio.to_thread(in_node, lambda: podscan.scan(root, {}, host_cookie))
        known = time.monotonic() - joined
        uid = kubelet.pod_uid(cgroup.name)
        assert uid is not None and found[uid].ip and found[uid].device is not None
        return wake, known
    finally:
        watch.close()


NEW_PODS = [
    ("kubepods.slice", lambda u: f"kubepods-besteffort.slice/kubepods-besteffort-pod{_u(u)}.slice"),
    ("kubepods", lambda u: f"burstable/pod{u}"),
]


@pytest.mark.parametrize(("root_name", "relative"), NEW_PODS, ids=["systemd", "cgroupfs"])
def test_a_new_pods_first_process_wakes_the_agent_well_within_the_poll_interval(
    node: dict[str, Pod], root_name: str, relative: Callable[[str], str]
) -> None:
    root = cgroups.path(f"{TOP}/{root_name}")
    cgroup = root / relative(str(uuid.uuid4()))
    pod_ns = f"weft-kl-{RUN_ID}-new-{root_name.split('.')[0]}"
    started: list[subprocess.Popen[bytes]] = []
    try:
        wire(pod_ns, shape("calico", 50 + NEW_PODS.index((root_name, relative))))
        wake, known = asyncio.run(measure(root, cgroup, CONTAINER[root_name], pod_ns, started))
        print(f"\n{root_name}: woke {wake * 1000:.1f} ms, pod read {known * 1000:.1f} ms")
        assert wake < 0.5 and known < 1.0
    finally:
        for proc in started:
            proc.kill()
            proc.wait(5)
        for sub in (cgroup / CONTAINER[root_name], cgroup):
            with contextlib.suppress(OSError):
                os.rmdir(sub)
        subprocess.run(["ip", "netns", "del", pod_ns], capture_output=True, check=False)
