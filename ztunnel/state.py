"""What ztunnel knows of the mesh, indexed for the data path: by IP, by VIP, what is local."""

from __future__ import annotations

import asyncio
import ctypes
import functools
import random
from collections.abc import Callable, Mapping

from meshcore.meshstate import MeshService, StateValue, TrustBundle, Waypoint, Workload
from meshcore.resources import ResourceKey
from meshcore.resources.security import AuthorizationPolicy, PeerAuthentication
from ztunnel import waypointguard
from ztunnel.rbac import DEFAULT_ROOT_NAMESPACE

# Applying a snapshot of 50k workloads frees tens of MB (the message, the old state, the
# temporaries) that glibc keeps in its free lists: RSS stays at the peak. Once this many
# workloads were replaced, the freed memory is handed back to the kernel (docs/scale.md).
TRIM_AFTER_REPLACED = 500


@functools.cache
def _malloc_trim() -> Callable[[int], int] | None:
    """glibc's malloc_trim, None elsewhere (musl has none: nothing is trimmed)."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        trim: Callable[[int], int] = libc.malloc_trim
    except (OSError, AttributeError):
        return None
    return trim


def release_freed_memory() -> bool:
    """Return the heap's free pages to the kernel; False where it cannot."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


def _release_soon() -> None:
    # Soon, not now: the update being applied is still referenced until its handler returns.
    try:
        asyncio.get_running_loop().call_soon(release_freed_memory)
    except RuntimeError:  # no loop (tools, tests): now
        release_freed_memory()


class MeshView:
    def __init__(self, node: str) -> None:
        self.node = node
        self.by_ip: dict[str, Workload] = {}
        self.by_vip: dict[str, MeshService] = {}
        self.waypoints: dict[str, Waypoint] = {}  # "<ns>/<name>"
        self.members: dict[tuple[str, str], list[Workload]] = {}
        self.policies: list[AuthorizationPolicy] = []
        self.peer_authentications: list[PeerAuthentication] = []
        self.bundle: TrustBundle | None = None
        self.root_namespace = DEFAULT_ROOT_NAMESPACE
        # workloads an L7 AuthorizationPolicy guards: only these waypoints may reach them
        self.waypoint_guard: waypointguard.Guard = {}
        # called after each update: what was decided on the old view is decided again
        self.on_update: list[Callable[[], object]] = []
        self.memory_releases = 0  # updates after which freed memory went back to the kernel

    def update(self, state: Mapping[ResourceKey, StateValue]) -> None:
        by_ip: dict[str, Workload] = {}
        by_vip: dict[str, MeshService] = {}
        members: dict[tuple[str, str], list[Workload]] = {}
        policies, peer_auths = [], []
        services: list[MeshService] = []
        waypoints: dict[str, Waypoint] = {}
        old_by_ip = self.by_ip
        replaced = 0
        for value in state.values():
            if isinstance(value, Workload):
                for ip in value.addresses:
                    by_ip[ip] = value
                    if old_by_ip.get(ip) is not value:
                        replaced += 1
                for m in value.services:
                    members.setdefault((m.namespace, m.name), []).append(value)
            elif isinstance(value, MeshService):
                services.append(value)
                for ip in value.addresses:
                    by_vip[ip] = value
            elif isinstance(value, AuthorizationPolicy):
                policies.append(value)
            elif isinstance(value, PeerAuthentication):
                peer_auths.append(value)
            elif isinstance(value, TrustBundle):
                self.bundle = value
            elif isinstance(value, Waypoint):
                waypoints[f"{value.namespace}/{value.name}"] = value
        self.by_ip, self.by_vip, self.members = by_ip, by_vip, members
        self.waypoints = waypoints
        self.policies, self.peer_authentications = policies, peer_auths
        self.waypoint_guard = waypointguard.guarded_workloads(
            policies,
            services,
            {w.key: w for w in by_ip.values()}.values(),
            waypoints,
            root_namespace=self.root_namespace,
        )
        for callback in self.on_update:
            callback()
        if replaced + max(0, len(old_by_ip) - len(by_ip)) >= TRIM_AFTER_REPLACED:
            self.memory_releases += 1
            _release_soon()

    def local_workloads(self) -> list[Workload]:
        return [w for w in self.by_ip.values() if w.node == self.node and w.enrolled]

    def endpoints(self, service: MeshService, port: int) -> list[tuple[Workload, int]]:
        """Ready endpoints of a service port, as (workload, target port), in random order
        (connection-level load balancing)."""
        out = []
        for w in self.members.get((service.namespace, service.name), []):
            if not w.ready:
                continue
            for m in w.services:
                if (m.namespace, m.name) == (service.namespace, service.name) and port in m.ports:
                    out.append((w, m.ports[port]))
        random.shuffle(out)
        return out
