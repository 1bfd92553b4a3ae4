"""The waypoint's data path: HBONE in on 15008, HTTP/1.1 routed (or TCP passed through),
HBONE out to the destination's ztunnel with the waypoint's own identity.

How one CONNECT stream flows:

1. TLS as a ztunnel's inbound side does it (ztunnel.listeners' bounded accept loop, this
   module's `server_context`): we present the waypoint's certificate, the client presents
   its workload's; only workload identities of our trust domain may open streams.
2. The target must be a Service VIP (or, for workload waypoints, a pod IP) bound to this
   waypoint; anything else is refused (404), so the waypoint is no open relay. The stream is
   accepted (200) and joined by a `Relay` to a `BufferedEnd` the code below reads.
3. The protocol is what the Service port declares, else what the first bytes show
   (`waypoint.protocol`). HTTP/1.1 is served with llhttp (`waypoint.h1`), h2c and gRPC with h2
   (`waypoint.h2c`); anything else is passed through as TCP: an endpoint is picked and the
   client's stream is spliced to an outbound HBONE stream, byte for byte.
4. Each request is decided by the HTTPRoutes of its Service port (`waypoint.routing`,
   through `waypoint.decision`): answered here (redirect, 404, 500), or sent to a ready
   endpoint of the backend Service it names, over an HBONE stream to that endpoint's node
   (ztunnel's Pool: source identity = the waypoint, destination identity = the endpoint's
   workload), kept alive for the next requests of the same client connection to that
   endpoint. Malformed HTTP is a 400 and the end of that client connection only; a backend
   that cannot be reached, or resets before its response is complete, is a 503 with the
   reason in the access log.

The client's address comes from the inbound CONNECT's `forwarded` header, believed only where
the peer's certificate vouches for it (ztunnel.admission's rule: a workload running as the
peer identity on the node the connection came from); it goes on to the backend's ztunnel as
`forwarded: for=<ip>`.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ssl
import time
import weakref
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

import structlog

from meshcore import hbone
from meshcore.identity.certs import CertificateError
from meshcore.identity.spiffe import IdentityError, SpiffeId
from meshcore.meshstate import MeshService, ServicePort, Workload
from meshcore.resources.gateway import Timeouts
from meshcore.resources.meshconfig import ExtAuthzProvider as MeshExtAuthzProvider
from waypoint import (
    authz,
    extauthz,
    extauthz_client,
    h1,
    h2c,
    jwtauth,
    outlier_metrics,
    pathnorm,
    protocol,
    ratelimit_store,
    routing,
    telemetry,
    tls_peek,
    tracing,
    trafficpolicy,
    xfcc,
)
from waypoint.decision import GrpcRouteTables, Router, RouteTables
from waypoint.h1 import (
    H1Channel,
    H1Error,
    H1LocalError,
    decode_headers,
    encode_headers,
    header,
    hop_headers_removed,
)
from waypoint.protocol import AppProtocol
from waypoint.ratelimit import RATE_LIMITED, RateLimitTables
from waypoint.state import WaypointView
from waypoint.streamio import BufferedEnd, EndClosed
from waypoint.telemetry import Peer, RequestRecord
from waypoint.tracing import NO_TRACE, RequestTrace, Tracing
from waypoint.trafficpolicy import Admission, ClusterKey, ClusterState, TrafficPolicies
from ztunnel import admission, metrics, tls
from ztunnel.admission import ForwardedError
from ztunnel.events import publish_connection
from ztunnel.hbone_conn import HboneConnection, Stream, StreamClosed
from ztunnel.identity import IdentityManager
from ztunnel.inbound import INBOUND_IDLE_TIMEOUT
from ztunnel.pool import CONNECT_TIMEOUT, Pool, PoolKey
from ztunnel.relay import End, Relay, SetupTasks, connect_leg

log = structlog.get_logger("waypoint.proxy")

T = TypeVar("T")
Headers = tuple[tuple[str, str], ...]

# An undeclared port whose client says nothing for this long is TCP (a server-first
# protocol); Istio's protocolDetectionTimeout.
SNIFF_TIMEOUT = 1.0
# A client connection with no request for this long is closed (Envoy's idle_timeout is 1 h;
# a waypoint holds a stream per connection, so shorter).
IDLE_TIMEOUT = 300.0
# Headers of a request, or a backend's response, must arrive within this (a slowloris bound)
HEAD_TIMEOUT = 30.0
# A backend's whole response (no route timeout yet: Gateway API's default is none)
RESPONSE_TIMEOUT = 300.0
# After our last response, how long the client has to close its side before it is reset
CLOSE_GRACE = 5.0
# A request body still unread when we answer early (a 503) is drained up to this, else
# the client connection is closed
MAX_DRAIN = 1024 * 1024
# Kept-alive backend connections per client connection (one per endpoint it reached); past
# this the oldest is closed
MAX_BACKENDS = 16
# RequestMirror: a request body is copied for its mirrors up to this (a larger one is not
# mirrored); mirrors in flight at once, and how long one may take
MAX_MIRROR_BODY = 1024 * 1024
MAX_MIRRORS_IN_FLIGHT = 256
MIRROR_TIMEOUT = 10.0
IDEMPOTENT_METHODS = frozenset(("GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"))
# In place of asyncio.timeout(None), which costs loop lookups per request for nothing
_NO_TIMEOUT = contextlib.nullcontext()


@dataclass(frozen=True)
class WaypointConfig:
    namespace: str  # the Gateway's
    name: str
    trust_domain: str = "cluster.local"
    sniff_timeout: float = SNIFF_TIMEOUT
    idle_timeout: float = IDLE_TIMEOUT
    # How a request path is normalised before AuthorizationPolicy paths are matched
    path_normalization: pathnorm.PathNormalization = pathnorm.DEFAULT

    @property
    def gateway(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def identity(self) -> str:
        """The waypoint's SPIFFE ID: its Gateway's name is its service account."""
        return f"spiffe://{self.trust_domain}/ns/{self.namespace}/sa/{self.name}"


class BackendError(Exception):
    """No response from a backend: `flags` is Envoy's response flag, the message the why."""

    def __init__(self, message: str, flags: str) -> None:
        super().__init__(message)
        self.flags = flags


@dataclass(frozen=True)
class Client:
    """Who is on the other side of an inbound CONNECT."""

    principal: str  # the peer certificate's SPIFFE ID
    namespace: str
    address: str  # the client pod's address if vouched for, else the peer's
    workload: Workload | None  # the client workload, if vouched for


@dataclass(frozen=True)
class Destination:
    """What an inbound CONNECT was addressed to."""

    target: hbone.Target
    service: MeshService | None  # a Service VIP bound to us
    port: ServicePort | None
    workload: Workload | None  # a pod IP bound to us (workload waypoints)


