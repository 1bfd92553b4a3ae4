"""The Kubernetes kinds the controller watches, where the API serves them, and what of each
object the mesh reads.

An API server has already validated and defaulted what it stores, and real objects carry
many fields weft never reads (volumes, probes, env from Secrets, managedFields). The same
parsers that read the lab's folder read these objects, so each object is first projected to
the fields the mesh uses: a Pod whose env names a Secret is still a mesh workload, and a field
weft does not know never turns a running pod into a "problem". weft's own kinds and the
Gateway API's are kept whole (bar server bookkeeping): their specs are exactly what the
parsers judge.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from meshcore.resources.gateway import GROUP as GATEWAY_GROUP
from meshcore.resources.groups import NETWORKING, SECURITY
from meshcore.resources.security import ROOT_NAMESPACE

Obj = dict[str, Any]

# metadata a parser reads; the rest (managedFields, resourceVersion, ...) is the server's
_METADATA_KEPT = ("name", "namespace", "labels", "annotations", "uid", "ownerReferences")


@dataclass(frozen=True)
class KubeKind:
    """One watched kind: its REST location and its projection."""

    kind: str
    group: str  # "" for core
    version: str
    plural: str
    namespaced: bool = True
    # only this namespace (e.g. the mesh ConfigMap), else every namespace
    namespace: str = ""
    # server-side filter, e.g. "metadata.name=weft"
    field_selector: str = ""
    project: Callable[[Obj], Obj] | None = None
    # weft works without it (a CRD the user has not installed is watched once it appears)
    optional: bool = False

    @property
    def api_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    def list_path(self) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespace:
            return f"{base}/namespaces/{self.namespace}/{self.plural}"
        return f"{base}/{self.plural}"

    def object_path(self, namespace: str, name: str) -> str:
        base = f"/apis/{self.group}/{self.version}" if self.group else f"/api/{self.version}"
        if self.namespaced:
            return f"{base}/namespaces/{namespace}/{self.plural}/{name}"
        return f"{base}/{self.plural}/{name}"

    def document(self, obj: Obj) -> Obj:
        """What the parsers get: kind and apiVersion set (list items lack them), projected."""
        out = dict(obj)
        out["kind"], out["apiVersion"] = self.kind, self.api_version
        return self.project(out) if self.project is not None else _without_server_fields(out)


def _metadata(obj: Obj) -> Obj:
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping):
        return {}
    return {k: meta[k] for k in _METADATA_KEPT if k in meta}


def _pick(raw: object, keys: tuple[str, ...]) -> Obj:
    if not isinstance(raw, Mapping):
        return {}
    return {k: raw[k] for k in keys if k in raw}


def _head(obj: Obj) -> Obj:
    return {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "metadata": _metadata(obj)}


def _without_server_fields(obj: Obj) -> Obj:
    """weft's kinds and the Gateway API's: all but server bookkeeping and status (which the
    controller writes, never reads)."""
    out = {k: v for k, v in obj.items() if k != "status"}
    out["metadata"] = _metadata(obj)
    return out


def project_pod(obj: Obj) -> Obj:
    spec = obj.get("spec") if isinstance(obj.get("spec"), Mapping) else {}
    assert isinstance(spec, Mapping)
    containers = []
    for c in spec.get("containers") or ():
        if isinstance(c, Mapping):
            kept = _pick(c, ("name", "image", "ports"))
            if not kept.get("image"):
                kept["image"] = "unknown"  # (the API server requires one; never run by weft)
            kept["ports"] = [
                _pick(p, ("containerPort", "name", "protocol")) for p in kept.get("ports") or ()
            ]
            containers.append(kept)
    status = obj.get("status") if isinstance(obj.get("status"), Mapping) else {}
    assert isinstance(status, Mapping)
    out = _head(obj)
    out["spec"] = {
        **_pick(spec, ("nodeName", "serviceAccountName", "serviceAccount", "restartPolicy")),
        "containers": containers,
    }
    conditions = [_pick(c, ("type", "status")) for c in status.get("conditions") or () if c]
    meta = obj.get("metadata")
    if isinstance(meta, Mapping) and meta.get("deletionTimestamp"):
        # Terminating: no longer an endpoint, as the EndpointSlice controller marks it
        # (ready: false, terminating: true), while its connections drain.
        conditions = [c for c in conditions if c.get("type") != "Ready"]
        conditions.append({"type": "Ready", "status": "False"})
    out["status"] = {**_pick(status, ("phase", "podIP", "hostIP")), "conditions": conditions}
    return out


def project_service(obj: Obj) -> Obj:
    spec = obj.get("spec") if isinstance(obj.get("spec"), Mapping) else {}
    out = _head(obj)
    out["spec"] = _pick(spec, ("type", "ports", "selector", "clusterIP", "clusterIPs"))
    ports = out["spec"].get("ports")
    if isinstance(ports, list):
        out["spec"]["ports"] = [
            _pick(p, ("name", "port", "targetPort", "protocol", "appProtocol")) for p in ports
        ]
    return out


def project_endpoint_slice(obj: Obj) -> Obj:
    """What weft reads of an EndpointSlice: addresses, conditions, the target and node of
    each endpoint, and the ports (hints, zones and hostnames are the API's, not the mesh's)."""
    out = _head(obj)
    out["addressType"] = obj.get("addressType")
    endpoints = []
    for e in obj.get("endpoints") or ():
        if isinstance(e, Mapping):
            kept = _pick(e, ("addresses", "conditions", "targetRef", "nodeName"))
            if "conditions" in kept:
                kept["conditions"] = _pick(kept["conditions"], ("ready", "serving", "terminating"))
            if "targetRef" in kept:
                kept["targetRef"] = _pick(
                    kept["targetRef"], ("apiVersion", "kind", "name", "namespace", "uid")
                )
            endpoints.append(kept)
    out["endpoints"] = endpoints
    ports = obj.get("ports")
    out["ports"] = [
        _pick(p, ("name", "port", "protocol", "appProtocol"))
        for p in (ports if isinstance(ports, list) else ())
    ]
    return out


def project_node(obj: Obj) -> Obj:
    """A Node's name, labels and InternalIP addresses (its capacity, conditions and images,
    refreshed by the kubelet every few seconds, are not the mesh's)."""
    out = _head(obj)
    status = obj.get("status") if isinstance(obj.get("status"), Mapping) else {}
    assert isinstance(status, Mapping)
    out["status"] = {
        "addresses": [
            _pick(a, ("type", "address"))
            for a in status.get("addresses") or ()
            if isinstance(a, Mapping) and a.get("type") == "InternalIP"
        ]
    }
    return out


