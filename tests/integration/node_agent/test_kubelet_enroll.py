"""The real node agent on a kubelet-shaped node: pods enrolled as their first process appears,
pods the controller does not know yet held, and the time each takes, with the inotify
wake-up and with the 1 s pass alone.

A "node" netns holds a real controller (folder source) and a real `python -m node_agent run
--pods-cgroup <kubepods.slice> --hold-unknown-pods`; pods are made as the kubelet and a veth
CNI would make them (test_kubelet_layouts.py), and the agent's /debug/status (over its unix
socket) says what is in its capture maps.
"""

from __future__ import annotations

import ctypes
import http.client
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from lab import cgroups
from meshcore.nsenter import run_in_netns
from node_agent import pods
from tests.conftest import RUN_ID
from tests.integration.controller.controller_harness import ControllerProcess, pod_yaml
from tests.integration.node_agent.test_kubelet_layouts import (
    CONTAINER,
    _u,
    sh,
    shape,
    start_in,
    wire,
)

pytestmark = pytest.mark.integration

TOP = f"weft-ke-{RUN_ID}"
NODE_NS = f"weft-ke-{RUN_ID}-node"
PIN_DIR = Path(f"/sys/fs/bpf/weft-ke-{RUN_ID}")
NODE = "node-1"
HELD = "(not yet known)"

NAMESPACES = {
    "00-ns.yaml": "\n---\n".join(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name, "labels": labels},
            }
        )
        for name, labels in (
            ("shop", {"weft.dev/dataplane-mode": "ambient"}),
            ("plain", {}),
        )
    ),
    "01-sa.yaml": "\n---\n".join(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "ServiceAccount",
                "metadata": {"name": "default", "namespace": ns},
            }
        )
        for ns in ("shop", "plain")
    ),
}


_SYS_BPF = 321  # x86_64
_BPF_MAP_LOOKUP_ELEM, _BPF_OBJ_GET = 1, 7
_libc = ctypes.CDLL(None, use_errno=True)


class _ObjGet(ctypes.Structure):
    _fields_ = [
        ("pathname", ctypes.c_uint64),
        ("bpf_fd", ctypes.c_uint32),
        ("flags", ctypes.c_uint32),
    ]


class _Lookup(ctypes.Structure):
    _fields_ = [
        ("map_fd", ctypes.c_uint32),
        ("pad", ctypes.c_uint32),
        ("key", ctypes.c_uint64),
        ("value", ctypes.c_uint64),
        ("flags", ctypes.c_uint64),
    ]


class EnrolledMap:
    """The pinned `enrolled` map, read straight from the kernel (a lookup is microseconds,
    where the agent's /debug/status runs bpftool)."""

    def __init__(self) -> None:
        path = ctypes.create_string_buffer(str(PIN_DIR / "enrolled").encode())
        attr = _ObjGet(pathname=ctypes.addressof(path))
        fd = _libc.syscall(_SYS_BPF, _BPF_OBJ_GET, ctypes.byref(attr), ctypes.sizeof(attr))
        if fd < 0:
            raise OSError(ctypes.get_errno(), "BPF_OBJ_GET enrolled")
        self.fd = fd

    def __contains__(self, cookie: int) -> bool:
        key = ctypes.c_uint64(cookie)
        value = (ctypes.c_uint8 * 8)()
        attr = _Lookup(map_fd=self.fd, key=ctypes.addressof(key), value=ctypes.addressof(value))
        return (
            _libc.syscall(_SYS_BPF, _BPF_MAP_LOOKUP_ELEM, ctypes.byref(attr), ctypes.sizeof(attr))
            == 0
        )

    def close(self) -> None:
        os.close(self.fd)


