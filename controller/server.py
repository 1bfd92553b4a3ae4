"""The controller's gRPC endpoint: per-node config streams and certificate signing.

Thin I/O around `StateLog` (what to send), the CA (what to sign) and `authz` (who may ask).
Callers authenticate with a client certificate: a node with its node credential (the node
name comes from it, never from what the node says about itself), a waypoint replica with its
workload credential or SVID.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator, Callable, Container
from dataclasses import dataclass, field

import grpc
import structlog
from prometheus_client import Counter, Gauge, Histogram

from controller.authz import Caller, CallerKind, Refusal, authorize
from controller.ca import CertificateAuthority
from controller.distribution import StateLog, Update
from controller.revocation import REVOCATION_CHECK
from meshcore.api import limits
from meshcore.api import mesh_pb2 as pb
from meshcore.identity.certs import CertificateError, load_chain
from meshcore.identity.spiffe import SpiffeId
from meshcore.meshstate import Waypoint, Workload

log = structlog.get_logger("controller.server")

SERVICE = "weft.mesh.v1.MeshConfig"

# Istio's names where Istio has one, so dashboards carry over.
CONNECTED = Gauge("pilot_xds", "Nodes connected to the controller's config stream.")
PUSHES = Counter("pilot_xds_pushes", "StateUpdates sent to nodes.", ["type"])
PUSH_BYTES = Counter("weft_controller_push_bytes", "Bytes of StateUpdates sent.", ["type"])
CONVERGENCE = Histogram(
    "pilot_proxy_convergence_time",
    "Seconds from a state change to its push to a node.",
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
REJECTS = Counter("pilot_total_xds_rejects", "Versions a node NACKed.")
CSR_COUNT = Counter("citadel_server_csr_count", "Certificate signing requests received.")
CERTS_ISSUED = Counter("citadel_server_success_cert_issuance_count", "Certificates signed.")
CSR_REFUSED = Counter("weft_controller_csr_refused", "Certificate requests refused.", ["reason"])
HELLO_CLIPPED = Counter(
    "weft_controller_hello_fields_clipped",
    "Hello fields not kept as a subscriber sent them (a component its credential cannot be, "
    "a version over the length kept).",
    ["field"],
)

# What a subscriber may say it is, by the kind of credential it connected with.
HELLO_COMPONENTS = {CallerKind.NODE: ("agent", "ztunnel"), CallerKind.WAYPOINT: ("waypoint",)}
WEFT_VERSION_MAX = 64  # characters of Hello.weft_version kept (shown by weftctl, logged)


def hello_identity(
    kind: CallerKind, component: str, weft_version: str
) -> tuple[str, str, list[str]]:
    """(component, weft version, fields clipped) of a subscriber, as kept: the component only
    when its credential allows it (a waypoint is a waypoint whatever it says; "" otherwise),
    and the version cut to WEFT_VERSION_MAX characters. Both are for people reading
    /debug/nodes: nothing is authorized by them."""
    allowed = HELLO_COMPONENTS[kind]
    clipped = []
    if component not in allowed:
        if component:
            clipped.append("component")
        component = allowed[0] if len(allowed) == 1 else ""
    if len(weft_version) > WEFT_VERSION_MAX:
        clipped.append("weft_version")
        weft_version = weft_version[:WEFT_VERSION_MAX]
    return component, weft_version, clipped


@dataclass
class NodeSession:
    node: str
    peer: str
    connected_at: float = field(default_factory=time.time)
    sent_version: int = 0
    acked_version: int = 0
    nacks: list[tuple[int, str]] = field(default_factory=list)
    epoch: str = ""
    component: str = ""  # "agent", "ztunnel", "waypoint" (from Hello; "" from older nodes)
    weft_version: str = ""

    def as_dict(self) -> dict[str, object]:
        return {
            "node": self.node,
            "component": self.component,
            "weft_version": self.weft_version,
            "peer": self.peer,
            "connected_at": self.connected_at,
            "sent_version": self.sent_version,
            "acked_version": self.acked_version,
            "nacks": [{"version": v, "reason": r} for v, r in self.nacks[-10:]],
        }


def _caller(
    context: grpc.aio.ServicerContext, ca: CertificateAuthority, waypoints: Container[str]
) -> Caller | Refusal:
    """Who is calling: the identity its client certificate proves, authorized by `authorize`."""
    certs = context.auth_context().get("x509_pem_cert") or []
    if not certs:
        return Refusal("no client certificate")
    try:
        identity = ca.verify_client_credential(certs[0])
        not_after = load_chain(certs[0])[0].not_valid_after_utc
    except CertificateError as err:
        log.warning("caller.refused", peer=context.peer(), reason=err.reason)
        return Refusal(err.reason)
    verdict = authorize(identity, not_after, waypoints)
    if isinstance(verdict, Refusal):
        log.warning("caller.refused", peer=context.peer(), reason=verdict.reason)
    return verdict


UNAUTHENTICATED = (
    "a valid node credential, or the credential of a waypoint replica (client certificate), "
    "is required"
)


class ControllerService:
    def __init__(
        self,
        state: StateLog,
        ca: CertificateAuthority,
        workloads: Callable[[], list[Workload]],
        revoked: Container[str] = frozenset(),
        waypoints: Callable[[], list[Waypoint]] = list,
    ) -> None:
        self.state = state
        self.ca = ca
        self.revoked = revoked
        self._workloads = workloads
        self._waypoints = waypoints
        self._waypoint_index: tuple[int, frozenset[str]] = (-1, frozenset())
        self._identity_index: tuple[int, dict[str, frozenset[SpiffeId]]] = (-1, {})
        self._changed = asyncio.Event()
        # Set once the state reflects the whole source: nodes must never be sent the empty
        # state of a controller that has not read the cluster yet.
        self.synced = asyncio.Event()
        self.sessions: list[NodeSession] = []
        # (node, component) -> its last session: a node's agent and ztunnel are two
        self.disconnected: dict[tuple[str, str], NodeSession] = {}

    def _identities_on(self, node: str) -> frozenset[SpiffeId]:
        """Identities of the workloads scheduled on `node`, indexed once per state version."""
        if self._identity_index[0] != self.state.version:
            index: dict[str, set[SpiffeId]] = {}
            for w in self._workloads():
                index.setdefault(w.node, set()).add(SpiffeId.parse(w.identity))
            self._identity_index = (
                self.state.version,
                {n: frozenset(ids) for n, ids in index.items()},
            )
        return self._identity_index[1].get(node, frozenset())

    def waypoint_identities(self) -> frozenset[str]:
        """The identities of the Waypoints in the state, indexed once per state version."""
        if self._waypoint_index[0] != self.state.version:
            ids = frozenset(w.identity for w in self._waypoints() if w.identity)
            self._waypoint_index = (self.state.version, ids)
        return self._waypoint_index[1]

    def notify(self) -> None:
        """Wake every stream: the state has a new version."""
        self._changed.set()
        self._changed = asyncio.Event()

    def handlers(self) -> grpc.GenericRpcHandler:
        return grpc.method_handlers_generic_handler(
            SERVICE,
            {
                "Subscribe": grpc.stream_stream_rpc_method_handler(
                    self.subscribe,
                    request_deserializer=pb.SubscribeRequest.FromString,
                    response_serializer=lambda payload: payload,  # already serialized, shared
                ),
                "Certificate": grpc.unary_unary_rpc_method_handler(
                    self.certificate,
                    request_deserializer=pb.CertificateRequest.FromString,
                    response_serializer=pb.CertificateResponse.SerializeToString,
                ),
            },
        )

    # --- config stream ----------------------------------------------------------------------

    async def subscribe(
        self, requests: AsyncIterator[pb.SubscribeRequest], context: grpc.aio.ServicerContext
    ) -> AsyncIterator[bytes]:
        # Before the first full read a waypoint's Gateway may not be in the state yet.
        await self.synced.wait()
        caller = _caller(context, self.ca, self.waypoint_identities())
        if isinstance(caller, Refusal):
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, f"{UNAUTHENTICATED}: {caller.reason}"
            )
            return
        node = caller.name
        if node in self.revoked:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, _revoked(node))
            return
        first = await anext(aiter(requests), None)
        if first is None or first.WhichOneof("kind") != "hello":
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the stream opens with Hello")
            return
        hello = first.hello
        if hello.node and hello.node != node:
            await context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"credential is for node {node!r}, not {hello.node!r}",
            )
            return
        component, weft_version, clipped = hello_identity(
            caller.kind, hello.component, hello.weft_version
        )
        for name in clipped:
            HELLO_CLIPPED.labels(name).inc()
        session = NodeSession(
            node,
            context.peer(),
            epoch=hello.epoch,
            acked_version=hello.version if hello.epoch == self.state.epoch else 0,
            component=component,
            weft_version=weft_version,
        )
        self.sessions.append(session)
        CONNECTED.inc()
        log.info(
            "node.connected",
            node=node,
            kind=caller.kind.value,
            component=session.component,
            weft_version=session.weft_version,
            clipped=clipped or None,
            peer=session.peer,
            epoch=hello.epoch,
            version=hello.version,
        )
        reader = asyncio.create_task(self._read_acks(requests, session))
        epoch, version = hello.epoch, hello.version
        try:
            while not reader.done():
                changed = self._changed
                update = self.state.since(epoch, version)
                if update is not None:
                    if len(update.payload) > limits.STATE_MESSAGE_MAX:
                        log.error(
                            "state.too_large",
                            node=node,
                            version=update.version,
                            bytes=len(update.payload),
                            limit=limits.STATE_MESSAGE_MAX,
                        )
                        await context.abort(
                            grpc.StatusCode.RESOURCE_EXHAUSTED,
                            f"the mesh state update is {len(update.payload)} bytes, over the "
                            f"{limits.STATE_MESSAGE_MAX} bytes a node accepts",
                        )
                    yield update.payload
                    self._sent(session, update)
                    epoch, version = self.state.epoch, update.version
                waiter = asyncio.ensure_future(changed.wait())
                await asyncio.wait(
                    {waiter, reader},
                    timeout=min(_seconds_until(caller.not_after), REVOCATION_CHECK),
                    return_when=asyncio.FIRST_COMPLETED,
                )
                waiter.cancel()
                if node in self.revoked:
                    log.info("node.revoked", node=node)
                    await context.abort(grpc.StatusCode.PERMISSION_DENIED, _revoked(node))
                if (
                    caller.kind is CallerKind.WAYPOINT
                    and str(caller.identity) not in self.waypoint_identities()
                ):
                    log.info("waypoint.withdrawn", identity=node)
                    await context.abort(
                        grpc.StatusCode.PERMISSION_DENIED,
                        f"{node} is no longer the identity of a waypoint in the mesh state",
                    )
                if _seconds_until(caller.not_after) <= 0:
                    # TLS checked the credential once, at the handshake: the stream must not
                    # outlive it, or an expired (no longer renewed) node would stay served.
                    log.info("node.credential_expired", node=node)
                    await context.abort(
                        grpc.StatusCode.UNAUTHENTICATED,
                        f"the node credential expired at {caller.not_after.isoformat()}; "
                        "reconnect with the renewed one",
                    )
        finally:
            reader.cancel()
            self.sessions.remove(session)
            self.disconnected[(node, session.component)] = session
            CONNECTED.dec()
            log.info("node.disconnected", node=node, acked_version=session.acked_version)

    def _sent(self, session: NodeSession, update: Update) -> None:
        kind = "snapshot" if update.snapshot else "delta"
        PUSHES.labels(kind).inc()
        PUSH_BYTES.labels(kind).inc(len(update.payload))
        created = self.state.created_at(update.version)
        if created is not None:
            CONVERGENCE.observe(time.monotonic() - created)
        session.sent_version = update.version
        log.debug(
            "node.pushed",
            node=session.node,
            version=update.version,
            type=kind,
            resources=update.resources,
            removals=update.removals,
            bytes=len(update.payload),
        )

    async def _read_acks(
        self, requests: AsyncIterator[pb.SubscribeRequest], session: NodeSession
    ) -> None:
        async for req in requests:
            kind = req.WhichOneof("kind")
            if kind == "ack":
                session.acked_version = max(session.acked_version, req.ack.version)
            elif kind == "nack":
                REJECTS.inc()
                session.nacks.append((req.nack.version, req.nack.reason))
                log.warning(
                    "node.nack", node=session.node, version=req.nack.version, reason=req.nack.reason
                )

    # --- certificates -----------------------------------------------------------------------

    async def certificate(
        self, request: pb.CertificateRequest, context: grpc.aio.ServicerContext
    ) -> pb.CertificateResponse:
        CSR_COUNT.inc()
        await self.synced.wait()
        caller = _caller(context, self.ca, self.waypoint_identities())
        if isinstance(caller, Refusal):
            CSR_REFUSED.labels("unauthenticated").inc()
            await context.abort(
                grpc.StatusCode.UNAUTHENTICATED, f"{UNAUTHENTICATED}: {caller.reason}"
            )
        assert isinstance(caller, Caller)  # abort() above raised otherwise
        node = caller.name
        if caller.kind is CallerKind.NODE and node in self.revoked:
            CSR_REFUSED.labels("revoked").inc()
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, _revoked(node))
        try:
            if caller.kind is CallerKind.WAYPOINT:
                # Its own SVID (which is also the credential it renews with), nothing else.
                issued = self.ca.sign_workload(request.csr_pem.encode(), {caller.identity})
            else:
                # A workload's SVID, or (a CSR for the node's own identity) its renewed
                # credential.
                issued = self.ca.sign_for_node(
                    request.csr_pem.encode(), node, self._identities_on(node)
                )
        except CertificateError as err:
            reason = err.reason
            if "not permitted" in reason:
                reason = (
                    f"{reason}: waypoint {node} may get a certificate only for its own identity"
                    if caller.kind is CallerKind.WAYPOINT
                    else f"{reason}: node {node!r} runs no workload with that identity"
                )
            CSR_REFUSED.labels("policy").inc()
            log.warning("cert.refused", node=node, reason=reason)
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, reason)
            raise  # unreachable: abort raises
        CERTS_ISSUED.inc()
        log.info(
            "cert.signed",
            node=node,
            identity=str(issued.spiffe_id),
            not_after=issued.not_after.isoformat(),
        )
        return pb.CertificateResponse(
            cert_chain_pem=[issued.cert_pem.decode(), *split_pem(issued.chain_pem)],
            roots_pem=list(self.ca.trust_bundle),
        )


def _revoked(node: str) -> str:
    return f"node {node!r} is revoked (revoked-nodes in the controller's state folder)"


def _seconds_until(when: dt.datetime) -> float:
    return (when - dt.datetime.now(dt.UTC)).total_seconds()


def split_pem(chain: bytes) -> list[str]:
    marker = "-----END CERTIFICATE-----"
    text = chain.decode()
    return [part.strip() + "\n" + marker + "\n" for part in text.split(marker) if part.strip()]
