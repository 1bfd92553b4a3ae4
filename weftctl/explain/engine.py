"""Why a connection from SRC to DST is allowed or denied, decided by the data plane's own pure
functions on the inputs the data plane would build. Pure: snapshots in, an Explanation out.

Nothing here re-implements a decision. Each hop is asked as the process at that hop asks it:

- the source's node agent captures the pod (its status) unless the port is excluded; an
  uncaptured pod connects directly, in plaintext;
- the source ztunnel plans the connection with `ztunnel.destinations.resolve()` on the
  `MeshView` its node builds from the controller's state (waypoint, endpoints, passthrough,
  refusal);
- a waypoint judges the request with `waypoint.authz.AuthzTables` (the policies it enforces
  for the Service) and routes it with `waypoint.decision.RouteTables`, on a `WaypointView`;
- the destination ztunnel admits the stream with `ztunnel.admission.admit()` on an `Attempt`
  built as its listener builds it (HBONE from the source's node or from the waypoint, with
  `forwarded`; or plaintext steered to 15006), on the `MeshView` of the destination's node.

The per-policy lines (which rule matched, which policy was not reached) are for people
(weftctl/explain/policies.py); they are computed with the same compiled matchers
(`ztunnel.rbac.PolicyMatcher`, one rule at a time, and `waypoint.authz.CompiledPolicy.
first_match`), and the hop's verdict is always the one `admit()` or `PolicySet.evaluate()`
gave. What only the running data plane decides (which
endpoint or backend a weighted choice picks) is said as such: every candidate is judged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from meshcore.meshstate import MeshService, ServicePort, TrustBundle, Workload
from waypoint import authz, routing
from waypoint.decision import GrpcRouteTables, RouteTables
from waypoint.protocol import AppProtocol, declared
from waypoint.state import WaypointView
from weftctl.explain import policies as pl
from weftctl.explain.model import (
    ALLOW,
    DENY,
    Explanation,
    Hop,
    MeshSnapshot,
    PathInfo,
    PolicyResult,
    RequestSpec,
    RouteResult,
    Side,
)
from weftctl.explain.policies import DEFAULT_METHOD, DEFAULT_PATH
from weftctl.explain.targets import Destination, destination, source
from ztunnel import admission
from ztunnel.admission import Attempt, Listener
from ztunnel.destinations import Passthrough, Refuse, ToEndpoints, ViaWaypoint, resolve
from ztunnel.state import MeshView

DEFAULT_TRUST_DOMAIN = "cluster.local"
MAX_ENDPOINTS = 8  # candidates judged (and listed) per hop; more are summarised in notes


def trust_domain(snapshot: MeshSnapshot) -> str:
    for value in snapshot.state.values():
        if isinstance(value, TrustBundle):
            return value.trust_domain
    return DEFAULT_TRUST_DOMAIN


@dataclass
class _Judged:
    """What one way through (one endpoint or backend) came to."""

    verdict: str
    reason: str
    deciding: str | None
    hops: list[Hop]
    policies: list[PolicyResult]
    endpoint: Workload | None = None  # the destination workload this way reaches


class _Explainer:
    def __init__(self, snapshot: MeshSnapshot, request: RequestSpec) -> None:
        self.snapshot = snapshot
        self.request = request
        self.td = trust_domain(snapshot)
        self.views: dict[str, MeshView] = {}
        self.any = self.view("")  # node-independent lookups
        self.notes: list[str] = []
        self.routes: list[RouteResult] = []
        self.depends = False

    def view(self, node: str) -> MeshView:
        """The MeshView the ztunnel of `node` builds from the same state."""
        if node not in self.views:
            view = MeshView(node)
            view.update(self.snapshot.state)
            self.views[node] = view
        return self.views[node]

    # --- sides ---------------------------------------------------------------------------

    def captured(self, w: Workload) -> bool | None:
        facts = self.snapshot.nodes.get(w.node)
        if facts is None or facts.captured is None:
            return None
        return f"{w.namespace}/{w.name}" in facts.captured

    def side(self, w: Workload | None, kind: str, address: str, port: int = 0) -> Side:
        if w is None:
            return Side(kind, address=address, port=port)
        facts = self.snapshot.nodes.get(w.node)
        cert = held = None
        if w.enrolled and facts is not None and facts.certificates is not None:
            cert = facts.certificates.get(w.identity)
            held = cert is not None
        return Side(
            kind,
            w.namespace,
            w.name,
            address,
            w.node,
            w.enrolled,
            self.captured(w),
            w.identity,
            cert,
            held,
            port=port,
            waypoint=w.waypoint,
        )

    # --- the whole path ------------------------------------------------------------------

    def explain(self, src_text: str, dst_text: str) -> Explanation:
        src = source(self.any, src_text)
        dst = destination(self.any, dst_text)
        src_ip = src.addresses[0] if src.addresses else ""
        src_side = self.side(src, "pod", src_ip)
        dst_side = self.destination_side(dst)
        captured = self.captured(src)
        if captured is None:
            captured = src.enrolled
            self.notes.append(
                f"the node agent of {src.node} could not be read: capture assumed from the "
                f"controller's enrolled={src.enrolled}"
            )
        if captured and dst.port in src.excluded_ports:
            self.notes.append(f"port {dst.port} is excluded from capture for {src.name}")
            captured = False
        if not captured:
            path, ways = self.uncaptured(src, src_ip, dst)
        else:
            path, ways = self.captured_path(src, src_ip, dst)
        return self.conclude(src_side, dst_side, path, ways)

    def destination_side(self, dst: Destination) -> Side:
        address = f"{dst.ip}:{dst.port}"
        if dst.service is not None:
            s = dst.service
            return Side(
                "service",
                s.namespace,
                s.name,
                address,
                service=f"{s.namespace}/{s.name}",
                port=dst.port,
                waypoint=s.waypoint,
            )
        return self.side(dst.workload, dst.kind, address, dst.port)

    def conclude(self, src: Side, dst: Side, path: PathInfo, ways: list[_Judged]) -> Explanation:
        verdicts = {w.verdict for w in ways}
        if len(ways) > 1 and len(verdicts) > 1:
            self.notes.append(
                "the endpoints disagree: the verdict depends on which one the data plane picks "
                "(each is listed); shown as deny"
            )
        denied = next((w for w in ways if w.verdict == DENY), None)
        chosen = denied or ways[0]
        hops: list[Hop] = list(path.hops)
        policies: list[PolicyResult] = []
        for w in ways:
            hops += [h for h in w.hops if h not in hops]
            policies += [p for p in w.policies if p not in policies]
        endpoints = {
            (w.endpoint.namespace, w.endpoint.name): self.side(
                w.endpoint, "pod", w.endpoint.addresses[0] if w.endpoint.addresses else ""
            )
            for w in ways
            if w.endpoint is not None
        }
        return Explanation(
            verdict=DENY if denied else ALLOW,
            deciding_policy=chosen.deciding,
            reason=chosen.reason,
            source=src,
            destination=dst,
            path=dataclasses.replace(path, hops=tuple(hops)),
            policies=tuple(policies),
            routes=tuple(self.routes),
            endpoints=tuple(endpoints.values()),
            depends_on_request=self.depends,
            notes=tuple(dict.fromkeys(self.notes)),
            state_version=self.snapshot.version,
        )

    # --- an uncaptured source: plaintext ---------------------------------------------------

    def uncaptured(
        self, src: Workload, src_ip: str, dst: Destination
    ) -> tuple[PathInfo, list[_Judged]]:
        first = Hop(
            "kernel",
            "source",
            src.node,
            f"{dst.ip}:{dst.port}",
            ALLOW,
            f"{src.namespace}/{src.name} is not captured on {src.node}: it connects directly, "
            "in plaintext",
            security="none",
        )
        targets: list[tuple[Workload | None, str, int]]
        if dst.service is not None:
            eps = sorted(self.any.endpoints(dst.service, dst.port), key=lambda e: e[0].name)
            if not eps:
                why = f"service {dst.service.namespace}/{dst.service.name} has no ready endpoint"
                return PathInfo("refused", why, (first,)), [_Judged(DENY, why, None, [], [])]
            targets = [(w, w.addresses[0], p) for w, p in eps[:MAX_ENDPOINTS]]
            self.note_more(len(eps))
        else:
            targets = [(dst.workload, dst.ip, dst.port)]
        ways = [self.plaintext_inbound(src_ip, w, ip, port) for w, ip, port in targets]
        in_mesh = any(w is not None and w.enrolled for w, _, _ in targets)
        kind = "plaintext" if in_mesh else "passthrough"
        summary = (
            "plaintext to the destination, whose ztunnel admits it on 15006"
            if in_mesh
            else "plaintext, outside the mesh at both ends"
        )
        return PathInfo(kind, summary, (first,)), ways

    def plaintext_inbound(self, src_ip: str, w: Workload | None, ip: str, port: int) -> _Judged:
        if w is None or not w.enrolled:
            where = f"{w.namespace}/{w.name}" if w else ip
            return _Judged(ALLOW, f"{where} is not in the mesh: nothing checks it", None, [], [], w)
        if self.captured(w) is False:
            # its agent has not enrolled it in the node's maps: nothing steers plaintext to
            # the ztunnel, so the pod is reached directly and no mesh policy is applied
            why = (
                f"{w.namespace}/{w.name} is enrolled but not captured on {w.node}: plaintext "
                "reaches it directly, no policy (STRICT included) is applied"
            )
            self.notes.append(why)
            return _Judged(ALLOW, why, None, [], [], w)
        attempt = Attempt(Listener.PLAINTEXT, ip, port, src_ip)
        return self.admitted(attempt, w, security="none")

    # --- a captured source ---------------------------------------------------------------

    def captured_path(
        self, src: Workload, src_ip: str, dst: Destination
    ) -> tuple[PathInfo, list[_Judged]]:
        view = self.view(src.node)
        known = view.by_ip.get(src_ip)
        target = f"{dst.ip}:{dst.port}"
        if known is None or known.node != src.node or not known.enrolled:
            why = (
                f"the ztunnel of {src.node} does not know {src.namespace}/{src.name} as an "
                "enrolled pod of its node: it refuses the connection"
            )
            hop = Hop("ztunnel", "source", src.node, target, DENY, why)
            return PathInfo("refused", why, (hop,)), [_Judged(DENY, why, None, [], [])]
        plan = resolve(view, dst.ip, dst.port)
        if isinstance(plan, Refuse):
            hop = Hop("ztunnel", "source", src.node, target, DENY, plan.reason)
            path = PathInfo("refused", plan.reason, (hop,))
            return path, [
                _Judged(DENY, f"refused by the source ztunnel: {plan.reason}", None, [], [])
            ]
        if isinstance(plan, Passthrough):
            why = f"{target} is not in the mesh: passed through in plaintext"
            hop = Hop("ztunnel", "source", src.node, target, ALLOW, why, security="none")
            return PathInfo("passthrough", why, (hop,)), [_Judged(ALLOW, why, None, [], [])]
        if isinstance(plan, ViaWaypoint):
            return self.via_waypoint(src, src_ip, dst, plan)
        return self.to_endpoints(src, src_ip, plan)

    def to_endpoints(
        self, src: Workload, src_ip: str, plan: ToEndpoints
    ) -> tuple[PathInfo, list[_Judged]]:
        candidates = sorted(plan.candidates, key=lambda c: c[0].name)
        self.note_more(len(candidates))
        ways = []
        for w, port in candidates[:MAX_ENDPOINTS]:
            ip = w.addresses[0]
            if not w.enrolled:
                why = f"{w.namespace}/{w.name} is not enrolled: reached directly in plaintext"
                hop = Hop("kernel", "destination", w.node, f"{ip}:{port}", ALLOW, why, "none")
                ways.append(_Judged(ALLOW, why, None, [hop], [], w))
                continue
            attempt = Attempt(
                Listener.HBONE,
                ip,
                port,
                src.node_address,
                src.identity,
                w.identity,
                f"for={src_ip}",
            )
            ways.append(self.admitted(attempt, w, security="mutual_tls"))
        enrolled = any(w.enrolled for w, _ in candidates)
        first = Hop(
            "ztunnel",
            "source",
            src.node,
            ", ".join(f"{w.addresses[0]}:{p}" for w, p in candidates[:MAX_ENDPOINTS]),
            ALLOW,
            "captured; sent over HBONE (mTLS) to the destination's node"
            if enrolled
            else "captured; the destination is not enrolled, so sent directly",
            security="none",
            peer=src.identity,
        )
        kind = "ztunnel-to-ztunnel" if enrolled else "passthrough"
        summary = (
            f"source ztunnel ({src.node}) -> destination ztunnel (HBONE, mTLS)"
            if enrolled
            else f"source ztunnel ({src.node}) -> destination directly (plaintext)"
        )
        return PathInfo(kind, summary, (first,)), ways

    # --- the destination ztunnel -----------------------------------------------------------

    def admitted(self, attempt: Attempt, w: Workload, *, security: str) -> _Judged:
        """`admit()` on the destination's node, with the policies it looked at."""
        view = self.view(w.node)
        result = admission.admit(
            attempt, view, trust_domain=self.td, root_namespace=view.root_namespace
        )
        verdict = ALLOW if result.allowed else DENY
        hop = Hop(
            "ztunnel",
            "destination",
            w.node,
            f"{attempt.target_ip}:{attempt.target_port}",
            verdict,
            f"{result.verdict.value}: {result.reason}",
            security,
            attempt.peer_identity or attempt.peer_address,
        )
        policies = pl.l4_lines(view, w, attempt, result, self.td)
        deciding = pl.l4_deciding(view, w, attempt, result)
        reason = f"destination ztunnel on {w.node}: {result.reason}"
        return _Judged(verdict, reason, deciding, [hop], policies, w)

    # --- through a waypoint ----------------------------------------------------------------

    def via_waypoint(
        self, src: Workload, src_ip: str, dst: Destination, plan: ViaWaypoint
    ) -> tuple[PathInfo, list[_Judged]]:
        gateway = plan.waypoint
        replicas = sorted(plan.replicas, key=lambda r: r.name)
        listed = tuple(f"{r.namespace}/{r.name} {r.addresses[0]} ({r.node})" for r in replicas)
        first = Hop(
            "ztunnel",
            "source",
            src.node,
            f"{dst.ip}:{dst.port}",
            ALLOW,
            f"captured; bound to waypoint {gateway}: sent over HBONE (mTLS) to one of its "
            f"{len(replicas)} ready replica(s)",
            security="none",
            peer=src.identity,
        )
        wview = WaypointView(gateway)
        wview.update(self.snapshot.state)
        replica = replicas[0]
        service = wview.bound_service(dst.ip)
        port = wview.port(service, dst.port) if service is not None else None
        app = declared(port)
        http = app is not AppProtocol.TCP
        if app is None:
            self.notes.append(
                f"port {dst.port} declares no protocol: the waypoint sniffs it; judged as HTTP "
                "(what the probe sends)"
            )
        if http and not self.request.given:
            self.notes.append(
                f"L7 rules and routes are judged for {DEFAULT_METHOD} {DEFAULT_PATH}; "
                "give --method/--path/--header for another request"
            )
        self.note_request_authentication(wview, gateway, service)
        method = self.request.method or DEFAULT_METHOD
        path = self.request.path or DEFAULT_PATH
        tables = authz.AuthzTables(gateway, root_namespace=wview.mesh.root_namespace)
        tables.update(wview.mesh.policies)
        policies = tables.for_destination(
            service.namespace if service else None, service.name if service else None
        )
        where = f"waypoint {gateway}"
        rview = authz.RequestView.build(
            method=method if http else "",
            path=path if http else None,
            host=service.hostname if service is not None else dst.ip,
            headers=self.request.headers if http else (),
            source_principal=src.identity,
            source_namespace=src.namespace,
            source_ip=src_ip,
            destination_ip=dst.ip,
            destination_port=dst.port,
        )
        lines: list[PolicyResult] = []
        access: authz.Verdict | None = None
        deciding: str | None = None
        if policies is not None:
            access = policies.evaluate(rview, l4=not http, providers=wview.ext_authz_providers)
            deciding = access.policy or None
            if not access.allowed and not deciding and len(policies.allow) == 1:
                # "no ALLOW policy matched": when exactly one applies, it is the one that said no
                deciding = policies.allow[0].key
            found, depends = pl.l7_lines(
                policies,
                rview,
                deciding,
                where,
                l4=not http,
                written={pl.key(p): p for p in wview.mesh.policies},
                request_given=self.request.given,
            )
            self.depends = self.depends or depends
            lines = found
        verdict = ALLOW if access is None or access.allowed else DENY
        if access is not None and access.custom and access.allowed:
            names = ", ".join(c.provider for c in access.custom)
            self.notes.append(
                f"CUSTOM policy: the waypoint asks ext_authz provider(s) {names} at run time; "
                "weftctl why cannot, so the verdict assumes they allow"
            )
        wp_reason = (
            "no AuthorizationPolicy applies at the waypoint" if access is None else access.reason
        )
        wp_hop = Hop(
            "waypoint",
            "waypoint",
            replica.node,
            f"{dst.ip}:{dst.port}",
            verdict,
            wp_reason,
            "mutual_tls",
            src.identity,
        )
        path_info = PathInfo(
            "waypoint",
            f"source ztunnel ({src.node}) -> waypoint {gateway} -> destination ztunnel "
            "(HBONE, mTLS each hop)",
            (first, wp_hop),
            gateway,
            listed,
        )
        if verdict == DENY:
            why = f"denied at waypoint {gateway}: {wp_reason}"
            return path_info, [_Judged(DENY, why, deciding, [], lines)]
        backends = self.waypoint_backends(wview, service, port, dst, src, method, path, http)
        if isinstance(backends, str):  # the waypoint answers itself
            return path_info, [_Judged(ALLOW, backends, deciding, [], lines)]
        ways = []
        waypoint_id = admission.waypoint_identity(gateway, self.td)
        for w, target_port in backends[:MAX_ENDPOINTS]:
            ip = w.addresses[0]
            if not w.enrolled:
                why = f"{w.namespace}/{w.name} is not enrolled: the waypoint connects directly"
                ways.append(_Judged(ALLOW, why, deciding, [], lines, w))
                continue
            attempt = Attempt(
                Listener.HBONE,
                ip,
                target_port,
                replica.addresses[0],
                waypoint_id,
                w.identity,
                f"for={src_ip}",
            )
            judged = self.admitted(attempt, w, security="mutual_tls")
            judged.policies = lines + judged.policies
            if judged.verdict == ALLOW and deciding and not judged.deciding:
                judged.deciding = deciding
            ways.append(judged)
        self.note_more(len(backends))
        if not ways:
            why = "no ready endpoint behind the waypoint's backend: the waypoint answers 503"
            return path_info, [_Judged(DENY, why, deciding, [], lines)]
        return path_info, ways

    def waypoint_backends(
        self,
        wview: WaypointView,
        service: MeshService | None,
        port: ServicePort | None,
        dst: Destination,
        src: Workload,
        method: str,
        path: str,
        http: bool,
    ) -> list[tuple[Workload, int]] | str:
        """The endpoints the waypoint may send the request to, after its routes; or what it
        answers itself (a redirect, a 404 for no matching rule...)."""
        if service is None or port is None:  # a workload bound to the waypoint
            w = dst.workload
            return [(w, dst.port)] if w is not None else []
        label = f"{service.namespace}/{service.name}:{port.port}"
        if not http:
            self.routes.append(
                RouteResult("none", "", label, None, (), "TCP: passed to the Service")
            )
            return sorted(wview.endpoints(service, port.port), key=lambda e: e[0].name)
        request = routing.Request(
            method,
            path,
            tuple(self.request.headers),
            host=service.hostname,
            client_namespace=src.namespace,
            source_labels=src.labels,
        )
        decided: routing.Forward | routing.Respond | None = None
        if declared(port) is AppProtocol.GRPC:  # as the h2c side routes a gRPC call
            grpc = GrpcRouteTables(wview, rand=lambda: 0.0)
            table = grpc.table(service, port)
            if not table.empty:
                decided = routing.route_grpc(table, request, grpc.rand)
        if decided is None:
            decided = RouteTables(wview, rand=lambda: 0.0).decide(service, port, request)
        if isinstance(decided, routing.Respond):
            self.routes.append(
                RouteResult(
                    "HTTPRoute" if decided.route_key else "none",
                    _rkey(decided.route_key),
                    label,
                    decided.rule_index if decided.rule_index >= 0 else None,
                    (),
                    f"answered {decided.status} by the waypoint ({decided.reason or 'route'})",
                )
            )
            return f"the waypoint answers {decided.status} itself ({decided.reason or 'route'})"
        backends = self.rule_backends(wview, decided)
        kind = decided.route_key.kind if decided.route_key else "none"
        self.routes.append(
            RouteResult(
                kind,
                _rkey(decided.route_key),
                label,
                decided.rule_index if decided.rule_index >= 0 else None,
                tuple(f"{ns}/{n}:{p} (weight {wt})" for ns, n, p, wt in backends),
                (
                    f"{method} {path}: rule {decided.rule_index} of {kind} "
                    f"{_rkey(decided.route_key)}"
                    if decided.route_key
                    else f"no route applies: forwarded to {label}"
                ),
            )
        )
        if decided.route_key is not None:
            self.depends = self.depends or not self.request.given
        found: list[tuple[Workload, int]] = []
        for ns, name, bport, weight in backends:
            backend = wview.service(ns, name)
            if backend is None or weight <= 0:
                continue
            eps = (
                wview.subset_endpoints(backend, bport, decided.subset)
                if decided.subset
                else wview.endpoints(backend, bport)
            )
            found += sorted(eps, key=lambda e: e[0].name)
        if len({(b[0], b[1]) for b in backends if b[3] > 0}) > 1:
            self.notes.append(
                "the route splits traffic by weight: every backend is judged; the waypoint "
                "picks one per request"
            )
        return list({(w.key, p): (w, p) for w, p in found}.values())

    @staticmethod
    def rule_backends(
        wview: WaypointView, decided: routing.Forward
    ) -> list[tuple[str, str, int, int]]:
        """(namespace, name, port, weight) of every backend of the rule that matched: the
        waypoint draws one per request, so all are candidates."""
        key = decided.route_key
        one = [(decided.backend_namespace, decided.backend_name, decided.backend_port, 1)]
        if key is None or key.kind not in ("HTTPRoute", "GRPCRoute"):
            return one
        routes = wview.http_routes if key.kind == "HTTPRoute" else wview.grpc_routes
        route = next((r for r in routes if r.key == key), None)
        if route is None or not 0 <= decided.rule_index < len(route.rules):
            return one
        refs = route.rules[decided.rule_index].backend_refs
        out = []
        for ref in refs:
            namespace = getattr(ref, "namespace", None) or key.namespace
            out.append((namespace, ref.name, int(getattr(ref, "port", 0) or 0), int(ref.weight)))
        return out or one

    def note_request_authentication(
        self, wview: WaypointView, gateway: str, service: MeshService | None
    ) -> None:
        """RequestAuthentication runs before authorization at the waypoint; why does not
        validate tokens, so it says which apply."""
        name = f"{service.namespace}/{service.name}" if service is not None else None
        for ra in wview.request_authentications:
            found = authz.scopes(ra, gateway, root_namespace=wview.mesh.root_namespace)
            if any(scope is authz.Scope.GATEWAY or n == name for scope, n in found):
                self.notes.append(
                    f"RequestAuthentication {pl.key(ra)} applies at waypoint {gateway}: a request "
                    "with an invalid token is refused 401 there; tokens are not validated here"
                )

    def note_more(self, count: int) -> None:
        if count > MAX_ENDPOINTS:
            self.notes.append(f"{count} endpoints: the first {MAX_ENDPOINTS} are judged")


def explain(
    snapshot: MeshSnapshot, src: str, dst: str, request: RequestSpec | None = None
) -> Explanation:
    """Why SRC (`NAMESPACE/POD`) may or may not reach DST; TargetError for names the mesh
    does not know."""
    return _Explainer(snapshot, request or RequestSpec()).explain(src, dst)


def _rkey(key: object) -> str:
    if key is None:
        return ""
    return f"{key.namespace}/{key.name}"  # type: ignore[attr-defined]