class UnixHTTP(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("localhost", timeout=5)
        self.path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        self.sock.connect(str(self.path))


@dataclass
class Agent:
    socket: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def get(self, path: str) -> tuple[int, Any]:
        conn = UnixHTTP(self.socket)
        try:
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
        finally:
            conn.close()
        return resp.status, (json.loads(body) if path == "/debug/status" else body)

    def status(self) -> dict[str, Any]:
        return dict(self.get("/debug/status")[1])

    def enrolled(self) -> dict[str, int]:
        """pod label -> netns cookie of what is in the capture map."""
        return {e["pod"]: e["netns_cookie"] for e in self.status()["enrolled"]}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@dataclass
class Node:
    root: Path
    system: Path
    controller: ControllerProcess
    work: Path
    started: list[subprocess.Popen[bytes]]
    namespaces: list[str]
    count: int = 0

    @property
    def cni_socket(self) -> Path:
        return self.work / "cni.sock"

    def start_agent(self, *extra: str) -> Agent:
        sock = self.work / f"agent-{len(self.started)}.sock"
        log = self.work / f"agent-{len(self.started)}.log"
        cmd = [
            sys.executable, "-m", "node_agent", "run",
            "--node", NODE,
            "--node-ip", "198.18.0.1",
            "--controller", self.controller.target,
            "--credential", str(self.controller.root / "nodes" / NODE),
            "--pin-dir", str(PIN_DIR),
            "--pods-cgroup", str(self.root),
            "--system-cgroup", str(self.system),
            "--admin-socket", str(sock),
            "--admin-addr", "",
            "--metrics-addr", "",
            "--hold-unknown-pods",
            "--cni-socket", str(self.cni_socket),
            *extra,
        ]  # fmt: skip
        with open(log, "wb") as out:
            proc = run_in_netns(
                f"/run/netns/{NODE_NS}",
                lambda: subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT),
            )
        agent = Agent(sock, proc, log)
        self.started.append(proc)
        deadline = time.monotonic() + 120  # compiling the programs takes a while
        while True:
            assert proc.poll() is None, f"agent exited:\n{log.read_text()[-3000:]}"
            try:
                if agent.get("/ready")[0] == 200:
                    return agent
            except OSError:
                pass
            assert time.monotonic() < deadline, f"agent not ready:\n{log.read_text()[-3000:]}"
            time.sleep(0.2)

    def new_pod(self, cni: str = "calico") -> tuple[str, str, Path, str]:
        """A pod's cgroup, container cgroup and wired netns, with no process yet:
        (uid, ip, container cgroup, netns)."""
        self.count += 1
        uid = str(uuid.uuid4())
        cgroup = (
            self.root / "kubepods-besteffort.slice" / (f"kubepods-besteffort-pod{_u(uid)}.slice")
        )
        container = cgroup / CONTAINER["kubepods.slice"]
        container.mkdir(parents=True)
        pod_ns = f"weft-ke-{RUN_ID}-p{self.count}"
        self.namespaces.append(pod_ns)
        s = shape(cni, 60 + self.count)
        wire(pod_ns, s, NODE_NS)
        return uid, s.pod_ip.split("/")[0], container, pod_ns

    def declare(self, name: str, namespace: str, uid: str, ip: str) -> None:
        pod = json.loads(pod_yaml(name, NODE, ip, namespace=namespace))
        pod["metadata"]["uid"] = uid
        self.controller.write(f"50-{namespace}-{name}.yaml", json.dumps(pod))

    def run(self, container: Path, pod_ns: str) -> float:
        """Start the pod's process; returns when it started (monotonic)."""
        at = time.monotonic()
        self.started.append(start_in(container, pod_ns))
        return at


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    work = tmp_path_factory.mktemp("weft-ke")
    root = cgroups.create(f"{TOP}/kubepods.slice")
    system = cgroups.create(f"{TOP}/system")
    for qos in ("burstable", "besteffort"):
        (root / f"kubepods-{qos}.slice").mkdir()
    controller = ControllerProcess(work / "controller")
    n = Node(root, system, controller, work, [], [NODE_NS])
    try:
        sh("ip", "netns", "add", NODE_NS)
        sh("ip", "link", "set", "lo", "up", ns=NODE_NS)
        sh("ip", "link", "add", "eth0", "type", "veth", "peer", "name", "underlay", ns=NODE_NS)
        sh("ip", "addr", "add", "198.18.0.1/24", "dev", "eth0", ns=NODE_NS)
        sh("ip", "link", "set", "eth0", "up", ns=NODE_NS)
        sh("ip", "link", "add", "cni0", "type", "bridge", ns=NODE_NS)
        sh("ip", "addr", "add", "10.244.0.1/24", "dev", "cni0", ns=NODE_NS)
        sh("ip", "link", "set", "cni0", "up", ns=NODE_NS)
        for name, text in NAMESPACES.items():
            controller.write(name, text)
        run_in_netns(f"/run/netns/{NODE_NS}", controller.start)
        controller.credential(NODE)
        yield n
    finally:
        for proc in reversed(n.started):
            if proc.poll() is None:
                proc.terminate() if "node_agent" in str(proc.args) else proc.kill()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        controller.stop()
        cgroups.kill(TOP)
        cgroups.remove(TOP)
        shutil.rmtree(PIN_DIR, ignore_errors=True)
        for ns in reversed(n.namespaces):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, check=False)


def until(what: str, check: Any, timeout: float = 10, step: float = 0.01) -> float:
    """Poll `check()` until true; returns when it first was (monotonic)."""
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out: {what}"
        time.sleep(step)
    return time.monotonic()


@pytest.fixture(scope="module")
def agent(node: Node) -> Iterator[Agent]:
    a = node.start_agent()
    try:
        yield a
    finally:
        a.stop()


def test_a_known_pod_is_enrolled_as_its_first_process_appears(node: Node, agent: Agent) -> None:
    uid, ip, container, pod_ns = node.new_pod("flannel")
    node.declare("known-1", "shop", uid, ip)
    until(
        "the controller's pod reaches the agent",
        lambda: "shop/known-1" in agent.status()["pending"],
    )
    node.run(container, pod_ns)
    until("enrolled", lambda: "shop/known-1" in agent.enrolled())
    found = {p["uid"]: p for p in agent.status()["pods_found"]}[uid]
    assert found["ip"] == ip and found["device"].startswith("veth")
    assert any(t["device"] == found["device"] for t in agent.status()["tc"])


def test_a_pod_the_controller_does_not_know_is_held_then_named_without_a_gap(
    node: Node, agent: Agent
) -> None:
    uid, ip, container, pod_ns = node.new_pod("cilium")
    node.run(container, pod_ns)
    until("held", lambda: f"{HELD}/{uid}" in agent.enrolled())
    status = agent.status()
    assert uid in status["held"]
    cookie = agent.enrolled()[f"{HELD}/{uid}"]
    node.declare("late-1", "shop", uid, ip)
    deadline = time.monotonic() + 10
    while "shop/late-1" not in (now := agent.enrolled()):
        assert cookie in now.values(), "the pod's capture entry left the map while it was named"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert now["shop/late-1"] == cookie
    assert uid not in agent.status()["held"]


def test_a_held_pod_of_an_unenrolled_namespace_is_let_go_once_known(
    node: Node, agent: Agent
) -> None:
    uid, ip, container, pod_ns = node.new_pod("calico")
    node.run(container, pod_ns)
    until("held", lambda: f"{HELD}/{uid}" in agent.enrolled())
    node.declare("plain-1", "plain", uid, ip)
    until("released", lambda: not any(uid in label for label in agent.enrolled()))
    assert all(e["ip"] != ip for e in agent.status()["enrolled"])
    assert ip not in agent.status()["enrolled_ips"]


def test_a_host_network_pod_is_neither_enrolled_nor_held(node: Node, agent: Agent) -> None:
    uid = str(uuid.uuid4())
    container = node.root / f"kubepods-pod{_u(uid)}.slice" / CONTAINER["kubepods.slice"]
    container.mkdir(parents=True)
    node.started.append(run_in_netns(f"/run/netns/{NODE_NS}", lambda: start_in(container, None)))
    until("found", lambda: any(p["uid"] == uid for p in agent.status()["pods_found"]))
    time.sleep(1.2)  # a full pass after it was found
    status = agent.status()
    assert uid not in status["held"]
    assert not any(uid in e["pod"] for e in status["enrolled"])


# --- the CNI plugin: the sandbox is handed back only once the pod is captured -----------


