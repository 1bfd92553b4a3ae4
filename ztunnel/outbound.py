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

import structlog

from meshcore import hbone
from meshcore.meshstate import MeshService, Workload
from ztunnel import metrics
from ztunnel.hbone_conn import StreamClosed, relay
from ztunnel.pool import CONNECT_TIMEOUT, Pool, PoolKey
from ztunnel.state import MeshView

log = structlog.get_logger("ztunnel.outbound")

SO_ORIGINAL_DST = 80


def original_destination(sock: socket.socket) -> tuple[str, int]:
    raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    port, ip = struct.unpack("!2xH4s8x", raw)
    return socket.inet_ntoa(ip), int(port)


async def splice(
    a_reader: asyncio.StreamReader,
    a_writer: asyncio.StreamWriter,
    b_reader: asyncio.StreamReader,
    b_writer: asyncio.StreamWriter,
) -> tuple[int, int]:
    """Copy both ways with half-closes; returns (bytes a->b, bytes b->a)."""
    counts = [0, 0]

    async def copy(r: asyncio.StreamReader, w: asyncio.StreamWriter, i: int) -> None:
        while data := await r.read(256 * 1024):
            counts[i] += len(data)
            w.write(data)
            await w.drain()
        if w.can_write_eof():
            w.write_eof()

    try:
        await asyncio.gather(copy(a_reader, b_writer, 0), copy(b_reader, a_writer, 1))
    except (ConnectionError, OSError):
        a_writer.transport.abort()
        b_writer.transport.abort()
    finally:
        a_writer.close()
        b_writer.close()
    return counts[0], counts[1]


SYNC_WAIT = 5.0


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

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        started = time.monotonic()
        if not self.synced.is_set():
            # Without the mesh state every destination would look unknown and be passed
            # through in plaintext: wait for the state, or fail closed.
            try:
                await asyncio.wait_for(self.synced.wait(), SYNC_WAIT)
            except TimeoutError:
                log.warning("outbound.not_synced", waited=SYNC_WAIT)
                writer.transport.abort()
                return
        sock = writer.get_extra_info("socket")
        peer_ip, peer_port = writer.get_extra_info("peername")[:2]
        try:
            dst_ip, dst_port = original_destination(sock)
        except OSError:
            log.warning("outbound.no_original_destination", client=f"{peer_ip}:{peer_port}")
            writer.transport.abort()
            return
        source = self.view.by_ip.get(peer_ip)
        if source is None or source.node != self.node or not source.enrolled:
            log.warning(
                "outbound.unknown_source", client=peer_ip, destination=f"{dst_ip}:{dst_port}"
            )
            writer.transport.abort()
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
                writer.transport.abort()
                return
            await self._passthrough(reader, writer, source, dst_ip, dst_port, started)
            return
        last_error = ""
        for workload, port in candidates:
            try:
                if workload.enrolled:
                    await self._hbone(reader, writer, source, workload, port, service, started)
                else:
                    await self._passthrough(
                        reader, writer, source, workload.addresses[0], port, started, workload
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
        writer.transport.abort()

    async def _hbone(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
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
            {"forwarded": f"for={writer.get_extra_info('peername')[0]}"},
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
            writer.transport.abort()  # the client sees a reset, not a hang
            return
        metrics.opened(labels)
        await relay(reader, writer, stream)
        metrics.closed(labels, stream.bytes_out, stream.bytes_in)
        log.info(
            "connection.closed",
            reporter="source",
            source_workload=source.name,
            source_principal=source.identity,
            destination_workload=dest.name,
            destination_principal=dest.identity,
            destination=f"{dest.addresses[0]}:{port}",
            security="mutual_tls",
            sent=stream.bytes_out,
            received=stream.bytes_in,
            duration_ms=round((time.monotonic() - started) * 1000, 1),
        )

    async def _passthrough(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        source: Workload,
        ip: str,
        port: int,
        started: float,
        dest: Workload | None = None,
    ) -> None:
        r2, w2 = await asyncio.wait_for(asyncio.open_connection(ip, port), CONNECT_TIMEOUT)
        labels = metrics.ConnectionLabels("source", source, source.identity, dest, "", "", "none")
        metrics.opened(labels)
        sent, received = await splice(reader, writer, r2, w2)
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
