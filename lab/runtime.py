"""The lab's kubelet + kube-proxy: makes the model's pods and services real.

`LabRuntime` owns the kernel objects (namespaces, veths, cgroups, nft tables, hosts files)
and the container processes. It is driven by the daemon, one change at a time.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import structlog

from lab import cgroups, dns, kubeproxy, netns, network
from lab.addressing import NodePlan
from lab.config import LabConfig
from lab.images import container_argv, container_path
from lab.model import Change, ClusterModel, PodRecord, ServiceRecord
from lab.naming import LabNames
from lab.processes import ProcessSpec, State, Supervised
from lab.state import LabPaths
from meshcore.meshstate import GATEWAY_NAME_LABEL, MANAGED_BY_MESH_CONTROLLER, MANAGED_LABEL

log = structlog.get_logger("lab.runtime")

# Where a pod that has a credential finds it (the folder).
CREDENTIAL_ENV = "WEFT_CREDENTIAL"

PROBE_INTERVAL = 1.0
PROBE_TIMEOUT = 0.5


@dataclass
class PodRuntime:
    record: PodRecord
    netns: str
    cgroup: str
    env: dict[str, str]
    containers: list[Supervised] = field(default_factory=list)
    # The pod's "pause" process: it holds the pod's namespace and cgroup before any container
    # runs, so the node agent can enroll the pod before the app's first connection.
    sandbox: Supervised | None = None
    ready: bool = False
    deleting: bool = False
    probe_task: asyncio.Task[None] | None = None

    @property
    def phase(self) -> str:
        states = [c.status for c in self.containers]
        if not states or any(s.state is State.WAITING for s in states):
            return "Pending"
        if any(s.state is State.RUNNING for s in states):
            return "Running"
        if all(s.exit_code == 0 for s in states):
            return "Succeeded"
        restarting = any(
            c.spec.restart.value != "Never" and s.exit_code != 0
            for c, s in zip(self.containers, states, strict=True)
        )
        return "Running" if restarting else "Failed"


def needs_credential(labels: Mapping[str, str]) -> bool:
    """A waypoint's replica (made by the controller's deployer) is given a credential for its
    service account: it talks to the controller as that identity. Other pods are not (their
    certificates are their node's ztunnel's to fetch)."""
    return labels.get(MANAGED_LABEL) == MANAGED_BY_MESH_CONTROLLER and GATEWAY_NAME_LABEL in labels


class LabRuntime:
    def __init__(
        self, config: LabConfig, names: LabNames, paths: LabPaths, model: ClusterModel
    ) -> None:
        self.config = config
        self.names = names
        self.paths = paths
        self.model = model
        self.nodes: dict[str, NodePlan] = {n.name: n for n in model.nodes}
        self.pods: dict[tuple[str, str], PodRuntime] = {}
        self._endpoints_dirty = asyncio.Event()
        self._last_rules = ""
        self._sync_task: asyncio.Task[None] | None = None
        # Called after pods' readiness changed (the daemon rewrites the pod objects).
        self.on_status_change: Callable[[], None] | None = None
        # Awaited between new pods' sandboxes and their containers (the daemon waits there
        # for the node agents to enroll them, as a CNI plugin runs before the containers).
        self.before_containers: Callable[[list[PodRecord]], Awaitable[None]] | None = None
        # Writes a pod's credential (blocking) and returns its folder, for the pods that get
        # one (a waypoint's: `needs_credential`); passed in WEFT_CREDENTIAL.
        self.pod_credential: Callable[[PodRecord], Path] | None = None
        # The lab's Kubernetes source: new pods are created in the API server first, which
        # names their uids (as it does for a kubelet's pods); returns them by pod.
        self.register_pods: (
            Callable[[list[PodRecord]], Awaitable[dict[tuple[str, str], str]]] | None
        ) = None

    # --- cluster ----------------------------------------------------------------------------

    async def build_nodes(self) -> None:
        cgroups.create(self.names.cgroup_root)
        await asyncio.to_thread(network.build_underlay, self.names)
        for node in self.model.nodes:
            await asyncio.to_thread(
                network.build_node,
                self.names,
                node,
                self.model.nodes,
                self.config.underlay_cidr,
                self.config.service_cidr,
            )
            cgroups.create(self.names.node_pods_cgroup(node.name))
            cgroups.create(self.names.node_system_cgroup(node.name))
            log.info(
                "node.created", node=node.name, underlay_ip=node.underlay_ip, pod_cidr=node.pod_cidr
            )
        await self._push_rules(force=True)
        self._sync_task = asyncio.create_task(self._endpoint_sync_loop())

    async def apply(self, change: Change) -> None:
        """Make a committed change real: stop removed pods, start new ones, resync services."""
        services_changed = set(change.services) != set(self.model.services) or any(
            self.model.services[ref].vip != rec.vip
            for ref, rec in change.services.items()
            if ref in self.model.services
        )
        self.model.commit(change)
        await asyncio.gather(*(self._remove_pod(r) for r in change.delete))
        create = list(change.create)
        if create and self.register_pods is not None:
            uids = await self.register_pods(create)
            create = [dataclasses.replace(r, uid=uids.get(r.ref, r.uid)) for r in create]
            for record in create:
                self.model.pods[record.ref] = record
        for record in change.relabel:
            runtime = self.pods.get(record.ref)
            if runtime:
                runtime.record = record
                log.info(
                    "pod.relabeled",
                    namespace=record.namespace,
                    pod=record.name,
                    labels=dict(record.labels),
                )
        services = list(self.model.services.values())
        created = await asyncio.gather(*(self._create_sandbox(r, services) for r in create))
        if created and self.before_containers is not None:
            await self.before_containers([rt.record for rt in created])
        for runtime in created:
            self._start_containers(runtime)
        if services_changed:
            for runtime in self.pods.values():
                self._write_hosts(runtime, services)
        self._endpoints_dirty.set()

    async def shutdown(self) -> None:
        if self._sync_task:
            self._sync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync_task
        await asyncio.gather(*(self._remove_pod(p.record) for p in list(self.pods.values())))

    # --- pods -------------------------------------------------------------------------------

    async def _create_sandbox(self, record: PodRecord, services: list[ServiceRecord]) -> PodRuntime:
        pod_ns = self.names.pod_netns(record.namespace, record.name)
        node = self.nodes[record.node]
        runtime = PodRuntime(
            record=record,
            netns=pod_ns,
            cgroup=self.names.pod_cgroup(record.node, record.uid),
            env=dns.service_env(record.namespace, services),
        )
        self.pods[record.ref] = runtime
        self._write_etc(runtime, services)
        await asyncio.to_thread(network.add_pod, self.names, node, pod_ns, record.uid, record.ip)
        cgroups.create(runtime.cgroup)
        runtime.sandbox = Supervised(
            ProcessSpec(
                name=f"{record.namespace}/{record.name}/pause",
                argv=["sleep", "infinity"],
                env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
                netns=pod_ns,
                cgroup=f"{runtime.cgroup}/pause",
                log_path=self.paths.container_log(record.namespace, record.name, "pause"),
                grace_seconds=0.0,
            )
        )
        runtime.sandbox.start()
        if self.pod_credential is not None and needs_credential(record.labels):
            folder = await asyncio.to_thread(self.pod_credential, record)
            runtime.env[CREDENTIAL_ENV] = str(folder)
        return runtime

    def _start_containers(self, runtime: PodRuntime) -> None:
        record = runtime.record
        pod_ns = runtime.netns
        for container in record.spec.containers:
            env = {
                "PATH": container_path(os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin")),
                "HOSTNAME": record.name,
                "HOME": "/root",
                "LANG": os.environ.get("LANG", "C.UTF-8"),
                "PYTHONUNBUFFERED": "1",
                **runtime.env,
            }
            for var in container.env:
                env[var.name] = (
                    self._field_value(record, var.field_ref) if var.field_ref else var.value
                )
            spec = ProcessSpec(
                name=f"{record.namespace}/{record.name}/{container.name}",
                argv=container_argv(container.image, container.command, container.args),
                env=env,
                netns=pod_ns,
                cgroup=f"{runtime.cgroup}/{container.name}",
                log_path=self.paths.container_log(record.namespace, record.name, container.name),
                restart=record.spec.restart_policy,
                grace_seconds=float(record.spec.termination_grace_period_seconds),
            )
            supervised = Supervised(spec)
            runtime.containers.append(supervised)
            supervised.start()
        runtime.probe_task = asyncio.create_task(self._probe_loop(runtime))
        log.info(
            "pod.created",
            namespace=record.namespace,
            pod=record.name,
            node=record.node,
            ip=record.ip,
        )

    def _field_value(self, record: PodRecord, path: str) -> str:
        simple = {
            "metadata.name": record.name,
            "metadata.namespace": record.namespace,
            "metadata.uid": record.uid,
            "spec.nodeName": record.node,
            "spec.serviceAccountName": record.spec.service_account_name,
            "status.podIP": record.ip,
            "status.hostIP": self.nodes[record.node].underlay_ip,
        }
        if path in simple:
            return simple[path]
        source = record.labels if path.startswith("metadata.labels") else record.annotations
        key = path.split("['", 1)[1][:-2]
        return source.get(key, "")

    def _write_etc(self, runtime: PodRuntime, services: list[ServiceRecord]) -> None:
        etc = netns.ETC_NETNS_DIR / runtime.netns
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "resolv.conf").write_text(dns.resolv_conf(runtime.record.namespace))
        self._write_hosts(runtime, services)

    def _write_hosts(self, runtime: PodRuntime, services: list[ServiceRecord]) -> None:
        text = dns.hosts_file(
            runtime.record.name, runtime.record.ip, runtime.record.namespace, services
        )
        path = netns.ETC_NETNS_DIR / runtime.netns / "hosts"
        # Rewrite in place: running containers see this inode through a bind mount, and a
        # rename would leave them reading the old file.
        with open(path, "a+") as f:
            f.seek(0)
            if f.read() == text:
                return
            f.seek(0)
            f.truncate()
            f.write(text)

    async def _remove_pod(self, record: PodRecord) -> None:
        runtime = self.pods.get(record.ref)
        if runtime is None:
            return
        runtime.deleting = True
        runtime.ready = False
        self._endpoints_dirty.set()
        if runtime.probe_task:
            runtime.probe_task.cancel()
        await asyncio.gather(*(c.stop() for c in runtime.containers))
        if runtime.sandbox is not None:
            await runtime.sandbox.stop()
        await asyncio.to_thread(cgroups.kill, runtime.cgroup)
        await asyncio.to_thread(cgroups.remove, runtime.cgroup)
        await asyncio.to_thread(network.remove_pod, runtime.netns)
        shutil.rmtree(netns.ETC_NETNS_DIR / runtime.netns, ignore_errors=True)
        shutil.rmtree(self.paths.pod_dir(record.namespace, record.name), ignore_errors=True)
        self.pods.pop(record.ref, None)
        log.info("pod.deleted", namespace=record.namespace, pod=record.name)

    # --- readiness and endpoints ------------------------------------------------------------

    async def _probe_loop(self, runtime: PodRuntime) -> None:
        """Ready = every container running and every declared TCP port accepting, like a
        kubelet TCP readiness probe made from the node."""
        node_ns = self.names.node_netns(runtime.record.node)
        ports = [
            p.container_port
            for c in runtime.record.spec.containers
            for p in c.ports
            if p.protocol == "TCP"
        ]
        while not runtime.deleting:
            running = all(c.status.state is State.RUNNING for c in runtime.containers)
            ready = running and all(
                [
                    await asyncio.to_thread(_tcp_probe, node_ns, runtime.record.ip, port)
                    for port in ports
                ]
            )
            if ready != runtime.ready:
                runtime.ready = ready
                log.info(
                    "pod.ready" if ready else "pod.not_ready",
                    namespace=runtime.record.namespace,
                    pod=runtime.record.name,
                )
                self._endpoints_dirty.set()
            waits = [asyncio.create_task(c.changed.wait()) for c in runtime.containers]
            await asyncio.wait(
                waits,
                timeout=PROBE_INTERVAL if not ready else 3 * PROBE_INTERVAL,
                return_when=asyncio.FIRST_COMPLETED,
            )
            for c, w in zip(runtime.containers, waits, strict=True):
                w.cancel()
                c.changed.clear()

    async def _endpoint_sync_loop(self) -> None:
        while True:
            await self._endpoints_dirty.wait()
            self._endpoints_dirty.clear()
            try:
                await self._push_rules()
            except RuntimeError as err:
                log.error("kubeproxy.sync_failed", error=str(err))
            if self.on_status_change is not None:
                try:
                    self.on_status_change()
                except OSError as err:
                    log.error("objects.write_failed", error=str(err))
            await asyncio.sleep(0.05)  # coalesce bursts of readiness changes

    def ready_pods(self) -> list[tuple[str, str]]:
        return [ref for ref, p in self.pods.items() if p.ready and not p.deleting]

    async def _push_rules(self, *, force: bool = False) -> None:
        rules = kubeproxy.render(
            self.names.NFT_TABLE, self.model.service_endpoints(self.ready_pods())
        )
        if rules == self._last_rules and not force:
            return
        started = time.monotonic()
        await asyncio.gather(
            *(
                asyncio.to_thread(kubeproxy.apply, self.names.node_netns(n), rules)
                for n in self.nodes
            )
        )
        self._last_rules = rules
        log.info(
            "kubeproxy.synced", nodes=len(self.nodes), seconds=round(time.monotonic() - started, 3)
        )


def _tcp_probe(node_ns: str, ip: str, port: int) -> bool:
    def connect() -> bool:
        try:
            with socket.create_connection((ip, port), timeout=PROBE_TIMEOUT):
                return True
        except OSError:
            return False

    return netns.run_in(node_ns, connect)
