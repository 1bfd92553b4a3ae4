"""The lab's cluster objects as an API server would hold them, written as YAML files.

This folder is the lab's source of truth for the controller (its LocalSource watches it):
everything applied, as written, plus what the cluster decides: Services with their
allocated clusterIP, one Pod object per running pod (Deployment pods included) with
uid, nodeName and a status (phase, podIP, hostIP, Ready condition), and the `status` that
controllers wrote for an object (the waypoint deployer's Gateway status), as the status
subresource keeps it apart from what users apply.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from lab.addressing import NodePlan
from lab.model import ClusterModel
from meshcore.resources import ResourceKey


def file_name(kind: str, namespace: str, name: str) -> str:
    return f"{kind}.{namespace or '_'}.{name}.yaml"


def _pod_spec(raw: Mapping[ResourceKey, Any], owner_key: ResourceKey) -> dict[str, Any]:
    doc = raw.get(owner_key)
    if not isinstance(doc, dict):
        return {}
    if owner_key.kind == "Deployment":
        spec = doc.get("spec", {}).get("template", {}).get("spec", {})
    else:
        spec = doc.get("spec", {})
    return copy.deepcopy(spec) if isinstance(spec, dict) else {}


def cluster_objects(
    model: ClusterModel,
    raw: Mapping[ResourceKey, Any],
    pod_status: Mapping[tuple[str, str], tuple[str, bool]],
    statuses: Mapping[ResourceKey, Mapping[str, Any]] | None = None,
) -> dict[str, str]:
    """File name -> YAML text for every object. `pod_status`: ref -> (phase, ready)."""
    return {
        name: yaml.safe_dump(doc, sort_keys=True)
        for name, doc in cluster_docs(model, raw, pod_status, statuses).items()
    }


def cluster_docs(
    model: ClusterModel,
    raw: Mapping[ResourceKey, Any],
    pod_status: Mapping[tuple[str, str], tuple[str, bool]],
    statuses: Mapping[ResourceKey, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """File name -> object (a Kubernetes-shaped dict) for every object."""
    nodes: dict[str, NodePlan] = {n.name: n for n in model.nodes}
    out: dict[str, Any] = {}
    for key, doc in raw.items():
        if key not in model.resources or key.kind == "Pod":
            continue
        if key.kind == "Service" and isinstance(doc, dict):
            record = model.services.get((key.namespace, key.name))
            if record is not None:
                doc = copy.deepcopy(doc)
                doc.setdefault("spec", {})["clusterIP"] = record.vip
        if statuses and key in statuses and isinstance(doc, dict):
            doc = {**doc, "status": copy.deepcopy(dict(statuses[key]))}
        out[file_name(key.kind, key.namespace, key.name)] = doc
    for ref, pod in sorted(model.pods.items()):
        owner = (
            ResourceKey("Deployment", pod.namespace, pod.owner.split("/", 1)[1])
            if pod.owner
            else ResourceKey("Pod", pod.namespace, pod.name)
        )
        spec = _pod_spec(raw, owner)
        spec["nodeName"] = pod.node
        phase, ready = pod_status.get(ref, ("Pending", False))
        obj = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod.name,
                "namespace": pod.namespace,
                "uid": pod.uid,
                "labels": dict(pod.labels),
                **({"annotations": dict(pod.annotations)} if pod.annotations else {}),
            },
            "spec": spec,
            "status": {
                "phase": phase,
                "podIP": pod.ip,
                "hostIP": nodes[pod.node].underlay_ip,
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            },
        }
        out[file_name("Pod", pod.namespace, pod.name)] = obj
    return out


def sync_folder(folder: Path, files: Mapping[str, str]) -> int:
    """Make `folder` hold exactly `files`; write changed ones atomically. Returns writes."""
    folder.mkdir(parents=True, exist_ok=True)
    writes = 0
    for existing in folder.iterdir():
        if existing.name not in files:
            existing.unlink()
            writes += 1
    for name, text in files.items():
        path = folder / name
        try:
            if path.read_text() == text:
                continue
        except FileNotFoundError:
            pass
        tmp = folder / f".{name}.tmp"
        tmp.write_text(text)
        os.replace(tmp, path)
        writes += 1
    return writes
