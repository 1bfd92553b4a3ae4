"""Name resolution in pods: a hosts file per pod and Kubernetes' service env variables."""

from __future__ import annotations

import re

from lab.model import ServiceRecord

CLUSTER_DOMAIN = "cluster.local"


def hosts_file(pod_name: str, pod_ip: str, namespace: str, services: list[ServiceRecord]) -> str:
    """`<svc>` (same namespace), `<svc>.<ns>`, `<svc>.<ns>.svc`, and the FQDN for each VIP."""
    lines = [
        "# written by the weft lab; rewritten whenever services change",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        f"{pod_ip}\t{pod_name}",
    ]
    for record in sorted(services, key=lambda r: r.ref):
        ns, name = record.ref
        names = [f"{name}.{ns}.svc.{CLUSTER_DOMAIN}", f"{name}.{ns}.svc", f"{name}.{ns}"]
        if ns == namespace:
            names.append(name)
        lines.append(f"{record.vip}\t{' '.join(names)}")
    return "\n".join(lines) + "\n"


def resolv_conf(namespace: str) -> str:
    # No DNS server in the lab: names resolve from the hosts file; a miss fails fast instead
    # of waiting on the host's resolvers, which a pod cannot reach.
    return (
        f"search {namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}\n"
        "nameserver 127.0.0.53\n"
        "options timeout:1 attempts:1\n"
    )


def _env_prefix(service_name: str) -> str:
    return re.sub(r"[^A-Z0-9_]", "_", service_name.upper())


def service_env(namespace: str, services: list[ServiceRecord]) -> dict[str, str]:
    """The docker-links-style variables kubelet sets for services of the pod's namespace."""
    env: dict[str, str] = {}
    for record in sorted(services, key=lambda r: r.ref):
        ns, name = record.ref
        if ns != namespace:
            continue
        prefix = _env_prefix(name)
        first = record.service.ports[0]
        env[f"{prefix}_SERVICE_HOST"] = record.vip
        env[f"{prefix}_SERVICE_PORT"] = str(first.port)
        for port in record.service.ports:
            if port.name:
                env[f"{prefix}_SERVICE_PORT_{_env_prefix(port.name)}"] = str(port.port)
            proto = port.protocol.lower()
            base = f"{prefix}_PORT_{port.port}_{port.protocol}"
            env[base] = f"{proto}://{record.vip}:{port.port}"
            env[f"{base}_PROTO"] = proto
            env[f"{base}_PORT"] = str(port.port)
            env[f"{base}_ADDR"] = record.vip
        env[f"{prefix}_PORT"] = f"{first.protocol.lower()}://{record.vip}:{first.port}"
    return env
