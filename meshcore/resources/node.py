"""Node (`v1`): the machines a cluster knows, as the API reports them.

Read from a Kubernetes API only (the lab's folder has none): the controller checks that a
pod's `spec.nodeName` names a Node the API knows. Only the name, labels and InternalIP
addresses are kept; the rest of a Node (capacity, conditions, images...) changes nothing in the
mesh and is ignored.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from meshcore.resources.core import ObjectMeta, ResourceKey, parse_metadata
from meshcore.resources.errors import ManifestError
from meshcore.resources.fields import Fields
from meshcore.resources.names import check_dns_subdomain

INTERNAL_IP = "InternalIP"
MAX_ADDRESSES = 100

_IGNORED_STATUS = frozenset(
    {
        "capacity",
        "allocatable",
        "conditions",
        "daemonEndpoints",
        "nodeInfo",
        "images",
        "volumesInUse",
        "volumesAttached",
        "config",
        "phase",
        "runtimeHandlers",
        "features",
    }
)


@dataclass(frozen=True)
class Node:
    metadata: ObjectMeta
    internal_ips: tuple[str, ...] = ()
    kind = "Node"

    @property
    def key(self) -> ResourceKey:
        return ResourceKey(self.kind, "", self.metadata.name)


def parse_node(f: Fields, ignored: list[str]) -> Node:
    meta, ign = parse_metadata(f.raw("metadata"), "metadata", namespaced=False)
    check_dns_subdomain(meta.name, "metadata.name")
    ignored.extend(ign)
    f.raw("spec")  # podCIDR, taints, providerID...: the scheduler's, not the mesh's
    internal: list[str] = []
    if f.has("status"):
        status = Fields(f.raw("status"), "status", ignored=_IGNORED_STATUS)
        items = list(status.objects("addresses"))
        if len(items) > MAX_ADDRESSES:
            raise status.fail("addresses", f"at most {MAX_ADDRESSES} addresses, got {len(items)}")
        for path, item in items:
            a = Fields(item, path)
            kind = a.string("type", required=True)
            address = a.string("address", required=True)
            a.done()
            if kind != INTERNAL_IP:
                continue  # Hostname, ExternalIP, ExternalDNS...
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ManifestError(
                    f"{address!r} is not an IP address", field=f"{path}.address"
                ) from None
            internal.append(address)
        ignored.extend(status.done())
    return Node(meta, tuple(internal))