class Tee:
    """A copy of a request body, for mirrors, up to MAX_MIRROR_BODY."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.overflow = False

    def add(self, chunk: bytes) -> None:
        if self.overflow:
            return
        if len(self.data) + len(chunk) > MAX_MIRROR_BODY:
            self.overflow = True
            self.data.clear()
        else:
            self.data += chunk


class Backend:
    """An HTTP/1.1 connection to one endpoint, over HBONE (or plain TCP for an endpoint
    outside the mesh), kept alive between requests of one client connection."""

    def __init__(self, host: str, end: BufferedEnd, relay: Relay, peer: Peer) -> None:
        self.host = host  # ip:port
        self.end = end
        self.relay = relay
        self.peer = peer
        self.h1 = H1Channel(end, h1.Role.CLIENT)
        self.reused = False  # taken from the kept-alive ones for this request
        self.requests = 0  # requests sent on it (DestinationRule maxRequestsPerConnection)

    @property
    def usable(self) -> bool:
        return not (self.end.failed or self.end.at_eof or self.relay.done.done())

    def close(self) -> None:
        if not self.relay.done.done():
            self.end.reset()


class Waypoint:
    def __init__(
        self,
        config: WaypointConfig,
        view: WaypointView,
        identities: IdentityManager,
        pool: Pool,
        router: Router | None = None,
        tracing: Tracing | None = None,  # OpenTelemetry spans (waypoint.tracing); None: off
        # Global RateLimitPolicy counters (Redis); None: Global policies decide by failureMode
        ratelimit_store: ratelimit_store.RedisStore | None = None,
    ) -> None:
        self.config = config
        self.view = view
        self.identities = identities
        self.pool = pool
        self.tracing = tracing
        self.router: Router = router or RouteTables(view)
        self.grpc_tables = GrpcRouteTables(view)
        self.rate_limits = RateLimitTables(config.gateway)
        self.ratelimit_store = ratelimit_store
        view.on_update.append(self._rate_limits_changed)
        self._rate_limits_changed()
        # AuthorizationPolicies with targetRefs, compiled per Service (waypoint.authz)
        self.authz = authz.AuthzTables(config.gateway)
        # CUSTOM policies' providers, reached as backends are (waypoint.extauthz_client)
        self.ext_authz = extauthz_client.ExtAuthzClient(
            self._provider_endpoints, self._open_provider
        )
        view.on_update.append(self._authz_changed)
        self._authz_changed()
        # RequestAuthentications with targetRefs, per Service (waypoint.jwtauth); JWKS caches
        # are kept across view updates
        self.authn = jwtauth.AuthnTables(config.gateway)
        view.on_update.append(self._authn_changed)
        self._authn_changed()
        self._setups = SetupTasks("waypoint.failed_unexpectedly")
        self._connections: weakref.WeakSet[HboneConnection] = weakref.WeakSet()
        self._mirrors: set[asyncio.Future[None]] = set()
        # DestinationRule state per cluster: load balancing, circuit breakers, ejections
        self.traffic = outlier_metrics.watch(TrafficPolicies(on_eject=outlier_metrics.ejected))

    def _rate_limits_changed(self) -> None:
        self.rate_limits.update(self.view.rate_limit_policies, self.view.by_name.values())

    def _authz_changed(self) -> None:
        self.authz.update(self.view.mesh.policies)
        self.ext_authz.retain(self.view.ext_authz_providers.values())

    def _authn_changed(self) -> None:
        self.authn.update(self.view.request_authentications)

    async def authenticate(
        self, dest: Destination, client: Client, target: str, headers: Headers
    ) -> jwtauth.Outcome | None:
        """RequestAuthentication on a request (HTTP/1.1 and h2c alike), just before
        authorization: None when no policy applies to its destination (one dict lookup, no
        await); else the outcome (a failure is answered 401; the outcome's headers are the
        ones to forward)."""
        service = dest.service
        authn = self.authn.for_destination(
            service.namespace if service is not None else None,
            service.name if service is not None else None,
        )
        if authn is None:
            return None
        outcome = await authn.authenticate(headers, target)
        if outcome.failure:
            log.info(
                "jwt.invalid",
                reason=outcome.failure,
                issuer=outcome.issuer,
                source_principal=client.principal,
                path=target[:500],
            )
        return outcome

    @staticmethod
    def unauthenticated(record: RequestRecord, outcome: jwtauth.Outcome) -> None:
        """Note a refused token on the request's record."""
        record.response_flags = "-"
        record.reason = f"{jwtauth.UNAUTHORIZED_BODY.decode()}: {outcome.failure}"

    def authorize(
        self, dest: Destination, client: Client, method: str, target: str, authority: str,
        headers: Headers, *, l4: bool = False, request_auth: authz.RequestAuth | None = None,
        sni: str | None = "",
    ) -> authz.Verdict | None:  # fmt: skip
        """The AuthorizationPolicy verdict on a request (HTTP/1.1 and h2c alike), or with
        `l4` on a TCP connection passed through; None when no policy applies to its
        destination (one dict lookup). Audit lines are written here."""
        service = dest.service
        policies = self.authz.for_destination(
            service.namespace if service is not None else None,
            service.name if service is not None else None,
        )
        if policies is None:
            return None
        path: str | None = None  # (None: path rules cannot be evaluated, so never allow)
        if not l4:
            with contextlib.suppress(pathnorm.PathError):
                path = pathnorm.normalize(target, self.config.path_normalization).path
        ours = client.principal.startswith(f"spiffe://{self.config.trust_domain}/")
        view = authz.RequestView.build(
            method=method,
            path=path,
            host=authority,
            headers=headers,
            source_principal=client.principal,
            source_namespace=client.namespace if ours else "",
            source_ip=client.address,
            destination_ip=dest.target.ip,
            destination_port=dest.target.port,
            sni=sni,
            request_auth=request_auth,
        )
        verdict = policies.evaluate(view, l4=l4, providers=self.view.ext_authz_providers)
        for match in verdict.audit:
            log.info(
                "authz.audit",
                policy=match.policy,
                rule=match.rule,
                rbac_policy=match.policy_id,
                allowed=verdict.allowed,
                method=method,
                path=target[:500],
                authority=authority,
                source_principal=client.principal,
                source_address=client.address,
            )
        for note in verdict.notes:
            log.info("authz.unevaluable", note=note, source_principal=client.principal)
        return verdict

    def custom_providers(self, access: authz.Verdict) -> list[MeshExtAuthzProvider]:
        """The defined providers a verdict's CUSTOM rules name."""
        found = (self.view.ext_authz_providers.get(c.provider) for c in access.custom)
        return [p for p in found if p is not None]

    async def check_custom(
        self, access: authz.Verdict, dest: Destination, client: Client, record: RequestRecord,
        headers: Headers, protocol: str, body: bytes | None = None, body_partial: bool = False,
    ) -> extauthz.CheckResult:  # fmt: skip
        """Ask the providers of the CUSTOM rules a request matched (`access.custom`), in
        order: the first denial (noted on the record, flag UAEX as Envoy's), else the allows'
        header changes together."""
        check = extauthz.CheckInput(
            method=record.method,
            path=record.path,
            authority=record.authority,
            headers=headers,
            source_principal=client.principal,
            source_ip=client.address,
            destination_ip=dest.target.ip,
            destination_port=dest.target.port,
            destination_principal=self.config.identity,
            protocol=protocol,
            request_id=record.request_id,
            body=body,
            body_partial=body_partial,
        )
        upstream: list[routing.HeaderOps] = []
        downstream: list[tuple[str, str]] = []
        reasons = []
        for custom in access.custom:
            provider = self.view.ext_authz_providers.get(custom.provider)
            if provider is None:  # (gone since the verdict: fail closed)
                result = extauthz.CheckResult(
                    extauthz.Outcome.ERROR, False,
                    f"ext_authz provider {custom.provider!r} is not defined", 403,
                )  # fmt: skip
            else:
                result = await self.ext_authz.check(provider, check)
            if not result.allowed:
                record.response_flags = UNAUTHORIZED_EXTERNAL_SERVICE
                record.reason = f"CUSTOM policy {custom.match.policy}: {result.reason}"
                record.rbac_policy = custom.match.policy_id
                return result
            upstream += result.upstream
            downstream += result.downstream
            reasons.append(result.reason)
        return extauthz.CheckResult(
            extauthz.Outcome.ALLOW, True, "; ".join(reasons), 0, b"",
            tuple(upstream), tuple(downstream),
        )  # fmt: skip

    def _provider_endpoints(self, provider: MeshExtAuthzProvider) -> list[tuple[Workload, int]]:
        service = self.view.service(provider.service_namespace, provider.service_name)
        return self.view.endpoints(service, provider.port) if service is not None else []

    async def _open_provider(self, workload: Workload, port: int) -> End:
        try:
            return await self._open(workload, port, None)
        except BackendError as err:
            raise extauthz_client.CheckError(str(err)) from None

    @staticmethod
    def denied(record: RequestRecord, verdict: authz.Verdict) -> None:
        """Note a denial on the request's record, as Envoy's RBAC filter logs it."""
        record.response_flags = "-"
        record.reason = verdict.reason
        record.rbac_policy = verdict.decided_by.policy_id if verdict.decided_by else ""

    async def start(self) -> None:
        """Fetch our own certificate (the listener needs it before the first handshake)."""
        await self.identities.get(self.config.identity)

    # --- TLS and HBONE ----------------------------------------------------------------

    def server_context(self) -> ssl.SSLContext:
        """The 15008 context: always our own certificate (the current one: renewals are
        picked up by new handshakes), a client certificate required."""

        def pick(_sslobj: ssl.SSLObject, _name: str | None) -> ssl.SSLContext | int:
            ctx = self.identities.server_context_now(self.config.identity)
            if ctx is None:
                log.warning("waypoint.no_certificate", identity=self.config.identity)
                return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
            return ctx

        return tls.switching_server_context(pick)

    def hbone_protocol(self) -> HboneConnection:
        """The 15008 listener's protocol factory."""
        return HboneConnection(hbone.HboneServer(), on_made=self._accepted)

    def _accepted(self, conn: HboneConnection) -> None:
        ssl_object = conn.peer_info("ssl_object")
        assert isinstance(ssl_object, ssl.SSLObject) and conn.transport is not None
        try:
            peer = tls.peer_identity(ssl_object)
        except (CertificateError, ValueError) as err:
            log.warning("waypoint.bad_peer", reason=str(err))
            conn.transport.close()
            return
        refusal = admission.peer_refusal(peer, self.config.trust_domain)
        if refusal is not None:
            log.warning("waypoint.bad_peer", peer=peer, reason=refusal)
            conn.transport.close()
            return
        peername = conn.peer_info("peername")
        peer_address = str(peername[0]) if isinstance(peername, tuple) else ""
        conn.label = peer
        self._connections.add(conn)

        def on_connect(stream: Stream, target: hbone.Target, headers: dict[str, str]) -> None:
            def reset() -> None:
                stream.abort()
                stream.conn.proto.reset(stream.id)
                stream.conn.forget(stream)

            self._setups.spawn(
                self._stream(stream, target, headers, peer, peer_address),
                reset,
                target=str(target),
            )

        conn.on_connect = on_connect
        conn.start()

    def stats(self) -> list[dict[str, object]]:
        """Open inbound HBONE connections with their open streams."""
        return [
            {"peer": c.label, "streams": len(c.streams)}
            for c in self._connections
            if not c.closed.is_set()
        ]

    async def reap(self, idle_timeout: float = INBOUND_IDLE_TIMEOUT) -> None:
        """Close inbound HBONE connections that carried no stream for `idle_timeout`, as
        ztunnel's inbound side does; forever."""
        while True:
            await asyncio.sleep(idle_timeout / 4)
            now = asyncio.get_running_loop().time()
            for conn in list(self._connections):
                if not conn.streams and now - conn.last_used > idle_timeout:
                    log.info("waypoint.idle_closed", peer=conn.label)
                    conn.close()

    # --- one CONNECT stream --------------------------------------------------------------

    def client_of(self, peer: str, peer_address: str, forwarded: str | None) -> Client:
        """The client: its certified identity, and its address where the peer vouches
        for it (else the peer's own address)."""
        try:
            namespace = SpiffeId.parse(peer).namespace or ""
        except IdentityError:
            namespace = ""
        if forwarded is not None:
            try:
                claimed = admission.parse_forwarded(forwarded)
            except ForwardedError:
                claimed = ""
            if claimed:
                vouched = admission.vouched_source(self.view.mesh, claimed, peer, peer_address)
                if vouched is not None:
                    return Client(peer, namespace, claimed, vouched)
                log.info(
                    "waypoint.forwarded_untrusted",
                    source_principal=peer,
                    peer_address=peer_address,
                    forwarded=forwarded[:100],
                )
        return Client(peer, namespace, peer_address, None)

    def destination_of(self, target: hbone.Target) -> Destination | None:
        service = self.view.bound_service(target.ip)
        if service is not None:
            port = self.view.port(service, target.port)
            return None if port is None else Destination(target, service, port, None)
        workload = self.view.bound_workload(target.ip)
        if workload is not None:
            return Destination(target, None, None, workload)
        return None

    async def _stream(
        self,
        stream: Stream,
        target: hbone.Target,
        headers: dict[str, str],
        peer: str,
        peer_address: str,
    ) -> None:
        proto = stream.conn.proto
        assert isinstance(proto, hbone.HboneServer)
        dest = self.destination_of(target)
        if dest is None:
            log.info("waypoint.unknown_destination", target=str(target), source_principal=peer)
            if proto.refuse(stream.id, 404, "not a destination of this waypoint"):
                stream.conn.flush()
            stream.conn.forget(stream)
            return
        client = self.client_of(peer, peer_address, headers.get("forwarded"))
        if not proto.accept(stream.id):
            stream.conn.forget(stream)
            return
        stream.conn.flush()
        end = BufferedEnd("client")
        relay = Relay(stream, end)
        relay.start()
        try:
            app = await self._protocol_of(dest, end)
            if app is AppProtocol.HTTP1:
                await self._serve_http(end, client, dest)
            elif app in (AppProtocol.H2C, AppProtocol.GRPC):
                await h2c.serve(self, end, client, dest)
            else:
                await self._passthrough(stream, end, client, dest, app)
        finally:
            if not relay.done.done():
                end.write_eof()
                try:
                    await asyncio.wait_for(asyncio.shield(relay.done), CLOSE_GRACE)
                except TimeoutError:
                    end.reset()

    async def _protocol_of(self, dest: Destination, end: BufferedEnd) -> AppProtocol:
        declared = protocol.declared(dest.port)
        if declared is not None:
            return declared
        prefix = b""
        deadline = asyncio.get_running_loop().time() + self.config.sniff_timeout
        try:
            while (found := protocol.sniff(prefix)) is None:
                left = deadline - asyncio.get_running_loop().time()
                if left <= 0:
                    raise TimeoutError
                chunk = await asyncio.wait_for(end.read(), left)
                if not chunk:
                    found = protocol.sniff(prefix, final=True)
                    break
                prefix += chunk
        except TimeoutError:
            found = protocol.sniff(prefix, final=True)
        except EndClosed:
            found = AppProtocol.TCP
        end.unread(prefix)
        assert found is not None
        return found

    # --- TCP passthrough ----------------------------------------------------------------

    async def _passthrough(
        self,
        stream: Stream,
        end: BufferedEnd,
        client: Client,
        dest: Destination,
        app: AppProtocol,
    ) -> None:
        started = time.monotonic()
        target = str(dest.target)
        service = dest.service
        policies = self.authz.for_destination(
            service.namespace if service is not None else None,
            service.name if service is not None else None,
        )
        sni: str | None = ""  # (only read when a policy asks: it may wait for the client)
        if policies is not None and policies.uses_sni:
            sni = await tls_peek.client_sni(end, self.config.sniff_timeout)
        access = self.authorize(dest, client, "", "", "", (), l4=True, sni=sni)
        if access is not None and not access.allowed:  # (Envoy: the network RBAC filter)
            log.info(
                "connection.denied",
                reporter=telemetry.REPORTER,
                protocol=app.value,
                source_principal=client.principal,
                source_address=client.address,
                destination=target,
                reason=access.reason,
                rbac_policy=access.decided_by.policy_id if access.decided_by else None,
                sni=sni,
            )
            if telemetry.TAP.active:
                self._stream_event(
                    client, dest, None, started, "deny", access.reason,
                    access.decided_by.policy if access.decided_by else "",
                )  # fmt: skip
            end.reset()
            return
        candidates = self._candidates(dest)
        service_host = dest.service.hostname if dest.service else ""
        labels = metrics.ConnectionLabels(
            telemetry.REPORTER,
            client.workload,
            client.principal,
            None,
            service_host,
            "",
            "mutual_tls",
        )
        for workload, port in candidates:
            host = f"{workload.addresses[0]}:{port}"
            try:
                outbound = await self._open(workload, port, client)
            except BackendError as err:
                log.info("waypoint.endpoint_failed", endpoint=host, error=str(err))
                continue
            labels = metrics.ConnectionLabels(
                telemetry.REPORTER,
                client.workload,
                client.principal,
                workload,
                service_host,
                workload.identity if workload.enrolled else "",
                "mutual_tls",
            )
            metrics.opened(labels)
            second = end.splice(outbound)
            await asyncio.gather(second.done, end.relay.done if end.relay else second.done)
            # sent: to the destination (what the client stream received); received: back
            metrics.closed(labels, stream.received, stream.sent)
            log.info(
                "connection.closed",
                reporter=telemetry.REPORTER,
                protocol=app.value,
                source_principal=client.principal,
                source_address=client.address,
                destination=target,
                destination_workload=workload.name,
                destination_principal=workload.identity,
                upstream_host=host,
                sent=stream.received,
                received=stream.sent,
                duration_ms=round((time.monotonic() - started) * 1000, 1),
            )
            if telemetry.TAP.active:
                self._stream_event(
                    client, dest, workload, started, "allow", "", "", host,
                    stream.received, stream.sent,
                )  # fmt: skip
            return
        metrics.opened(labels)
        metrics.closed(labels, 0, 0, telemetry.NO_HEALTHY_UPSTREAM)
        log.warning(
            "connection.failed",
            reporter=telemetry.REPORTER,
            protocol=app.value,
            source_principal=client.principal,
            destination=target,
            reason="no endpoint reachable" if candidates else "no ready endpoint",
        )
        if telemetry.TAP.active:
            reason = "no endpoint reachable" if candidates else "no ready endpoint"
            self._stream_event(client, dest, None, started, "error", reason, "")
        end.reset()

    @staticmethod
    def _stream_event(
        client: Client,
        dest: Destination,
        workload: Workload | None,
        started: float,
        verdict: str,
        reason: str,
        policy: str,
        upstream: str = "",
        sent: int = 0,
        received: int = 0,
    ) -> None:
        """A TCP stream's access event (reporter "waypoint"), as its log line says."""
        publish_connection(
            telemetry.TAP,
            telemetry.REPORTER,
            started,
            source=client.workload,
            source_principal=client.principal,
            source_address=client.address,
            destination=workload,
            destination_principal=workload.identity if workload and workload.enrolled else "",
            destination_address=upstream or str(dest.target),
            service=dest.service.hostname if dest.service else "",
            verdict=verdict,
            policy=policy,
            reason=reason,
            sent=sent,
            received=received,
        )

    def _candidates(self, dest: Destination) -> list[tuple[Workload, int]]:
        if dest.service is not None and dest.port is not None:
            return self.view.endpoints(dest.service, dest.port.port)
        if dest.workload is not None and dest.workload.ready:
            return [(dest.workload, dest.target.port)]
        return []

    async def _open(self, workload: Workload, port: int, client: Client | None) -> End:
        """A relay end to one endpoint: an HBONE stream to its node's ztunnel, as the
        waypoint (or a TCP connection, for an endpoint outside the mesh). `client`: whose
        request it carries (None: the waypoint's own, an ext_authz check)."""
        ip = workload.addresses[0]
        if not workload.enrolled:
            try:
                return await asyncio.wait_for(connect_leg(ip, port), CONNECT_TIMEOUT)
            except (OSError, TimeoutError) as err:
                raise BackendError(f"connect {ip}:{port}: {err or 'timed out'}", "UF") from None
        key = PoolKey(self.config.identity, workload.node_address, workload.identity)
        try:
            conn = await self.pool.get(key)
        except (OSError, TimeoutError, ssl.SSLError) as err:
            raise BackendError(
                f"HBONE to {workload.node_address}: {err or type(err).__name__}",
                telemetry.UPSTREAM_FAILURE,
            ) from None
        forwarded = {"forwarded": f"for={client.address}"} if client is not None else {}
        stream = conn.open(hbone.Target(ip, port), forwarded)
        try:
            response = await asyncio.wait_for(stream.response, CONNECT_TIMEOUT)
        except (TimeoutError, StreamClosed) as err:
            conn.forget(stream)
            raise BackendError(
                f"CONNECT {ip}:{port}: {err or 'timed out'}", telemetry.UPSTREAM_FAILURE
            ) from None
        if response.status != 200:
            conn.forget(stream)
            reason = response.headers.get("weft-reason", "")
            raise BackendError(
                f"CONNECT {ip}:{port}: {response.status} {reason}".strip(),
                telemetry.UPSTREAM_FAILURE,
            )
        return stream

    # --- HTTP/1.1 -----------------------------------------------------------------------

    async def _serve_http(self, end: BufferedEnd, client: Client, dest: Destination) -> None:
        server = H1Channel(end, h1.Role.SERVER)
        backends: dict[str, Backend] = {}
        try:
            while True:
                try:
                    event = await server.next_event(self.config.idle_timeout)
                except TimeoutError:
                    log.info("waypoint.idle_closed", source_principal=client.principal)
                    return
                except H1Error as err:
                    await self._bad_request(server, client, err)
                    return
                except EndClosed:
                    return
                if isinstance(event, h1.ConnectionClosed):
                    return
                assert isinstance(event, h1.Request), event
                keep = await self._request(server, event, client, dest, backends)
                if not keep or not server.reusable():
                    return
        finally:
            for backend in backends.values():
                backend.close()

    async def _bad_request(self, server: H1Channel, client: Client, err: H1Error) -> None:
        """Malformed HTTP: a 400 (if a response can still start) and this connection ends."""
        record = RequestRecord("", "", "", Peer(client.workload, client.principal), client.address)
        record.response_code = err.status
        record.response_flags = telemetry.DOWNSTREAM_PROTOCOL_ERROR
        record.reason = str(err)
        if server.our_state in (h1.IDLE, h1.SEND_RESPONSE):
            with contextlib.suppress(EndClosed, H1LocalError):
                await self._respond(server, err.status, (("connection", "close"),), b"")
        record.done(0.0)

    async def _respond(self, server: H1Channel, status: int, headers: Headers, body: bytes) -> int:
        """A response made here; the body bytes sent."""
        all_headers = (*headers, ("content-length", str(len(body))))
        await server.send(h1.Response(status_code=status, headers=encode_headers(all_headers)))
        if body:
            await server.send(h1.Data(data=body))
        await server.send(h1.EndOfMessage())
        return len(body)

    async def _request(
        self,
        server: H1Channel,
        request: h1.Request,
        client: Client,
        dest: Destination,
        backends: dict[str, Backend],
    ) -> bool:
        """Handle one request; whether the client connection may carry another."""
        started = time.monotonic()
        # who called, set here and never taken from the client (waypoint/xfcc.py)
        headers = xfcc.sanitize_set(
            decode_headers(request.headers), self.config.identity, client.principal
        )
        method = request.method.decode("latin-1")
        # routed, authorised and forwarded as normalised (waypoint.pathnorm.forwarded)
        path = pathnorm.forwarded(request.target.decode("latin-1"), self.config.path_normalization)
        host = header(headers, "host") or ""
        record = RequestRecord(
            method,
            path,
            host,
            Peer(client.workload, client.principal),
            client.address,
            trace_id=telemetry.trace_id(header(headers, "traceparent")),
            user_agent=header(headers, "user-agent") or "",
            request_id=header(headers, "x-request-id") or "",
            target=str(dest.target),
        )
        trace = tracing.request_trace(
            self.tracing,
            tracing.Inbound(
                method, path, host, headers, client.address, client.principal, dest.target.port
            ),
        )
        record.trace_id = trace.trace_id or record.trace_id
        if server.they_are_waiting_for_100_continue:
            await server.send(h1.InformationalResponse(status_code=100, headers=[]))
        try:
            return await self._forward_request(
                server, request, headers, client, dest, record, backends, trace
            )
        except EndClosed:
            record.response_flags = telemetry.DOWNSTREAM_RESET
            record.reason = record.reason or "the client's stream was reset"
            return False
        except H1Error as err:  # the request body was malformed
            record.response_code = record.response_code or err.status
            record.response_flags = telemetry.DOWNSTREAM_PROTOCOL_ERROR
            record.reason = str(err)
            if server.our_state in (h1.IDLE, h1.SEND_RESPONSE):
                with contextlib.suppress(EndClosed, H1LocalError):
                    await self._respond(server, err.status, (("connection", "close"),), b"")
            return False
        except H1LocalError as err:  # what we would send is not HTTP/1.1 (a route's header)
            record.response_code = record.response_code or 500
            record.reason = f"cannot send: {err}"
            if server.our_state in (h1.IDLE, h1.SEND_RESPONSE):
                with contextlib.suppress(EndClosed, H1LocalError):
                    await self._respond(server, 500, (("connection", "close"),), b"")
            else:
                server.end.reset()
            return False
        except TimeoutError:  # the client's body stalled (HEAD_TIMEOUT between pieces)
            record.response_flags = telemetry.DOWNSTREAM_RESET
            record.reason = f"the request body stalled for {HEAD_TIMEOUT:g} s"
            if server.our_state in (h1.IDLE, h1.SEND_RESPONSE):
                record.response_code = 408
                with contextlib.suppress(EndClosed, H1LocalError):
                    await self._respond(server, 408, (("connection", "close"),), b"")
            return False
        finally:
            record.done((time.monotonic() - started) * 1000)
            trace.done(record)

    async def _forward_request(
        self,
        server: H1Channel,
        request: h1.Request,
        headers: Headers,
        client: Client,
        dest: Destination,
        record: RequestRecord,
        backends: dict[str, Backend],
        trace: RequestTrace = NO_TRACE,
    ) -> bool:
        request_auth = None
        authn = await self.authenticate(dest, client, record.path, headers)
        if authn is not None:  # (Envoy: jwt_authn before RBAC)
            if authn.failure:
                self.unauthenticated(record, authn)
                return await self._answer_here(
                    server, 401, jwtauth.UNAUTHORIZED_HEADERS, record, jwtauth.UNAUTHORIZED_BODY
                )
            headers, request_auth = authn.headers, authn.auth
        access = self.authorize(
            dest, client, record.method, record.path, record.authority, headers,
            request_auth=request_auth,
        )  # fmt: skip
        allowed_headers: Headers = ()  # (ext_authz: added to the response)
        prefetched = b""  # (ext_authz: the body read for the check, forwarded first)
        if access is not None and access.custom:  # (Envoy: ext_authz, then RBAC)
            body: bytes | None = None
            wanted = extauthz.body_wanted(self.custom_providers(access))
            if wanted is not None:
                prefetched, complete = await self._read_body(server, wanted.limit)
                if not complete and not wanted.partial:
                    record.reason = f"request body over {wanted.limit} B for ext_authz"
                    return await self._answer_here(server, 413, (), record)
                body = prefetched
            checked = await self.check_custom(
                access, dest, client, record, headers, "HTTP/1.1", body,
                body is not None and server.their_state is h1.SEND_BODY,
            )  # fmt: skip
            if not checked.allowed:
                return await self._answer_here(
                    server, checked.status, checked.downstream, record, checked.body
                )
            headers, allowed_headers = checked.request_headers(headers), checked.downstream
        if access is not None and not access.allowed:  # (Envoy: RBAC before the router)
            self.denied(record, access)
            return await self._answer_here(
                server, 403, (("content-type", "text/plain"),), record, authz.DENIED_BODY
            )
        decision: routing.Forward | routing.Respond
        if dest.service is not None and dest.port is not None:
            route_request = routing.Request(
                record.method,
                record.path,
                headers,
                client_namespace=client.namespace,
                source_labels=client.workload.labels if client.workload is not None else None,
            )
            decision = self.router.decide(dest.service, dest.port, route_request)
        else:  # a pod addressed directly (workload waypoint): no routes, as it came
            decision = routing.Forward(
                "", "", dest.target.port, record.path, record.authority, headers
            )
        if isinstance(decision, routing.Respond):
            record.response_flags = telemetry.NO_ROUTE if decision.status == 404 else "-"
            record.reason = decision.reason
            return await self._answer_here(server, decision.status, decision.headers, record)
        if allowed_headers:
            ops = (*decision.response_header_ops, routing.HeaderOps(set=allowed_headers))
            decision = dataclasses.replace(decision, response_header_ops=ops)
        limiter = self.rate_limits.for_request(dest.service, decision.route_key)
        if limiter is not None:  # (no await at all when no policy applies)
            verdict = await ratelimit_store.check(
                limiter, self.ratelimit_store, record.path, headers, client.principal
            )
            if verdict is not None and not verdict.allowed:
                record.response_flags = RATE_LIMITED
                record.reason = f"rate limited by RateLimitPolicy {limiter.name}"
                return await self._answer_here(server, 429, verdict.headers(), record)
        if decision.fault is not None:  # a VirtualService fault, drawn by the router
            record.response_flags = telemetry.fault_flags(decision.fault)
            if decision.fault.delay:
                await asyncio.sleep(decision.fault.delay)
            if decision.fault.abort_status is not None:
                record.reason = "fault injected (abort)"
                return await self._answer_here(server, decision.fault.abort_status, (), record)
        decision = self._with_hash_cookie(decision)
        cluster = self._cluster(decision)  # (looked up once a request)
        candidates = self._backend_candidates(decision, dest, record, cluster)
        out = h1.Request(
            method=request.method,
            target=decision.path.encode("latin-1"),
            headers=encode_headers(
                (
                    ("host", decision.host),
                    *(
                        (n, v)
                        for n, v in hop_headers_removed(decision.request_headers)
                        if n != "host"
                    ),
                )
            ),
        )
        budget = route_timeout(decision.timeouts)
        if budget is None:  # (no timeout object: each costs loop lookups, per request)
            return await self._exchange_admitted(
                server, out, headers, decision, candidates, client, record, backends, trace,
                cluster, prefetched=prefetched,
            )  # fmt: skip
        timeout = asyncio.timeout(budget)
        try:
            async with timeout:
                return await self._exchange_admitted(
                    server, out, headers, decision, candidates, client, record, backends, trace,
                    cluster, prefetched=prefetched,
                )  # fmt: skip
        except TimeoutError:
            if not timeout.expired():
                raise  # not ours: a client too slow with its body (handled by the caller)
        assert budget is not None
        record.response_flags = telemetry.UPSTREAM_TIMEOUT
        record.reason = f"route timeout ({budget:g} s)"
        if server.our_state is h1.SEND_RESPONSE:  # nothing sent yet: a 504
            return await self._answer_here(server, 504, (), record)
        server.end.reset()  # the response had started
        return False

    async def _exchange_admitted(
        self,
        server: H1Channel,
        out: h1.Request,
        headers: Headers,
        decision: routing.Forward,
        candidates: list[tuple[Workload, int]],
        client: Client,
        record: RequestRecord,
        backends: dict[str, Backend],
        trace: RequestTrace,
        cluster: ClusterState | None,
        *,
        prefetched: bytes = b"",
    ) -> bool:
        """`_exchange` within the cluster's circuit breakers (a DestinationRule's
        connectionPool): over a limit, 503 at once with `x-weft-overloaded` (flag UO)."""
        if decision.subset and decision.backend_name:
            rule = self.view.destination_rule(decision.backend_namespace, decision.backend_name)
            if rule is None or rule.subset(decision.subset) is None:
                record.response_flags = NO_CLUSTER
                record.reason = f"no DestinationRule defines subset {decision.subset!r}"
                return await self._answer_here(server, 503, (), record)
        if cluster is None or cluster.breaker is None:
            return await self._exchange(
                server, out, headers, decision, candidates, client, record, backends, trace,
                cluster, prefetched=prefetched,
            )  # fmt: skip
        if not await self._admit(cluster):
            record.response_flags = trafficpolicy.UPSTREAM_OVERFLOW
            record.reason = f"circuit breaker open for {cluster.hostname} (DestinationRule)"
            overloaded = ((trafficpolicy.OVERLOADED_HEADER, "true"),)
            return await self._answer_here(server, 503, overloaded, record)
        try:
            return await self._exchange(
                server, out, headers, decision, candidates, client, record, backends, trace,
                cluster, prefetched=prefetched,
            )  # fmt: skip
        finally:
            if record.retries:
                cluster.retry_done()
            self._release(cluster)

    async def _admit(self, cluster: ClusterState) -> bool:
        """A slot under the cluster's circuit breakers, waiting for one while the pending
        limit allows; False when over a limit (answer 503 at once). Release it after."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        admission = cluster.admit(waiter)
        if admission is Admission.OVERFLOW:
            return False
        if admission is Admission.PENDING:
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._release(cluster)  # granted, then given up
                elif cluster.breaker is not None:
                    cluster.breaker.cancel(waiter)
                raise
        return True

    @staticmethod
    def _release(cluster: ClusterState) -> None:
        """A request's slot, to the first waiter still waiting (or back to the pool)."""
        while True:
            granted = cluster.release()
            if not isinstance(granted, asyncio.Future):
                return
            if not granted.done():
                granted.set_result(None)
                return

    def _with_hash_cookie(self, decision: routing.Forward) -> routing.Forward:
        """A consistent hash on a cookie with a ttl that the request does not carry: as Envoy,
        make one up, hash on it and set it on the response (the request goes on with it)."""
        if not self.view.destination_rules:
            return decision
        cluster = self._cluster(decision)
        hashing = cluster.balancer.hashing if cluster is not None else None
        if hashing is None or hashing.http_cookie is None or hashing.http_cookie.ttl is None:
            return decision
        request_headers = decision.request_headers
        _, made = trafficpolicy.hash_key(hashing, lambda n: header(request_headers, n), "")
        if made is None:
            return decision
        pair = f"{hashing.http_cookie.name}={made}"
        cookie = header(request_headers, "cookie")
        headers = (
            *((n, v) for n, v in request_headers if n != "cookie"),
            ("cookie", f"{cookie}; {pair}" if cookie else pair),
        )
        set_cookie = routing.HeaderOps(add=(trafficpolicy.set_cookie_header(hashing, made),))
        return dataclasses.replace(
            decision,
            request_headers=headers,
            response_header_ops=(*decision.response_header_ops, set_cookie),
        )

    def _cluster(self, decision: routing.Forward) -> ClusterState | None:
        """The DestinationRule state of the Service (or subset) the decision names."""
        if not decision.backend_name:
            return None
        service = self.view.service(decision.backend_namespace, decision.backend_name)
        if service is None:
            return None
        key = ClusterKey(service.namespace, service.name, decision.backend_port, decision.subset)
        policy = self.view.traffic_policy(service.namespace, service.name, decision.subset)
        return self.traffic.cluster(key, policy, service.hostname)

    async def _exchange(
        self,
        server: H1Channel,
        out: h1.Request,
        headers: Headers,
        decision: routing.Forward,
        candidates: list[tuple[Workload, int]],
        client: Client,
        record: RequestRecord,
        backends: dict[str, Backend],
        trace: RequestTrace = NO_TRACE,
        cluster: ClusterState | None = None,
        *,
        prefetched: bytes = b"",  # the body's start, already read (for ext_authz)
    ) -> bool:
        """Send the request to a backend and its response back; whether the client
        connection may carry another request.

        A request is sent again, on another try, when the rule's `retry` says so (a response
        code it lists, or no response at all: unreachable, reset, the per-try timeout),
        up to `attempts` more times, `backoff` apart; and once, not counted, when a
        kept-alive backend connection closes under an idempotent request (the backend's
        idle timeout racing our reuse, as Envoy and browsers do). Only a request whose body
        was kept whole (up to MAX_MIRROR_BODY) can be sent again."""
        retry = decision.retry
        attempts = (1 if retry.attempts is None else retry.attempts) if retry else 0
        retry_codes = frozenset(retry.codes) if retry else frozenset()
        backoff = (retry.backoff or 0.0) if retry else 0.0
        timeouts = decision.timeouts
        per_try = (timeouts.backend_request or None) if timeouts else None
        bodiless = (
            header(headers, "content-length") in (None, "0")
            and header(headers, "transfer-encoding") is None
        )
        # A non-idempotent request (POST, PATCH...) is tried again only when none of it
        # reached a backend (a connection that reset before a byte went): never on a code
        idempotent = record.method in IDEMPOTENT_METHODS
        tee = Tee() if decision.mirrors or (attempts and not bodiless) else None
        body: bytes | None = None  # the whole request body, once sent: for another try
        reconnected = False
        backend: Backend | None = None
        open_attempt = ""  # the endpoint of a try in flight (DestinationRule state)
        try:
            while True:
                try:
                    backend = await self._backend_for(
                        _rotated(candidates, record.retries), client, backends, cluster
                    )
                except BackendError as err:
                    record.response_flags = err.flags
                    record.reason = str(err)
                    return await self._answer_here(server, 503, (), record)
                backend.requests += 1
                if cluster is not None:
                    cluster.attempt_started(backend.host)
                    open_attempt = backend.host
                record.upstream_host = backend.host
                record.destination = backend.peer
                sent = out
                if trace is not NO_TRACE:  # a client span per try, its context sent on
                    sent = h1.Request(
                        out.method,
                        out.target,
                        trace.attempt(list(out.headers), record, decision.backend_port),
                    )
                failure: BackendError | None = None
                this_try = None if per_try is None else asyncio.timeout(per_try)
                try:
                    async with this_try or _NO_TIMEOUT:
                        if body is None:
                            await self._send_request(server, backend, sent, record, tee, prefetched)
                            body = b"" if bodiless else None
                            if tee is not None:
                                body = None if tee.overflow else bytes(tee.data)
                                if decision.mirrors:
                                    self._mirror(out, tee, decision.mirrors, client)
                                tee = None
                        else:
                            await self._resend(backend, sent, body)
                        response = await self._response_head(backend)
                except BackendError as err:
                    failure = err
                except TimeoutError:
                    if this_try is None or not this_try.expired():
                        raise
                    failure = BackendError(
                        f"per-try timeout ({per_try:g} s)", telemetry.UPSTREAM_TIMEOUT
                    )
                if cluster is not None:  # (least request, outlier detection)
                    cluster.attempt_done(backend.host, None if failure else response.status_code)
                    open_attempt = ""
                # A DestinationRule's maxRetries bounds the requests retrying at once
                retry_allowed = cluster is None or record.retries > 0 or cluster.may_retry()
                if failure is None and (
                    response.status_code not in retry_codes
                    or record.retries >= attempts
                    or body is None
                    or not idempotent
                    or not retry_allowed
                ):
                    break
                trace.attempt_done(0 if failure else response.status_code, str(failure or ""))
                self._drop(backend, backends)
                if (
                    body is not None
                    and failure is not None
                    and backend.reused
                    and not reconnected
                    and record.method in IDEMPOTENT_METHODS
                ):
                    reconnected = True
                    log.info("waypoint.retried_on_new_connection", endpoint=backend.host)
                    continue
                if (
                    body is not None
                    and record.retries < attempts
                    and (idempotent or not backend.end.sent)
                    and retry_allowed
                ):
                    if cluster is not None and record.retries == 0:
                        cluster.retry_started()  # held until the request ends
                    record.retries += 1
                    log.info(
                        "request.retried",
                        endpoint=backend.host,
                        attempt=record.retries,
                        reason=str(failure) if failure else f"response {response.status_code}",
                    )
                    await asyncio.sleep(backoff)
                    continue
                assert failure is not None
                record.response_flags = failure.flags
                record.reason = str(failure)
                timed_out = failure.flags == telemetry.UPSTREAM_TIMEOUT
                return await self._answer_here(server, 504 if timed_out else 503, (), record)
            response_headers = hop_headers_removed(decode_headers(response.headers))
            if decision.response_header_ops:
                response_headers = routing.modify_headers(
                    response_headers, decision.response_header_ops
                )
            record.response_code = response.status_code
            await server.send(
                h1.Response(
                    status_code=response.status_code,
                    headers=encode_headers(response_headers),
                    reason=response.reason,
                ),
                flush=not backend.h1.ready(),  # the body is in: head and body in one write
            )
            try:
                await self._relay_response_body(server, backend, record)
                trace.attempt_done(response.status_code)
            except BackendError as err:  # the response started: all we can do is reset
                self._drop(backend, backends)
                record.response_flags = err.flags
                record.reason = str(err)
                server.end.reset()
                return False
        except BaseException:  # cancelled (a route timeout), or the client went: not reused
            if backend is not None:
                self._drop(backend, backends)
            if cluster is not None and open_attempt:  # no outcome to count
                cluster.attempt_abandoned(open_attempt)
            raise
        if (
            backend.h1.reusable()
            and backend.usable
            and (cluster is None or cluster.keep_alive(backend.requests))
        ):
            backends[backend.host] = backend
            if len(backends) > MAX_BACKENDS:
                oldest = next(iter(backends))
                backends.pop(oldest).close()
        else:
            self._drop(backend, backends)
        return True

    def _backend_candidates(
        self,
        decision: routing.Forward,
        dest: Destination,
        record: RequestRecord,
        cluster: ClusterState | None,
    ) -> list[tuple[Workload, int]]:
        """Ready endpoints of the backend the decision names (of its subset, when it names
        one), ejected ones left out, in the order of its DestinationRule's load balancer
        (round robin when none): the first is the pick, the others for retries."""
        if not decision.backend_name:  # the pod itself
            return self._candidates(dest)
        service = self.view.service(decision.backend_namespace, decision.backend_name)
        if service is None:
            return []
        record.destination_service = service.hostname
        record.destination_service_name = service.name
        record.destination_service_namespace = service.namespace
        if decision.subset:
            endpoints = self.view.subset_endpoints(service, decision.backend_port, decision.subset)
        else:
            endpoints = self.view.endpoints(service, decision.backend_port)
        if cluster is None or not endpoints:
            return endpoints
        key = None
        hashing = cluster.balancer.hashing
        if hashing is not None:
            request_headers = decision.request_headers
            key, _ = trafficpolicy.hash_key(
                hashing, lambda name: header(request_headers, name), record.source_address
            )
        return cluster.order(endpoints, _endpoint_host, key)

    async def _backend_for(
        self,
        candidates: list[tuple[Workload, int]],
        client: Client,
        backends: dict[str, Backend],
        cluster: ClusterState | None = None,
    ) -> Backend:
        """A kept-alive connection to the first candidate, else a new one (trying the next
        candidate when one cannot be reached: a gateway error for outlier detection)."""
        if not candidates:
            raise BackendError("no ready endpoint", telemetry.NO_HEALTHY_UPSTREAM)
        last: BackendError | None = None
        for workload, port in candidates:
            host = f"{workload.addresses[0]}:{port}"
            kept = backends.pop(host, None)
            if kept is not None:
                if kept.usable:
                    kept.reused = True
                    return kept
                kept.close()
            try:
                end = await self._open(workload, port, client)
            except BackendError as err:
                log.info("waypoint.endpoint_failed", endpoint=host, error=str(err))
                if cluster is not None:
                    cluster.attempt_started(host)
                    cluster.attempt_done(host, None)
                last = err
                continue
            buffered = BufferedEnd("backend")
            relay = Relay(end, buffered)
            relay.start()
            principal = workload.identity if workload.enrolled else ""
            return Backend(host, buffered, relay, Peer(workload, principal))
        assert last is not None
        raise last

    @staticmethod
    def _drop(backend: Backend, backends: dict[str, Backend]) -> None:
        if backends.get(backend.host) is backend:
            del backends[backend.host]
        backend.close()

    async def _send_request(
        self,
        server: H1Channel,
        backend: Backend,
        request: h1.Request,
        record: RequestRecord,
        tee: Tee | None = None,
        prefetched: bytes = b"",
    ) -> None:
        """The request head, then its body as it arrives (client errors propagate as they
        are; a backend failing meanwhile is a BackendError, with the body left unread).
        `tee` keeps a copy of the body, for mirrors; `prefetched` is the body's start, read
        already."""
        await _from_backend(
            backend.h1.send(request, flush=not (server.ready() or prefetched)),
            "sending the request",
        )
        if prefetched:
            record.request_bytes += len(prefetched)
            if tee is not None:
                tee.add(prefetched)
            await _from_backend(
                backend.h1.send(h1.Data(data=prefetched), flush=not server.ready()),
                "request body",
            )
        while server.their_state is h1.SEND_BODY:
            event = await server.next_event(HEAD_TIMEOUT)
            if isinstance(event, h1.Data):
                record.request_bytes += len(event.data)
                if tee is not None:
                    tee.add(event.data)
                await _from_backend(
                    backend.h1.send(event, flush=not server.ready()),
                    "request body",
                )
            elif isinstance(event, h1.EndOfMessage):
                break
        if backend.h1.our_state is h1.SEND_BODY:  # (already read, when sent again)
            await _from_backend(backend.h1.send(h1.EndOfMessage()), "request end")

    def _mirror(
        self,
        request: h1.Request,
        tee: Tee,
        targets: tuple[routing.MirrorTarget, ...],
        client: Client,
    ) -> None:
        """Send a copy of the request (as forwarded) to each mirror, in the background; their
        responses are read and dropped. The Host gets Envoy's `-shadow` suffix."""
        if tee.overflow:
            log.info("waypoint.mirror_skipped", reason=f"request body over {MAX_MIRROR_BODY} B")
            return
        body = bytes(tee.data)
        for target in targets:
            if len(self._mirrors) >= MAX_MIRRORS_IN_FLIGHT:
                log.info("waypoint.mirror_skipped", reason="too many mirrors in flight")
                return
            task = asyncio.ensure_future(self._send_mirror(request, body, target, client))
            self._mirrors.add(task)
            task.add_done_callback(self._mirrors.discard)

    async def _send_mirror(
        self, request: h1.Request, body: bytes, target: routing.MirrorTarget, client: Client
    ) -> None:
        mirror = f"{target.namespace}/{target.name}:{target.port}"
        service = self.view.service(target.namespace, target.name)
        endpoints = self.view.endpoints(service, target.port) if service else []
        if not endpoints:
            log.info("request.mirror_failed", mirror=mirror, reason="no ready endpoint")
            return
        workload, port = endpoints[0]
        headers = [(n, v + b"-shadow" if n == b"host" else v) for n, v in request.headers]
        copy = h1.Request(method=request.method, target=request.target, headers=headers)
        backend: Backend | None = None
        try:
            async with asyncio.timeout(MIRROR_TIMEOUT):
                end = await self._open(workload, port, client)
                buffered = BufferedEnd("mirror")
                relay = Relay(end, buffered)
                relay.start()
                backend = Backend(
                    f"{workload.addresses[0]}:{port}", buffered, relay, Peer(None, "")
                )
                await _from_backend(backend.h1.send(copy), "mirror")
                if body:
                    await _from_backend(backend.h1.send(h1.Data(data=body)), "mirror")
                await _from_backend(backend.h1.send(h1.EndOfMessage()), "mirror")
                response = await self._response_head(backend)
                while not isinstance(
                    await _from_backend(backend.h1.next_event(), "mirror"), h1.EndOfMessage
                ):
                    pass
            log.info("request.mirrored", mirror=mirror, response_code=response.status_code)
        except (BackendError, TimeoutError) as err:
            log.info("request.mirror_failed", mirror=mirror, reason=str(err) or "timed out")
        finally:
            if backend is not None:
                backend.close()

    async def _resend(self, backend: Backend, request: h1.Request, body: bytes) -> None:
        """The request again, with the body kept from the first try."""
        await _from_backend(backend.h1.send(request), "sending the request again")
        if body:
            await _from_backend(backend.h1.send(h1.Data(data=body)), "request body")
        await _from_backend(backend.h1.send(h1.EndOfMessage()), "request end")

    async def _response_head(self, backend: Backend) -> h1.Response:
        while True:
            event = await _from_backend(backend.h1.next_event(RESPONSE_TIMEOUT), "response")
            if isinstance(event, h1.Response):
                return event
            if isinstance(event, h1.InformationalResponse):
                continue  # 100 Continue was ours to send; others are not passed on
            raise BackendError(
                "the backend closed the connection before responding", telemetry.UPSTREAM_RESET
            )

    async def _relay_response_body(
        self, server: H1Channel, backend: Backend, record: RequestRecord
    ) -> None:
        while True:
            event = await _from_backend(backend.h1.next_event(RESPONSE_TIMEOUT), "response body")
            if isinstance(event, h1.Data):
                record.response_bytes += len(event.data)
                await server.send(event, flush=not backend.h1.ready())
            elif isinstance(event, h1.EndOfMessage):
                await server.send(h1.EndOfMessage())
                return
            else:
                raise BackendError("the backend closed mid-response", telemetry.UPSTREAM_RESET)

    async def _answer_here(
        self,
        server: H1Channel,
        status: int,
        headers: Headers,
        record: RequestRecord,
        body: bytes | None = None,  # None: the status and reason, for errors
    ) -> bool:
        """Answer without a backend; the request body is read and dropped first (up to
        MAX_DRAIN, else the connection closes after the answer)."""
        keep = await self._drain_body(server, record)
        extra: Headers = () if keep else (("connection", "close"),)
        if body is None:
            body = f"{status} {record.reason}\n".encode() if status >= 400 else b""
        record.response_code = status
        record.response_bytes = await self._respond(server, status, (*headers, *extra), body)
        return keep

    @staticmethod
    async def _read_body(server: H1Channel, limit: int) -> tuple[bytes, bool]:
        """The request body up to `limit` bytes (a piece more, at most), for an ext_authz
        check; whether that is all of it. The bytes are forwarded first (`prefetched`)."""
        data = bytearray()
        while server.their_state is h1.SEND_BODY and len(data) <= limit:
            event = await server.next_event(HEAD_TIMEOUT)
            if isinstance(event, h1.Data):
                data += event.data
        return bytes(data), server.their_state is not h1.SEND_BODY

    async def _drain_body(self, server: H1Channel, record: RequestRecord) -> bool:
        drained = 0
        while server.their_state is h1.SEND_BODY:
            event = await server.next_event(HEAD_TIMEOUT)
            if isinstance(event, h1.Data):
                drained += len(event.data)
                record.request_bytes += len(event.data)
                if drained > MAX_DRAIN:
                    return False
        return True


