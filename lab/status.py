"""The lab's state as plain data, for `weftctl lab status` (table or -o json)."""

from __future__ import annotations

from typing import Any

from lab.model import ClusterModel
from lab.runtime import LabRuntime
from lab.state import LabRecord


def lab_status(
    record: LabRecord, phase: str, error: str, model: ClusterModel, runtime: LabRuntime
) -> dict[str, Any]:
    pods = []
    for ref, pod in sorted(model.pods.items()):
        rt = runtime.pods.get(ref)
        pods.append(
            {
                "namespace": pod.namespace,
                "name": pod.name,
                "uid": pod.uid,
                "node": pod.node,
                "ip": pod.ip,
                "phase": rt.phase if rt else "Pending",
                "ready": bool(rt and rt.ready),
                "restarts": sum(c.status.restarts for c in rt.containers) if rt else 0,
                "labels": dict(pod.labels),
                "service_account": pod.spec.service_account_name,
                "owner": pod.owner,
                "netns": rt.netns if rt else "",
                "cgroup": rt.cgroup if rt else "",
                "env": rt.env if rt else {},
                "containers": [
                    {
                        "name": c.spec.name.rsplit("/", 1)[-1],
                        "state": c.status.state.value,
                        "pid": c.status.pid,
                        "exit_code": c.status.exit_code,
                        "reason": c.status.reason,
                        "restarts": c.status.restarts,
                        "log": str(c.spec.log_path),
                        "cgroup": c.spec.cgroup,
                    }
                    for c in (rt.containers if rt else [])
                ],
            }
        )
    by_service: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for se in model.service_endpoints(runtime.ready_pods()):
        by_service.setdefault((se.namespace, se.service), []).append(
            {
                "name": se.port_name,
                "port": se.port,
                "protocol": se.protocol,
                "endpoints": [f"{e.ip}:{e.port}" for e in se.endpoints],
                "endpoint_pods": [f"{e.pod[0]}/{e.pod[1]}" for e in se.endpoints],
            }
        )
    services = []
    for ref, svc in sorted(model.services.items()):
        services.append(
            {
                "namespace": ref[0],
                "name": ref[1],
                "vip": svc.vip,
                "selector": dict(svc.service.selector),
                "ports": by_service.get(ref, []),
            }
        )
    counts: dict[str, int] = {}
    for pod in model.pods.values():
        counts[pod.node] = counts.get(pod.node, 0) + 1
    return {
        "name": record.name,
        "id": record.lab_id,
        "phase": phase,
        "error": error,
        "created": record.created,
        "config": {
            "nodes": record.config.nodes,
            "underlay_cidr": record.config.underlay_cidr,
            "pod_cidr": record.config.pod_cidr,
            "service_cidr": record.config.service_cidr,
        },
        "nodes": [
            {
                "name": n.name,
                "underlay_ip": n.underlay_ip,
                "pod_cidr": n.pod_cidr,
                "netns": runtime.names.node_netns(n.name),
                "pods": counts.get(n.name, 0),
            }
            for n in model.nodes
        ],
        "namespaces": [
            {"name": k, "labels": dict(v)} for k, v in sorted(model.namespaces().items())
        ],
        "pods": pods,
        "services": services,
    }
