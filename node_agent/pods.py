"""Find a pod's network namespace cookie from its cgroup (I/O).

A pod's processes live in its cgroup (`pod-<uid>` in the lab; on Kubernetes wherever the
kubelet's driver and the pod's QoS class put it, see node_agent/kubelet.py); any of them
leads to the pod's network namespace, and a socket opened there tells its cookie
(SO_NETNS_COOKIE, Linux 5.14+).
"""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

from meshcore.nsenter import run_in_netns
from node_agent import kubelet

SO_NETNS_COOKIE = 71


def _socket_netns_cookie() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        raw = s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
    return int(struct.unpack("=Q", raw)[0])


def pod_cgroup(pods_cgroup: Path, uid: str) -> Path | None:
    for candidate in kubelet.candidates(pods_cgroup, uid):
        if candidate.path.is_dir():
            return candidate.path
    return None


def pod_cgroups(pods_cgroup: Path) -> dict[str, Path]:
    """Every pod cgroup under the pods root, by pod uid (the root and its QoS folders only:
    container cgroups below a pod's are not pods)."""
    found: dict[str, Path] = {}
    for folder in kubelet.parent_folders(pods_cgroup):
        try:
            entries = list(os.scandir(folder))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            uid = kubelet.pod_uid(entry.name)
            if uid is not None and entry.is_dir(follow_symlinks=False):
                found.setdefault(uid, Path(entry.path))
    return found


def first_pid(cgroup: Path) -> int | None:
    for dirpath, _dirs, _files in os.walk(cgroup):
        try:
            pids = (Path(dirpath) / "cgroup.procs").read_text().split()
        except FileNotFoundError:
            continue
        if pids:
            return int(pids[0])
    return None


def own_netns_cookie() -> int:
    """The cookie of the agent's own (the node's) netns: a hostNetwork pod shares it, and
    must never be enrolled or held, or the node's own connects would be captured."""
    return _socket_netns_cookie()


def netns_cookie(pods_cgroup: Path, uid: str) -> int | None:
    """The pod's netns cookie, or None while it has no running process."""
    cgroup = pod_cgroup(pods_cgroup, uid)
    if cgroup is None:
        return None
    return cgroup_netns_cookie(cgroup)


def cgroup_netns_cookie(cgroup: Path) -> int | None:
    """The netns cookie of a pod cgroup's first process, or None while it has none."""
    pid = first_pid(cgroup)
    if pid is None:
        return None
    try:
        return run_in_netns(f"/proc/{pid}/ns/net", _socket_netns_cookie)
    except (FileNotFoundError, ProcessLookupError):
        return None  # the process just exited


def own_pod_cgroup(pods_cgroup: Path, pid: int | None = None) -> Path:
    """`--system-cgroup auto`: the pod cgroup this process runs in (the node DaemonSet's pod,
    which ztunnel shares), found by looking for its pid (hostPID: the host's) under the pods
    root; KubeletLayoutError when it is not there."""
    wanted = str(os.getpid() if pid is None else pid)
    for cgroup in pod_cgroups(pods_cgroup).values():
        for dirpath, _dirs, _files in os.walk(cgroup):
            try:
                if wanted in (Path(dirpath) / "cgroup.procs").read_text().split():
                    return cgroup
            except FileNotFoundError:
                continue
    raise kubelet.KubeletLayoutError(
        f"--system-cgroup auto: process {wanted} is in no pod cgroup under {pods_cgroup}; "
        "run the agent in the node DaemonSet's pod (hostPID) or pass --system-cgroup PATH"
    )


def auto_root(mountinfo: Path = Path("/proc/self/mountinfo")) -> Path:
    """`--pods-cgroup auto`: the kubelet's pods root under a cgroup v2 mount of this process
    (node_agent/kubelet.py says where it looks); KubeletLayoutError when there is none."""
    return kubelet.kubepods_root(kubelet.cgroup2_mounts(mountinfo.read_text()))