def route_timeout(timeouts: Timeouts | None) -> float | None:
    """The time a request may take, tries and response included: the route's `request`
    timeout (`backendRequest` bounds each try, in `_exchange`); None: no limit (0 disables
    a timeout, as the Gateway API says)."""
    return (timeouts.request or None) if timeouts is not None else None


NO_CLUSTER = "NC"  # Envoy's flag for a route to a cluster that does not exist (a subset)
UNAUTHORIZED_EXTERNAL_SERVICE = "UAEX"  # Envoy's flag for an ext_authz denial (or error)


def _endpoint_host(endpoint: tuple[Workload, int]) -> str:
    return f"{endpoint[0].addresses[0]}:{endpoint[1]}"


def _rotated(candidates: list[tuple[Workload, int]], by: int) -> list[tuple[Workload, int]]:
    """Another try starts at another endpoint, when there is one."""
    if not candidates:
        return candidates
    at = by % len(candidates)
    return candidates[at:] + candidates[:at]


async def _from_backend(step: Awaitable[T], what: str) -> T:
    """A step talking to a backend; its failures become a BackendError (503 material)."""
    try:
        return await step
    except EndClosed:
        raise BackendError(
            f"{what}: the backend reset the stream", telemetry.UPSTREAM_RESET
        ) from None
    except H1Error as err:
        raise BackendError(
            f"{what}: bad HTTP from the backend: {err}", telemetry.UPSTREAM_RESET
        ) from None
    except TimeoutError:
        raise BackendError(f"{what}: timed out", telemetry.UPSTREAM_RESET) from None
