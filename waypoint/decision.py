"""Where a request goes: the proxy's seam onto `waypoint.routing` (pure route matching).

`RouteTables` keeps one compiled `routing.RouteTable` per Service port, built from the
view's HTTPRoutes when first asked for and dropped whenever the view changes, and answers
`decide()` with routing's `Forward` (a backend Service port, the path, Host and headers to
send) or `Respond` (answer here). A Service port no route attaches to gets a `Forward` to
itself, unchanged (routing's own passthrough).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Generic, Protocol, TypeVar

from meshcore.meshstate import MeshService, ServicePort
from waypoint import routing, vsrouting
from waypoint.state import WaypointView

_Table = TypeVar("_Table")


class Router(Protocol):
    def decide(
        self, service: MeshService, port: ServicePort, request: routing.Request
    ) -> routing.Forward | routing.Respond: ...


class _PerServicePort(Generic[_Table]):
    """One compiled table per Service port, built when first asked for and dropped whenever
    the view changes."""

    def __init__(self, view: WaypointView, rand: Callable[[], float] = random.random) -> None:
        self.view = view
        self.rand = rand
        self._tables: dict[tuple[str, str, int], _Table] = {}
        view.on_update.append(self._tables.clear)

    def table(self, service: MeshService, port: ServicePort) -> _Table:
        key = (service.namespace, service.name, port.port)
        table = self._tables.get(key)
        if table is None:
            table = self._tables[key] = self._build(service, port)
        return table

    def _build(self, service: MeshService, port: ServicePort) -> _Table:
        raise NotImplementedError

    def _known(self, namespace: str, name: str, port: int) -> bool:
        service = self.view.service(namespace, name)
        return service is not None and self.view.port(service, port) is not None


class VirtualServiceTables(_PerServicePort[vsrouting.VSTable]):
    """VirtualServices whose hosts name a Service, for its ports no HTTPRoute attaches to."""

    def _build(self, service: MeshService, port: ServicePort) -> vsrouting.VSTable:
        return vsrouting.build_vs_table(
            self.view.virtual_services,
            service_namespace=service.namespace,
            service_name=service.name,
            port=port.port,
            service_ports=self._ports,
        )

    def _ports(self, namespace: str, name: str) -> tuple[int, ...] | None:
        service = self.view.service(namespace, name)
        return None if service is None else tuple(p.port for p in service.ports)


class RouteTables(_PerServicePort[routing.RouteTable]):
    """HTTPRoutes: `decide()` answers with routing's `Forward` or `Respond`. A Service port
    no HTTPRoute attaches to is routed by the VirtualServices naming the Service, if any
    (Istio: the HTTPRoute wins), else passed through."""

    def __init__(self, view: WaypointView, rand: Callable[[], float] = random.random) -> None:
        super().__init__(view, rand)
        self.virtual_services = VirtualServiceTables(view, lambda: self.rand())

    def _build(self, service: MeshService, port: ServicePort) -> routing.RouteTable:
        return routing.build_table(
            self.view.http_routes,
            service_namespace=service.namespace,
            service_name=service.name,
            port=port.port,
            known_service=self._known,
            port_name=port.name,
        )

    def decide(
        self, service: MeshService, port: ServicePort, request: routing.Request
    ) -> routing.Forward | routing.Respond:
        table = self.table(service, port)
        if table.empty and self.view.virtual_services:
            vs_table = self.virtual_services.table(service, port)
            if not vs_table.empty:
                return vsrouting.route_vs(vs_table, request, self.rand)
        return routing.route(table, request, self.rand)


class GrpcRouteTables(_PerServicePort[routing.GRPCRouteTable]):
    """GRPCRoutes, for the h2c/gRPC side (waypoint/h2c.py)."""

    def _build(self, service: MeshService, port: ServicePort) -> routing.GRPCRouteTable:
        return routing.build_grpc_table(
            self.view.grpc_routes,
            service_namespace=service.namespace,
            service_name=service.name,
            port=port.port,
            known_service=self._known,
            port_name=port.name,
        )
