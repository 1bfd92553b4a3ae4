"""Find a pod's network namespace cookie from its cgroup (I/O).

A pod's processes live in its cgroup (`pod-<uid>` in the lab, `pod<uid>` under kubepods in
Kubernetes); any of them leads to the pod's network namespace, and a socket opened there
tells its cookie (SO_NETNS_COOKIE, Linux 5.14+).
"""

from __future__ import annotations

import os
import socket
import struct
from pathlib import Path

from meshcore.nsenter import run_in_netns

SO_NETNS_COOKIE = 71


def _socket_netns_cookie() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        raw = s.getsockopt(socket.SOL_SOCKET, SO_NETNS_COOKIE, 8)
    return int(struct.unpack("=Q", raw)[0])


def pod_cgroup(pods_cgroup: Path, uid: str) -> Path | None:
    for name in (f"pod-{uid}", f"pod{uid.replace('-', '_')}", f"pod{uid}"):
        candidate = pods_cgroup / name
        if candidate.is_dir():
            return candidate
    return None


def first_pid(cgroup: Path) -> int | None:
    for dirpath, _dirs, _files in os.walk(cgroup):
        try:
            pids = (Path(dirpath) / "cgroup.procs").read_text().split()
        except FileNotFoundError:
            continue
        if pids:
            return int(pids[0])
    return None


def netns_cookie(pods_cgroup: Path, uid: str) -> int | None:
    """The pod's netns cookie, or None while it has no running process."""
    cgroup = pod_cgroup(pods_cgroup, uid)
    if cgroup is None:
        return None
    pid = first_pid(cgroup)
    if pid is None:
        return None
    try:
        return run_in_netns(f"/proc/{pid}/ns/net", _socket_netns_cookie)
    except (FileNotFoundError, ProcessLookupError):
        return None  # the process just exited
