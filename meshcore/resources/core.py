"""Typed core Kubernetes kinds: Namespace, ServiceAccount, Pod, Deployment, Service.

Only the fields a mesh (and the lab that stands in for a cluster) acts on are modelled.
Fields that real manifests commonly carry but that change nothing here (resources, probes,
securityContext...) are accepted and reported as ignored; any other field is an error, as
with `kubectl apply --validate=strict`.
"""

from __future__ import annotations

import enum
import hashlib
import ipaddress
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeAlias

from meshcore.ports import PortError, parse_port
from meshcore.resources.errors import ManifestError
from meshcore.resources.fields import Fields
from meshcore.resources.names import (
    check_dns_label,
    check_dns_subdomain,
    check_env_name,
    check_label_key,
    check_labels,
    check_port_name,
)

DEFAULT_NAMESPACE = "default"
DEFAULT_SERVICE_ACCOUNT = "default"

_IGNORED_META = frozenset(
    {
        "creationTimestamp",
        "resourceVersion",
        "generation",
        "managedFields",
        "finalizers",
        "selfLink",
    }
)
_IGNORED_CONTAINER = frozenset(
    {
        "resources",
        "imagePullPolicy",
        "securityContext",
        "livenessProbe",
        "readinessProbe",
        "startupProbe",
        "volumeMounts",
        "terminationMessagePath",
        "terminationMessagePolicy",
        "stdin",
        "tty",
        "lifecycle",
        "workingDir",
    }
)
_IGNORED_POD_SPEC = frozenset(
    {
        "volumes",
        "securityContext",
        "tolerations",
        "affinity",
        "nodeSelector",
        "dnsPolicy",
        "hostname",
        "subdomain",
        "imagePullSecrets",
        "priorityClassName",
        "schedulerName",
        "automountServiceAccountToken",
        "enableServiceLinks",
        "topologySpreadConstraints",
    }
)
_IGNORED_DEPLOYMENT_SPEC = frozenset(
    {"strategy", "minReadySeconds", "revisionHistoryLimit", "progressDeadlineSeconds", "paused"}
)
_IGNORED_SERVICE_SPEC = frozenset(
    {
        "sessionAffinity",
        "ipFamilies",
        "ipFamilyPolicy",
        "internalTrafficPolicy",
        "publishNotReadyAddresses",
        "externalIPs",
        "sessionAffinityConfig",
        # NodePort and LoadBalancer: how the Service is reached from outside the cluster,
        # which the mesh leaves to kube-proxy and the load balancer
        "externalTrafficPolicy",
        "healthCheckNodePort",
        "allocateLoadBalancerNodePorts",
        "loadBalancerClass",
        "loadBalancerIP",
        "loadBalancerSourceRanges",
    }
)
# In the mesh, a NodePort or LoadBalancer Service is its ClusterIP (both have one), as Istio
# treats them.
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
EXTERNAL_NAME_UNSUPPORTED = (
    "ExternalName Services are not supported yet: weft leaves this Service out of the mesh "
    "(DNS still answers its name with the external one)"
)
HEADLESS_UNSUPPORTED = (
    "headless Services are not supported yet: weft leaves this Service out of the mesh; its "
    "pods are still in it and reachable by their own addresses"
)
_IGNORED_TOP = frozenset({"status"})

# Downward-API field paths the lab can fill in for `env[].valueFrom.fieldRef`.
FIELD_REF_PATHS = frozenset(
    {
        "metadata.name",
        "metadata.namespace",
        "metadata.uid",
        "spec.nodeName",
        "spec.serviceAccountName",
        "status.podIP",
        "status.hostIP",
    }
)


class RestartPolicy(enum.Enum):
    ALWAYS = "Always"
    ON_FAILURE = "OnFailure"
    NEVER = "Never"


