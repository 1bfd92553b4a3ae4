"""Name resolution in pods: hosts file lines per service and kubelet's service variables."""

from __future__ import annotations

import textwrap

from lab.dns import hosts_file, resolv_conf, service_env
from lab.model import ServiceRecord
from meshcore.resources import Service, documents_from_text, parse_documents


def records(text: str, *vips: str) -> list[ServiceRecord]:
    """Services from a manifest, given these virtual IPs in order."""
    parsed = parse_documents(documents_from_text(textwrap.dedent(text), "services.yaml"))
    services = [p.resource for p in parsed if isinstance(p.resource, Service)]
    return [ServiceRecord(s, vip) for s, vip in zip(services, vips, strict=True)]


SERVICES = records(
    """
    apiVersion: v1
    kind: Service
    metadata: {name: web, namespace: shop}
    spec:
      ports:
        - {name: http, port: 80, targetPort: 8080}
        - {name: grpc-api, port: 9090}
        - {name: dns, port: 53, protocol: UDP}
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: redis-primary, namespace: shop}
    spec:
      ports: [{port: 6379}]
    ---
    apiVersion: v1
    kind: Service
    metadata: {name: api, namespace: default}
    spec:
      ports: [{port: 443}]
    """,
    "198.19.0.10",
    "198.19.0.11",
    "198.19.0.12",
)


def test_hosts_file_names_every_service_and_short_names_only_in_the_pods_namespace() -> None:
    text = hosts_file("client-7d4f", "198.18.128.5", "shop", SERVICES)

    assert text == (
        "# written by the weft lab; rewritten whenever services change\n"
        "127.0.0.1\tlocalhost\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n"
        "198.18.128.5\tclient-7d4f\n"
        "198.19.0.12\tapi.default.svc.cluster.local api.default.svc api.default\n"
        "198.19.0.11\tredis-primary.shop.svc.cluster.local redis-primary.shop.svc "
        "redis-primary.shop redis-primary\n"
        "198.19.0.10\tweb.shop.svc.cluster.local web.shop.svc web.shop web\n"
    )


def test_hosts_file_without_services_holds_localhost_and_the_pod() -> None:
    assert hosts_file("p", "10.0.0.1", "default", []).splitlines()[1:] == [
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
        "10.0.0.1\tp",
    ]


def test_resolv_conf_searches_the_pods_namespace_first() -> None:
    assert resolv_conf("shop") == (
        "search shop.svc.cluster.local svc.cluster.local cluster.local\n"
        "nameserver 127.0.0.53\n"
        "options timeout:1 attempts:1\n"
    )


def test_service_env_sets_kubelets_variables_for_services_of_the_namespace() -> None:
    assert service_env("shop", SERVICES) == {
        # redis-primary: one unnamed port, the example from the Kubernetes docs
        "REDIS_PRIMARY_SERVICE_HOST": "198.19.0.11",
        "REDIS_PRIMARY_SERVICE_PORT": "6379",
        "REDIS_PRIMARY_PORT": "tcp://198.19.0.11:6379",
        "REDIS_PRIMARY_PORT_6379_TCP": "tcp://198.19.0.11:6379",
        "REDIS_PRIMARY_PORT_6379_TCP_PROTO": "tcp",
        "REDIS_PRIMARY_PORT_6379_TCP_PORT": "6379",
        "REDIS_PRIMARY_PORT_6379_TCP_ADDR": "198.19.0.11",
        # web: named ports; the first port is the service's port
        "WEB_SERVICE_HOST": "198.19.0.10",
        "WEB_SERVICE_PORT": "80",
        "WEB_SERVICE_PORT_HTTP": "80",
        "WEB_SERVICE_PORT_GRPC_API": "9090",
        "WEB_SERVICE_PORT_DNS": "53",
        "WEB_PORT": "tcp://198.19.0.10:80",
        "WEB_PORT_80_TCP": "tcp://198.19.0.10:80",
        "WEB_PORT_80_TCP_PROTO": "tcp",
        "WEB_PORT_80_TCP_PORT": "80",
        "WEB_PORT_80_TCP_ADDR": "198.19.0.10",
        "WEB_PORT_9090_TCP": "tcp://198.19.0.10:9090",
        "WEB_PORT_9090_TCP_PROTO": "tcp",
        "WEB_PORT_9090_TCP_PORT": "9090",
        "WEB_PORT_9090_TCP_ADDR": "198.19.0.10",
        "WEB_PORT_53_UDP": "udp://198.19.0.10:53",
        "WEB_PORT_53_UDP_PROTO": "udp",
        "WEB_PORT_53_UDP_PORT": "53",
        "WEB_PORT_53_UDP_ADDR": "198.19.0.10",
    }


def test_service_env_of_a_namespace_without_services_is_empty() -> None:
    assert service_env("empty", SERVICES) == {}
