"""What a waypoint knows of the mesh: ztunnel's view of Services and Workloads (the same
`meshcore.meshstate` values, indexed the same way), plus the routes that bind to Services.

`update()` takes the state mapping `meshcore.configclient` delivers, as ztunnel's MeshView
does, so the process can later be fed by the controller unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from meshcore.meshstate import MeshService, ServicePort, StateValue, Workload
from meshcore.resources import ResourceKey
from meshcore.resources.gateway import GRPCRoute, HTTPRoute
from ztunnel.state import MeshView


class WaypointView:
    def __init__(self, gateway: str) -> None:
        """`gateway`: this waypoint, `<namespace>/<name>` (what Services bound to it name)."""
        self.gateway = gateway
        self.mesh = MeshView("")  # a waypoint is on no node of its own
        self.by_name: dict[tuple[str, str], MeshService] = {}
        self.http_routes: tuple[HTTPRoute, ...] = ()
        self.grpc_routes: tuple[GRPCRoute, ...] = ()
        self.on_update: list[Callable[[], object]] = []

    def update(self, state: Mapping[ResourceKey, object]) -> None:
        mesh: dict[ResourceKey, StateValue] = {}
        http, grpc = [], []
        for key, value in state.items():
            if isinstance(value, HTTPRoute):
                http.append(value)
            elif isinstance(value, GRPCRoute):
                grpc.append(value)
            else:
                mesh[key] = value  # type: ignore[assignment]  # MeshView ignores the rest
        self.mesh.update(mesh)
        self.by_name = {(s.namespace, s.name): s for s in self.mesh.by_vip.values()}
        self.http_routes, self.grpc_routes = tuple(http), tuple(grpc)
        for callback in self.on_update:
            callback()

    # --- what the data path asks -------------------------------------------------------

    def bound_service(self, vip: str) -> MeshService | None:
        """The Service at `vip` if it is bound to this waypoint."""
        service = self.mesh.by_vip.get(vip)
        return service if service is not None and service.waypoint == self.gateway else None

    def bound_workload(self, ip: str) -> Workload | None:
        """The workload at `ip` if it is bound to this waypoint (`for: workload | all`)."""
        w = self.mesh.by_ip.get(ip)
        return w if w is not None and w.waypoint == self.gateway else None

    def service(self, namespace: str, name: str) -> MeshService | None:
        return self.by_name.get((namespace, name))

    @staticmethod
    def port(service: MeshService, number: int) -> ServicePort | None:
        return next((p for p in service.ports if p.port == number), None)

    def endpoints(self, service: MeshService, port: int) -> list[tuple[Workload, int]]:
        """Ready endpoints of a Service port as (workload, target port), in random order."""
        return self.mesh.endpoints(service, port)

    def workload_at(self, ip: str) -> Workload | None:
        return self.mesh.by_ip.get(ip)