@dataclass(frozen=True, order=True, slots=True)  # slotted: a node holds one per pod
class ResourceKey:
    kind: str
    namespace: str  # "" for cluster-scoped kinds
    name: str

    def __str__(self) -> str:
        if self.namespace:
            return f"{self.kind} {self.namespace}/{self.name}"
        return f"{self.kind} {self.name}"


@dataclass(frozen=True)
class OwnerReference:
    """The object this one belongs to (same namespace): deleting it deletes this one too,
    as Kubernetes' garbage collector does. Set by controllers (weft's waypoint deployer)."""

    api_version: str
    kind: str
    name: str
    uid: str = ""  # required by Kubernetes; the lab matches owners by kind and name
    controller: bool = False


@dataclass(frozen=True)
class ObjectMeta:
    name: str
    namespace: str = ""
    labels: Mapping[str, str] = field(default_factory=dict)
    annotations: Mapping[str, str] = field(default_factory=dict)
    uid: str = ""  # set by the cluster (API server, or the lab), not by users
    owner_references: tuple[OwnerReference, ...] = ()


@dataclass(frozen=True)
class EnvVar:
    name: str
    value: str = ""
    field_ref: str = ""  # a downward-API path, e.g. "metadata.labels['version']"


@dataclass(frozen=True)
class ContainerPort:
    container_port: int
    name: str = ""
    protocol: str = "TCP"


@dataclass(frozen=True)
class Container:
    name: str
    image: str = ""
    command: tuple[str, ...] = ()
    args: tuple[str, ...] = ()
    env: tuple[EnvVar, ...] = ()
    ports: tuple[ContainerPort, ...] = ()


@dataclass(frozen=True)
class PodSpec:
    containers: tuple[Container, ...]
    node_name: str = ""
    service_account_name: str = DEFAULT_SERVICE_ACCOUNT
    restart_policy: RestartPolicy = RestartPolicy.ALWAYS
    termination_grace_period_seconds: int = 5

    def fingerprint(self) -> str:
        """A short stable hash of the spec, like Deployment's pod-template-hash."""
        canonical = json.dumps(_plain(self), sort_keys=True, default=str)
        return hashlib.sha256(canonical.encode()).hexdigest()[:10]


@dataclass(frozen=True)
class PodStatus:
    """What the cluster reports about a running pod (kubelet's part of the object)."""

    phase: str = "Pending"
    pod_ip: str = ""
    host_ip: str = ""
    ready: bool = False


@dataclass(frozen=True)
class Namespace:
    metadata: ObjectMeta
    kind = "Namespace"

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.kind, "", self.metadata.name)


@dataclass(frozen=True)
class ServiceAccount:
    metadata: ObjectMeta
    kind = "ServiceAccount"

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.kind, self.metadata.namespace, self.metadata.name)


@dataclass(frozen=True)
class Pod:
    metadata: ObjectMeta
    spec: PodSpec
    status: PodStatus = PodStatus()
    kind = "Pod"

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.kind, self.metadata.namespace, self.metadata.name)


@dataclass(frozen=True)
class Deployment:
    metadata: ObjectMeta
    replicas: int
    selector: Mapping[str, str]
    template_metadata: ObjectMeta
    template: PodSpec
    kind = "Deployment"

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.kind, self.metadata.namespace, self.metadata.name)


@dataclass(frozen=True)
class ServicePort:
    port: int
    target_port: int | str  # a number, or the name of a container port
    name: str = ""
    protocol: str = "TCP"
    app_protocol: str = ""  # `appProtocol`: "http", "kubernetes.io/h2c", "grpc"...; "" unset


@dataclass(frozen=True)
class Service:
    metadata: ObjectMeta
    ports: tuple[ServicePort, ...]
    selector: Mapping[str, str] = field(default_factory=dict)
    cluster_ip: str = ""  # empty: allocate one
    kind = "Service"

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.kind, self.metadata.namespace, self.metadata.name)


