"""cgroup v2 directories for the lab's nodes and pods."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path


class CgroupError(RuntimeError):
    pass


def cgroup2_mount() -> Path:
    """Where the unified (v2) hierarchy is mounted: /sys/fs/cgroup, or .../unified (hybrid)."""
    with open("/proc/self/mounts") as mounts:
        for line in mounts:
            fields = line.split()
            if len(fields) >= 3 and fields[2] == "cgroup2":
                return Path(fields[1])
    raise CgroupError("no cgroup v2 hierarchy is mounted (the lab needs cgroup v2)")


def path(relative: str) -> Path:
    return cgroup2_mount() / relative


def create(relative: str) -> Path:
    p = path(relative)
    p.mkdir(parents=True, exist_ok=True)
    return p


def join(relative: str, pid: int) -> None:
    (path(relative) / "cgroup.procs").write_text(str(pid))


def pids(relative: str) -> list[int]:
    """Every process in the subtree."""
    root = path(relative)
    found: list[int] = []
    if not root.exists():
        return found
    for dirpath, _dirs, _files in os.walk(root):
        try:
            text = (Path(dirpath) / "cgroup.procs").read_text()
        except FileNotFoundError:
            continue
        found.extend(int(x) for x in text.split())
    return found


def kill(relative: str) -> None:
    """SIGKILL every process in the subtree (cgroup.kill, kernel 5.14+), then wait them out."""
    root = path(relative)
    if not root.exists():
        return
    kill_file = root / "cgroup.kill"
    if kill_file.exists():
        kill_file.write_text("1")
    else:
        for pid in pids(relative):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, 9)
    deadline = time.monotonic() + 5
    while pids(relative) and time.monotonic() < deadline:
        time.sleep(0.02)


def remove(relative: str) -> None:
    """rmdir the subtree, deepest first; the processes must be gone already."""
    root = path(relative)
    if not root.exists():
        return
    for dirpath, _dirs, _files in sorted(os.walk(root), key=lambda w: -len(w[0])):
        for attempt in range(50):
            try:
                os.rmdir(dirpath)
                break
            except FileNotFoundError:
                break
            except OSError:  # EBUSY while the last process is being reaped
                if attempt == 49:
                    raise
                time.sleep(0.02)
