"""15008 (HBONE over mTLS) and 15006 (plaintext steered by the node agent): traffic to this
node's enrolled workloads. Both authorize, then connect to the pod from the node."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from meshcore import hbone
from meshcore.accessevents import TapHub
from meshcore.identity.certs import CertificateError
from meshcore.meshstate import Workload
from ztunnel import admission, metrics, tls
from ztunnel.admission import Admission, Attempt, Listener, Verdict
from ztunnel.connections import ConnectionTable, name_of
from ztunnel.connections import OpenConnection as ListedConnection
from ztunnel.events import publish_connection
from ztunnel.hbone_conn import HboneConnection, Stream
from ztunnel.identity import IdentityManager
from ztunnel.metrics import ConnectionLabels
from ztunnel.pool import CONNECT_TIMEOUT, identity_from_sni
from ztunnel.relay import End, Relay, SetupTasks, TcpLeg
from ztunnel.state import MeshView

log = structlog.get_logger("ztunnel.inbound")

HANDSHAKE_TIMEOUT = 10.0
INBOUND_IDLE_TIMEOUT = 300.0


@dataclass(eq=False)
class OpenConnection:
    """An admitted inbound connection being relayed: what it was admitted on, so a policy
    change can decide it again, and how to end it."""

    attempt: Attempt
    admission: Admission
    close: Callable[[], None]
    closed_by: Admission | None = None  # the verdict that closed it (a policy change)


class Inbound:
    def __init__(
        self,
        node: str,
        trust_domain: str,
        view: MeshView,
        identities: IdentityManager,
        tap: TapHub | None = None,  # access events (reporter "destination")
        table: ConnectionTable | None = None,  # open connections, for /connections
    ) -> None:
        self.node = node
        self.tap = tap if tap is not None else TapHub("ztunnel", node)
        self.table = table if table is not None else ConnectionTable()
        self.trust_domain = trust_domain
        self.view = view
        self.identities = identities
        # SSLObject -> the workload identity its client asked for (SNI), for the CONNECT
        # checks; weak, so handshakes that fail later leave nothing behind.
        self._sni_identity: weakref.WeakKeyDictionary[ssl.SSLObject, str] = (
            weakref.WeakKeyDictionary()
        )
        self._setups = SetupTasks("inbound.failed_unexpectedly")
        self._connections: weakref.WeakSet[HboneConnection] = weakref.WeakSet()
        self.draining = False  # replaced by a new ztunnel (ztunnel.handover): GOAWAY on all
        self._open: set[OpenConnection] = set()
        view.on_update.append(self.recheck)  # policy changes reach open connections too

    async def reap(self, idle_timeout: float = INBOUND_IDLE_TIMEOUT) -> None:
        """Close inbound HBONE connections that carried no stream for `idle_timeout` (the
        client closes its idle ones sooner; this is for clients that do not); forever."""
        while True:
            await asyncio.sleep(idle_timeout / 4)
            now = asyncio.get_running_loop().time()
            for conn in list(self._connections):
                if not conn.streams and now - conn.last_used > idle_timeout:
                    log.info("inbound.idle_closed", peer=conn.label)
                    conn.close()

    def drain(self) -> None:
        """This ztunnel is being replaced: a graceful GOAWAY on every HBONE connection from
        other nodes (and on each accepted from now on), so their pools open new streams on
        new connections, which the successor accepts; the streams under way go on."""
        self.draining = True
        for conn in list(self._connections):
            conn.drain()

    def close_emptied(self, since: float, grace: float) -> int:
        """Draining: close the HBONE connections that carried no stream for `grace` seconds
        after `since` (their peers have read the GOAWAY by then); how many are left open."""
        now = asyncio.get_running_loop().time()
        for conn in list(self._connections):
            if not conn.streams and now - max(conn.last_used, since) > grace:
                conn.close()
        return sum(1 for c in self._connections if not c.closed.is_set())

    def stats(self) -> list[dict[str, object]]:
        """Open HBONE connections from other nodes, with their open streams."""
        return [
            {"peer": c.label, "streams": len(c.streams)}
            for c in self._connections
            if not c.closed.is_set()
        ]

    def admit(self, attempt: Attempt) -> Admission:
        return admission.admit(attempt, self.view, trust_domain=self.trust_domain)

    def recheck(self) -> int:
        """Decide every open inbound connection again (policy or workloads changed) and close
        those policy now denies, as Istio's ztunnel does; how many were closed."""
        closed = 0
        for conn in list(self._open):
            verdict = self.admit(conn.attempt)
            if verdict.allowed or not verdict.by_policy:
                continue
            self._open.discard(conn)
            conn.closed_by = verdict
            closed += 1
            metrics.CLOSED_BY_POLICY.labels(conn.attempt.listener.value).inc()
            log.info(
                "connection.closed_by_policy",
                listener=conn.attempt.listener.value,
                source_principal=conn.attempt.peer_identity or "",
                source_address=conn.admission.source_ip,
                destination=f"{conn.attempt.target_ip}:{conn.attempt.target_port}",
                policy=verdict.decision.policy if verdict.decision else None,
                reason=verdict.reason,
            )
            conn.close()
        return closed

    def _refused(
        self, attempt: Attempt, verdict: Admission, labels: ConnectionLabels, started: float
    ) -> None:
        """Count and log a refusal. Policy refusals count as connections (Istio's UAEX)."""
        metrics.REFUSED.labels(attempt.listener.value, verdict.verdict.value).inc()
        if verdict.by_policy:
            metrics.opened(labels)
            metrics.closed(labels, 0, 0, "UAEX")
        self._audit(attempt, verdict)
        log.info(
            "connection.denied" if verdict.by_policy else "connection.refused",
            listener=attempt.listener.value,
            source_principal=attempt.peer_identity or "",
            source_address=verdict.source_ip or attempt.peer_address,
            destination=verdict.destination.name if verdict.destination else "",
            target=f"{attempt.target_ip}:{attempt.target_port}",
            policy=verdict.decision.policy if verdict.decision else None,
            reason=verdict.reason,
        )
        if self.tap.active:
            publish_connection(
                self.tap,
                "destination",
                started,
                source=verdict.source,
                source_principal=attempt.peer_identity or "",
                source_address=verdict.source_ip or attempt.peer_address,
                destination=verdict.destination,
                destination_principal=labels.destination_principal,
                destination_address=f"{attempt.target_ip}:{attempt.target_port}",
                verdict="deny",
                policy=verdict.decision.policy if verdict.decision else "",
                reason=verdict.reason,
                security=labels.security,
            )

    def _audit(self, attempt: Attempt, verdict: Admission) -> None:
        """AUDIT policies never decide; each match is one log line (and a count)."""
        if verdict.decision is None or not verdict.decision.audit:
            return
        for policy in verdict.decision.audit:
            metrics.AUDITED.labels(policy).inc()
        log.info(
            "connection.audited",
            listener=attempt.listener.value,
            policies=list(verdict.decision.audit),
            allowed=verdict.allowed,
            source_principal=attempt.peer_identity or "",
            source_address=verdict.source_ip,
            destination=verdict.destination.name if verdict.destination else "",
            target=f"{attempt.target_ip}:{attempt.target_port}",
        )

    async def _relay(
        self, attempt: Attempt, verdict: Admission, a: End, b: TcpLeg, listed: ListedConnection
    ) -> OpenConnection:
        """Relay an admitted connection, registered for re-checks (and listed) while it is
        open; its entry says whether a policy change closed it."""
        relay = Relay(a, b)

        def close() -> None:
            b.abort()  # an RST to the pod
            relay.failed(b)  # and a reset of the other end (stream or client)

        entry = OpenConnection(attempt, verdict, close)
        self._open.add(entry)
        try:
            with self.table.track(listed):
                await relay.wait()
        finally:
            self._open.discard(entry)
        return entry

    def _closed_event(
        self,
        entry: OpenConnection,
        started: float,
        principal: str,
        security: str,
        sent: int,
        received: int,
    ) -> None:
        verdict, attempt = entry.admission, entry.attempt
        closed_by = entry.closed_by
        decision = closed_by.decision if closed_by else None
        dest: Workload | None = verdict.destination
        publish_connection(
            self.tap,
            "destination",
            started,
            source=verdict.source,
            source_principal=principal,
            source_address=verdict.source_ip or attempt.peer_address,
            destination=dest,
            destination_principal=dest.identity if dest and security == "mutual_tls" else "",
            destination_address=f"{attempt.target_ip}:{attempt.target_port}",
            verdict="deny" if closed_by else "allow",
            policy=decision.policy if decision else "",
            reason=f"closed by policy: {closed_by.reason}" if closed_by else "",
            security=security,
            sent=sent,
            received=received,
        )

    # --- TLS ---------------------------------------------------------------------------

    def server_context(self) -> ssl.SSLContext:
        """The listener's context: it picks the certificate of the workload the client asked
        for (SNI) from the ones already fetched for this node's workloads."""

        def pick(sslobj: ssl.SSLObject, name: str | None) -> ssl.SSLContext | int:
            identity = identity_from_sni(name or "", self.trust_domain, self.identities.known())
            ctx = self.identities.server_context_now(identity or "")
            if ctx is None:
                log.warning("inbound.unknown_server_identity", sni=name)
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
            self._sni_identity[sslobj] = identity or ""
            return ctx

        return tls.switching_server_context(pick)

    # --- 15008 -------------------------------------------------------------------------

    def hbone_protocol(self) -> HboneConnection:
        """The 15008 listener's protocol factory."""
        return HboneConnection(hbone.HboneServer(), on_made=self._hbone_accepted)

    def _hbone_accepted(self, conn: HboneConnection) -> None:
        """TLS is up: check the peer's SVID, then serve its CONNECTs."""
        ssl_object = conn.peer_info("ssl_object")
        assert isinstance(ssl_object, ssl.SSLObject) and conn.transport is not None
        try:
            peer = tls.peer_identity(ssl_object)
        except (CertificateError, ValueError) as err:
            log.warning("inbound.bad_peer", reason=str(err))
            metrics.REFUSED.labels(Listener.HBONE.value, Verdict.BAD_PEER.value).inc()
            conn.transport.close()
            return
        refusal = admission.peer_refusal(peer, self.trust_domain)
        if refusal is not None:
            log.warning("inbound.bad_peer", peer=peer, reason=refusal)
            metrics.REFUSED.labels(Listener.HBONE.value, Verdict.BAD_PEER.value).inc()
            conn.transport.close()
            return
        server_identity = self._sni_identity.pop(ssl_object, "")
        peername = conn.peer_info("peername")
        peer_address = str(peername[0]) if isinstance(peername, tuple) else ""
        conn.label = peer
        self._connections.add(conn)

        def on_connect(stream: Stream, target: hbone.Target, headers: dict[str, str]) -> None:
            attempt = Attempt(
                Listener.HBONE,
                target.ip,
                target.port,
                peer_address,
                peer,
                server_identity,
                headers.get("forwarded"),
            )

            def reset() -> None:  # setup failed with a bug: the stream is reset, never left
                stream.abort()
                stream.conn.proto.reset(stream.id)  # no-op if done; frees its setup slot
                stream.conn.forget(stream)

            self._setups.spawn(self._hbone_stream(stream, attempt), reset, target=str(target))

        conn.on_connect = on_connect
        conn.start()
        if self.draining:
            conn.drain()

    async def _hbone_stream(self, stream: Stream, attempt: Attempt) -> None:
        started = time.monotonic()
        proto = stream.conn.proto
        assert isinstance(proto, hbone.HboneServer)
        verdict = self.admit(attempt)
        dest = verdict.destination
        peer = attempt.peer_identity or ""
        if attempt.forwarded is not None and verdict.source is None and verdict.source_ip:
            metrics.UNTRUSTED_FORWARDED.inc()
            log.warning(
                "inbound.forwarded_untrusted",
                source_principal=peer,
                peer_address=attempt.peer_address,
                forwarded=attempt.forwarded[:100],
            )
        labels = ConnectionLabels(
            "destination",
            verdict.source,
            peer,
            dest,
            "",
            dest.identity if dest else "",
            "mutual_tls",
        )
        if not verdict.allowed:
            self._refuse(stream, verdict.status, verdict.peer_reason)
            self._refused(attempt, verdict, labels, started)
            return
        self._audit(attempt, verdict)
        target = f"{attempt.target_ip}:{attempt.target_port}"
        try:
            leg = await asyncio.wait_for(
                connect_as(
                    verdict.source_ip if verdict.bind_source else "",
                    attempt.target_ip,
                    attempt.target_port,
                ),
                CONNECT_TIMEOUT,
            )
        except (OSError, TimeoutError) as err:
            # The peer learns only that it failed, not whether the port is open.
            self._refuse(stream, 503, admission.PEER_REASONS[503])
            metrics.opened(labels)
            metrics.closed(labels, 0, 0, "UF")
            log.info(
                "connection.failed",
                target=target,
                source_principal=peer,
                error=str(err) or "timed out",
            )
            if self.tap.active:
                publish_connection(
                    self.tap,
                    "destination",
                    started,
                    source=verdict.source,
                    source_principal=peer,
                    source_address=verdict.source_ip or attempt.peer_address,
                    destination=dest,
                    destination_principal=labels.destination_principal,
                    destination_address=target,
                    verdict="error",
                    reason=f"connect {target}: {err or 'timed out'}",
                )
            return
        try:
            accepted = proto.accept(stream.id)  # False: reset or closed meanwhile
        except BaseException:
            leg.abort()
            raise
        if not accepted:
            # reset, or the connection went away, while we were connecting: never leave
            # the pod-side socket behind
            leg.abort()
            stream.conn.forget(stream)
            return
        stream.conn.flush()
        metrics.opened(labels)
        assert dest is not None
        listed = ListedConnection(
            "inbound",
            name_of(verdict.source, verdict.source_ip or attempt.peer_address),
            peer,
            name_of(dest, target),
            dest.identity,
            target,
            "mutual_tls",
            counts=lambda: (stream.received, stream.sent),
        )
        entry = await self._relay(attempt, verdict, stream, leg, listed)
        metrics.closed(labels, stream.received, stream.sent)
        if self.tap.active:
            self._closed_event(entry, started, peer, "mutual_tls", stream.received, stream.sent)
        log.info(
            "connection.closed",
            reporter="destination",
            source_principal=peer,
            source_address=verdict.source_ip,
            destination_workload=dest.name,
            destination_principal=dest.identity,
            destination=target,
            security="mutual_tls",
            sent=stream.received,
            received=stream.sent,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )

    @staticmethod
    def _refuse(stream: Stream, status: int, reason: str) -> None:
        proto = stream.conn.proto
        assert isinstance(proto, hbone.HboneServer)
        # always answered (or found reset): either way its setup slot is released
        if proto.refuse(stream.id, status, reason):
            stream.conn.flush()
        stream.conn.forget(stream)

    # --- 15006 -------------------------------------------------------------------------

    def plaintext_protocol(self) -> TcpLeg:
        """The 15006 listener's protocol factory."""
        return TcpLeg(on_made=lambda leg: self._setups.spawn(self.handle_plaintext(leg), leg.abort))

    async def handle_plaintext(self, leg: TcpLeg) -> None:
        started = time.monotonic()
        sockname, peername = leg.extra("sockname"), leg.extra("peername")
        if not isinstance(sockname, tuple) or not isinstance(peername, tuple):
            leg.abort()
            return
        attempt = Attempt(Listener.PLAINTEXT, sockname[0], sockname[1], peername[0])
        verdict = self.admit(attempt)
        dest = verdict.destination
        labels = ConnectionLabels(
            "destination", verdict.source, "", dest, "", dest.identity if dest else "", "none"
        )
        if not verdict.allowed:
            self._refused(attempt, verdict, labels, started)
            leg.abort()
            return
        self._audit(attempt, verdict)
        target = f"{attempt.target_ip}:{attempt.target_port}"
        try:
            upstream = await asyncio.wait_for(
                connect_as(attempt.peer_address, attempt.target_ip, attempt.target_port),
                CONNECT_TIMEOUT,
            )
        except (OSError, TimeoutError):
            leg.abort()
            return
        metrics.opened(labels)
        assert dest is not None
        listed = ListedConnection(
            "inbound",
            name_of(verdict.source, attempt.peer_address),
            "",
            name_of(dest, target),
            "",
            target,
            "none",
            counts=lambda: (upstream.sent, upstream.received),
        )
        entry = await self._relay(attempt, verdict, leg, upstream, listed)
        sent, received = upstream.sent, upstream.received
        metrics.closed(labels, sent, received)
        if self.tap.active:
            self._closed_event(entry, started, "", "none", sent, received)
        log.info(
            "connection.closed",
            reporter="destination",
            source_address=attempt.peer_address,
            destination_workload=dest.name,
            destination=target,
            security="none",
            mode=verdict.mode.value if verdict.mode else "",
            sent=sent,
            received=received,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )


IP_TRANSPARENT = 19


async def connect_as(source_ip: str, ip: str, port: int) -> TcpLeg:
    """Connect to a local pod with the original client's address as the source, so the app
    sees its real peer (as Istio ambient does). The node agent's tc program brings the
    pod's replies back to this socket."""
    loop = asyncio.get_running_loop()
    if source_ip in ("", "0.0.0.0"):
        return (await loop.create_connection(TcpLeg, ip, port))[1]
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        sock.bind((source_ip, 0))
        await loop.sock_connect(sock, (ip, port))
    except BaseException:
        sock.close()
        raise
    return (await loop.create_connection(TcpLeg, sock=sock))[1]


def transparent_listener(host: str, port: int) -> socket.socket:
    """15006: IP_TRANSPARENT (accepted sockets carry the pod's address) and no SO_REUSEPORT
    (bpf_sk_assign refuses reuseport listeners)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_IP, IP_TRANSPARENT, 1)
    sock.bind((host, port))
    sock.listen(1024)
    sock.setblocking(False)
    return sock
