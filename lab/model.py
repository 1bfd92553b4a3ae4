"""The lab's desired cluster state: manifests in, pods and services with addresses out.

Pure logic. `ClusterModel.plan()` checks a whole change against everything already applied
and computes what to create, delete and relabel without touching the model; `commit()` then
takes it. A change that fails validation leaves the model exactly as it was.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace

from lab.addressing import AddressExhausted, NodePlan, Pool
from lab.images import SAMPLE_APPS, is_known
from meshcore.resources import (
    Deployment,
    ManifestError,
    Namespace,
    Pod,
    PodSpec,
    Resource,
    ResourceKey,
    Service,
    ServiceAccount,
)
from meshcore.resources.core import DEFAULT_NAMESPACE, DEFAULT_SERVICE_ACCOUNT
from meshcore.resources.errors import ManifestErrors

_SUFFIX_ALPHABET = "bcdfghjklmnpqrstvwxz2456789"  # Kubernetes' safe-encoding alphabet


@dataclass(frozen=True)
class PodRecord:
    """A pod the lab runs: what the manifests asked for, plus where and at which address."""

    uid: str
    namespace: str
    name: str
    node: str
    ip: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    spec: PodSpec
    owner: str = ""  # "Deployment/<name>" for pods a Deployment made
    template_hash: str = ""

    @property
    def ref(self) -> tuple[str, str]:
        return (self.namespace, self.name)


@dataclass(frozen=True)
class ServiceRecord:
    service: Service
    vip: str

    @property
    def ref(self) -> tuple[str, str]:
        return (self.service.metadata.namespace, self.service.metadata.name)


@dataclass(frozen=True)
class Endpoint:
    pod: tuple[str, str]
    ip: str
    port: int
    node: str


@dataclass(frozen=True)
class ServiceEndpoints:
    """One service port and the ready pod addresses behind it."""

    namespace: str
    service: str
    port_name: str
    vip: str
    port: int
    protocol: str
    endpoints: tuple[Endpoint, ...]


@dataclass
class Change:
    """What a `plan()` decided; applied by `commit()` and then by the runtime."""

    resources: dict[ResourceKey, Resource]
    create: list[PodRecord] = field(default_factory=list)
    delete: list[PodRecord] = field(default_factory=list)
    relabel: list[PodRecord] = field(default_factory=list)
    services: dict[tuple[str, str], ServiceRecord] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not (self.create or self.delete or self.relabel)


class ClusterModel:
    def __init__(
        self,
        nodes: list[NodePlan],
        service_cidr: str,
        *,
        rng: random.Random | None = None,
    ) -> None:
        self.nodes = nodes
        self._node_names = {n.name for n in nodes}
        self._pod_pools = {n.name: Pool(n.pod_cidr) for n in nodes}
        self._service_pool = Pool(service_cidr)
        self._rng = rng or random.Random()
        self.resources: dict[ResourceKey, Resource] = {}
        self.pods: dict[tuple[str, str], PodRecord] = {}
        self.services: dict[tuple[str, str], ServiceRecord] = {}

    # --- queries ----------------------------------------------------------------------------

    def namespaces(self) -> dict[str, Mapping[str, str]]:
        """Namespace name -> labels; `default` always exists."""
        out: dict[str, Mapping[str, str]] = {DEFAULT_NAMESPACE: {}}
        for r in self.resources.values():
            if isinstance(r, Namespace):
                out[r.metadata.name] = r.metadata.labels
        return out

    def service_endpoints(self, ready: Iterable[tuple[str, str]]) -> list[ServiceEndpoints]:
        ready_set = set(ready)
        out = []
        for ref, record in sorted(self.services.items()):
            svc = record.service
            members = [
                p
                for p in sorted(self.pods.values(), key=lambda p: p.ref)
                if p.namespace == ref[0]
                and svc.selector
                and p.ref in ready_set
                and all(p.labels.get(k) == v for k, v in svc.selector.items())
            ]
            for sp in svc.ports:
                eps = []
                for pod in members:
                    port = _resolve_target_port(pod.spec, sp.target_port)
                    if port is not None:
                        eps.append(Endpoint(pod.ref, pod.ip, port, pod.node))
                out.append(
                    ServiceEndpoints(
                        ref[0], ref[1], sp.name, record.vip, sp.port, sp.protocol, tuple(eps)
                    )
                )
        return out

    # --- planning ---------------------------------------------------------------------------

    def plan_apply(self, resources: Iterable[Resource]) -> Change:
        desired = dict(self.resources)
        for r in resources:
            desired[r.key] = r
        return self._plan(desired)

    def plan_delete(self, keys: Iterable[ResourceKey]) -> Change:
        desired = dict(self.resources)
        errors = []
        for key in keys:
            if key not in desired:
                errors.append(ManifestError("not found", resource=str(key)))
                continue
            del desired[key]
            if key.kind == "Namespace":  # a namespace takes everything in it along
                for other in [k for k in desired if k.namespace == key.name]:
                    del desired[other]
        _collect_garbage(desired)
        if errors:
            raise ManifestErrors(errors)
        return self._plan(desired)

    def _plan(self, desired: dict[ResourceKey, Resource]) -> Change:
        self._validate(desired)
        change = Change(resources=desired)
        pool_state = {name: _PoolView(pool) for name, pool in self._pod_pools.items()}
        wanted: dict[tuple[str, str], PodRecord] = {}
        standalone = [r for r in desired.values() if isinstance(r, Pod)]
        deployments = [r for r in desired.values() if isinstance(r, Deployment)]
        # Pods already running count towards spreading; new ones are placed one by one.
        placed: dict[str, list[PodRecord]] = {}
        for existing_pod in self.pods.values():
            placed.setdefault(_group(existing_pod), []).append(existing_pod)

        for pod in sorted(standalone, key=lambda p: p.key):
            ref = (pod.metadata.namespace, pod.metadata.name)
            existing = self.pods.get(ref)
            if existing and not existing.owner:
                if existing.spec != pod.spec:
                    raise ManifestErrors(
                        [
                            ManifestError(
                                "a Pod's spec cannot change (only its labels and annotations); "
                                "delete it and apply it again",
                                resource=str(pod.key),
                                field="spec",
                            )
                        ]
                    )
                wanted[ref] = self._relabel(
                    existing, pod.metadata.labels, pod.metadata.annotations, change
                )
                continue
            node = pod.spec.node_name or self._schedule("", placed)
            record = PodRecord(
                uid=str(uuid.UUID(int=self._rng.getrandbits(128))),
                namespace=ref[0],
                name=ref[1],
                node=node,
                ip=_pod_ip(pool_state[node], node, pod.key, ""),
                labels=pod.metadata.labels,
                annotations=pod.metadata.annotations,
                spec=pod.spec,
            )
            wanted[ref] = record
            placed.setdefault("", []).append(record)
            change.create.append(record)

        for dep in sorted(deployments, key=lambda d: d.key):
            self._plan_deployment(dep, wanted, placed, pool_state, change)

        for ref, record in self.pods.items():
            if ref not in wanted:
                change.delete.append(record)
        change.services = self._plan_services(desired)
        return change

    def _plan_deployment(
        self,
        dep: Deployment,
        wanted: dict[tuple[str, str], PodRecord],
        placed: dict[str, list[PodRecord]],
        pool_state: dict[str, _PoolView],
        change: Change,
    ) -> None:
        owner = f"Deployment/{dep.metadata.name}"
        namespace = dep.metadata.namespace
        template_hash = dep.template.fingerprint()
        current = sorted(
            (
                p
                for p in self.pods.values()
                if p.owner == owner
                and p.namespace == namespace
                and p.template_hash == template_hash
            ),
            key=lambda p: p.name,
        )
        # Scale down by removing from the node that has the most of this deployment's pods.
        keep = list(current)
        while len(keep) > dep.replicas:
            counts: dict[str, int] = {}
            for p in keep:
                counts[p.node] = counts.get(p.node, 0) + 1
            busiest = max(counts, key=lambda n: (counts[n], n))
            victim = [p for p in keep if p.node == busiest][-1]
            keep.remove(victim)
        placed_key = f"{namespace}/{owner}"
        for p in keep:
            wanted[p.ref] = self._relabel(
                p, dep.template_metadata.labels, dep.template_metadata.annotations, change
            )
        for _ in range(dep.replicas - len(keep)):
            name = self._pod_name(dep.metadata.name, template_hash, namespace, wanted)
            node = dep.template.node_name or self._schedule(placed_key, placed)
            record = PodRecord(
                uid=str(uuid.UUID(int=self._rng.getrandbits(128))),
                namespace=namespace,
                name=name,
                node=node,
                ip=_pod_ip(pool_state[node], node, dep.key, "spec.replicas"),
                labels={**dep.template_metadata.labels, "pod-template-hash": template_hash},
                annotations=dep.template_metadata.annotations,
                spec=dep.template,
                owner=owner,
                template_hash=template_hash,
            )
            wanted[record.ref] = record
            placed.setdefault(placed_key, []).append(record)
            change.create.append(record)

    def _relabel(
        self,
        pod: PodRecord,
        labels: Mapping[str, str],
        annotations: Mapping[str, str],
        change: Change,
    ) -> PodRecord:
        if pod.template_hash:
            labels = {**labels, "pod-template-hash": pod.template_hash}
        if dict(pod.labels) == dict(labels) and dict(pod.annotations) == dict(annotations):
            return pod
        updated = replace(pod, labels=dict(labels), annotations=dict(annotations))
        change.relabel.append(updated)
        return updated

    def _pod_name(
        self, base: str, template_hash: str, namespace: str, taken: Mapping[tuple[str, str], object]
    ) -> str:
        while True:
            suffix = "".join(self._rng.choice(_SUFFIX_ALPHABET) for _ in range(5))
            name = f"{base}-{template_hash}-{suffix}"
            ref = (namespace, name)
            if ref not in taken and ref not in self.pods:
                return name

    def _schedule(self, group: str, placed: dict[str, list[PodRecord]]) -> str:
        """Fewest pods of the same group first, then fewest pods overall, then node order."""
        in_group = {n.name: 0 for n in self.nodes}
        for p in placed.get(group, []):
            in_group[p.node] += 1
        overall = {n.name: 0 for n in self.nodes}
        for records in placed.values():
            for p in records:
                overall[p.node] += 1
        return min(self.nodes, key=lambda n: (in_group[n.name], overall[n.name], n.index)).name

    def _plan_services(
        self, desired: dict[ResourceKey, Resource]
    ) -> dict[tuple[str, str], ServiceRecord]:
        out: dict[tuple[str, str], ServiceRecord] = {}
        claimed: set[str] = set()
        pending: list[Service] = []
        for r in sorted(desired.values(), key=lambda r: r.key):
            if not isinstance(r, Service):
                continue
            ref = (r.metadata.namespace, r.metadata.name)
            old = self.services.get(ref)
            if old:
                out[ref] = ServiceRecord(r, old.vip)
                claimed.add(old.vip)
            elif r.cluster_ip:
                out[ref] = ServiceRecord(r, r.cluster_ip)
                claimed.add(r.cluster_ip)
            else:
                pending.append(r)
        view = _PoolView(self._service_pool, extra_taken=claimed)
        for r in pending:
            ref = (r.metadata.namespace, r.metadata.name)
            try:
                out[ref] = ServiceRecord(r, view.allocate(ref))
            except AddressExhausted as err:
                raise ManifestErrors(
                    [ManifestError(str(err), resource=str(r.key), field="spec.clusterIP")]
                ) from None
        return out

    def _validate(self, desired: dict[ResourceKey, Resource]) -> None:
        errors: list[ManifestError] = []
        namespaces = {DEFAULT_NAMESPACE} | {k.name for k in desired if k.kind == "Namespace"}
        accounts = {(k.namespace, k.name) for k in desired if k.kind == ServiceAccount.kind}
        vips: dict[str, ResourceKey] = {}
        for key, r in sorted(desired.items()):

            def err(reason: str, field: str, key: ResourceKey = key) -> None:
                errors.append(ManifestError(reason, resource=str(key), field=field))

            if key.namespace and key.namespace not in namespaces:
                err(f"namespace {key.namespace!r} does not exist", "metadata.namespace")
                continue
            specs: list[tuple[str, PodSpec]] = []
            if isinstance(r, Pod):
                specs.append(("spec", r.spec))
            elif isinstance(r, Deployment):
                specs.append(("spec.template.spec", r.template))
            for path, spec in specs:
                if spec.node_name and spec.node_name not in self._node_names:
                    err(
                        f"node {spec.node_name!r} does not exist (the lab has "
                        f"{', '.join(n.name for n in self.nodes)})",
                        f"{path}.nodeName",
                    )
                sa = spec.service_account_name
                if sa != DEFAULT_SERVICE_ACCOUNT and (key.namespace, sa) not in accounts:
                    err(
                        f"service account {sa!r} does not exist in namespace {key.namespace!r}",
                        f"{path}.serviceAccountName",
                    )
                for i, c in enumerate(spec.containers):
                    if not c.command and not is_known(c.image):
                        err(
                            f"image {c.image!r} is not a lab image "
                            f"({', '.join(sorted(SAMPLE_APPS))}); give a command to run "
                            "another program",
                            f"{path}.containers[{i}].image",
                        )
            if isinstance(r, Service):
                old = self.services.get((key.namespace, key.name))
                if r.cluster_ip:
                    if old and old.vip != r.cluster_ip:
                        err(f"clusterIP is immutable (it is {old.vip})", "spec.clusterIP")
                    elif not self._service_pool.contains(r.cluster_ip):
                        err(
                            f"{r.cluster_ip} is outside the service range "
                            f"{self._service_pool.network}",
                            "spec.clusterIP",
                        )
                    elif r.cluster_ip in vips:
                        err(
                            f"{r.cluster_ip} is already used by {vips[r.cluster_ip]}",
                            "spec.clusterIP",
                        )
                    elif not old and self._service_pool.is_used(r.cluster_ip):
                        err(f"{r.cluster_ip} is already allocated", "spec.clusterIP")
                    vips[r.cluster_ip] = key
        if errors:
            raise ManifestErrors(errors)

    # --- committing -------------------------------------------------------------------------

    def commit(self, change: Change) -> None:
        """Take a planned change; call only with the result of plan_* on this model."""
        for record in change.delete:
            self._pod_pools[record.node].release(record.ip)
            del self.pods[record.ref]
        for record in change.create:
            self._pod_pools[record.node].claim(record.ip)
            self.pods[record.ref] = record
        for record in change.relabel:
            self.pods[record.ref] = record
        for ref, old in self.services.items():
            if ref not in change.services:
                self._service_pool.release(old.vip)
        for ref, new in change.services.items():
            if ref not in self.services:
                self._service_pool.claim(new.vip)
        self.services = dict(change.services)
        self.resources = change.resources


class _PoolView:
    """Allocation against a pool without mutating it, for planning."""

    def __init__(self, pool: Pool, *, extra_taken: set[str] | None = None) -> None:
        self._pool = pool
        self._taken = set(extra_taken or ())

    def allocate(self, _ref: object) -> str:
        for ip in self._pool.candidates():
            if ip not in self._taken and not self._pool.is_used(ip):
                self._taken.add(ip)
                return ip
        raise AddressExhausted(f"no free address left in {self._pool.network}")


def _pod_ip(pool: _PoolView, node: str, key: ResourceKey, field: str) -> str:
    """An address on `node` for a pod of `key`; a full node range is the manifest's error."""
    try:
        return pool.allocate(key)
    except AddressExhausted as err:
        raise ManifestErrors(
            [ManifestError(f"{err} on {node}", resource=str(key), field=field)]
        ) from None


def _group(pod: PodRecord) -> str:
    return f"{pod.namespace}/{pod.owner}" if pod.owner else ""


def _resolve_target_port(spec: PodSpec, target: int | str) -> int | None:
    if isinstance(target, int):
        return target
    for c in spec.containers:
        for p in c.ports:
            if p.name == target:
                return p.container_port
    return None


def _collect_garbage(desired: dict[ResourceKey, Resource]) -> None:
    """Kubernetes' garbage collector: an object whose owners (ownerReferences, same
    namespace) are all gone goes too, and what it owns after it."""
    while True:
        orphans = [
            key
            for key, r in desired.items()
            if r.metadata.owner_references
            and all(
                ResourceKey(o.kind, key.namespace, o.name) not in desired
                for o in r.metadata.owner_references
            )
        ]
        if not orphans:
            return
        for key in orphans:
            del desired[key]
