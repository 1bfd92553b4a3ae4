"""kube-proxy's nft script, rendered as pure text: dispatch, load balancing, rejects, hairpin."""

from __future__ import annotations

import pytest

from lab.kubeproxy import HAIRPIN_MARK, render
from lab.model import Endpoint, ServiceEndpoints

TABLE = "weft_kubeproxy"


def endpoint(ip: str, port: int = 8080) -> Endpoint:
    return Endpoint(("shop", f"pod-{ip}"), ip, port, "node-1")


def svc(
    *ips: str,
    name: str = "web",
    port_name: str = "http",
    vip: str = "198.19.0.10",
    port: int = 80,
    protocol: str = "TCP",
    target: int = 8080,
) -> ServiceEndpoints:
    return ServiceEndpoints(
        "shop", name, port_name, vip, port, protocol, tuple(endpoint(ip, target) for ip in ips)
    )


def chains(script: str) -> dict[str, list[str]]:
    """Chain name -> its rule lines, stripped, from a rendered script."""
    out: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in script.splitlines():
        if line.startswith("  chain ") and line.endswith(" {"):
            current = out.setdefault(line.split()[1], [])
        elif line == "  }":
            current = None
        elif current is not None:
            current.append(line.strip())
    return out


def test_script_recreates_the_table_as_one_transaction() -> None:
    lines = render(TABLE, []).splitlines()

    assert lines[:3] == [
        "table ip weft_kubeproxy",
        "delete table ip weft_kubeproxy",
        "table ip weft_kubeproxy {",
    ]
    assert lines[-1] == "}"


def test_nat_and_filter_hooks_lead_to_the_service_chains() -> None:
    assert {
        name: rules
        for name, rules in chains(render(TABLE, [])).items()
        if name not in ("services", "no_endpoints")
    } == {
        "prerouting": ["type nat hook prerouting priority dstnat; policy accept;", "jump services"],
        "output": ["type nat hook output priority -100; policy accept;", "jump services"],
        "postrouting": [
            "type nat hook postrouting priority srcnat; policy accept;",
            "meta mark & 0x4000 == 0x4000 masquerade",
        ],
        "filter_forward": [
            "type filter hook forward priority filter; policy accept;",
            "jump no_endpoints",
        ],
        "filter_output": [
            "type filter hook output priority filter; policy accept;",
            "jump no_endpoints",
        ],
    }


def test_no_services_leaves_the_dispatch_chains_empty() -> None:
    rendered = chains(render(TABLE, []))

    assert (rendered["services"], rendered["no_endpoints"]) == ([], [])


@pytest.mark.parametrize(
    ("services", "expected"),
    [
        pytest.param(
            [svc("198.18.128.1")],
            {
                "services": [
                    'ip daddr 198.19.0.10 tcp dport 80 jump svc_0 comment "shop/web:http"'
                ],
                "no_endpoints": [],
                "svc_0": ["jump svc_0_ep0"],
                "svc_0_ep0": [
                    "ip saddr 198.18.128.1 meta mark set meta mark | 0x4000",
                    "tcp dport 80 dnat to 198.18.128.1:8080",
                ],
            },
            id="one endpoint",
        ),
        pytest.param(
            [svc("198.18.128.1", "198.18.129.1", "198.18.128.2", target=9090)],
            {
                "services": [
                    'ip daddr 198.19.0.10 tcp dport 80 jump svc_0 comment "shop/web:http"'
                ],
                "no_endpoints": [],
                "svc_0": [
                    "numgen random mod 3 vmap "
                    "{ 0 : jump svc_0_ep0, 1 : jump svc_0_ep1, 2 : jump svc_0_ep2 }"
                ],
                "svc_0_ep0": [
                    "ip saddr 198.18.128.1 meta mark set meta mark | 0x4000",
                    "tcp dport 80 dnat to 198.18.128.1:9090",
                ],
                "svc_0_ep1": [
                    "ip saddr 198.18.129.1 meta mark set meta mark | 0x4000",
                    "tcp dport 80 dnat to 198.18.129.1:9090",
                ],
                "svc_0_ep2": [
                    "ip saddr 198.18.128.2 meta mark set meta mark | 0x4000",
                    "tcp dport 80 dnat to 198.18.128.2:9090",
                ],
            },
            id="endpoints chosen at random",
        ),
        pytest.param(
            [svc()],
            {
                "services": [],
                "no_endpoints": [
                    "ip daddr 198.19.0.10 tcp dport 80 reject with tcp reset "
                    'comment "shop/web:http has no endpoints"'
                ],
            },
            id="tcp without endpoints",
        ),
        pytest.param(
            [svc(port_name="dns", port=53, protocol="UDP")],
            {
                "services": [],
                "no_endpoints": [
                    "ip daddr 198.19.0.10 udp dport 53 reject "
                    'comment "shop/web:dns has no endpoints"'
                ],
            },
            id="udp without endpoints",
        ),
        pytest.param(
            [svc("198.18.128.1", port_name="dns", port=53, protocol="UDP", target=5353)],
            {
                "services": ['ip daddr 198.19.0.10 udp dport 53 jump svc_0 comment "shop/web:dns"'],
                "no_endpoints": [],
                "svc_0": ["jump svc_0_ep0"],
                "svc_0_ep0": [
                    "ip saddr 198.18.128.1 meta mark set meta mark | 0x4000",
                    "udp dport 53 dnat to 198.18.128.1:5353",
                ],
            },
            id="udp endpoint",
        ),
        pytest.param(
            [svc("198.18.128.1", protocol="SCTP"), svc(protocol="SCTP")],
            {"services": [], "no_endpoints": []},
            id="sctp is left alone",
        ),
    ],
)
def test_each_service_port_renders_its_dispatch_and_chains(
    services: list[ServiceEndpoints], expected: dict[str, list[str]]
) -> None:
    rendered = chains(render(TABLE, services))

    assert {k: v for k, v in rendered.items() if k in expected or k.startswith("svc_")} == expected


def test_every_vip_and_port_gets_its_own_dispatch_rule_and_chain() -> None:
    services = [
        svc("198.18.128.1"),
        svc("198.18.128.1", port_name="admin", port=9000, target=9000),
        svc(name="api", port_name="", vip="198.19.0.11", port=443),
        svc("198.18.129.7", name="db", port_name="", vip="198.19.0.12", port=5432, target=5432),
    ]

    rendered = chains(render(TABLE, services))

    assert rendered["services"] == [
        'ip daddr 198.19.0.10 tcp dport 80 jump svc_0 comment "shop/web:http"',
        'ip daddr 198.19.0.10 tcp dport 9000 jump svc_1 comment "shop/web:admin"',
        'ip daddr 198.19.0.12 tcp dport 5432 jump svc_3 comment "shop/db:5432"',
    ]
    assert rendered["no_endpoints"] == [
        "ip daddr 198.19.0.11 tcp dport 443 reject with tcp reset "
        'comment "shop/api:443 has no endpoints"'
    ]
    assert rendered["svc_1_ep0"][-1] == "tcp dport 9000 dnat to 198.18.128.1:9000"
    assert rendered["svc_3_ep0"][-1] == "tcp dport 5432 dnat to 198.18.129.7:5432"
    assert "svc_2" not in rendered


def test_every_endpoint_marks_hairpin_connections_from_itself() -> None:
    ips = ["198.18.128.1", "198.18.128.2", "198.18.129.1"]

    rendered = chains(render(TABLE, [svc(*ips)]))

    assert [rendered[f"svc_0_ep{j}"][0] for j in range(3)] == [
        f"ip saddr {ip} meta mark set meta mark | {HAIRPIN_MARK:#x}" for ip in ips
    ]
    assert HAIRPIN_MARK == 0x4000


def test_render_is_pure_text_that_only_depends_on_its_input() -> None:
    services = [svc("198.18.128.1", "198.18.129.1"), svc(name="api", vip="198.19.0.11")]

    assert render(TABLE, services) == render(TABLE, list(services))
    assert render("other", services).splitlines()[0] == "table ip other"
    assert render(TABLE, services).endswith("}\n")
