"""One worker process of a ztunnel run with `--workers N` (ztunnel.supervisor is the parent).

A worker relays connections: it serves its own SO_REUSEPORT sockets of 15001 and 15008 and
the one 15006 socket all workers share, with its own HBONE pool. It holds no controller
stream and no CA client: the mesh comes from the parent (STATE frames, applied here as the
parent applied them) and each workload certificate is asked of the parent, which fetches it
once per node. Its access events go to the parent (only while someone taps), which serves
/tap, /connections and /config_dump for the whole ztunnel (ztunnel.workerproto).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import structlog

from meshcore.accessevents import AccessEvent, TapHub
from meshcore.api import mesh_pb2 as pb
from meshcore.configclient import apply_update
from meshcore.meshstate import StateValue
from meshcore.resources import ResourceKey
from ztunnel.connections import ConnectionTable
from ztunnel.identity import IdentityManager, WorkloadCertificate
from ztunnel.inbound import HANDSHAKE_TIMEOUT, Inbound
from ztunnel.listeners import BACKLOG, HboneListener
from ztunnel.outbound import Outbound
from ztunnel.pool import Pool
from ztunnel.state import MeshView
from ztunnel.workerproto import Frame, FrameError, FrameReader, Kind, encode, encode_json

log = structlog.get_logger("ztunnel.worker")

CERT_TIMEOUT_S = 15.0  # the parent fetches from the controller: its own timeout is 10 s
DRAIN_POLL_S = 0.5
GOAWAY_GRACE_S = 5.0


def cert_to_json(cert: WorkloadCertificate) -> dict[str, str]:
    return {
        "identity": cert.identity,
        "key_pem": cert.key_pem.decode(),
        "chain_pem": cert.chain_pem.decode(),
        "roots_pem": cert.roots_pem.decode(),
        "not_before": cert.not_before.isoformat(),
        "not_after": cert.not_after.isoformat(),
    }


def cert_from_json(body: dict[str, Any]) -> WorkloadCertificate:
    return WorkloadCertificate(
        str(body["identity"]),
        str(body["key_pem"]).encode(),
        str(body["chain_pem"]).encode(),
        str(body["roots_pem"]).encode(),
        dt.datetime.fromisoformat(str(body["not_before"])),
        dt.datetime.fromisoformat(str(body["not_after"])),
    )


class SharedIdentities(IdentityManager):
    """A worker's certificates: asked of the parent (one CSR per identity per node, not per
    worker), cached and renewed here as IdentityManager does."""

    def __init__(self, ask: Callable[[str], Awaitable[WorkloadCertificate]]) -> None:
        super().__init__(self._no_fetch)
        self._ask = ask

    @staticmethod
    async def _no_fetch(_csr: bytes) -> pb.CertificateResponse:
        raise RuntimeError("a worker asks its parent, never the CA")

    async def _request(self, identity: str) -> WorkloadCertificate:
        cert = await self._ask(identity)
        self._certs[identity] = cert
        return cert


class Worker:
    def __init__(
        self, node: str, trust_domain: str, index: int, inbound_port: int, control: socket.socket
    ) -> None:
        self.node = node
        self.index = index
        self._control = control
        self._writer: asyncio.StreamWriter | None = None
        self.view = MeshView(node)
        self.synced = asyncio.Event()
        self.identities = SharedIdentities(self._ask_cert)
        self.pool = Pool(self.identities, inbound_port)
        self.tap = TapHub("ztunnel", node)
        self.connections = ConnectionTable()
        self.outbound = Outbound(
            node, self.view, self.pool, self.synced, self.tap, self.connections
        )
        self.inbound = Inbound(
            node, trust_domain, self.view, self.identities, self.tap, self.connections
        )
        self._state: dict[ResourceKey, StateValue] = {}
        self._certs_asked: dict[str, asyncio.Future[WorkloadCertificate]] = {}
        self._servers: list[asyncio.AbstractServer] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self.done = asyncio.Event()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _send(self, frame: bytes) -> None:
        if self._writer is not None and not self._writer.is_closing():
            self._writer.write(frame)

    # --- from the parent ------------------------------------------------------------------

    async def run(self, listeners: dict[str, list[socket.socket]]) -> None:
        reader, self._writer = await asyncio.open_connection(sock=self._control, limit=1024 * 1024)
        self._spawn(self.pool.reap())
        self._spawn(self.inbound.reap())
        self._spawn(self._serve_when_synced(listeners))
        frames = FrameReader()
        try:
            while not self.done.is_set():
                data = await reader.read(1024 * 1024)
                if not data:
                    log.warning("worker.parent_gone", worker=self.index)
                    break
                for frame in frames.feed(data):
                    self._handle(frame)
        except FrameError as err:
            log.error("worker.bad_frame", worker=self.index, error=str(err))
        finally:
            await self.stop()

    def _handle(self, frame: Frame) -> None:
        if frame.kind is Kind.STATE:
            self._apply(pb.StateUpdate.FromString(frame.payload))
        elif frame.kind is Kind.CERT:
            body = frame.json()
            asked = self._certs_asked.pop(str(body.get("identity")), None)
            if asked is not None and not asked.done():
                if "error" in body:
                    asked.set_exception(ConnectionError(str(body["error"])))
                else:
                    asked.set_result(cert_from_json(body))
        elif frame.kind is Kind.STATS_REQUEST:
            self._send(
                encode_json(
                    Kind.STATS,
                    {
                        "worker": self.index,
                        "connections": self.connections.describe(),
                        "pool": self.pool.stats(),
                        "inbound": self.inbound.stats(),
                        "certificates": sorted(self.identities.known()),
                    },
                )
            )
        elif frame.kind is Kind.DRAIN:
            self._spawn(self._drain(float(frame.json()["timeout_s"])))
        elif frame.kind is Kind.TAP:
            tapping = bool(frame.json().get("active"))
            self.tap.remove_sink(self._forward)
            if tapping:
                self.tap.add_sink(self._forward)

    def _apply(self, update: pb.StateUpdate) -> None:
        self._state, _ = apply_update(self._state, update)
        self.view.update(self._state)
        if self.view.bundle is not None:
            self.identities.set_roots("".join(self.view.bundle.roots_pem).encode())
        local = {w.identity for w in self.view.local_workloads()}
        self.identities.forget(local)
        for identity in local:  # before each workload's first connection (15008's SNI)
            self._spawn(self._prefetch(identity))
        if not self.synced.is_set():
            self.synced.set()

    async def _prefetch(self, identity: str) -> None:
        try:
            await self.identities.get(identity)
        except Exception as err:  # the parent logged why; a connection asks again
            log.debug("worker.cert_failed", worker=self.index, identity=identity, error=str(err))

    def _forward(self, event: AccessEvent) -> None:
        self._send(encode_json(Kind.EVENT, event.to_json()))

    async def _ask_cert(self, identity: str) -> WorkloadCertificate:
        asked = self._certs_asked.get(identity)
        if asked is None:
            asked = asyncio.get_running_loop().create_future()
            self._certs_asked[identity] = asked
            self._send(encode(Kind.CERT_REQUEST, identity.encode()))
        try:
            return await asyncio.wait_for(asyncio.shield(asked), CERT_TIMEOUT_S)
        finally:
            if asked.done():
                self._certs_asked.pop(identity, None)

    # --- serving ---------------------------------------------------------------------------

    async def _serve_when_synced(self, listeners: dict[str, list[socket.socket]]) -> None:
        """Accept once the mesh is known and the local workloads' certificates are here:
        until then connections wait in the accept queues, none is refused."""
        await self.synced.wait()
        for w in self.view.local_workloads():
            await self._prefetch(w.identity)
        loop = asyncio.get_running_loop()
        for sock in listeners.get("outbound", []):
            self._servers.append(
                await loop.create_server(self.outbound.protocol, sock=sock, backlog=BACKLOG)
            )
        for sock in listeners.get("hbone", []):
            hbone = HboneListener(
                self.inbound.hbone_protocol,
                sock,
                self.inbound.server_context(),
                handshake_timeout=HANDSHAKE_TIMEOUT,
            )
            await hbone.start_serving()
            self._servers.append(hbone)
        for sock in listeners.get("plaintext", []):
            self._servers.append(
                await loop.create_server(
                    self.inbound.plaintext_protocol, sock=sock, backlog=BACKLOG
                )
            )
        self._send(encode_json(Kind.READY, {"worker": self.index}))
        log.info("worker.serving", worker=self.index, listeners=sorted(listeners))

    async def _drain(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        since = loop.time()
        for server in self._servers:
            if isinstance(server, HboneListener):
                server.stop_accepting()
            else:
                server.close()
        self._servers = []
        self.inbound.drain()
        while loop.time() - since < timeout:
            await asyncio.sleep(DRAIN_POLL_S)
            hbone_open = self.inbound.close_emptied(since, GOAWAY_GRACE_S)
            if loop.time() - since > GOAWAY_GRACE_S and not hbone_open and not self.connections:
                break
        left = len(self.connections)
        self._send(encode_json(Kind.DRAINED, {"worker": self.index, "cut": left}))
        log.info("worker.drained", worker=self.index, connections_cut=left)
        self.done.set()

    async def stop(self) -> None:
        for server in self._servers:
            server.close()
        await self.pool.close()
        for task in list(self._tasks):
            if task is not asyncio.current_task():
                task.cancel()
        if self._writer is not None:
            self._writer.close()


async def run_worker(
    node: str,
    trust_domain: str,
    index: int,
    inbound_port: int,
    control_fd: int,
    listener_fds: list[tuple[str, int]],
) -> None:
    control = socket.socket(fileno=control_fd)
    control.setblocking(False)
    listeners: dict[str, list[socket.socket]] = {}
    for name, fd in listener_fds:
        sock = socket.socket(fileno=fd)
        sock.setblocking(False)
        listeners.setdefault(name, []).append(sock)
    worker = Worker(node, trust_domain, index, inbound_port, control)
    await worker.run(listeners)
    log.info("worker.stopped", worker=index)
    sys.stdout.flush()
