"""Where a captured connection goes, sans I/O: `resolve()` turns an original destination into a
plan the outbound listener carries out (ztunnel/outbound.py), and is tested as a table.

- A Service VIP bound to a waypoint goes to a ready replica of that waypoint over HBONE, with
  the VIP:port as the CONNECT target: the waypoint picks the endpoint and applies L7 routing
  and policy. No ready replica: refused (fail closed), never sent around the waypoint.
- A pod IP whose workload is bound to a waypoint (`weft.dev/waypoint-for: workload|all`)
  likewise. A pod bound only through its Service is reached directly: pod-IP traffic is not
  routed (the Gateway API's mesh conformance, MeshFrontend).
- Otherwise a Service VIP is resolved to its ready endpoints (random order, the caller tries
  the next one when one refuses); enrolled ones are reached over HBONE, others directly.
- Anything else (not in the mesh view) is passed through.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from meshcore import hbone
from meshcore.meshstate import MeshService, Waypoint, Workload
from ztunnel.state import MeshView

# The label the waypoint deployer puts on a waypoint's pods (as Istio's gateway deployer).
GATEWAY_NAME_LABEL = "gateway.networking.k8s.io/gateway-name"


@dataclass(frozen=True)
class ViaWaypoint:
    """HBONE to one of `replicas` (pod IP, port 15008), CONNECT to `target`."""

    waypoint: str  # <ns>/<name>
    replicas: tuple[Workload, ...]
    target: hbone.Target
    service: MeshService | None


@dataclass(frozen=True)
class ToEndpoints:
    """Try each (workload, port) in turn: HBONE when enrolled, plain TCP otherwise."""

    candidates: tuple[tuple[Workload, int], ...]
    service: MeshService | None


@dataclass(frozen=True)
class Passthrough:
    ip: str
    port: int


@dataclass(frozen=True)
class Refuse:
    reason: str


Plan = ViaWaypoint | ToEndpoints | Passthrough | Refuse


def waypoint_replicas(view: MeshView, waypoint: str) -> tuple[Workload, ...]:
    """The ready pods of waypoint `<ns>/<name>` (any node), in random order."""
    namespace, _, name = waypoint.partition("/")
    found = [
        w
        for w in view.by_ip.values()
        if w.namespace == namespace and w.labels.get(GATEWAY_NAME_LABEL) == name and w.ready
    ]
    unique = list({w.key: w for w in found}.values())  # indexed once per address
    random.shuffle(unique)
    return tuple(unique)


def serves_workloads(waypoint: Waypoint) -> bool:
    """`weft.dev/waypoint-for: workload|all` (the default, `service`, does not)."""
    traffic_type = getattr(waypoint, "traffic_type", "service")
    return str(getattr(traffic_type, "value", traffic_type)) in ("workload", "all")


def workload_waypoint(view: MeshView, workload: Workload) -> str:
    """The waypoint a pod's own traffic goes through, if its binding covers workloads."""
    if not workload.waypoint:
        return ""
    waypoint = view.waypoints.get(workload.waypoint)
    return workload.waypoint if waypoint is not None and serves_workloads(waypoint) else ""


def resolve(view: MeshView, dst_ip: str, dst_port: int) -> Plan:
    service = view.by_vip.get(dst_ip)
    if service is not None:
        if service.waypoint:
            return _via(view, service.waypoint, hbone.Target(dst_ip, dst_port), service)
        candidates = tuple(view.endpoints(service, dst_port))
        if not candidates:
            return Refuse(f"service {service.namespace}/{service.name} has no ready endpoint")
        return ToEndpoints(candidates, service)
    workload = view.by_ip.get(dst_ip)
    if workload is None:
        return Passthrough(dst_ip, dst_port)
    if (waypoint := workload_waypoint(view, workload)) and workload.enrolled:
        return _via(view, waypoint, hbone.Target(dst_ip, dst_port), None)
    return ToEndpoints(((workload, dst_port),), None)


def _via(view: MeshView, waypoint: str, target: hbone.Target, service: MeshService | None) -> Plan:
    replicas = waypoint_replicas(view, waypoint)
    if not replicas:
        return Refuse(f"waypoint {waypoint} has no ready replica (bound traffic fails closed)")
    return ViaWaypoint(waypoint, replicas, target, service)
