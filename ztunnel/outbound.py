"""15001: connections captured from this node's enrolled pods.

Recover the original destination (SO_ORIGINAL_DST, answered by the node agent's program)
and the source workload (by its address); resolve a Service VIP to an endpoint (random,
skipping ones that refuse); carry the connection over HBONE to an enrolled destination's
node, or connect directly (passthrough) to anything else.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
from typing import Any

import structlog

from meshcore import hbone
from meshcore.meshstate import MeshService, Workload
from ztunnel import metrics
from ztunnel.hbone_conn import StreamClosed
from ztunnel.pool import CONNECT_TIMEOUT, Pool, PoolKey
from ztunnel.relay import Relay, SetupTasks, TcpLeg, connect_leg
from ztunnel.state import MeshView

log = structlog.get_logger("ztunnel.outbound")

SO_ORIGINAL_DST = 80


def original_destination(sock: Any) -> tuple[str, int]:
    """`sock`: anything with getsockopt (uvloop's transports give a PseudoSocket)."""
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, ip = struct.unpack("!2xH4s8x", raw)
    return socket.inet_ntoa(ip), int(port)


SYNC_WAIT = 5.0


def _peer_ip(leg: TcpLeg) -> str:
    peer = leg.extra("peername")
    return str(peer[0]) if isinstance(peer, tuple) else ""


class Outbound:
    def __init__(
        self, node: str, view: MeshView, pool: Pool, synced: asyncio.Event | None = None
    ) -> None:
        self.node = node
        self.view = view
        self.pool = pool
        self.synced = synced or asyncio.Event()
        if synced is None:
            self.synced.set()
        self._setups = SetupTasks("outbound.failed_unexpectedly")

    def protocol(self) -> TcpLeg:
        """The listener's protocol factory: each accepted connection is handled in a task
        until it is relayed."""
        return TcpLeg(on_made=lambda leg: self._setups.spawn(self.handle(leg), leg.abort))

    async def handle(self, leg: TcpLeg) -> None:
        started = time.monotonic()
        if not self.synced.is_set():
            # Without the mesh state every destination would look unknown and be passed
            # through in plaintext: wait for the state, or fail closed.
            try:
                await asyncio.wait_for(self.synced.wait(), SYNC_WAIT)
            except TimeoutError:
                log.warning("outbound.not_synced", waited=SYNC_WAIT)
                leg.abort()
                return
        sock = leg.extra("socket")  # uvloop gives a socket-like object, not a socket.socket
        peer = leg.extra("peername")
        if sock is None or not isinstance(peer, tuple):
            log.warning("outbound.no_peer", socket=repr(sock), peer=repr(peer))
            leg.abort()
            return
        peer_ip, peer_port = peer[:2]
        try:
            dst_ip, dst_port = original_destination(sock)
        except OSError:
            log.warning("outbound.no_original_destination", client=f"{peer_ip}:{peer_port}")
            leg.abort()
            return
        source = self.view.by_ip.get(peer_ip)
        if source is None or source.node != self.node or not source.enrolled:
            log.warning(
                "outbound.unknown_source", client=peer_ip, destination=f"{dst_ip}:{dst_port}"
            )
            leg.abort()
            return
        service = self.view.by_vip.get(dst_ip)
        if service is not None:
            candidates = self.view.endpoints(service, dst_port)
        else:
            w = self.view.by_ip.get(dst_ip)
            candidates = [(w, dst_port)] if w is not None else []
        if not candidates:
            if service is not None:
                log.warning(
                    "outbound.no_endpoints",
                    service=f"{service.namespace}/{service.name}",
                    port=dst_port,
                    source=source.name,
                )
                leg.abort()
                return
            await self._passthrough(leg, source, dst_ip, dst_port, started)
            return
        last_error = ""
        for workload, port in candidates:
            try:
                if workload.enrolled:
                    await self._hbone(leg, source, workload, port, service, started)
                else:
                    await self._passthrough(
                        leg, source, workload.addresses[0], port, started, workload
                    )
                return
            except (ConnectionError, OSError, TimeoutError) as err:
                last_error = str(err) or type(err).__name__
                log.info(
                    "outbound.endpoint_failed",
                    endpoint=f"{workload.addresses[0]}:{port}",
                    error=last_error,
                )
        log.warning(
            "outbound.failed",
            source=source.name,
            destination=f"{dst_ip}:{dst_port}",
            error=last_error,
        )
        leg.abort()

    async def _hbone(
        self,
        leg: TcpLeg,
        source: Workload,
        dest: Workload,
        port: int,
        service: MeshService | None,
        started: float,
    ) -> None:
        key = PoolKey(source.identity, dest.node_address, dest.identity)
        conn = await self.pool.get(key)
        stream = conn.open(
            hbone.Target(dest.addresses[0], port),
            {"forwarded": f"for={_peer_ip(leg)}"},
        )
        try:
            response = await asyncio.wait_for(stream.response, CONNECT_TIMEOUT)
        except (TimeoutError, StreamClosed) as err:
            conn.forget(stream)
            raise ConnectionRefusedError(
                f"HBONE CONNECT to {dest.addresses[0]}:{port}: {err or 'timed out'}"
            ) from None
        labels = metrics.ConnectionLabels(
            "source",
            source,
            source.identity,
            dest,
            f"{service.hostname}" if service else "",
            dest.identity,
            "mutual_tls",
        )
        if response.status != 200:
            conn.forget(stream)
            reason = response.headers.get("weft-reason", "")
            metrics.opened(labels)
            metrics.closed(labels, 0, 0, "UAEX" if response.status == 403 else "UF")
            log.info(
                "connection.refused",
                source=source.identity,
                destination=dest.identity,
                target=f"{dest.addresses[0]}:{port}",
                status=response.status,
                reason=reason,
            )
            leg.abort()  # the client sees a reset, not a hang
            return
        metrics.opened(labels)
        await Relay(leg, stream).wait()
        metrics.closed(labels, stream.sent, stream.received)
        log.info(
            "connection.closed",
            reporter="source",
            source_workload=source.name,
            source_principal=source.identity,
            destination_workload=dest.name,
            destination_principal=dest.identity,
            destination=f"{dest.addresses[0]}:{port}",
            security="mutual_tls",
            sent=stream.sent,
            received=stream.received,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )

    async def _passthrough(
        self,
        leg: TcpLeg,
        source: Workload,
        ip: str,
        port: int,
        started: float,
        dest: Workload | None = None,
    ) -> None:
        upstream = await asyncio.wait_for(connect_leg(ip, port), CONNECT_TIMEOUT)
        labels = metrics.ConnectionLabels("source", source, source.identity, dest, "", "", "none")
        metrics.opened(labels)
        await Relay(leg, upstream).wait()
        sent, received = upstream.sent, upstream.received
        metrics.closed(labels, sent, received)
        log.info(
            "connection.closed",
            reporter="source",
            source_workload=source.name,
            destination=f"{ip}:{port}",
            security="none",
            passthrough=True,
            sent=sent,
            received=received,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )
