"""kube-proxy's job in the lab: nftables DNAT of service VIP:port to ready endpoints.

`render()` is pure: the whole table as one nft script, replaced atomically on every change
(nft applies a file as one transaction). `apply()` loads it inside a node's namespace.
"""

from __future__ import annotations

import subprocess

from lab.model import ServiceEndpoints

# Marks a connection whose endpoint is its own source (a pod reaching itself through its
# service), so postrouting masquerades it and the reply comes back through the node.
HAIRPIN_MARK = 0x4000


def render(table: str, services: list[ServiceEndpoints]) -> str:
    lines = [
        f"table ip {table}",  # create-if-missing so the delete below always succeeds
        f"delete table ip {table}",
        f"table ip {table} {{",
        "  chain prerouting {",
        "    type nat hook prerouting priority dstnat; policy accept;",
        "    jump services",
        "  }",
        "  chain output {",
        "    type nat hook output priority -100; policy accept;",
        "    jump services",
        "  }",
        "  chain postrouting {",
        "    type nat hook postrouting priority srcnat; policy accept;",
        f"    meta mark & {HAIRPIN_MARK:#x} == {HAIRPIN_MARK:#x} masquerade",
        "  }",
        "  chain filter_forward {",
        "    type filter hook forward priority filter; policy accept;",
        "    jump no_endpoints",
        "  }",
        "  chain filter_output {",
        "    type filter hook output priority filter; policy accept;",
        "    jump no_endpoints",
        "  }",
    ]
    dispatch: list[str] = []
    empty: list[str] = []
    chains: list[str] = []
    for i, svc in enumerate(services):
        proto = svc.protocol.lower()
        if proto not in ("tcp", "udp"):
            continue
        match = f"ip daddr {svc.vip} {proto} dport {svc.port}"
        label = f"{svc.namespace}/{svc.service}:{svc.port_name or svc.port}"
        if not svc.endpoints:
            # Like kube-proxy: refuse at once instead of letting the connect time out.
            reject = "reject with tcp reset" if proto == "tcp" else "reject"
            empty.append(f'    {match} {reject} comment "{label} has no endpoints"')
            continue
        chain = f"svc_{i}"
        dispatch.append(f'    {match} jump {chain} comment "{label}"')
        n = len(svc.endpoints)
        if n == 1:
            chains.append(f"  chain {chain} {{\n    jump {chain}_ep0\n  }}")
        else:
            vmap = ", ".join(f"{j} : jump {chain}_ep{j}" for j in range(n))
            chains.append(f"  chain {chain} {{\n    numgen random mod {n} vmap {{ {vmap} }}\n  }}")
        for j, ep in enumerate(svc.endpoints):
            chains.append(
                f"  chain {chain}_ep{j} {{\n"
                f"    ip saddr {ep.ip} meta mark set meta mark | {HAIRPIN_MARK:#x}\n"
                f"    {proto} dport {svc.port} dnat to {ep.ip}:{ep.port}\n"
                "  }"
            )
    lines.append("  chain services {")
    lines.extend(dispatch)
    lines.append("  }")
    lines.append("  chain no_endpoints {")
    lines.extend(empty)
    lines.append("  }")
    lines.extend(chains)
    lines.append("}")
    return "\n".join(lines) + "\n"


def apply(netns_name: str, script: str) -> None:
    proc = subprocess.run(
        ["ip", "netns", "exec", netns_name, "nft", "-f", "-"],
        input=script,
        text=True,
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"nft in {netns_name} failed: {proc.stderr.strip()}")


def remove(netns_name: str, table: str) -> None:
    subprocess.run(
        ["ip", "netns", "exec", netns_name, "nft", "delete", "table", "ip", table],
        capture_output=True,
        check=False,
    )
