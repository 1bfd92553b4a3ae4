"""The nftables table that steers Service connections DNATed to a pod enrolled on the node."""

from __future__ import annotations

import re

import pytest

from node_agent import nft

MARK, PORT = 0x2000, 15006


def rules(script: str) -> list[str]:
    """The chain's rules (no comments, no chain header)."""
    body = script.split("chain prerouting {", 1)[1]
    return [
        line.strip()
        for line in body.splitlines()
        if line.strip() and not line.strip().startswith(("#", "type ", "}"))
    ]


def test_the_table_is_replaced_as_a_whole_in_one_script() -> None:
    script = nft.render(["198.18.128.2"], MARK, PORT)
    lines = script.splitlines()
    # create-if-missing, delete, create: one nft transaction, no moment without the rule
    assert lines[:3] == [
        "table ip weft_steer",
        "delete table ip weft_steer",
        "table ip weft_steer {",
    ]


def test_the_chain_runs_after_kube_proxys_dnat_and_before_routing() -> None:
    script = nft.render([], MARK, PORT)
    assert "type filter hook prerouting priority dstnat + 10; policy accept;" in script


def test_enrolled_addresses_are_the_set_sorted_and_deduplicated() -> None:
    script = nft.render(["198.18.128.10", "198.18.128.9", "198.18.128.10"], MARK, PORT)
    assert "elements = { 198.18.128.9, 198.18.128.10 };" in script


def test_no_enrolled_pod_is_an_empty_set() -> None:
    script = nft.render([], MARK, PORT)
    assert "set enrolled { type ipv4_addr; }" in script
    assert "elements" not in script


def test_only_a_new_connection_the_node_dnated_to_an_enrolled_pod_goes_to_the_listener() -> None:
    steer = rules(nft.render(["198.18.128.2"], MARK, PORT))[1]
    assert steer.startswith("ct status dnat ip daddr @enrolled tcp flags & (syn | ack) == syn ")
    assert " tproxy to :15006 " in steer
    # marks only when tproxy found the listener (it ends the rule otherwise)
    assert steer.index("tproxy") < steer.index("meta mark set")
    assert steer.endswith("meta mark set meta mark | 0x2000 ct mark set ct mark | 0x2000")


def test_the_rest_of_a_steered_connection_follows_it_to_the_node() -> None:
    follow = rules(nft.render([], MARK, PORT))[0]
    assert follow == (
        "ct direction original ct mark & 0x2000 == 0x2000 meta mark set meta mark | 0x2000"
    )


def test_there_is_nothing_else_in_the_chain() -> None:
    assert len(rules(nft.render(["198.18.128.2"], MARK, PORT))) == 2


@pytest.mark.parametrize(("mark", "port"), [(0x100, 16006), (0x2000, 15006)])
def test_mark_and_port_are_the_agents(mark: int, port: int) -> None:
    script = nft.render([], mark, port)
    assert f"tproxy to :{port} " in script
    assert set(re.findall(r"0x[0-9a-f]+", script)) == {f"{mark:#x}"}


@pytest.mark.parametrize("bad", ["198.18.128.300", "fd00::1", "pod-a", ""])
def test_an_address_that_is_not_ipv4_is_refused(bad: str) -> None:
    with pytest.raises(ValueError):
        nft.render([bad], MARK, PORT)
