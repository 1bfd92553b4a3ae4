"""Steering after a Service DNAT: the node's nftables table `weft_steer`.

weft_inbound steers at tc ingress, which comes before netfilter: a connection to a Service
VIP still carries the VIP there, and only kube-proxy's DNAT (prerouting, priority dstnat)
picks the endpoint. When the endpoint is an enrolled pod of this node, the packet would then
be forwarded straight to the pod (where weft_guard drops it). This table's prerouting chain
runs just after the DNAT and hands such a connection to ztunnel's inbound plaintext listener
the way Istio's TPROXY capture does: `tproxy` assigns the SYN to the listener and the steer
mark routes it to the node's stack, whose socket then sees the endpoint as its local address
(what ztunnel admits by, STRICT and policy included); the connection is marked so that its
later packets go the same way. The replies leave from the node and conntrack turns their
source back into the VIP, as for any DNATed connection.

Only connections the node itself DNATed, to pods enrolled here, are touched. With no
listener the rule does not apply and weft_guard drops the SYN: fail closed.

`render()` is pure: the whole table as one nft script, replaced atomically; `apply()` loads it
in the agent's own network namespace (the node's).
"""

from __future__ import annotations

import ipaddress
import subprocess
from collections.abc import Iterable

TABLE = "weft_steer"
# Just after kube-proxy's DNAT (nft `dstnat` and iptables' nat PREROUTING are both -100),
# and before the routing decision.
PRIORITY = "dstnat + 10"


class NftError(RuntimeError):
    """nft refused the table; the message carries its reason."""


def render(enrolled_ips: Iterable[str], mark: int, port: int) -> str:
    """The table, for this node's enrolled pod addresses, the steer mark and ztunnel's
    inbound plaintext port."""
    ips = sorted({str(ipaddress.IPv4Address(ip)) for ip in enrolled_ips}, key=_ip_key)
    elements = f" elements = {{ {', '.join(ips)} }};" if ips else ""
    return "\n".join(
        [
            f"table ip {TABLE}",  # create-if-missing so the delete below always succeeds
            f"delete table ip {TABLE}",
            f"table ip {TABLE} {{",
            f"  set enrolled {{ type ipv4_addr;{elements} }}",
            "  chain prerouting {",
            f"    type filter hook prerouting priority {PRIORITY}; policy accept;",
            "    # the rest of a connection steered below: to the node's stack, to its socket",
            f"    ct direction original ct mark & {mark:#x} == {mark:#x}"
            f" meta mark set meta mark | {mark:#x}",
            "    # a new connection that this node's Service DNAT sent to an enrolled pod here",
            "    ct status dnat ip daddr @enrolled tcp flags & (syn | ack) == syn"
            f" tproxy to :{port} meta mark set meta mark | {mark:#x}"
            f" ct mark set ct mark | {mark:#x}",
            "  }",
            "}",
            "",
        ]
    )


def _ip_key(ip: str) -> int:
    return int(ipaddress.IPv4Address(ip))


def apply(script: str) -> None:
    """Load a rendered table into this process's network namespace (one transaction)."""
    proc = subprocess.run(
        ["nft", "-f", "-"], input=script, text=True, capture_output=True, check=False
    )
    if proc.returncode != 0:
        raise NftError(f"nft refused table {TABLE}: {proc.stderr.strip()}")
