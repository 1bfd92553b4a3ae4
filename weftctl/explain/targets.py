"""SRC and DST of `weftctl why`, resolved against the mesh state. Pure.

SRC is `NAMESPACE/POD` (or `NAMESPACE/WORKLOAD`, a Deployment's name: its first pod by name).
DST is `NAMESPACE/POD[:PORT]`, `SERVICE.NAMESPACE[:PORT]` (a full
`SERVICE.NAMESPACE.svc.cluster.local` too) or `IP:PORT`: a Service VIP is that Service, a pod
IP that workload, any other address is outside the mesh. A name the mesh does not know is a
TargetError listing close matches; a Service without a port takes its first port, a pod
without one is an error naming the ports its Services target.
"""

from __future__ import annotations

import difflib
import ipaddress
from dataclasses import dataclass

from meshcore.meshstate import CLUSTER_DOMAIN, MeshService, Workload
from weftctl.explain.model import TargetError
from ztunnel.state import MeshView


@dataclass(frozen=True)
class Destination:
    ip: str
    port: int
    workload: Workload | None = None  # addressed by pod name or pod IP
    service: MeshService | None = None  # addressed by name or VIP

    @property
    def kind(self) -> str:
        return "service" if self.service else "pod" if self.workload else "address"


def workloads(view: MeshView) -> dict[tuple[str, str], Workload]:
    return {(w.namespace, w.name): w for w in view.by_ip.values()}


def services(view: MeshView) -> dict[tuple[str, str], MeshService]:
    return {(s.namespace, s.name): s for s in view.by_vip.values()}


def _close(wanted: str, known: list[str], what: str) -> str:
    close = difflib.get_close_matches(wanted, known, n=5, cutoff=0.5)
    if close:
        return f"{what} {wanted} not found; did you mean: {', '.join(close)}?"
    listed = ", ".join(sorted(known)[:10]) or "none"
    return f"{what} {wanted} not found (known: {listed}{', ...' if len(known) > 10 else ''})"


def _workload(view: MeshView, namespace: str, name: str) -> Workload | None:
    """The pod `name`, or else the first pod (by name) of the workload `name` (a Deployment's
    pods are `<name>-<hash>-<xxxxx>`): people name what they deployed, not a replica."""
    found = workloads(view)
    if (namespace, name) in found:
        return found[(namespace, name)]
    replicas = sorted(
        (w for (ns, _), w in found.items() if ns == namespace and w.workload_name == name),
        key=lambda w: w.name,
    )
    return replicas[0] if replicas else None


def _port(text: str, what: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise TargetError(f"{what}: port {text!r} is not a number from 1 to 65535")
    return int(text)


def source(view: MeshView, text: str) -> Workload:
    """SRC `NAMESPACE/POD`: the workload."""
    namespace, slash, name = text.partition("/")
    if not slash or not namespace or not name or ":" in name:
        raise TargetError(f"source {text!r}: expected NAMESPACE/POD")
    w = _workload(view, namespace, name)
    if w is None:
        raise TargetError(_close(text, [f"{ns}/{n}" for ns, n in workloads(view)], "pod"))
    return w


def destination(view: MeshView, text: str) -> Destination:
    """DST in any of its three forms."""
    if "/" in text:
        return _pod(view, text)
    host, colon, port_text = text.rpartition(":")
    if not colon:
        host, port_text = text, ""
    try:
        ip = str(ipaddress.ip_address(host))
    except ValueError:
        return _service(view, text, host, port_text)
    if not port_text:
        raise TargetError(f"destination {text!r}: IP:PORT needs a port")
    port = _port(port_text, f"destination {text!r}")
    service = view.by_vip.get(ip)
    if service is not None:
        return Destination(ip, port, service=service)
    return Destination(ip, port, workload=view.by_ip.get(ip))


def _pod(view: MeshView, text: str) -> Destination:
    ref, colon, port_text = text.partition(":")
    namespace, _, name = ref.partition("/")
    w = _workload(view, namespace, name)
    if w is None:
        raise TargetError(_close(ref, [f"{ns}/{n}" for ns, n in workloads(view)], "pod"))
    if not w.addresses:
        raise TargetError(f"pod {ref} has no address yet")
    if not colon:
        targets = sorted({t for m in w.services for t in m.ports.values()})
        hint = f" (its Services target {', '.join(map(str, targets))})" if targets else ""
        raise TargetError(f"destination {text!r}: give the pod's port, {ref}:PORT{hint}")
    return Destination(w.addresses[0], _port(port_text, f"destination {text!r}"), workload=w)


def _service(view: MeshView, text: str, host: str, port_text: str) -> Destination:
    name_ns = host.removesuffix(f".svc.{CLUSTER_DOMAIN}").removesuffix(".svc")
    name, dot, namespace = name_ns.partition(".")
    known = services(view)
    svc = known.get((namespace, name)) if dot and "." not in namespace else None
    if svc is None:
        raise TargetError(
            _close(name_ns, [f"{n}.{ns}" for ns, n in known], "service")
            + " (DST is NAMESPACE/POD[:PORT], SERVICE.NAMESPACE[:PORT] or IP:PORT)"
        )
    if not svc.addresses:
        raise TargetError(f"service {name}.{namespace} has no ClusterIP")
    if not svc.ports:
        raise TargetError(f"service {name}.{namespace} has no ports")
    if port_text:
        port = _port(port_text, f"destination {text!r}")
        if all(p.port != port for p in svc.ports):
            listed = ", ".join(str(p.port) for p in svc.ports)
            raise TargetError(f"service {name}.{namespace} has no port {port} (ports: {listed})")
    else:
        port = svc.ports[0].port
    return Destination(svc.addresses[0], port, service=svc)
