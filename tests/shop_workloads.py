"""A workload of the `shop` namespace on node-a, as the controller's tests build them."""

from __future__ import annotations

from meshcore.meshstate import Workload


def wl(name: str, ip: str = "10.244.1.1", *, ready: bool = True) -> Workload:
    return Workload(
        uid=f"shop/{name}",
        name=name,
        namespace="shop",
        service_account="default",
        identity="spiffe://cluster.local/ns/shop/sa/default",
        node="node-a",
        node_address="192.168.50.11",
        addresses=(ip,),
        labels={"app": name},
        enrolled=True,
        ready=ready,
    )
