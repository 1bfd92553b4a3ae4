"""The lab daemon: builds the cluster, then serves `weftctl lab` over a unix socket.

Started detached by `weftctl lab up` as `python -m lab.daemon --state-dir DIR`; it reads its
settings from the lab record there. It stays up until `weftctl lab down` (or SIGTERM), and
then removes everything it made.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import click
import structlog
import uvloop
from aiohttp import web

from controller.meshbuilder import is_enrolled
from lab.addressing import node_plans
from lab.controlplane import ControlPlane
from lab.kubemirror import KubeMirror
from lab.model import ClusterModel, PodRecord
from lab.naming import LabNames
from lab.nodeagents import NodeAgents
from lab.objects import cluster_docs, cluster_objects, file_name, sync_folder
from lab.prometheus import LabPrometheus
from lab.prometheusconfig import PodTarget
from lab.runtime import LabRuntime
from lab.state import LabPaths, LabRecord, teardown
from lab.status import lab_status
from meshcore.logs import configure_logging
from meshcore.resources import (
    Document,
    ManifestError,
    ManifestErrors,
    ResourceKey,
    load_documents,
    parse_documents,
)

log = structlog.get_logger("lab.daemon")

ENROLL_WAIT = 15.0


def errors_json(err: ManifestError | ManifestErrors) -> list[dict[str, str]]:
    items = err.errors if isinstance(err, ManifestErrors) else [err]
    return [
        {
            "message": str(e),
            "source": e.source,
            "resource": e.resource,
            "field": e.field,
            "reason": e.reason,
        }
        for e in items
    ]


class LabDaemon:
    def __init__(self, record: LabRecord, paths: LabPaths) -> None:
        self.record = record
        self.paths = paths
        self.names = LabNames(record.lab_id)
        self.model = ClusterModel(node_plans(record.config), record.config.service_cidr)
        self.runtime = LabRuntime(record.config, self.names, paths, self.model)
        self.runtime.on_status_change = self._save_manifests
        self.runtime.before_containers = self._enroll_first
        self.control = ControlPlane(record.config, self.names, paths)
        self.agents = NodeAgents(
            self.names,
            paths,
            self.control.address,
            self.control.node_bootstrap,
            ztunnel_workers=record.config.ztunnel_workers,
        )
        # --source kubernetes: the cluster is also written to the lab's API server
        self.mirror: KubeMirror | None = None
        self._mirror_wanted = asyncio.Event()
        self._mirror_task: asyncio.Task[None] | None = None
        self.prometheus = (
            LabPrometheus(
                self.names,
                paths,
                control_ip=self.control.ip,
                nodes=self.model.nodes,
                ztunnel=record.config.ztunnel,
                scrape_interval=record.config.prometheus_scrape_interval,
            )
            if record.config.prometheus
            else None
        )
        self.runtime.pod_credential = lambda pod: self.control.write_pod_credential(
            pod.namespace, pod.name, pod.spec.service_account_name
        )
        self.phase = "Building"
        self.error = ""
        self.started = time.time()
        self._lock = asyncio.Lock()
        self._raw: dict[ResourceKey, object] = {}
        self._statuses: dict[ResourceKey, dict[str, Any]] = {}  # written by controllers
        self._stop = asyncio.Event()

    # --- lifecycle --------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        app = web.Application()
        app.add_routes(
            [
                web.get("/v1/status", self._status),
                web.post("/v1/apply", self._apply),
                web.post("/v1/delete", self._delete),
                web.get("/v1/objects", self._objects),
                web.put("/v1/objects/status", self._put_status),
                web.post("/v1/shutdown", self._shutdown),
                web.post("/v1/ztunnel/restart", self._restart_ztunnel),
            ]
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.UnixSite(runner, str(self.paths.socket))
        await site.start()
        os.chmod(self.paths.socket, 0o600)
        code = 0
        try:
            await self._build()
            self.phase = "Ready"
            log.info(
                "lab.ready",
                name=self.record.name,
                lab_id=self.record.lab_id,
                seconds=round(time.time() - self.started, 2),
            )
            await self._stop.wait()
        except Exception as err:  # report why the lab could not be built, then clean up
            self.phase = "Failed"
            self.error = f"{type(err).__name__}: {err}"
            log.exception("lab.build_failed", error=self.error)
            code = 1
        self.phase = "Terminating"
        log.info("lab.stopping")
        if self.prometheus is not None:
            await self.prometheus.stop()
        if self._mirror_task is not None:
            self._mirror_task.cancel()
        await self.runtime.shutdown()
        await self.agents.stop()
        await self.control.stop()
        await runner.cleanup()
        teardown(
            LabRecord(**{**self.record.__dict__, "daemon_pid": 0}), self.paths, keep_log=code != 0
        )
        log.info("lab.stopped")
        return code

    def _on_signal(self, sig: signal.Signals) -> None:
        log.info("lab.signal", signal=sig.name)
        self._stop.set()

    async def _build(self) -> None:
        # The mesh comes up before any pod, so that every pod's first connection is already
        # in the mesh when its namespace is enrolled.
        await self.runtime.build_nodes()
        await self.control.start([n.name for n in self.model.nodes])
        if self.prometheus is not None:  # starts while the mesh does; waited for at the end
            await self.prometheus.start()
        if self.control.kube is not None:
            self.mirror = KubeMirror(self.control.kube.api)
            self.runtime.register_pods = self._register_pods
            self._mirror_task = asyncio.create_task(self._mirror_loop())
        await self.control.wait_ready()
        self.agents.start(self.model.nodes)
        await self.agents.wait_ready()
        if self.record.config.ztunnel:
            self.agents.start_ztunnels(self.model.nodes)
            await self.agents.wait_ztunnels()
        manifests = [Path(p) for p in self.record.config.manifests]
        docs = load_documents(manifests) if manifests else []
        async with self._lock:
            await self._apply_documents(docs)
        if self.prometheus is not None:
            await self.prometheus.wait_ready()

    async def _enroll_first(self, records: list[PodRecord]) -> None:
        """Like a CNI plugin: new pods of enrolled namespaces start their containers only once
        their node agent has them in the capture maps (or after a timeout, logged)."""
        self._save_manifests()  # the controller, then the agents, learn of the new pods
        namespaces = self.model.namespaces()
        wanted = {
            (r.node, f"{r.namespace}/{r.name}")
            for r in records
            if is_enrolled(r.labels, namespaces.get(r.namespace, {}))
        }
        deadline = time.monotonic() + ENROLL_WAIT
        while wanted and time.monotonic() < deadline:
            for node in {n for n, _ in wanted}:
                enrolled = await self.agents.enrolled(node)
                wanted -= {(node, pod) for pod in enrolled}
            if wanted:
                await asyncio.sleep(0.1)
        if wanted:
            log.warning(
                "pods.not_enrolled_in_time", pods=sorted(p for _, p in wanted), waited=ENROLL_WAIT
            )

    async def _apply_documents(self, docs: list[Document]) -> list[str]:
        parsed = parse_documents(docs)
        for item in parsed:
            for path in item.ignored_fields:
                log.warning(
                    "manifest.field_ignored",
                    source=item.source,
                    resource=str(item.resource.key),
                    field=path,
                )
        change = self.model.plan_apply([p.resource for p in parsed])
        before = dict(self.model.resources)
        # Kept before the pods start: the objects written for the controller while they do
        # (see _enroll_first) must already carry the new namespaces and labels.
        previous_raw = dict(self._raw)
        for item, doc in zip(parsed, docs, strict=True):
            self._raw[item.resource.key] = doc.raw
        try:
            await self.runtime.apply(change)
        except BaseException:
            self._raw = previous_raw
            raise
        self._save_manifests()
        return [
            f"{p.resource.key} {'configured' if p.resource.key in before else 'created'}"
            for p in parsed
        ]

    def _save_manifests(self) -> None:
        """Write the cluster objects (applied manifests + pods with status) for the
        controller to watch."""
        self._raw = {k: v for k, v in self._raw.items() if k in self.model.resources}
        self._statuses = {k: v for k, v in self._statuses.items() if k in self.model.resources}
        status = {ref: (p.phase, p.ready) for ref, p in self.runtime.pods.items()}
        sync_folder(
            self.paths.manifests,
            cluster_objects(self.model, self._raw, status, self._statuses),
        )
        self._mirror_wanted.set()
        if self.prometheus is not None:  # waypoint replicas come and go
            self.prometheus.set_waypoints(
                PodTarget(
                    p.record.namespace, p.record.name, p.record.node, p.record.ip, p.record.labels
                )
                for p in self.runtime.pods.values()
                if not p.deleting
            )

    def _docs(self) -> dict[str, Any]:
        status = {ref: (p.phase, p.ready) for ref, p in self.runtime.pods.items()}
        return cluster_docs(self.model, self._raw, status, self._statuses)

    async def _mirror_loop(self) -> None:
        """Write the cluster to the API server whenever it changed (coalesced), and every
        few seconds to retry what failed."""
        assert self.mirror is not None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._mirror_wanted.wait(), 5.0)
            self._mirror_wanted.clear()
            try:
                await self.mirror.sync(self._docs())
            except Exception as err:  # (an API server restarting: the next pass retries)
                log.warning("mirror.sync_failed", error=f"{type(err).__name__}: {err}")

    async def _register_pods(self, records: list[PodRecord]) -> dict[tuple[str, str], str]:
        """As a kubelet's pods are: created in the API server (after what they need, their
        namespace first), which names their uid."""
        assert self.mirror is not None
        docs = self._docs()
        new = {file_name("Pod", r.namespace, r.name) for r in records}
        await self.mirror.sync({k: v for k, v in docs.items() if k not in new})
        uids = {}
        for record in records:
            doc = dict(docs[file_name("Pod", record.namespace, record.name)])
            doc["metadata"] = {k: v for k, v in doc["metadata"].items() if k != "uid"}
            doc.pop("status", None)
            uids[record.ref] = await self.mirror.create_pod(doc)
        return uids

    # --- API --------------------------------------------------------------------------------

    async def _status(self, _request: web.Request) -> web.Response:
        status = lab_status(self.record, self.phase, self.error, self.model, self.runtime)
        status["controller"] = self.control.status()
        status["source"] = self.record.config.source
        if self.control.kube is not None:
            status["kubeconfig"] = str(self.control.kube.kubeconfig)
        status["node_agents"] = self.agents.status()
        status["ztunnels"] = {
            node: {
                "state": z.status.state.value,
                "pid": z.status.pid,
                "restarts": z.status.restarts,
                "log": str(z.spec.log_path),
                "admin_socket": str(self.agents.ztunnel_socket(node)),
            }
            for node, z in self.agents.ztunnels.items()
        }
        if self.prometheus is not None:
            status["prometheus"] = self.prometheus.status()
        return web.json_response(status)

    async def _documents(self, request: web.Request) -> list[Document]:
        body: dict[str, Any] = await request.json()
        return [Document(d["source"], d["raw"]) for d in body.get("documents", [])]

    async def _apply(self, request: web.Request) -> web.Response:
        if self.phase != "Ready":
            return web.json_response({"errors": [{"message": f"lab is {self.phase}"}]}, status=409)
        docs = await self._documents(request)
        async with self._lock:
            try:
                results = await self._apply_documents(docs)
            except (ManifestError, ManifestErrors) as err:
                return web.json_response({"errors": errors_json(err)}, status=422)
            except Exception as err:  # a kernel-side failure: report it, keep serving
                log.exception("lab.apply_failed")
                return web.json_response(
                    {"errors": [{"message": f"apply failed: {err}"}]}, status=500
                )
        return web.json_response({"results": results})

    async def _delete(self, request: web.Request) -> web.Response:
        if self.phase != "Ready":
            return web.json_response({"errors": [{"message": f"lab is {self.phase}"}]}, status=409)
        docs = await self._documents(request)
        async with self._lock:
            try:
                keys = [p.resource.key for p in parse_documents(docs)]
                change = self.model.plan_delete(keys)
                await self.runtime.apply(change)
                self._save_manifests()
            except (ManifestError, ManifestErrors) as err:
                return web.json_response({"errors": errors_json(err)}, status=422)
            except Exception as err:  # a kernel-side failure: report it, keep serving
                log.exception("lab.delete_failed")
                return web.json_response(
                    {"errors": [{"message": f"delete failed: {err}"}]}, status=500
                )
        return web.json_response({"results": [f"{k} deleted" for k in keys]})

    async def _objects(self, request: web.Request) -> web.Response:
        """The objects as the controller sees them (with clusterIPs, pods and statuses),
        filtered by `kind`, `namespace` and `name` when given: the lab's `kubectl get`."""
        kind = request.query.get("kind", "")
        namespace = request.query.get("namespace", "")
        name = request.query.get("name", "")
        status = {ref: (p.phase, p.ready) for ref, p in self.runtime.pods.items()}
        items = []
        for _, doc in sorted(cluster_docs(self.model, self._raw, status, self._statuses).items()):
            meta = doc.get("metadata", {}) if isinstance(doc, dict) else {}
            if kind and doc.get("kind") != kind:
                continue
            if namespace and meta.get("namespace", "default") != namespace:
                continue
            if name and meta.get("name") != name:
                continue
            items.append(doc)
        return web.json_response({"items": items})

    async def _put_status(self, request: web.Request) -> web.Response:
        """The status subresource: a controller sets an object's `status` (kept apart from
        what users apply, dropped with the object)."""
        body: dict[str, Any] = await request.json()
        try:
            key = ResourceKey(str(body["kind"]), str(body.get("namespace", "")), str(body["name"]))
            status = body["status"]
        except (KeyError, TypeError):
            return web.json_response(
                {"errors": [{"message": "expected {kind, namespace, name, status}"}]}, status=400
            )
        if not isinstance(status, dict):
            return web.json_response(
                {"errors": [{"message": "status must be an object"}]}, status=400
            )
        async with self._lock:
            if key not in self.model.resources:
                return web.json_response(
                    {"errors": [{"message": f"{key}: not found", "resource": str(key)}]},
                    status=404,
                )
            if self._statuses.get(key) != status:
                self._statuses[key] = status
                self._save_manifests()
        return web.json_response({"results": [f"{key} status updated"]})

    async def _restart_ztunnel(self, request: web.Request) -> web.Response:
        """`weftctl ztunnel restart`: a new ztunnel takes over the node's listeners, the old
        one drains (docs/ztunnel-restart.md). Body: node, drain_timeout_s, pythonpath."""
        if self.phase != "Ready":
            return web.json_response({"errors": [{"message": f"lab is {self.phase}"}]}, status=409)
        body: dict[str, Any] = await request.json()
        node = body.get("node")
        drain = body.get("drain_timeout_s", 600)
        pythonpath = body.get("pythonpath", "")
        workers = body.get("workers", 0)
        if not self.agents.ztunnels:
            message = "this lab runs no ztunnel (it was brought up with --no-ztunnel)"
            return web.json_response({"errors": [{"message": message}]}, status=409)
        if node not in self.agents.ztunnels:
            nodes = ", ".join(sorted(self.agents.ztunnels))
            message = f"node: no node {node!r} in this lab; nodes: {nodes}"
            return web.json_response({"errors": [{"message": message}]}, status=404)
        if not isinstance(drain, int | float) or isinstance(drain, bool) or drain < 0:
            message = f"drain_timeout_s: want seconds >= 0, got {drain!r}"
            return web.json_response({"errors": [{"message": message}]}, status=400)
        if not isinstance(workers, int) or isinstance(workers, bool) or not 0 <= workers <= 8:
            message = f"workers: want 1 to 8 (0: as before), got {workers!r}"
            return web.json_response({"errors": [{"message": message}]}, status=400)
        if not isinstance(pythonpath, str):
            message = f"pythonpath: want a path, got {pythonpath!r}"
            return web.json_response({"errors": [{"message": message}]}, status=400)
        try:
            result = await self.agents.restart_ztunnel(node, float(drain), pythonpath, workers)
        except RuntimeError as err:
            return web.json_response({"errors": [{"message": str(err)}]}, status=500)
        return web.json_response(result)

    async def _shutdown(self, _request: web.Request) -> web.Response:
        self._stop.set()
        return web.json_response({"phase": "Terminating"})


@click.command()
@click.option("--state-dir", required=True, type=click.Path(path_type=Path))
def main(state_dir: Path) -> None:
    paths = LabPaths(state_dir)
    record = LabRecord.load(paths)
    if record is None:
        raise click.ClickException(f"no lab record in {state_dir}")
    configure_logging(json_output=True)
    record = LabRecord(**{**record.__dict__, "daemon_pid": os.getpid()})
    record.save(paths)
    with contextlib.suppress(FileNotFoundError):
        paths.socket.unlink()
    sys.exit(uvloop.run(LabDaemon(record, paths).run()))


if __name__ == "__main__":
    main()
