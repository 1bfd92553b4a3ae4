"""A ztunnel on every core: one parent, N worker processes (`ztunnel run --workers N`).

The parent holds what there must be one of per node: the controller stream (config applied
once, then fed to the workers as StateUpdates), the CA client (one CSR per identity, the
certificate handed to every worker that asks), the HTTP listeners (admin, metrics merged from
every process by prometheus_client's multiprocess mode, readiness), /tap (the workers' access
events), /connections and /config_dump for the whole ztunnel, and the handover socket.

Listening sockets: 15001 and 15008 are SO_REUSEPORT groups, one socket per worker (the kernel
spreads new connections over them); 15006 is one socket every worker accepts on, because
bpf_sk_assign refuses reuseport listeners on kernels before 6.5 (net/core/filter.c:
`if (unlikely(sk_fullsock(sk) && sk->sk_reuseport)) return -ESOCKTNOSUPPORT;`, removed by
"bpf, net: Support SO_REUSEPORT sockets with bpf_sk_assign", Linux 6.5). The parent keeps a
copy of every socket: a crashed worker is started again on the same sockets (connections wait
in its accept queue meanwhile, none is refused), and a successor takes them all at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client import multiprocess as prom_multiprocess

from meshcore import adminserver, tapserver
from meshcore.accessevents import AccessEvent, TapFilter, TapHub
from meshcore.api import mesh_pb2 as pb
from meshcore.api.convert import key_to_proto, to_proto
from meshcore.configclient import Applied, ConfigClient, NodeCredential
from meshcore.otlplogs import OtlpLogs
from ztunnel.app import GOAWAY_GRACE_S, ZtunnelConfig, mesh_dump, process_info
from ztunnel.connections import MAX_LISTED
from ztunnel.handover import READY_TIMEOUT_S, Draining
from ztunnel.handoverio import HandoverServer, Takeover
from ztunnel.identity import IdentityManager
from ztunnel.inbound import transparent_listener
from ztunnel.listeners import listening_socket
from ztunnel.state import MeshView
from ztunnel.version import VERSION
from ztunnel.worker import cert_to_json
from ztunnel.workerproto import (
    Frame,
    FrameError,
    FrameReader,
    Kind,
    assign,
    encode,
    encode_json,
    listener_kind,
    to_bind,
)

log = structlog.get_logger("ztunnel.supervisor")

MAX_WORKERS = 8
GROUPED = ("outbound", "hbone")  # SO_REUSEPORT: one socket per worker
RESTART_BACKOFF_S = (0.2, 5.0)
STATS_TIMEOUT_S = 2.0
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, MAX_WORKERS))


class _Hub(TapHub):
    """The parent's TapHub: tells the workers when tapping starts and stops (they make and
    send events only while someone listens)."""

    def __init__(self, node: str, changed: Any) -> None:
        super().__init__("ztunnel", node)
        self._changed = changed

    def subscribe(self, flt: TapFilter) -> Any:
        sub = super().subscribe(flt)
        self._changed()
        return sub

    def unsubscribe(self, sub: Any) -> None:
        super().unsubscribe(sub)
        self._changed()

    def add_sink(self, sink: Any) -> None:
        super().add_sink(sink)
        self._changed()


@dataclass(eq=False)
class WorkerHandle:
    index: int
    names: list[str]
    proc: asyncio.subprocess.Process | None = None
    writer: asyncio.StreamWriter | None = None
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    drained: asyncio.Event = field(default_factory=asyncio.Event)
    stats: list[asyncio.Future[dict[str, Any]]] = field(default_factory=list)
    restarts: int = 0

    def send(self, frame: bytes) -> None:
        if self.writer is not None and not self.writer.is_closing():
            self.writer.write(frame)


class Supervisor:
    def __init__(self, config: ZtunnelConfig, workers: int) -> None:
        self.config = config
        self.n = workers
        self.view = MeshView(config.node)
        self.client = ConfigClient(
            config.node,
            config.controller,
            NodeCredential.load(config.credential),
            on_change=self._on_change,
            component="ztunnel",
        )
        self.identities = IdentityManager(self.client.certificate)
        self.tap = _Hub(config.node, self._tap_changed)
        self.otlp_logs = (
            OtlpLogs.otlp(
                config.otlp_logs_endpoint, "ztunnel", "ztunnel", **{"k8s.node.name": config.node}
            )
            if config.otlp_logs_endpoint
            else None
        )
        if self.otlp_logs is not None:
            self.tap.add_sink(self.otlp_logs)
        self.workers: list[WorkerHandle] = []
        self._listeners: dict[str, socket.socket] = {}
        self._runners: list[web.AppRunner] = []
        self._handover: HandoverServer | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stopping = False
        self.ready = asyncio.Event()
        self.drained = asyncio.Event()
        self.draining_since: float | None = None
        self.started_at = time.time()
        self.predecessor: dict[str, object] | None = None

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- lifecycle -------------------------------------------------------------------------

    async def start(self, takeover: Takeover | None = None) -> None:
        c = self.config
        self._spawn(self.client.run())
        socks = dict(takeover.listeners) if takeover is not None else {}
        try:
            for name in to_bind(list(socks), self.n, GROUPED) if socks else self._fresh():
                socks[name] = self._bind(name)
        except BaseException as err:
            if takeover is not None:
                takeover.abandon(f"the successor could not bind its own sockets: {err!r}")
            raise
        self._listeners = socks
        for index, names in assign(list(socks), self.n).items():
            handle = WorkerHandle(index, names)
            self.workers.append(handle)
            self._spawn(self._keep_running(handle))
        if takeover is None:
            await self._start_http()
            self._spawn(self._become_ready())
        else:
            try:
                async with asyncio.timeout(READY_TIMEOUT_S - 10):
                    await self._become_ready()
            except BaseException as err:
                takeover.abandon(f"the successor failed to start: {err!r}")
                raise
            self.predecessor = await takeover.hand_over(c.drain_timeout)
            await self._start_http()
            log.info("handover.completed", **self.predecessor)
        if c.handover_socket is not None:
            self._handover = HandoverServer(
                c.handover_socket, c.node, VERSION, lambda: dict(self._listeners), self._drain
            )
            await self._handover.start()
        log.info("ztunnel.started", node=c.node, workers=self.n, version=VERSION)

    def _fresh(self) -> list[str]:
        return [f"{kind}/{i}" for kind in GROUPED for i in range(self.n)] + ["plaintext"]

    def _bind(self, name: str) -> socket.socket:
        c = self.config
        kind = listener_kind(name)
        if kind == "plaintext":
            return transparent_listener(c.data_host, c.plaintext_port)
        port = c.outbound_port if kind == "outbound" else c.inbound_port
        return listening_socket(c.data_host, port, reuse_port=True)

    async def _become_ready(self) -> None:
        await self.client.synced.wait()
        for w in self.view.local_workloads():
            await self._prefetch(w.identity)
        for handle in self.workers:
            await handle.ready.wait()
        self.ready.set()
        log.info(
            "ztunnel.ready",
            node=self.config.node,
            version=self.client.version,
            workers=self.n,
            certificates=len(self.identities.known()),
        )

    async def _prefetch(self, identity: str) -> None:
        try:
            await self.identities.get(identity)
        except Exception as err:  # logged; the next change or a worker's request retries
            log.warning("cert.fetch_failed", identity=identity, error=str(err))

    async def stop(self) -> None:
        self._stopping = True
        if self._handover is not None:
            self._handover.close()
        for handle in self.workers:
            if handle.proc is not None and handle.proc.returncode is None:
                with contextlib.suppress(ProcessLookupError):
                    handle.proc.terminate()
        for handle in self.workers:
            if handle.proc is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(handle.proc.wait(), 3)
                if handle.proc.returncode is None:
                    handle.proc.kill()
        for task in list(self._tasks):
            task.cancel()
        self.tap.close()
        for runner in self._runners:
            await runner.cleanup()
        for sock in self._listeners.values():
            sock.close()
        await self.client.close()
        if self.otlp_logs is not None:
            await asyncio.to_thread(self.otlp_logs.shutdown)

    # --- the workers -----------------------------------------------------------------------

    async def _keep_running(self, handle: WorkerHandle) -> None:
        """Run worker `handle.index` on its sockets; start it again if it exits (not when
        stopping or draining)."""
        backoff = RESTART_BACKOFF_S[0]
        while not self._stopping:
            started = time.monotonic()
            code = await self._run_worker(handle)
            if self._stopping or self.draining_since is not None:
                handle.drained.set()
                return
            handle.restarts += 1
            log.warning("worker.exited", worker=handle.index, exit_code=code, backoff=backoff)
            if time.monotonic() - started > 10:
                backoff = RESTART_BACKOFF_S[0]
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, RESTART_BACKOFF_S[1])

    async def _run_worker(self, handle: WorkerHandle) -> int:
        c = self.config
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        listener_args: list[str] = []
        fds = [theirs.fileno()]
        for name in handle.names:
            fd = self._listeners[name].fileno()
            fds.append(fd)
            listener_args += ["--listener", f"{listener_kind(name)}={fd}"]
        try:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "ztunnel",
                "worker",
                "--node",
                c.node,
                "--trust-domain",
                c.trust_domain,
                "--index",
                str(handle.index),
                "--inbound-port",
                str(c.inbound_port),
                "--control-fd",
                str(theirs.fileno()),
                *listener_args,
                pass_fds=fds,
            )
        finally:
            theirs.close()
        handle.proc = proc
        handle.ready.clear()
        ours.setblocking(False)
        reader, handle.writer = await asyncio.open_connection(sock=ours, limit=1024 * 1024)
        log.info("worker.started", worker=handle.index, pid=proc.pid, listeners=handle.names)
        if self.client.synced.is_set():
            handle.send(encode(Kind.STATE, self._snapshot().SerializeToString()))
        handle.send(encode_json(Kind.TAP, {"active": self.tap.active}))
        frames = FrameReader()
        try:
            while data := await reader.read(1024 * 1024):
                for frame in frames.feed(data):
                    try:
                        self._from_worker(handle, frame)
                    except (TypeError, KeyError, ValueError) as err:  # a worker's bug: said
                        log.error("worker.bad_frame", worker=handle.index, error=repr(err))
        except (FrameError, ConnectionError) as err:
            log.error("worker.bad_channel", worker=handle.index, error=str(err))
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
        finally:
            handle.writer.close()
            handle.writer = None
            for waiter in handle.stats:
                if not waiter.done():
                    waiter.cancel()
            handle.stats.clear()
        code = await proc.wait()
        if os.environ.get(MULTIPROC_ENV):
            prom_multiprocess.mark_process_dead(proc.pid)
        return code

    def _from_worker(self, handle: WorkerHandle, frame: Frame) -> None:
        if frame.kind is Kind.READY:
            handle.ready.set()
        elif frame.kind is Kind.CERT_REQUEST:
            self._spawn(self._give_cert(handle, frame.payload.decode(errors="replace")))
        elif frame.kind is Kind.EVENT:
            self.tap.publish(AccessEvent(**frame.json()))
        elif frame.kind is Kind.STATS:
            if handle.stats:
                waiter = handle.stats.pop(0)
                if not waiter.done():
                    waiter.set_result(frame.json())
        elif frame.kind is Kind.DRAINED:
            handle.drained.set()
        else:
            raise FrameError(f"{frame.kind.name} is not a worker's to send")

    async def _give_cert(self, handle: WorkerHandle, identity: str) -> None:
        try:
            cert = await self.identities.get(identity)
            body: dict[str, Any] = cert_to_json(cert)
        except Exception as err:  # the worker's connection fails, as it would alone
            body = {"identity": identity, "error": str(err) or type(err).__name__}
        handle.send(encode_json(Kind.CERT, body))

    def _tap_changed(self) -> None:
        frame = encode_json(Kind.TAP, {"active": self.tap.active})
        for handle in self.workers:
            handle.send(frame)

    # --- config, once for all --------------------------------------------------------------

    def _snapshot(self) -> pb.StateUpdate:
        return pb.StateUpdate(
            version=self.client.version or 0,
            snapshot=True,
            upserts=[to_proto(v) for v in self.client.state.values()],
        )

    def _on_change(self, applied: Applied) -> None:
        state = self.client.state
        self.view.update(state)
        if self.view.bundle is not None:
            self.identities.set_roots("".join(self.view.bundle.roots_pem).encode())
        local = {w.identity for w in self.view.local_workloads()}
        self.identities.forget(local)
        for identity in local:
            self._spawn(self._prefetch(identity))
        if applied.snapshot:
            update = self._snapshot()
        else:
            update = pb.StateUpdate(
                version=applied.version,
                upserts=[to_proto(state[k]) for k in applied.changed if k in state],
                removals=[key_to_proto(k) for k in applied.changed if k not in state],
            )
        frame = encode(Kind.STATE, update.SerializeToString())
        for handle in self.workers:
            handle.send(frame)

    # --- being replaced --------------------------------------------------------------------

    async def _drain(self, timeout: float) -> Draining:
        """A successor has the sockets: every worker stops accepting and drains; the parent
        lets go of its copies and of the HTTP listeners, and exits when they are done."""
        self.draining_since = asyncio.get_running_loop().time()
        for sock in self._listeners.values():
            sock.close()  # ours only: the successor's and the workers' keep them
        stats = await self._gather_stats()
        open_now = sum(int(s["connections"]["total"]) for s in stats)
        frame = encode_json(Kind.DRAIN, {"timeout_s": timeout})
        for handle in self.workers:
            handle.send(frame)
        self.ready.clear()
        self.tap.close()
        for runner in self._runners:
            await runner.cleanup()
        self._runners = []
        log.info("drain.started", connections=open_now, workers=self.n, timeout_s=timeout)
        self._spawn(self._drain_until_done(timeout))
        return Draining(timeout, open_now)

    async def _drain_until_done(self, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout + GOAWAY_GRACE_S + 5):
                for handle in self.workers:
                    await handle.drained.wait()
            log.info("drain.done", workers=self.n)
        except TimeoutError:
            log.warning("drain.timeout", timeout_s=timeout)
        self.drained.set()

    # --- admin, metrics, readiness ---------------------------------------------------------

    async def _gather_stats(self) -> list[dict[str, Any]]:
        loop = asyncio.get_running_loop()
        waiters = []
        for handle in self.workers:
            if handle.writer is None:
                continue
            waiter: asyncio.Future[dict[str, Any]] = loop.create_future()
            handle.stats.append(waiter)
            handle.send(encode(Kind.STATS_REQUEST))
            waiters.append(waiter)
        done = await asyncio.gather(
            *(asyncio.wait_for(w, STATS_TIMEOUT_S) for w in waiters), return_exceptions=True
        )
        return [d for d in done if isinstance(d, dict)]

    async def _start_http(self) -> None:
        c = self.config

        async def readiness(_request: web.Request) -> web.Response:
            if self.ready.is_set():
                return web.Response(text="ready\n")
            return web.Response(status=503, text="not ready\n")

        ready_route = web.get("/healthz/ready", readiness)
        metric_routes = (
            web.get("/metrics", self._metrics),
            web.get("/stats/prometheus", self._metrics),
        )
        admin = (
            web.get("/config_dump", self._config_dump),
            ready_route,
            *metric_routes,
            tapserver.tap_route(self.tap),
            web.get("/connections", self._connections),
        )
        self._runners += await adminserver.serve(
            [
                adminserver.Listener("admin", admin, c.admin_addr, c.admin_socket),
                adminserver.Listener("metrics", metric_routes, c.metrics_addr),
                adminserver.Listener("readiness", (ready_route,), c.readiness_addr),
            ]
        )

    async def _metrics(self, _request: web.Request) -> web.Response:
        """Every process's metrics, merged (prometheus_client's multiprocess mode: counters
        summed over the workers, the dead ones' included)."""
        if not os.environ.get(MULTIPROC_ENV):
            return await adminserver.metrics(_request)
        registry = CollectorRegistry()
        prom_multiprocess.MultiProcessCollector(registry)
        body = await asyncio.to_thread(generate_latest, registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _connections(self, _request: web.Request) -> web.Response:
        stats = await self._gather_stats()
        conns = sorted(
            (c for s in stats for c in s["connections"]["connections"]),
            key=lambda c: -float(c["age_s"]),
        )[:MAX_LISTED]
        total = sum(int(s["connections"]["total"]) for s in stats)
        return web.json_response(
            {
                "node": self.config.node,
                "total": total,
                "listed": len(conns),
                "connections": conns,
            }
        )

    async def _config_dump(self, _request: web.Request) -> web.Response:
        body = mesh_dump(
            self.config,
            self.client,
            self.view,
            self.identities,
            self.tap,
            process_info(self.started_at, self.predecessor),
        )
        stats = await self._gather_stats()
        body["pool"] = [dict(p, worker=s["worker"]) for s in stats for p in s["pool"]]
        body["inbound"] = [dict(i, worker=s["worker"]) for s in stats for i in s["inbound"]]
        held = {s["worker"]: s.get("certificates", []) for s in stats}
        body["workers"] = [
            {
                "index": h.index,
                "pid": h.proc.pid if h.proc is not None else None,
                "ready": h.ready.is_set(),
                "restarts": h.restarts,
                "listeners": h.names,
                "certificates": held.get(h.index, []),  # identities it holds (from us)
            }
            for h in self.workers
        ]
        return web.json_response(body)


def metrics_dir(node: str) -> Path:
    """A fresh folder for this ztunnel's metric files (multiprocess mode): in /dev/shm when
    it can (memory, and writable in a container whose root file system is read-only), else
    $TMPDIR or /tmp."""
    name = f"weft-ztunnel-metrics-{node}-{os.getpid()}"
    for root in ("/dev/shm", os.environ.get("TMPDIR", ""), "/tmp"):
        if not root:
            continue
        folder = Path(root) / name
        try:
            folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError:
            continue
        for stale in folder.glob("*.db"):
            stale.unlink()
        _remove_dead(Path(root), node)
        return folder
    raise OSError(f"no writable folder for the metric files of {name}")


def _remove_dead(root: Path, node: str) -> None:
    """The metric folders of this node's ztunnels that died without removing theirs."""
    for folder in root.glob(f"weft-ztunnel-metrics-{node}-*"):
        pid = folder.name.rpartition("-")[2]
        if not pid.isdigit() or Path(f"/proc/{pid}").exists():
            continue
        shutil.rmtree(folder, ignore_errors=True)
