"""Wake the agent the moment a pod cgroup, or a container cgroup in it, appears (inotify).

The kubelet makes a pod's cgroup before its sandbox; the runtime then makes one cgroup per
container inside it and puts the container's first process there before it runs the image's
command. Watching the folders that hold pod cgroups (the pods root and its QoS folders), each
pod cgroup (container cgroups made in it) and each pod's `cgroup.events` (its `populated`
line turns 1 when the first process joins, cgroup v2) lets the agent reconcile at once
instead of at its next 1 s pass. Events only say "look now": the agent rescans, so a lost or
overflowed event costs a poll interval, never correctness.

inotify through ctypes (libc's inotify_init1/inotify_add_watch): no library needed.
`parse_events` is pure; `CgroupWatch` does the I/O on the asyncio loop's reader.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import structlog
from prometheus_client import Counter, Gauge

from node_agent import kubelet

log = structlog.get_logger("node_agent.cgroupwatch")

IN_MODIFY = 0x00000002
IN_CREATE = 0x00000100
IN_DELETE = 0x00000200
IN_DELETE_SELF = 0x00000400
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ISDIR = 0x40000000
IN_NONBLOCK = 0o4000
IN_CLOEXEC = 0o2000000

FOLDER_MASK = IN_CREATE | IN_DELETE | IN_DELETE_SELF
EVENTS_MASK = IN_MODIFY
MAX_WATCHES = 8192  # pods x 2 + QoS folders; past it, new pods wait for the 1 s pass
_HEADER = struct.Struct("iIII")  # wd, mask, cookie, len

WAKEUPS = Counter("weft_agent_cgroup_wakeups", "Reconciles started by a cgroup event.")
WATCHES = Gauge("weft_agent_cgroup_watches", "inotify watches on the pods cgroup tree.")
WATCHES_REFUSED = Counter(
    "weft_agent_cgroup_watches_refused",
    "Pod cgroups not watched (watch bound reached or refused); the periodic pass finds them.",
)

_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True)
class Event:
    wd: int
    mask: int
    name: str  # the entry's name inside a watched folder; "" for the watched thing itself


def parse_events(buf: bytes) -> list[Event]:
    """inotify_event records from one read(); a truncated tail is dropped."""
    out = []
    offset = 0
    while offset + _HEADER.size <= len(buf):
        wd, mask, _cookie, length = _HEADER.unpack_from(buf, offset)
        offset += _HEADER.size
        if offset + length > len(buf):
            break
        raw = buf[offset : offset + length]
        offset += length
        out.append(Event(wd, mask, raw.split(b"\0", 1)[0].decode(errors="replace")))
    return out


class CgroupWatch:
    """Calls `wake()` when a pod or container cgroup under `root` appears, goes, or gets its
    first process."""

    def __init__(self, root: Path, wake: Callable[[], None], max_watches: int = MAX_WATCHES):
        self.root = root
        self.wake = wake
        self.max_watches = max_watches
        self.fd = -1
        self.paths: dict[int, Path] = {}  # wd -> watched path
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        fd = _libc.inotify_init1(IN_NONBLOCK | IN_CLOEXEC)
        if fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.fd = fd
        for folder in kubelet.parent_folders(self.root):
            self._add(folder, FOLDER_MASK)
        for pod in self._pods():
            self._watch_pod(pod)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.fd, self._readable)
        log.info("cgroupwatch.started", root=str(self.root), watches=len(self.paths))

    def close(self) -> None:
        if self.fd >= 0:
            if self._loop is not None:
                self._loop.remove_reader(self.fd)
            os.close(self.fd)
            self.fd = -1
            self.paths.clear()
            WATCHES.set(0)

    def _pods(self) -> list[Path]:
        out = []
        for folder in kubelet.parent_folders(self.root):
            try:
                names = os.listdir(folder)
            except (FileNotFoundError, NotADirectoryError):
                continue
            out += [folder / n for n in names if kubelet.pod_uid(n) is not None]
        return out

    def _add(self, path: Path, mask: int) -> bool:
        if len(self.paths) >= self.max_watches:
            WATCHES_REFUSED.inc()
            return False
        wd = _libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:  # not there (yet, or any more): the periodic pass covers it
            return False
        self.paths[wd] = path
        WATCHES.set(len(self.paths))
        return True

    def _watch_pod(self, pod: Path) -> None:
        self._add(pod, IN_CREATE)
        events = pod / "cgroup.events"
        if events.exists():
            self._add(events, EVENTS_MASK)

    def _readable(self) -> None:
        try:
            buf = os.read(self.fd, 64 * 1024)
        except BlockingIOError:
            return
        woke = False
        for event in parse_events(buf):
            woke |= self._handle(event)
        if woke:
            WAKEUPS.inc()
            self.wake()

    def _handle(self, event: Event) -> bool:
        """Keep the watch set in step; True when the agent should look."""
        if event.mask & IN_Q_OVERFLOW:
            return True
        if event.mask & IN_IGNORED:
            self.paths.pop(event.wd, None)
            WATCHES.set(len(self.paths))
            return False
        where = self.paths.get(event.wd)
        if where is None:
            return False
        if event.mask & IN_CREATE and event.mask & IN_ISDIR and event.name:
            created = where / event.name
            if where in kubelet.parent_folders(self.root):
                if kubelet.pod_uid(event.name) is not None:
                    self._watch_pod(created)
                elif created in kubelet.parent_folders(self.root):
                    self._add(created, FOLDER_MASK)  # a QoS folder made after we started
                    for pod in self._pods():
                        self._watch_pod(pod)
                    return True
                else:
                    return False
        return True
