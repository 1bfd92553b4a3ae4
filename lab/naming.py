"""Every name the lab creates on the machine, in one place: `weft` prefix plus the lab id."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass


def new_lab_id() -> str:
    return secrets.token_hex(3)


@dataclass(frozen=True)
class LabNames:
    lab_id: str

    @property
    def prefix(self) -> str:
        """Every network namespace of this lab starts with this."""
        return f"weft-{self.lab_id}-"

    @property
    def underlay_netns(self) -> str:
        return f"{self.prefix}underlay"

    @property
    def control_netns(self) -> str:
        """The control plane (controller) lives on the underlay like a node of its own."""
        return f"{self.prefix}control"

    @property
    def control_cgroup(self) -> str:
        return f"{self.cgroup_root}/control"

    def node_netns(self, node: str) -> str:
        return f"{self.prefix}{node}"

    def pod_netns(self, namespace: str, pod: str) -> str:
        name = f"{self.prefix}pod-{namespace}-{pod}"
        if len(name) <= 200:
            return name
        digest = hashlib.sha256(name.encode()).hexdigest()[:12]
        return f"{name[:180]}-{digest}"

    @property
    def cgroup_root(self) -> str:
        """Relative to the cgroup2 mount."""
        return f"weft-{self.lab_id}"

    def node_pods_cgroup(self, node: str) -> str:
        """The per-node subtree all of a node's pods live under (like kubepods)."""
        return f"{self.cgroup_root}/{node}/pods"

    def node_system_cgroup(self, node: str) -> str:
        """Where a node's own processes (agent, ztunnel) live, outside the pods subtree."""
        return f"{self.cgroup_root}/{node}/system"

    def pod_cgroup(self, node: str, pod_uid: str) -> str:
        return f"{self.node_pods_cgroup(node)}/pod-{pod_uid}"

    @staticmethod
    def host_veth(pod_uid: str) -> str:
        """Node side of a pod's veth: at most 15 characters, the kernel's limit."""
        return "weft" + hashlib.sha256(pod_uid.encode()).hexdigest()[:11]

    CONTROL_PORT = "weft-control"

    @staticmethod
    def underlay_port(node: str) -> str:
        return f"weft-{node}"[:15]

    BRIDGE = "weftbr0"
    POD_IFNAME = "eth0"
    NODE_IFNAME = "eth0"
    NFT_TABLE = "weft_kubeproxy"
