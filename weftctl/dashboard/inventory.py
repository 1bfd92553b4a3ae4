"""What the dashboard needs to know about the lab beyond the metrics: which namespaces and
pods are enrolled, which workloads are waypoints, and a pod of each workload (for `why`).
Built from the lab daemon's status (`weftctl lab status -o json`): pure, no I/O."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from meshcore.meshstate import (
    DATAPLANE_MODE_AMBIENT,
    DATAPLANE_MODE_LABEL,
    GATEWAY_NAME_LABEL,
)

WorkloadKey = tuple[str, str]  # (namespace, workload name as the metrics label it)


class InventoryError(ValueError):
    """The lab's status is not in the shape we read; names the field."""


@dataclass(frozen=True)
class Inventory:
    # workload -> its ready pods' names, sorted (running first), for picking one for `why`
    pods: Mapping[WorkloadKey, tuple[str, ...]] = field(default_factory=dict)
    enrolled: frozenset[WorkloadKey] = frozenset()
    waypoints: frozenset[WorkloadKey] = frozenset()
    # (namespace, pod) -> a port a Service sends it traffic on (`why` needs a pod's port)
    ports: Mapping[tuple[str, str], int] = field(default_factory=dict)
    known: bool = False  # False: no lab to ask (enrolled/pods are then unknown, not empty)

    def pod_of(self, workload: WorkloadKey, *, with_port: bool = False) -> str | None:
        """`namespace/pod` of one of the workload's pods (`namespace/pod:port` with a port a
        Service targets, if asked and known), None when it has none."""
        pods = self.pods.get(workload, ())
        if not pods:
            return None
        port = self.ports.get((workload[0], pods[0])) if with_port else None
        return f"{workload[0]}/{pods[0]}" + (f":{port}" if port else "")

    def is_enrolled(self, workload: WorkloadKey) -> bool | None:
        if not self.known or workload not in self.pods:
            return None
        return workload in self.enrolled


def workload_of(pod: Mapping[str, Any]) -> str:
    """The workload name the metrics give a pod: its Deployment's name, else its own."""
    owner = str(pod.get("owner") or "")
    kind, _, name = owner.partition("/")
    return name if kind == "Deployment" and name else str(pod["name"])


def enrolled(pod_labels: Mapping[str, str], namespace_labels: Mapping[str, str]) -> bool:
    """The mesh's opt-in rule: the pod's own label wins, else its namespace's."""
    mode = pod_labels.get(DATAPLANE_MODE_LABEL) or namespace_labels.get(DATAPLANE_MODE_LABEL)
    return mode == DATAPLANE_MODE_AMBIENT


def from_status(status: Mapping[str, Any]) -> Inventory:
    """The inventory of a lab status document; InventoryError naming the field if malformed."""
    try:
        ns_labels = {n["name"]: dict(n.get("labels") or {}) for n in status["namespaces"]}
        pods: dict[WorkloadKey, list[tuple[bool, str]]] = {}
        in_mesh: set[WorkloadKey] = set()
        waypoints: set[WorkloadKey] = set()
        for i, pod in enumerate(status["pods"]):
            if not isinstance(pod, Mapping):
                raise InventoryError(f"pods[{i}]: not an object")
            ns = str(pod["namespace"])
            labels = dict(pod.get("labels") or {})
            key = (ns, workload_of(pod))
            pods.setdefault(key, []).append((not pod.get("ready"), str(pod["name"])))
            if GATEWAY_NAME_LABEL in labels:
                waypoints.add(key)
            elif enrolled(labels, ns_labels.get(ns, {})):
                in_mesh.add(key)
        ports: dict[tuple[str, str], int] = {}
        for svc in status.get("services", []):
            for port in svc.get("ports") or []:
                for address, pod_ref in zip(
                    port.get("endpoints") or [], port.get("endpoint_pods") or [], strict=False
                ):
                    ns, _, pod_name = str(pod_ref).partition("/")
                    ports.setdefault((ns, pod_name), int(str(address).rsplit(":", 1)[1]))
    except (KeyError, TypeError, IndexError, ValueError) as err:
        raise InventoryError(f"lab status: missing or malformed field {err}") from None
    return Inventory(
        pods={k: tuple(name for _, name in sorted(v)) for k, v in pods.items()},
        enrolled=frozenset(in_mesh | waypoints),
        waypoints=frozenset(waypoints),
        ports=ports,
        known=True,
    )