if TYPE_CHECKING:  # those modules parse with helpers from this one, so no runtime import
    from meshcore.resources.destinationrule import DestinationRule
    from meshcore.resources.endpointslice import EndpointSlice
    from meshcore.resources.gateway import Gateway, GRPCRoute, HTTPRoute
    from meshcore.resources.meshconfig import ConfigMap
    from meshcore.resources.node import Node
    from meshcore.resources.ratelimit import RateLimitPolicy
    from meshcore.resources.requestauthn import RequestAuthentication
    from meshcore.resources.security import AuthorizationPolicy, PeerAuthentication
    from meshcore.resources.virtualservice import VirtualService

Resource: TypeAlias = (
    "Namespace | ServiceAccount | Pod | Deployment | Service"
    " | AuthorizationPolicy | PeerAuthentication | Gateway | HTTPRoute | GRPCRoute"
    " | RateLimitPolicy"
    " | DestinationRule"
    " | VirtualService"
    " | RequestAuthentication"
    " | ConfigMap"
    " | EndpointSlice"
    " | Node"
)


def _plain(value: object) -> object:
    if isinstance(value, enum.Enum):
        return value.value
    if hasattr(value, "__dataclass_fields__"):
        return {k: _plain(getattr(value, k)) for k in value.__dataclass_fields__}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value


# --- parsing -------------------------------------------------------------------------------


def parse_metadata(raw: object, path: str, *, namespaced: bool) -> tuple[ObjectMeta, list[str]]:
    f = Fields(raw, path, ignored=_IGNORED_META)
    name = f.string("name", required=True)
    namespace = f.string("namespace")
    if namespaced:
        namespace = namespace or DEFAULT_NAMESPACE
        check_dns_label(namespace, f.sub("namespace"))
    elif namespace:
        raise f.fail("namespace", "this kind is cluster-scoped and takes no namespace")
    labels = f.string_map("labels")
    check_labels(labels, f.sub("labels"))
    annotations = f.string_map("annotations")
    f.string("generateName")  # accepted for round-trips of real objects; unused
    uid = f.string("uid")
    owners = tuple(_parse_owner_reference(item, p) for p, item in f.objects("ownerReferences"))
    ignored = f.done()
    return ObjectMeta(name, namespace, labels, annotations, uid, owners), ignored


def _parse_owner_reference(raw: object, path: str) -> OwnerReference:
    f = Fields(raw, path, ignored=frozenset({"blockOwnerDeletion"}))
    api_version = f.string("apiVersion", required=True)
    kind = f.string("kind", required=True)
    name = f.string("name", required=True)
    uid = f.string("uid")
    controller = f.raw("controller")
    if controller is not None and not isinstance(controller, bool):
        raise f.fail("controller", "expected true or false")
    f.done()
    return OwnerReference(api_version, kind, name, uid, bool(controller))


def _parse_env(raw: object, path: str) -> EnvVar:
    f = Fields(raw, path)
    name = f.string("name", required=True)
    check_env_name(name, f.sub("name"))
    value = f.string("value")
    field_ref = ""
    if f.has("valueFrom"):
        vf = Fields(f.raw("valueFrom"), f.sub("valueFrom"))
        if not vf.has("fieldRef"):
            for other in ("secretKeyRef", "configMapKeyRef", "resourceFieldRef"):
                if vf.has(other):
                    raise vf.fail(other, "not supported here; use fieldRef or value")
        ref = Fields(vf.raw("fieldRef"), vf.sub("fieldRef"))
        field_ref = ref.string("fieldPath", required=True)
        ref.string("apiVersion")
        ref.done()
        vf.done()
        if field_ref not in FIELD_REF_PATHS and not (
            field_ref.startswith(("metadata.labels['", "metadata.annotations['"))
            and field_ref.endswith("']")
        ):
            raise ManifestError(
                f"unsupported fieldPath {field_ref!r}; supported: "
                + ", ".join(sorted(FIELD_REF_PATHS))
                + ", metadata.labels['KEY'], metadata.annotations['KEY']",
                field=f"{vf.sub('fieldRef')}.fieldPath",
            )
        if value:
            raise f.fail("value", "may not be given together with valueFrom")
    f.done()
    return EnvVar(name, value, field_ref)


