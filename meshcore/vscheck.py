"""What in a VirtualService a waypoint cannot apply as written, for `weftctl controller
problems`: pure, over the mesh's Services and the HTTPRoutes' Service parents.

    virtual_service_problem(vs, known_service, route_parents) -> (field, reason) | None

- a host (or a destination's, or the mirror's host) that names no Service: the VirtualService
  takes no effect for it (a destination that names no Service gets 500, as an HTTPRoute
  backend that does not resolve);
- a host whose Service port also has an HTTPRoute: the HTTPRoute wins (Istio's rule, for
  ambient waypoints), the VirtualService is the conflict's loser and takes no effect on that
  port; likewise a GRPCRoute, for the gRPC calls on that port.

One problem per VirtualService (the first met), as the controller reports one per resource.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from meshcore.resources.names import service_of_host
from meshcore.resources.virtualservice import VirtualService

# (namespace, name) -> the Service's ports, or None when there is no such Service
ServicePorts = Callable[[str, str], tuple[int, ...] | None]
# (route, service namespace, service name, port or None for every port)
RouteParent = tuple[str, str, str, int | None]


def virtual_service_problem(
    vs: VirtualService, service_ports: ServicePorts, route_parents: Iterable[RouteParent]
) -> tuple[str, str] | None:
    ns = vs.metadata.namespace
    parents = list(route_parents)
    for i, host in enumerate(vs.hosts):
        svc = service_of_host(host, ns)
        if svc is None:
            if "*" in host:
                continue
            return f"spec.hosts[{i}]", f"{host!r} names no Service (name, name.namespace or FQDN)"
        ports = service_ports(*svc)
        if ports is None:
            return f"spec.hosts[{i}]", f"no Service {svc[0]}/{svc[1]}: the host takes no effect"
        for route, rns, rname, rport in parents:
            if (rns, rname) != svc:
                continue
            taken = sorted(ports) if rport is None else [rport]
            shown = ", ".join(str(p) for p in taken)
            kind = route.split(" ", 1)[0]
            wins = f"the {kind} wins" + ("" if kind == "HTTPRoute" else " for gRPC calls")
            return (
                f"spec.hosts[{i}]",
                f"conflict: {route} also binds Service {svc[0]}/{svc[1]} (port {shown}); "
                f"{wins} (Istio's rule), this VirtualService takes no effect there",
            )
    for ri, rule in enumerate(vs.http):
        dests = [
            (f"spec.http[{ri}].route[{di}].destination", d.destination)
            for di, d in enumerate(rule.route)
        ]
        if rule.mirror is not None:
            dests.append((f"spec.http[{ri}].mirror", rule.mirror))
        for path, dest in dests:
            svc = service_of_host(dest.host, ns)
            ports = None if svc is None else service_ports(*svc)
            if svc is None or ports is None:
                return f"{path}.host", f"{dest.host!r} names no Service: its share gets 500"
            if dest.port is not None and dest.port not in ports:
                return f"{path}.port.number", f"Service {svc[0]}/{svc[1]} has no port {dest.port}"
    return None
