"""15001: connections captured from this node's enrolled pods.

Recover the original destination (SO_ORIGINAL_DST, answered by the node agent's program)
and the source workload (by its address); resolve a Service VIP to an endpoint (random,
skipping ones that refuse); carry the connection over HBONE to an enrolled destination's
node, or connect directly (passthrough) to anything else.
"""

from __future__ import annotations

import asyncio
import functools
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from meshcore import hbone
from meshcore.accessevents import TapHub
from meshcore.meshstate import MeshService, Workload
from ztunnel import destinations, metrics
from ztunnel.connections import ConnectionTable, OpenConnection, name_of
from ztunnel.destinations import Passthrough, Refuse, ToEndpoints, ViaWaypoint
from ztunnel.events import publish_connection
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
        self,
        node: str,
        view: MeshView,
        pool: Pool,
        synced: asyncio.Event | None = None,
        tap: TapHub | None = None,  # access events (reporter "source")
        table: ConnectionTable | None = None,  # open connections, for /connections
    ) -> None:
        self.node = node
        self.view = view
        self.pool = pool
        self.tap = tap if tap is not None else TapHub("ztunnel", node)
        self.table = table if table is not None else ConnectionTable()
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
        plan = destinations.resolve(self.view, dst_ip, dst_port)
        if isinstance(plan, Refuse):
            log.warning(
                "outbound.refused",
                source=source.name,
                destination=f"{dst_ip}:{dst_port}",
                reason=plan.reason,
            )
            if self.tap.active:
                self._failed_event(source, peer_ip, f"{dst_ip}:{dst_port}", plan.reason, started)
            leg.abort()
            return
        if isinstance(plan, Passthrough):
            await self._passthrough(leg, started, source=source, ip=plan.ip, port=plan.port)
            return
        last_error = ""
        for attempt in self._attempts(source, plan):
            try:
                await attempt(leg, started)
                return
            except (ConnectionError, OSError, TimeoutError) as err:
                last_error = str(err) or type(err).__name__
                log.info("outbound.endpoint_failed", error=last_error)
        log.warning(
            "outbound.failed",
            source=source.name,
            destination=f"{dst_ip}:{dst_port}",
            error=last_error,
        )
        if self.tap.active:
            self._failed_event(source, peer_ip, f"{dst_ip}:{dst_port}", last_error, started)
        leg.abort()

    def _failed_event(
        self, source: Workload, peer_ip: str, destination: str, reason: str, started: float
    ) -> None:
        publish_connection(
            self.tap,
            "source",
            started,
            source=source,
            source_principal=source.identity,
            source_address=peer_ip,
            destination=None,
            destination_principal="",
            destination_address=destination,
            verdict="error",
            reason=reason,
            security="none",
        )

    def _attempts(
        self, source: Workload, plan: ViaWaypoint | ToEndpoints
    ) -> list[Callable[[TcpLeg, float], Awaitable[None]]]:
        """One way to carry the connection per candidate, in the order to try them."""
        if isinstance(plan, ViaWaypoint):
            # every replica is the same waypoint: the target stays the original destination
            return [
                functools.partial(
                    self._hbone,
                    source=source,
                    key=PoolKey(source.identity, replica.addresses[0], replica.identity),
                    target=plan.target,
                    dest=replica,
                    service=plan.service,
                )
                for replica in plan.replicas
            ]
        attempts: list[Callable[[TcpLeg, float], Awaitable[None]]] = []
        for workload, port in plan.candidates:
            if workload.enrolled:
                attempts.append(
                    functools.partial(
                        self._hbone,
                        source=source,
                        key=PoolKey(source.identity, workload.node_address, workload.identity),
                        target=hbone.Target(workload.addresses[0], port),
                        dest=workload,
                        service=plan.service,
                    )
                )
            else:
                attempts.append(
                    functools.partial(
                        self._passthrough,
                        source=source,
                        ip=workload.addresses[0],
                        port=port,
                        dest=workload,
                    )
                )
        return attempts

    async def _hbone(
        self,
        leg: TcpLeg,
        started: float,
        *,
        source: Workload,
        key: PoolKey,
        target: hbone.Target,
        dest: Workload,
        service: MeshService | None,
    ) -> None:
        """CONNECT `target` over an HBONE connection for `key` (the destination's node, or a
        waypoint replica) and relay the client's connection through it."""
        conn = await self.pool.get(key)
        stream = conn.open(target, {"forwarded": f"for={_peer_ip(leg)}"})
        try:
            response = await asyncio.wait_for(stream.response, CONNECT_TIMEOUT)
        except (TimeoutError, StreamClosed) as err:
            conn.forget(stream)
            raise ConnectionRefusedError(
                f"HBONE CONNECT to {target} via {key.node_address}: {err or 'timed out'}"
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
                target=str(target),
                status=response.status,
                reason=reason,
            )
            if self.tap.active:
                publish_connection(
                    self.tap,
                    "source",
                    started,
                    source=source,
                    source_principal=source.identity,
                    source_address=_peer_ip(leg),
                    destination=dest,
                    destination_principal=dest.identity,
                    destination_address=str(target),
                    service=labels.destination_service,
                    verdict="deny" if response.status == 403 else "error",
                    reason=f"{response.status} {reason}".strip(),
                )
            leg.abort()  # the client sees a reset, not a hang
            return
        metrics.opened(labels)
        entry = OpenConnection(
            "outbound",
            name_of(source, ""),
            source.identity,
            name_of(dest, str(target)),
            dest.identity,
            str(target),
            "mutual_tls",
            via=key.node_address,
            counts=lambda: (stream.sent, stream.received),
        )
        with self.table.track(entry):
            await Relay(leg, stream).wait()
        metrics.closed(labels, stream.sent, stream.received)
        if self.tap.active:
            publish_connection(
                self.tap,
                "source",
                started,
                source=source,
                source_principal=source.identity,
                source_address=_peer_ip(leg),
                destination=dest,
                destination_principal=dest.identity,
                destination_address=str(target),
                service=labels.destination_service,
                sent=stream.sent,
                received=stream.received,
            )
        log.info(
            "connection.closed",
            reporter="source",
            source_workload=source.name,
            source_principal=source.identity,
            destination_workload=dest.name,
            destination_principal=dest.identity,
            destination=str(target),
            via=key.node_address,
            security="mutual_tls",
            sent=stream.sent,
            received=stream.received,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )

    async def _passthrough(
        self,
        leg: TcpLeg,
        started: float,
        *,
        source: Workload,
        ip: str,
        port: int,
        dest: Workload | None = None,
    ) -> None:
        upstream = await asyncio.wait_for(connect_leg(ip, port), CONNECT_TIMEOUT)
        labels = metrics.ConnectionLabels("source", source, source.identity, dest, "", "", "none")
        metrics.opened(labels)
        entry = OpenConnection(
            "outbound",
            name_of(source, ""),
            source.identity,
            name_of(dest, f"{ip}:{port}"),
            "",
            f"{ip}:{port}",
            "none",
            counts=lambda: (upstream.sent, upstream.received),
        )
        with self.table.track(entry):
            await Relay(leg, upstream).wait()
        sent, received = upstream.sent, upstream.received
        metrics.closed(labels, sent, received)
        if self.tap.active:
            publish_connection(
                self.tap,
                "source",
                started,
                source=source,
                source_principal=source.identity,
                source_address=_peer_ip(leg),
                destination=dest,
                destination_principal="",
                destination_address=f"{ip}:{port}",
                security="none",
                sent=sent,
                received=received,
            )
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