def cni_add(
    node: Node, uid: str, namespace: str, name: str, ip: str, pod_ns: str
) -> dict[str, Any]:
    """Run node_agent/cniplugin.py as the runtime would, chained after a CNI that gave `ip`."""
    prev = {"cniVersion": "1.0.0", "ips": [{"address": f"{ip}/32", "interface": 0}]}
    config = {
        "cniVersion": "1.0.0",
        "name": "k8s-pod-network",
        "type": "weft-cni",
        "agent_socket": str(node.cni_socket),
        "prevResult": prev,
    }
    env = {
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "abc",
        "CNI_NETNS": f"/run/netns/{pod_ns}",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": "/opt/cni/bin",
        "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name};K8S_POD_UID={uid}",
    }
    plugin = Path(pods.__file__).with_name("cniplugin.py")
    proc = subprocess.run(
        [sys.executable, str(plugin)],
        input=json.dumps(config),
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    out = json.loads(proc.stdout)
    assert (proc.returncode == 0) == ("code" not in out), proc.stdout + proc.stderr
    return dict(out)


@pytest.mark.parametrize(
    ("declared", "namespace"), [(False, "shop"), (True, "shop")], ids=["unknown", "known"]
)
def test_the_cni_add_returns_only_once_the_pod_is_in_the_capture_map(
    node: Node, agent: Agent, declared: bool, namespace: str
) -> None:
    uid, ip, container, pod_ns = node.new_pod()
    name = f"cni-{node.count}"
    if declared:
        node.declare(name, namespace, uid, ip)
        until("known", lambda: f"{namespace}/{name}" in agent.status()["pending"])
    cookie = run_in_netns(f"/run/netns/{pod_ns}", pods.own_netns_cookie)
    out = cni_add(node, uid, namespace, name, ip, pod_ns)
    assert out["ips"][0]["address"] == f"{ip}/32"  # the previous result, passed on
    enrolled = EnrolledMap()
    try:
        assert cookie in enrolled  # no process of the pod exists yet: captured before it runs
    finally:
        enrolled.close()
    assert pods.first_pid(container.parent) is None
    node.run(container, pod_ns)  # the sandbox's process appears: the entry stays
    until(
        "found",
        lambda: any(p["uid"] == uid and p["cgroup"] != "." for p in agent.status()["pods_found"]),
    )
    assert cookie in agent.enrolled().values()


def test_the_cni_add_of_a_known_unenrolled_pod_returns_without_capturing_it(
    node: Node, agent: Agent
) -> None:
    uid, ip, _container, pod_ns = node.new_pod()
    node.declare("cni-plain", "plain", uid, ip)
    until(
        "known",
        lambda: (
            "plain/cni-plain" not in agent.status()["pending"] and uid not in agent.status()["held"]
        ),
    )
    cookie = run_in_netns(f"/run/netns/{pod_ns}", pods.own_netns_cookie)
    cni_add(node, uid, "plain", "cni-plain", ip, pod_ns)
    assert cookie not in agent.enrolled().values()


def test_the_cni_add_fails_for_a_netns_the_agent_cannot_read(node: Node, agent: Agent) -> None:
    out = cni_add(node, str(uuid.uuid4()), "shop", "ghost", "10.9.9.9", f"weft-ke-{RUN_ID}-absent")
    assert out["code"] == 11 and "cannot read the pod's netns" in out["msg"]


def test_a_pod_read_before_its_process_entered_its_netns_is_followed(
    node: Node, agent: Agent
) -> None:
    """The pod's first process joins its cgroup in another netns (this test's own) and
    enters the pod's a while later, as the lab's container start does in a blink: the agent
    may read the stranger's netns first, and must then follow the pod to its own, not keep
    the stranger's enrolled and the pod uncaptured."""
    uid, ip, container, pod_ns = node.new_pod()
    cookie = run_in_netns(f"/run/netns/{pod_ns}", pods.own_netns_cookie)
    stranger = pods.own_netns_cookie()
    name = f"w-{node.count}"
    node.declare(name, "shop", uid, ip)
    until("known", lambda: f"shop/{name}" in agent.status()["pending"])
    node.started.append(
        subprocess.Popen(
            ["sh", "-c", 'echo $$ > "$0/cgroup.procs" && sleep 1.5 && exec "$@"',
             str(container), "nsenter", f"--net=/run/netns/{pod_ns}", "--", "sleep", "600"]
        )
    )  # fmt: skip
    enrolled = EnrolledMap()
    try:
        until("the pod's own netns in the map", lambda: cookie in enrolled, timeout=10)
        until("the stranger's netns let go", lambda: stranger not in enrolled, timeout=5)
    finally:
        enrolled.close()


# --- the window: first process -> in the capture map ------------------------------------


def window(node: Node, agent: Agent, known: bool, runs: int) -> list[float]:
    """Seconds from a pod's first process to its entry in the capture map (enrolled when the
    controller knew it before, held when not)."""
    out = []
    enrolled = EnrolledMap()
    try:
        for i in range(runs):
            uid, ip, container, pod_ns = node.new_pod()
            cookie = run_in_netns(f"/run/netns/{pod_ns}", pods.own_netns_cookie)
            if known:
                name = f"w-{node.count}"
                node.declare(name, "shop", uid, ip)
                until("known", lambda name=name: f"shop/{name}" in agent.status()["pending"])
            time.sleep(0.3 * i % 1.0)  # spread the starts over the poll's phase
            started = node.run(container, pod_ns)
            out.append(until("in the map", lambda c=cookie: c in enrolled, step=0.002) - started)
    finally:
        enrolled.close()
    return out


def test_the_window_from_first_process_to_capture_with_inotify_and_with_the_poll_alone(
    node: Node, agent: Agent
) -> None:
    watched = window(node, agent, known=True, runs=4) + window(node, agent, known=False, runs=4)
    agent.stop()
    polled_agent = node.start_agent("--no-watch-cgroups")
    try:
        polled = window(node, polled_agent, known=True, runs=4)
        polled += window(node, polled_agent, known=False, runs=4)
    finally:
        polled_agent.stop()
    ms = lambda xs: ", ".join(f"{x * 1000:.0f}" for x in xs)  # noqa: E731
    print(f"\ninotify: {ms(watched)} ms (median {statistics.median(watched) * 1000:.0f})")
    print(f"poll:    {ms(polled)} ms (median {statistics.median(polled) * 1000:.0f})")
    assert max(watched) < 0.5
    assert max(polled) < 2.5
    assert statistics.median(watched) < statistics.median(polled)
