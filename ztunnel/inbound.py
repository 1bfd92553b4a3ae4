"""15008 (HBONE over mTLS) and 15006 (plaintext steered by the node agent): traffic to this
node's enrolled workloads. Both authorize, then connect to the pod from the node."""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
import weakref

import structlog

from meshcore import hbone
from meshcore.identity.certs import CertificateError
from meshcore.meshstate import Workload
from meshcore.resources.security import MtlsMode
from ztunnel import metrics, peerauthn, rbac, tls
from ztunnel.hbone_conn import HboneConnection, Stream
from ztunnel.identity import IdentityManager
from ztunnel.pool import CONNECT_TIMEOUT, identity_from_sni
from ztunnel.relay import Relay, SetupTasks, TcpLeg
from ztunnel.state import MeshView

log = structlog.get_logger("ztunnel.inbound")

ROOT_NAMESPACE = "weft-system"
HANDSHAKE_TIMEOUT = 10.0
INBOUND_IDLE_TIMEOUT = 300.0


class Inbound:
    def __init__(
        self, node: str, trust_domain: str, view: MeshView, identities: IdentityManager
    ) -> None:
        self.node = node
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

    def stats(self) -> list[dict[str, object]]:
        """Open HBONE connections from other nodes, with their open streams."""
        return [
            {"peer": c.label, "streams": len(c.streams)}
            for c in self._connections
            if not c.closed.is_set()
        ]

    # --- TLS ---------------------------------------------------------------------------

    def server_context(self) -> ssl.SSLContext:
        """The listener's context: it picks the certificate of the workload the client asked
        for (SNI) from the ones already fetched for this node's workloads."""
        base = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        base.minimum_version = ssl.TLSVersion.TLSv1_3
        base.set_alpn_protocols([hbone.ALPN])
        # Whether to ask for a client certificate is decided from this context, not the one
        # the SNI callback switches to (that one brings the certificate and trust store).
        base.verify_mode = ssl.CERT_REQUIRED

        def pick(sslobj: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> int | None:
            identity = identity_from_sni(name or "", self.trust_domain)
            ctx = self.identities.server_context_now(identity or "")
            if ctx is None:
                log.warning("inbound.unknown_server_identity", sni=name)
                return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
            sslobj.context = ctx
            self._sni_identity[sslobj] = identity or ""
            return None

        base.sni_callback = pick
        return base

    def _local(self, ip: str) -> Workload | None:
        w = self.view.by_ip.get(ip)
        if w is None or w.node != self.node or not w.enrolled:
            return None
        return w

    def _authorize(
        self, dest: Workload, ip: str, port: int, source_ip: str, principal: str | None
    ) -> rbac.Decision:
        conn = rbac.Connection(
            destination_namespace=dest.namespace,
            destination_name=dest.name,
            destination_labels=dest.labels,
            destination_ip=ipaddress.ip_address(ip),
            destination_port=port,
            source_ip=ipaddress.ip_address(source_ip),
            source_principal=principal,
        )
        return rbac.evaluate(self.view.policies, conn, root_namespace=ROOT_NAMESPACE)

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
        except CertificateError as err:
            log.warning("inbound.bad_peer", reason=err.reason)
            conn.transport.close()
            return
        server_identity = self._sni_identity.pop(ssl_object, "")
        conn.label = peer
        self._connections.add(conn)

        def on_connect(stream: Stream, target: hbone.Target, headers: dict[str, str]) -> None:
            def reset() -> None:
                stream.abort()
                stream.conn.forget(stream)

            self._setups.spawn(
                self._hbone_stream(stream, target, headers, peer, server_identity),
                reset,
                target=str(target),
            )

        conn.on_connect = on_connect
        conn.start()

    async def _hbone_stream(
        self,
        stream: Stream,
        target: hbone.Target,
        headers: dict[str, str],
        peer: str,
        server_identity: str,
    ) -> None:
        started = time.monotonic()
        proto = stream.conn.proto
        assert isinstance(proto, hbone.HboneServer)
        dest = self._local(target.ip)
        source_ip = headers.get("forwarded", "for=").split("for=", 1)[1].split(";")[0] or "0.0.0.0"
        try:
            ipaddress.ip_address(source_ip)
        except ValueError:
            source_ip = "0.0.0.0"
        source = self.view.by_ip.get(source_ip)
        labels = metrics.ConnectionLabels(
            "destination", source, peer, dest, "", dest.identity if dest else "", "mutual_tls"
        )
        if dest is None or dest.identity != server_identity:
            reason = (
                f"{target} is not an enrolled workload on {self.node}"
                if dest is None
                else f"{target} runs as {dest.identity}, not {server_identity}"
            )
            proto.refuse(stream.id, 404 if dest is None else 403, reason)
            stream.conn.flush()
            stream.conn.forget(stream)
            log.warning(
                "connection.refused", source_principal=peer, target=str(target), reason=reason
            )
            return
        decision = self._authorize(dest, target.ip, target.port, source_ip, peer)
        if not decision.allowed:
            proto.refuse(stream.id, 403, decision.reason)
            stream.conn.flush()
            stream.conn.forget(stream)
            metrics.opened(labels)
            metrics.closed(labels, 0, 0, "UAEX")
            log.info(
                "connection.denied",
                source_principal=peer,
                destination=dest.name,
                target=str(target),
                policy=decision.policy,
                reason=decision.reason,
            )
            return
        try:
            leg = await asyncio.wait_for(
                connect_as(source_ip, target.ip, target.port), CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError) as err:
            proto.refuse(stream.id, 503, f"connecting to {target}: {err or 'timed out'}")
            stream.conn.flush()
            stream.conn.forget(stream)
            metrics.opened(labels)
            metrics.closed(labels, 0, 0, "UF")
            return
        proto.accept(stream.id)
        stream.conn.flush()
        metrics.opened(labels)
        await Relay(stream, leg).wait()
        metrics.closed(labels, stream.received, stream.sent)
        log.info(
            "connection.closed",
            reporter="destination",
            source_principal=peer,
            source_address=source_ip,
            destination_workload=dest.name,
            destination_principal=dest.identity,
            destination=str(target),
            security="mutual_tls",
            sent=stream.received,
            received=stream.sent,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )

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
        local_ip, local_port = sockname[:2]
        peer_ip = peername[0]
        dest = self._local(local_ip)
        source = self.view.by_ip.get(peer_ip)
        labels = metrics.ConnectionLabels(
            "destination", source, "", dest, "", dest.identity if dest else "", "none"
        )
        if dest is None:
            leg.abort()
            return
        mode = peerauthn.effective_mode(
            self.view.peer_authentications,
            dest.namespace,
            dest.labels,
            local_port,
            root_namespace=ROOT_NAMESPACE,
        )
        if mode is MtlsMode.STRICT:
            metrics.opened(labels)
            metrics.closed(labels, 0, 0, "UAEX")
            log.info(
                "connection.denied",
                source_address=peer_ip,
                destination=dest.name,
                target=f"{local_ip}:{local_port}",
                reason="plaintext refused: STRICT mTLS",
            )
            leg.abort()
            return
        decision = self._authorize(dest, local_ip, local_port, peer_ip, None)
        if not decision.allowed:
            metrics.opened(labels)
            metrics.closed(labels, 0, 0, "UAEX")
            log.info(
                "connection.denied",
                source_address=peer_ip,
                destination=dest.name,
                policy=decision.policy,
                reason=decision.reason,
            )
            leg.abort()
            return
        try:
            upstream = await asyncio.wait_for(
                connect_as(peer_ip, local_ip, local_port), CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError):
            leg.abort()
            return
        metrics.opened(labels)
        await Relay(leg, upstream).wait()
        sent, received = upstream.sent, upstream.received
        metrics.closed(labels, sent, received)
        log.info(
            "connection.closed",
            reporter="destination",
            source_address=peer_ip,
            destination_workload=dest.name,
            destination=f"{local_ip}:{local_port}",
            security="none",
            mode=mode.value,
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
