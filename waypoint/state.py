"""What a waypoint knows of the mesh: ztunnel's view of Services and Workloads (the same
`meshcore.meshstate` values, indexed the same way), plus the routes that bind to Services.

`update()` takes the state mapping `meshcore.configclient` delivers, as ztunnel's MeshView
does, so the process can later be fed by the controller unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from meshcore.meshstate import MeshService, ServicePort, StateValue, Workload
from meshcore.resources import ResourceKey
from meshcore.resources.destinationrule import DestinationRule, TrafficPolicy, rule_for
from meshcore.resources.gateway import GRPCRoute, HTTPRoute
from meshcore.resources.meshconfig import ExtAuthzProvider, MeshSettings
from meshcore.resources.ratelimit import RateLimitPolicy
from meshcore.resources.requestauthn import RequestAuthentication
from meshcore.resources.virtualservice import VirtualService
from ztunnel.state import MeshView


class WaypointView:
    def __init__(self, gateway: str) -> None:
        """`gateway`: this waypoint, `<namespace>/<name>` (what Services bound to it name)."""
        self.gateway = gateway
        self.mesh = MeshView("")  # a waypoint is on no node of its own
        self.by_name: dict[tuple[str, str], MeshService] = {}
        self.http_routes: tuple[HTTPRoute, ...] = ()
        self.grpc_routes: tuple[GRPCRoute, ...] = ()
        self.rate_limit_policies: tuple[RateLimitPolicy, ...] = ()
        self.virtual_services: tuple[VirtualService, ...] = ()
        self.destination_rules: tuple[DestinationRule, ...] = ()
        self.request_authentications: tuple[RequestAuthentication, ...] = ()
        # The mesh config's ext_authz providers by name (CUSTOM policies); {} without one.
        self.ext_authz_providers: Mapping[str, ExtAuthzProvider] = {}
        self._rule_by_service: dict[tuple[str, str], DestinationRule | None] = {}
        self.on_update: list[Callable[[], object]] = []

    def update(self, state: Mapping[ResourceKey, object]) -> None:
        mesh: dict[ResourceKey, StateValue] = {}
        rules: list[DestinationRule] = []
        rate_limits: list[RateLimitPolicy] = []
        authns: list[RequestAuthentication] = []
        providers: Mapping[str, ExtAuthzProvider] = {}
        http, grpc, vs = [], [], []
        for key, value in state.items():
            if isinstance(value, HTTPRoute):
                http.append(value)
            elif isinstance(value, GRPCRoute):
                grpc.append(value)
            elif isinstance(value, DestinationRule):
                rules.append(value)
            elif isinstance(value, RateLimitPolicy):
                rate_limits.append(value)
            elif isinstance(value, VirtualService):
                vs.append(value)
            elif isinstance(value, RequestAuthentication):
                authns.append(value)
            elif isinstance(value, MeshSettings):
                providers = value.ext_authz_providers
            else:
                mesh[key] = value  # type: ignore[assignment]  # MeshView ignores the rest
        self.mesh.update(mesh)
        self.by_name = {(s.namespace, s.name): s for s in self.mesh.by_vip.values()}
        self.destination_rules = tuple(rules)
        self._rule_by_service = {}
        self.http_routes, self.grpc_routes = tuple(http), tuple(grpc)
        self.rate_limit_policies = tuple(rate_limits)
        self.request_authentications = tuple(authns)
        self.ext_authz_providers = providers
        self.virtual_services = tuple(sorted(vs, key=lambda v: (v.key.namespace, v.key.name)))
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

    def destination_rule(self, namespace: str, name: str) -> DestinationRule | None:
        """The DestinationRule for a Service (by its host), cached until the next update."""
        key = (namespace, name)
        if key not in self._rule_by_service:
            self._rule_by_service[key] = rule_for(self.destination_rules, namespace, name)
        return self._rule_by_service[key]

    def traffic_policy(self, namespace: str, name: str, subset: str = "") -> TrafficPolicy | None:
        rule = self.destination_rule(namespace, name)
        return rule.policy_for(subset) if rule is not None else None

    def subset_endpoints(
        self, service: MeshService, port: int, subset: str
    ) -> list[tuple[Workload, int]]:
        """A subset's endpoints: the Service's whose pod labels match the subset's; none when
        no DestinationRule for the Service defines it."""
        rule = self.destination_rule(service.namespace, service.name)
        found = rule.subset(subset) if rule is not None else None
        if found is None:
            return []
        labels = found.labels
        return [
            (w, p)
            for w, p in self.endpoints(service, port)
            if all(w.labels.get(k) == v for k, v in labels.items())
        ]

    def workload_at(self, ip: str) -> Workload | None:
        return self.mesh.by_ip.get(ip)
