"""`python -m node_agent install-cni` as the DaemonSet runs it, on a folder pair standing for the
node's /etc/cni/net.d and /opt/cni/bin: the plugin installed, the primary conflist chained,
chained again after a CNI daemon rewrites it, and both undone on SIGTERM. The installed file is
then run as the runtime runs a plugin (its shebang, CNI_* variables, the chained config with a
prevResult on stdin)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import RUN_ID

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]
CALICO = {
    "name": "k8s-pod-network",
    "cniVersion": "0.3.1",
    "plugins": [
        {"type": "calico", "datastore_type": "kubernetes", "ipam": {"type": "calico-ipam"}},
        {"type": "portmap", "snat": True, "capabilities": {"portMappings": True}},
    ],
}


@dataclass
class Node:
    conf: Path
    bin: Path
    sock: Path
    log: Path

    def conflist(self) -> dict[str, Any]:
        return dict(json.loads((self.conf / "10-calico.conflist").read_text()))

    def types(self) -> list[str]:
        return [p["type"] for p in self.conflist()["plugins"]]


def until(what: str, check: Any, node: Node, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (OSError, ValueError):  # a file between writes
            pass
        assert time.monotonic() < deadline, f"timed out: {what}\n{node.log.read_text()[-3000:]}"
        time.sleep(0.05)


@pytest.fixture
def node(tmp_path: Path) -> Node:
    top = tmp_path / f"weft-cni-{RUN_ID}"
    n = Node(top / "etc/cni/net.d", top / "opt/cni/bin", top / "run/weft/cni.sock", top / "log")
    n.conf.mkdir(parents=True)
    n.bin.mkdir(parents=True)
    (n.bin / "calico").write_text("#!/bin/sh\n")  # the primary CNI's own binary: untouched
    return n


@pytest.fixture
def installer(node: Node) -> Iterator[subprocess.Popen[bytes]]:
    cmd = [
        sys.executable, "-m", "node_agent", "install-cni",
        "--cni-conf-dir", str(node.conf),
        "--cni-bin-dir", str(node.bin),
        "--agent-socket", str(node.sock),
        "--exclude-namespace", "weft-system",
        "--timeout-seconds", "2",
        "--host-bin-dir", str(Path(sys.executable).parent),
        "--host-bin-dir", "/usr/bin",
        "--poll-interval", "0.2",
        "--remove-binary-on-stop",  # (the default keeps it; see the unit test)
    ]  # fmt: skip
    with open(node.log, "wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_install_chain_rechain_and_remove_on_sigterm(
    node: Node, installer: subprocess.Popen[bytes]
) -> None:
    plugin = node.bin / "weft-cni"
    until("the plugin installed", lambda: plugin.exists(), node)
    assert os.access(plugin, os.X_OK)
    assert plugin.read_text().startswith("#!/usr/bin/env python3\n")
    # the CNI daemon writes its conflist after the installer started, as on a new node
    (node.conf / "10-calico.conflist").write_text(json.dumps(CALICO))
    until("chained", lambda: node.types() == ["calico", "portmap", "weft-cni"], node)
    assert node.conflist()["plugins"][-1] == {
        "type": "weft-cni",
        "agent_socket": str(node.sock),
        "exclude_namespaces": ["weft-system"],
        "timeout_seconds": 2,
    }
    # calico-node restarting rewrites its conflist by rename, dropping our entry
    tmp = node.conf / ".calico-tmp"
    tmp.write_text(json.dumps({**CALICO, "plugins": [*CALICO["plugins"], {"type": "bandwidth"}]}))
    tmp.rename(node.conf / "10-calico.conflist")
    until(
        "chained again",
        lambda: node.types() == ["calico", "portmap", "bandwidth", "weft-cni"],
        node,
    )
    # a second, later network is not the primary: left alone
    (node.conf / "20-other.conflist").write_text(json.dumps({**CALICO, "name": "other"}))
    time.sleep(0.5)
    assert "weft-cni" not in (node.conf / "20-other.conflist").read_text()
    assert installer.poll() is None

    installer.send_signal(signal.SIGTERM)
    assert installer.wait(10) == 0, node.log.read_text()[-3000:]
    assert not plugin.exists()
    assert node.types() == ["calico", "portmap", "bandwidth"]
    assert sorted(p.name for p in node.bin.iterdir()) == ["calico"]
    assert sorted(p.name for p in node.conf.iterdir()) == [
        "10-calico.conflist",
        "20-other.conflist",
    ]
    events = [
        json.loads(line)["event"] for line in node.log.read_text().splitlines() if "{" in line
    ]
    for event in ("cni.binary_installed", "cni.chained", "cni.unchained", "cni.binary_removed"):
        assert event in events


def _run_plugin(node: Node, namespace: str) -> tuple[int, dict[str, Any]]:
    """The installed weft-cni, run by the runtime: its own shebang, the chained config."""
    (config,) = [p for p in node.conflist()["plugins"] if p["type"] == "weft-cni"]
    prev = {"cniVersion": "0.3.1", "ips": [{"address": "10.244.1.7/32"}]}
    stdin = {"cniVersion": "0.3.1", "name": "k8s-pod-network", **config, "prevResult": prev}
    env = {
        "PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin",
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": f"weft-{RUN_ID}",
        "CNI_NETNS": "/var/run/netns/cni-weft-test",
        "CNI_IFNAME": "eth0",
        "CNI_PATH": str(node.bin),
        "CNI_ARGS": f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME=p;K8S_POD_UID=u",
    }
    proc = subprocess.run(
        [str(node.bin / "weft-cni")],
        input=json.dumps(stdin),
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    return proc.returncode, dict(json.loads(proc.stdout))


def test_the_installed_plugin_runs_with_the_chained_config(
    node: Node, installer: subprocess.Popen[bytes]
) -> None:
    (node.conf / "10-calico.conflist").write_text(json.dumps(CALICO))
    until("chained", lambda: node.types()[-1] == "weft-cni", node)
    # an excluded namespace passes without the agent
    code, out = _run_plugin(node, "weft-system")
    assert code == 0 and out["ips"] == [{"address": "10.244.1.7/32"}]
    # any other pod, with no agent on the socket: fails closed, "try again"
    code, out = _run_plugin(node, "shop")
    assert code == 1 and out["code"] == 11, out
    assert str(node.sock) in out["msg"]
    installer.send_signal(signal.SIGTERM)
    assert installer.wait(10) == 0


def test_without_python3_on_the_host_it_says_so_and_installs_nothing(
    node: Node, tmp_path: Path
) -> None:
    empty = tmp_path / "host-usr-bin"
    empty.mkdir()
    (node.conf / "10-calico.conflist").write_text(json.dumps(CALICO))
    cmd = [
        sys.executable, "-m", "node_agent", "install-cni",
        "--cni-conf-dir", str(node.conf),
        "--cni-bin-dir", str(node.bin),
        "--host-bin-dir", str(empty),
    ]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3
    assert "cni.host_python_missing" in proc.stderr + proc.stdout
    assert not (node.bin / "weft-cni").exists()
    assert json.loads((node.conf / "10-calico.conflist").read_text()) == CALICO