def _parse_container_port(raw: object, path: str, ignored: list[str]) -> ContainerPort:
    f = Fields(raw, path, ignored=frozenset({"hostPort", "hostIP"}))
    port = f.integer("containerPort", required=True, minimum=1, maximum=65535)
    name = f.string("name")
    if name:
        check_port_name(name, f.sub("name"))
    protocol = _protocol(f)
    ignored.extend(f.done())
    return ContainerPort(port, name, protocol)


def _protocol(f: Fields) -> str:
    protocol = f.string("protocol", default="TCP")
    if protocol not in ("TCP", "UDP", "SCTP"):
        raise f.fail("protocol", f"must be TCP, UDP or SCTP, got {protocol!r}")
    return protocol


def _parse_container(raw: object, path: str, ignored: list[str]) -> Container:
    f = Fields(raw, path, ignored=_IGNORED_CONTAINER)
    name = f.string("name", required=True)
    check_dns_label(name, f.sub("name"))
    image = f.string("image")
    command = f.string_list("command")
    args = f.string_list("args")
    if not image and not command:
        raise f.fail("image", "required field is missing (or give a command)")
    env = tuple(_parse_env(item, p) for p, item in f.objects("env"))
    ports = tuple(_parse_container_port(item, p, ignored) for p, item in f.objects("ports"))
    _unique([p.name for p in ports if p.name], f.sub("ports"), "port name")
    ignored.extend(f.done())
    return Container(name, image, command, args, env, ports)


def parse_pod_spec(raw: object, path: str, ignored: list[str]) -> PodSpec:
    f = Fields(raw, path, ignored=_IGNORED_POD_SPEC)
    containers = tuple(_parse_container(item, p, ignored) for p, item in f.objects("containers"))
    if not containers:
        raise f.fail("containers", "a pod needs at least one container")
    _unique([c.name for c in containers], f.sub("containers"), "container name")
    node_name = f.string("nodeName")
    # Read both: real objects carry the deprecated `serviceAccount` alongside the current name.
    sa_name, sa_alias = f.string("serviceAccountName"), f.string("serviceAccount")
    sa = sa_name or sa_alias or DEFAULT_SERVICE_ACCOUNT
    check_dns_subdomain(sa, f.sub("serviceAccountName"))
    policy_text = f.string("restartPolicy", default="Always")
    try:
        policy = RestartPolicy(policy_text)
    except ValueError:
        raise f.fail(
            "restartPolicy", f"must be Always, OnFailure or Never, got {policy_text!r}"
        ) from None
    grace = f.integer("terminationGracePeriodSeconds", default=5, minimum=0, maximum=300)
    ignored.extend(f.done())
    return PodSpec(containers, node_name, sa, policy, grace)


def _unique(values: list[str], path: str, what: str) -> None:
    seen: set[str] = set()
    for v in values:
        if v in seen:
            raise ManifestError(f"duplicate {what} {v!r}", field=path)
        seen.add(v)


def parse_namespace(f: Fields, ignored: list[str]) -> Namespace:
    meta, ign = parse_metadata(f.raw("metadata"), "metadata", namespaced=False)
    check_dns_label(meta.name, "metadata.name")
    ignored.extend(ign)
    f.raw("spec")
    return Namespace(meta)


def parse_service_account(f: Fields, ignored: list[str]) -> ServiceAccount:
    meta, ign = parse_metadata(f.raw("metadata"), "metadata", namespaced=True)
    check_dns_subdomain(meta.name, "metadata.name")
    ignored.extend(ign)
    for unused in ("secrets", "imagePullSecrets", "automountServiceAccountToken"):
        f.raw(unused)
    return ServiceAccount(meta)


