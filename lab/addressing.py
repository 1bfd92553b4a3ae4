"""Address plan and allocation: pure, so every rule is unit-tested without a kernel."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from lab.config import LabConfig


class AddressExhausted(RuntimeError):
    """No free address left in a range."""


@dataclass(frozen=True)
class NodePlan:
    name: str  # node-1 ... node-N, what a Pod's spec.nodeName names
    index: int  # 1-based
    underlay_ip: str
    pod_cidr: str


def node_plans(config: LabConfig) -> list[NodePlan]:
    underlay = ipaddress.IPv4Network(config.underlay_cidr)
    blocks = ipaddress.IPv4Network(config.pod_cidr).subnets(new_prefix=config.node_pod_prefix)
    plans = []
    for index in range(1, config.nodes + 1):
        plans.append(
            NodePlan(
                name=f"node-{index}",
                index=index,
                underlay_ip=str(underlay.network_address + index),
                pod_cidr=str(next(blocks)),
            )
        )
    return plans


class Pool:
    """Hands out addresses of one range in order, reusing released ones last."""

    def __init__(self, cidr: str, *, reserved: int = 0) -> None:
        self.network = ipaddress.IPv4Network(cidr)
        hosts = list(self.network.hosts())
        self._free = [str(ip) for ip in hosts[reserved:]]
        self._used: set[str] = set()

    def contains(self, ip: str) -> bool:
        return ipaddress.IPv4Address(ip) in self.network

    def allocate(self) -> str:
        for ip in self._free:
            if ip not in self._used:
                self._used.add(ip)
                return ip
        raise AddressExhausted(f"no free address left in {self.network}")

    def claim(self, ip: str) -> None:
        """Take a specific address (an explicit clusterIP); raises if taken or outside."""
        if not self.contains(ip):
            raise ValueError(f"{ip} is outside {self.network}")
        if ip in self._used:
            raise ValueError(f"{ip} is already allocated")
        self._used.add(ip)

    def is_used(self, ip: str) -> bool:
        return ip in self._used

    def release(self, ip: str) -> None:
        if ip in self._used:
            self._used.discard(ip)
            # Reuse a released address only after the never-used ones, so a restarted pod
            # does not inherit a stale peer's conntrack entries at once.
            self._free.remove(ip)
            self._free.append(ip)
