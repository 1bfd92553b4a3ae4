"""The lab's cluster, written to a Kubernetes API server (`weftctl lab up --source kubernetes`).

The lab is the cluster's scheduler, kubelets and controllers: it decides where pods run,
their addresses and readiness, and what a Deployment's pods are. With a folder source it
writes those objects as files (`lab.objects`); with a Kubernetes source it writes the same
objects to the API server, as those components would:

- a new pod is created in the API server before its sandbox exists, and takes the uid the
  server gives it (a kubelet's pod cgroup is named by that uid; so is the lab's);
- objects are written by server-side apply (field manager `weft-lab`), their `status`
  through the status subresource, and removed objects deleted;
- only what changed since the last sync is written.

`plan_sync` is the pure part; `KubeMirror` does the writing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import structlog
from kubernetes import client as kclient

from controller.kubekinds import KINDS, KubeKind
from meshcore import kubehttp

log = structlog.get_logger("lab.kubemirror")

FIELD_MANAGER = "weft-lab"
Key = tuple[str, str, str]  # kind, namespace, name

_KINDS: dict[str, KubeKind] = {k.kind: k for k in KINDS}
_KINDS["ConfigMap"] = KubeKind("ConfigMap", "", "v1", "configmaps")  # (any namespace here)
_KINDS["GatewayClass"] = KubeKind(
    "GatewayClass", "gateway.networking.k8s.io", "v1", "gatewayclasses", namespaced=False
)
# Written first (a namespace before what is in it), deleted last.
_ORDER = {"Namespace": 0, "ServiceAccount": 1, "ConfigMap": 1, "Service": 2, "Pod": 4}


class MirrorError(Exception):
    pass


def key_of(obj: Mapping[str, Any]) -> Key:
    meta = obj.get("metadata") or {}
    return str(obj.get("kind")), str(meta.get("namespace") or ""), str(meta["name"])


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()


@dataclass
class SyncPlan:
    apply: list[dict[str, Any]] = field(default_factory=list)  # without status
    status: list[tuple[Key, dict[str, Any]]] = field(default_factory=list)
    delete: list[Key] = field(default_factory=list)


@dataclass
class Synced:
    """What was last written, by object: digests of the object and of its status."""

    objects: dict[Key, str] = field(default_factory=dict)
    statuses: dict[Key, str] = field(default_factory=dict)


def plan_sync(synced: Synced, docs: Mapping[str, Mapping[str, Any]]) -> SyncPlan:
    """What to write so the API server holds `docs` (lab.objects.cluster_docs' values)."""
    plan = SyncPlan()
    wanted: dict[Key, Mapping[str, Any]] = {key_of(d): d for d in docs.values()}
    for key in sorted(wanted, key=lambda k: (_ORDER.get(k[0], 3), k)):
        doc = wanted[key]
        body = {k: v for k, v in doc.items() if k != "status"}
        if synced.objects.get(key) != _digest(body):
            plan.apply.append(dict(body))
        status = doc.get("status")
        if isinstance(status, Mapping) and synced.statuses.get(key) != _digest(status):
            plan.status.append((key, dict(status)))
    gone = [k for k in synced.objects if k not in wanted]
    plan.delete = sorted(gone, key=lambda k: (-_ORDER.get(k[0], 3), k))
    return plan


class KubeMirror:
    def __init__(self, api: kclient.ApiClient) -> None:
        self.api = api
        self.synced = Synced()
        self._lock = asyncio.Lock()

    # --- HTTP -----------------------------------------------------------------------------

    def _call(
        self,
        method: str,
        path: str,
        body: Any = None,
        content_type: str = "application/json",
        query: list[tuple[str, str]] | None = None,
        missing_ok: bool = False,
    ) -> dict[str, Any]:
        code, data = kubehttp.exchange(
            self.api, method, path, body=body, content_type=content_type, query=query
        )
        if code == 404 and missing_ok:
            return {}
        if code >= 300:
            raise MirrorError(f"{method} {path}: HTTP {code}: {data[:400]!r}")
        return json.loads(data) if data else {}

    @staticmethod
    def _kind(kind: str) -> KubeKind:
        found = _KINDS.get(kind)
        if found is None:
            raise MirrorError(f"the lab does not write {kind} objects to the API server")
        return found

    def _apply(self, obj: Mapping[str, Any]) -> dict[str, Any]:
        kind, namespace, name = key_of(obj)
        return self._call(
            "PATCH",
            self._kind(kind).object_path(namespace, name),
            obj,
            "application/apply-patch+yaml",
            [("fieldManager", FIELD_MANAGER), ("force", "true")],
        )

    def _status(self, key: Key, status: Mapping[str, Any]) -> None:
        kind, namespace, name = key
        self._call(
            "PATCH",
            self._kind(kind).object_path(namespace, name) + "/status",
            {"status": status},
            "application/merge-patch+json",
        )

    def _delete(self, key: Key) -> None:
        kind, namespace, name = key
        path = self._kind(kind).object_path(namespace, name)
        # (grace 0: the lab has already stopped a pod, as a kubelet confirms a deletion)
        body = {"propagationPolicy": "Background", "gracePeriodSeconds": 0}
        self._call("DELETE", path, body, missing_ok=True)

    # --- the lab's side -------------------------------------------------------------------

    async def create_pod(self, pod: Mapping[str, Any]) -> str:
        """Create a pod (no status yet) and return the uid the API server gave it."""
        async with self._lock:
            created = await asyncio.to_thread(self._apply, pod)
        uid = (created.get("metadata") or {}).get("uid")
        if not isinstance(uid, str) or not uid:
            raise MirrorError(f"the API server gave pod {key_of(pod)} no uid")
        return uid

    async def sync(self, docs: Mapping[str, Mapping[str, Any]]) -> int:
        """Write what changed; how many writes. A failed write is retried at the next sync
        (what it would have changed is not recorded as synced)."""
        async with self._lock:
            plan = plan_sync(self.synced, docs)
            writes = 0
            for obj in plan.apply:
                key = key_of(obj)
                try:
                    await asyncio.to_thread(self._apply, obj)
                except MirrorError as err:
                    log.warning("mirror.apply_failed", object="/".join(key), error=str(err))
                    continue
                self.synced.objects[key] = _digest(obj)
                writes += 1
            for key, status in plan.status:
                if key not in self.synced.objects:
                    continue  # (its object failed to apply)
                try:
                    await asyncio.to_thread(self._status, key, status)
                except MirrorError as err:
                    log.warning("mirror.status_failed", object="/".join(key), error=str(err))
                    continue
                self.synced.statuses[key] = _digest(status)
                writes += 1
            for key in plan.delete:
                try:
                    await asyncio.to_thread(self._delete, key)
                except MirrorError as err:
                    log.warning("mirror.delete_failed", object="/".join(key), error=str(err))
                    continue
                self.synced.objects.pop(key, None)
                self.synced.statuses.pop(key, None)
                writes += 1
            return writes