def parse_pod(f: Fields, ignored: list[str]) -> Pod:
    meta, ign = parse_metadata(f.raw("metadata"), "metadata", namespaced=True)
    check_dns_subdomain(meta.name, "metadata.name")
    ignored.extend(ign)
    if not f.has("spec"):
        raise f.fail("spec", "required field is missing")
    spec = parse_pod_spec(f.raw("spec"), "spec", ignored)
    status = (
        parse_pod_status(f.raw("status"), "status", ignored) if f.has("status") else PodStatus()
    )
    return Pod(meta, spec, status)


_POD_PHASES = ("Pending", "Running", "Succeeded", "Failed", "Unknown")
_IGNORED_POD_STATUS = frozenset(
    {
        "podIPs",
        "hostIPs",
        "startTime",
        "containerStatuses",
        "initContainerStatuses",
        "qosClass",
        "message",
        "reason",
        "nominatedNodeName",
        "ephemeralContainerStatuses",
        "resize",
    }
)


def parse_pod_status(raw: object, path: str, ignored: list[str]) -> PodStatus:
    """A pod's status as an API server reports it; the lab writes the same shape."""
    f = Fields(raw, path, ignored=_IGNORED_POD_STATUS)
    phase = f.string("phase", default="Pending")
    if phase not in _POD_PHASES:
        raise f.fail("phase", f"must be one of {', '.join(_POD_PHASES)}, got {phase!r}")
    pod_ip = f.string("podIP")
    host_ip = f.string("hostIP")
    for name, value in (("podIP", pod_ip), ("hostIP", host_ip)):
        if value:
            try:
                ipaddress.ip_address(value)
            except ValueError:
                raise f.fail(name, f"{value!r} is not an IP address") from None
    ready = False
    for cpath, item in f.objects("conditions"):
        cond = Fields(
            item,
            cpath,
            ignored=frozenset(
                {"lastProbeTime", "lastTransitionTime", "reason", "message", "observedGeneration"}
            ),
        )
        ctype = cond.string("type", required=True)
        cstatus = cond.string("status", required=True)
        if cstatus not in ("True", "False", "Unknown"):
            raise cond.fail("status", f"must be True, False or Unknown, got {cstatus!r}")
        if ctype == "Ready":
            ready = cstatus == "True"
        cond.done()
    ignored.extend(f.done())
    return PodStatus(phase, pod_ip, host_ip, ready)


def parse_deployment(f: Fields, ignored: list[str]) -> Deployment:
    meta, ign = parse_metadata(f.raw("metadata"), "metadata", namespaced=True)
    check_dns_subdomain(meta.name, "metadata.name")
    ignored.extend(ign)
    spec = Fields(f.raw("spec"), "spec", ignored=_IGNORED_DEPLOYMENT_SPEC)
    replicas = spec.integer("replicas", default=1, minimum=0, maximum=1000)
    sel = Fields(spec.raw("selector"), "spec.selector")
    if sel.has("matchExpressions"):
        raise sel.fail("matchExpressions", "not supported here; use matchLabels")
    selector = sel.string_map("matchLabels")
    sel.done()
    if not selector:
        raise ManifestError("required field is missing", field="spec.selector.matchLabels")
    check_labels(selector, "spec.selector.matchLabels")
    tmpl = Fields(spec.raw("template"), "spec.template")
    tmeta_raw = tmpl.raw("metadata") or {}
    if isinstance(tmeta_raw, dict):
        tmeta_raw = {**tmeta_raw, "name": meta.name, "namespace": meta.namespace}
    tmeta, ign = parse_metadata(tmeta_raw, "spec.template.metadata", namespaced=True)
    ignored.extend(ign)
    if not tmpl.has("spec"):
        raise tmpl.fail("spec", "required field is missing")
    pod_spec = parse_pod_spec(tmpl.raw("spec"), "spec.template.spec", ignored)
    tmpl.done()
    ignored.extend(spec.done())
    if pod_spec.restart_policy is not RestartPolicy.ALWAYS:
        raise ManifestError(
            "a Deployment's pods must use restartPolicy Always",
            field="spec.template.spec.restartPolicy",
        )
    for key, value in selector.items():
        if tmeta.labels.get(key) != value:
            raise ManifestError(
                f"selector {key}={value} does not match the template's labels",
                field="spec.template.metadata.labels",
            )
    return Deployment(meta, replicas, selector, tmeta, pod_spec)


