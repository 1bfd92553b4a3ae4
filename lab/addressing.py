"""Address plan and allocation: pure, so every rule is unit-tested without a kernel."""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
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


def control_plane_ip(config: LabConfig) -> str:
    """The controller's address on the underlay: its last host address, far from the nodes."""
    underlay = ipaddress.IPv4Network(config.underlay_cidr)
    return str(underlay.broadcast_address - 1)


class Pool:
    """Hands out the host addresses of one range in order, reusing released ones last.

    Addresses are computed, not listed, so a /16 service range costs nothing up front.
    """

    def __init__(self, cidr: str, *, reserved: int = 0) -> None:
        self.network = ipaddress.IPv4Network(cidr)
        first = int(self.network.network_address) + (1 if self.network.num_addresses > 2 else 0)
        last = int(self.network.broadcast_address) - (1 if self.network.num_addresses > 2 else 0)
        self._first = first + reserved
        self._last = last
        self._next = self._first  # every address below this was handed out at least once
        self._released: list[str] = []
        self._used: set[str] = set()

    def contains(self, ip: str) -> bool:
        """Is `ip` a host address of the range (not its network or broadcast address)?"""
        value = int(ipaddress.IPv4Address(ip))
        return self._first <= value <= self._last

    def candidates(self) -> Iterator[str]:
        """Never-used addresses in order, then released ones, oldest release first."""
        for value in range(self._next, self._last + 1):
            yield str(ipaddress.IPv4Address(value))
        yield from list(self._released)

    def allocate(self) -> str:
        for ip in self.candidates():
            if ip not in self._used:
                self._take(ip)
                return ip
        raise AddressExhausted(f"no free address left in {self.network}")

    def claim(self, ip: str) -> None:
        """Take a specific address (an explicit clusterIP); raises if taken or outside."""
        if not self.contains(ip):
            raise ValueError(f"{ip} is outside {self.network}")
        if ip in self._used:
            raise ValueError(f"{ip} is already allocated")
        self._take(ip)

    def _take(self, ip: str) -> None:
        self._used.add(ip)
        if ip in self._released:
            self._released.remove(ip)
        value = int(ipaddress.IPv4Address(ip))
        if value == self._next:
            self._next += 1

    def is_used(self, ip: str) -> bool:
        return ip in self._used

    def release(self, ip: str) -> None:
        if ip in self._used:
            self._used.discard(ip)
            # Reuse a released address only after the never-used ones, so a new pod does
            # not inherit a gone peer's conntrack entries and caches at once.
            self._released.append(ip)
