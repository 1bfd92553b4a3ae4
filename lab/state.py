"""Where a lab keeps its state (/run/weft/labs/<name>), and tearing down what a lab left.

The record is written before anything is created, so `lab down` (or the next `lab up`) can
remove every namespace, cgroup, hosts file and process of a lab whose daemon died.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from lab import cgroups, netns
from lab.config import STATE_ROOT, LabConfig
from lab.naming import LabNames


@dataclass(frozen=True)
class LabPaths:
    root: Path

    @classmethod
    def for_lab(cls, name: str, state_root: Path = STATE_ROOT) -> LabPaths:
        return cls(state_root / name)

    @property
    def record(self) -> Path:
        return self.root / "lab.json"

    @property
    def socket(self) -> Path:
        return self.root / "api.sock"

    @property
    def daemon_log(self) -> Path:
        return self.root / "daemon.log"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def manifests(self) -> Path:
        """Every manifest applied to the lab, one file per resource (the source of truth)."""
        return self.root / "manifests"

    @property
    def controller(self) -> Path:
        """The controller's state (its CA root) and admin socket."""
        return self.root / "controller"

    @property
    def controller_admin(self) -> Path:
        return self.controller / "admin.sock"

    @property
    def prometheus(self) -> Path:
        """The lab's Prometheus (`lab up --prometheus`): config, data, and its `url`."""
        return self.root / "prometheus"

    def node_credential(self, node: str) -> Path:
        """key.pem, cert.pem and roots.pem a node uses to talk to the controller."""
        return self.root / "nodes" / node / "credential"

    def pod_dir(self, namespace: str, pod: str) -> Path:
        """What the lab keeps for one pod while it runs (removed with the pod)."""
        return self.root / "pods" / namespace / pod

    def pod_credential(self, namespace: str, pod: str) -> Path:
        """key.pem, cert.pem and roots.pem a waypoint pod presents to the controller for its
        service account, as the kubelet projects a ServiceAccount token into a pod."""
        return self.pod_dir(namespace, pod) / "credential"

    def agent_socket(self, node: str) -> Path:
        """The node agent's admin API."""
        return self.root / "nodes" / node / "agent.sock"

    def ztunnel_socket(self, node: str) -> Path:
        """The ztunnel's admin API."""
        return self.root / "nodes" / node / "ztunnel.sock"

    def container_log(self, namespace: str, pod: str, container: str) -> Path:
        return self.logs / f"{namespace}_{pod}_{container}.log"


@dataclass(frozen=True)
class LabRecord:
    name: str
    lab_id: str
    config: LabConfig
    created: float
    daemon_pid: int = 0

    def save(self, paths: LabPaths) -> None:
        paths.root.mkdir(parents=True, exist_ok=True)
        tmp = paths.record.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self), indent=2))
        os.replace(tmp, paths.record)

    @classmethod
    def load(cls, paths: LabPaths) -> LabRecord | None:
        try:
            raw = json.loads(paths.record.read_text())
        except FileNotFoundError:
            return None
        config = raw.pop("config")
        config["manifests"] = tuple(config.get("manifests", ()))
        return cls(config=LabConfig(**config), **raw)


def daemon_alive(record: LabRecord) -> bool:
    """Is the recorded daemon pid still this lab's daemon (not a recycled pid)?"""
    if record.daemon_pid <= 0:
        return False
    try:
        cmdline = Path(f"/proc/{record.daemon_pid}/cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return b"lab.daemon" in cmdline and record.name.encode() in cmdline


def teardown(record: LabRecord, paths: LabPaths, *, keep_log: bool = False) -> list[str]:
    """Remove everything the lab made; safe to run twice and on a half-built lab.

    `keep_log` leaves the daemon's log behind so `lab up` can show why a build failed.
    Returns what it removed, for the caller to report.
    """
    removed: list[str] = []
    names = LabNames(record.lab_id)
    if daemon_alive(record):
        with contextlib.suppress(ProcessLookupError):
            os.kill(record.daemon_pid, signal.SIGKILL)
        deadline = time.monotonic() + 5
        while daemon_alive(record) and time.monotonic() < deadline:
            time.sleep(0.02)
        removed.append(f"process {record.daemon_pid} (lab daemon)")
    with contextlib.suppress(cgroups.CgroupError):
        root = cgroups.path(names.cgroup_root)
        if root.exists():
            left = cgroups.pids(names.cgroup_root)
            cgroups.kill(names.cgroup_root)
            cgroups.remove(names.cgroup_root)
            removed.append(f"cgroup {root} ({len(left)} processes)")
    for ns in netns.list_with_prefix(names.prefix):
        netns.delete(ns)
        removed.append(f"netns {ns}")
    bpf_pins = Path("/sys/fs/bpf") / names.cgroup_root  # weft-<id>: every node's pins
    if bpf_pins.exists():
        shutil.rmtree(bpf_pins, ignore_errors=True)
        removed.append(f"pinned BPF objects {bpf_pins}")
    if netns.ETC_NETNS_DIR.exists():
        for d in netns.ETC_NETNS_DIR.iterdir():
            if d.name.startswith(names.prefix):
                shutil.rmtree(d, ignore_errors=True)
                removed.append(f"dir {d}")
    if paths.root.exists():
        if keep_log:
            for item in paths.root.iterdir():
                if item != paths.daemon_log:
                    shutil.rmtree(item) if item.is_dir() else item.unlink(missing_ok=True)
        else:
            shutil.rmtree(paths.root, ignore_errors=True)
            removed.append(f"state {paths.root}")
    return removed


def list_labs(state_root: Path = STATE_ROOT) -> list[tuple[LabRecord, bool]]:
    if not state_root.exists():
        return []
    labs = []
    for d in sorted(state_root.iterdir()):
        record = LabRecord.load(LabPaths(d))
        if record is not None:
            labs.append((record, daemon_alive(record)))
    return labs