def _parse_service_port(raw: object, path: str, ignored: list[str]) -> ServicePort:
    f = Fields(raw, path, ignored=frozenset({"nodePort"}))
    port = f.integer("port", required=True, minimum=1, maximum=65535)
    name = f.string("name")
    if name:
        check_port_name(name, f.sub("name"))
    protocol = _protocol(f)
    app_protocol = f.string("appProtocol")
    if app_protocol:  # a qualified name, as the API server checks it
        check_label_key(app_protocol, f.sub("appProtocol"))
    target: int | str = port
    raw_target = f.raw("targetPort")
    if isinstance(raw_target, bool):
        raise f.fail("targetPort", "expected a port number or a port name")
    if isinstance(raw_target, int):
        if not 1 <= raw_target <= 65535:
            raise f.fail("targetPort", f"must be between 1 and 65535, got {raw_target}")
        target = raw_target
    elif isinstance(raw_target, str):
        if raw_target.isascii() and raw_target.isdigit():
            try:
                target = parse_port(raw_target)
            except PortError:
                raise f.fail(
                    "targetPort", f"must be between 1 and 65535, got {int(raw_target)}"
                ) from None
        else:
            check_port_name(raw_target, f.sub("targetPort"))
            target = raw_target
    elif raw_target is not None:
        raise f.fail("targetPort", "expected a port number or a port name")
    ignored.extend(f.done())
    return ServicePort(port, target, name, protocol, app_protocol)


def parse_service(f: Fields, ignored: list[str]) -> Service:
    meta, ign = parse_metadata(f.raw("metadata"), "metadata", namespaced=True)
    check_dns_label(meta.name, "metadata.name")
    ignored.extend(ign)
    spec = Fields(f.raw("spec"), "spec", ignored=_IGNORED_SERVICE_SPEC)
    kind = spec.string("type", default="ClusterIP")
    if kind == "ExternalName":
        raise spec.fail("type", EXTERNAL_NAME_UNSUPPORTED)
    if kind not in SERVICE_TYPES:
        raise spec.fail("type", f"must be ClusterIP, NodePort or LoadBalancer, got {kind!r}")
    cluster_ip = spec.string("clusterIP")
    if cluster_ip == "None":  # before ports: a headless Service may have none
        raise spec.fail("clusterIP", HEADLESS_UNSUPPORTED)
    ports = tuple(_parse_service_port(item, p, ignored) for p, item in spec.objects("ports"))
    if not ports:
        raise spec.fail("ports", "a Service needs at least one port")
    if len(ports) > 1 and any(not p.name for p in ports):
        raise spec.fail("ports", "every port needs a name when a Service has more than one")
    _unique([p.name for p in ports if p.name], spec.sub("ports"), "port name")
    _unique([f"{p.port}/{p.protocol}" for p in ports], spec.sub("ports"), "port")
    selector = spec.string_map("selector")
    check_labels(selector, "spec.selector")
    for extra in spec.string_list("clusterIPs"):
        if extra != cluster_ip:
            raise spec.fail("clusterIPs", "must equal clusterIP (single-stack only)")
    if cluster_ip:
        try:
            ipaddress.IPv4Address(cluster_ip)
        except ValueError:
            raise spec.fail("clusterIP", f"{cluster_ip!r} is not an IPv4 address") from None
    ignored.extend(spec.done())
    return Service(meta, ports, selector, cluster_ip)