def project_deployment(obj: Obj) -> Obj:
    spec = obj.get("spec") if isinstance(obj.get("spec"), Mapping) else {}
    assert isinstance(spec, Mapping)
    template = spec.get("template") if isinstance(spec.get("template"), Mapping) else {}
    assert isinstance(template, Mapping)
    out = _head(obj)
    pod = project_pod({"apiVersion": "v1", "kind": "Pod", **template})
    out["spec"] = {
        **_pick(spec, ("replicas",)),
        "selector": _pick(spec.get("selector"), ("matchLabels",)),
        "template": {"metadata": pod["metadata"], "spec": pod["spec"]},
    }
    return out


def project_head(obj: Obj) -> Obj:
    """Kinds read for their metadata only (Namespace, ServiceAccount)."""
    return _head(obj)


def project_configmap(obj: Obj) -> Obj:
    out = _head(obj)
    if isinstance(obj.get("data"), Mapping):
        out["data"] = dict(obj["data"])
    return out


def _crd(kind: str, group: str, plural: str, version: str = "v1") -> KubeKind:
    return KubeKind(kind, group, version, plural, optional=True)


KINDS: tuple[KubeKind, ...] = (
    KubeKind("Namespace", "", "v1", "namespaces", namespaced=False, project=project_head),
    KubeKind("ServiceAccount", "", "v1", "serviceaccounts", project=project_head),
    KubeKind("Pod", "", "v1", "pods", project=project_pod),
    KubeKind("Service", "", "v1", "services", project=project_service),
    # the endpoints of Services without a selector (controller/meshbuilder.py)
    KubeKind(
        "EndpointSlice", "discovery.k8s.io", "v1", "endpointslices", project=project_endpoint_slice
    ),
    KubeKind("Node", "", "v1", "nodes", namespaced=False, project=project_node),
    KubeKind("Deployment", "apps", "v1", "deployments", project=project_deployment),
    # meshConfig: ConfigMap weft-system/weft, key mesh (Istio: istio-system/istio)
    KubeKind(
        "ConfigMap",
        "",
        "v1",
        "configmaps",
        namespace=ROOT_NAMESPACE,
        field_selector="metadata.name=weft",
        project=project_configmap,
    ),
    _crd("AuthorizationPolicy", SECURITY.group, "authorizationpolicies"),
    _crd("PeerAuthentication", SECURITY.group, "peerauthentications"),
    _crd("RequestAuthentication", SECURITY.group, "requestauthentications"),
    _crd("VirtualService", NETWORKING.group, "virtualservices"),
    _crd("DestinationRule", NETWORKING.group, "destinationrules"),
    _crd("RateLimitPolicy", "policy.weft.dev", "ratelimitpolicies"),
    _crd("Gateway", GATEWAY_GROUP, "gateways"),
    _crd("HTTPRoute", GATEWAY_GROUP, "httproutes"),
    _crd("GRPCRoute", GATEWAY_GROUP, "grpcroutes"),
)
