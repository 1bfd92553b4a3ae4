"""Address plan per node and the allocation pool: which address goes where, and when."""

from __future__ import annotations

import pytest

from lab.addressing import AddressExhausted, NodePlan, Pool, node_plans
from lab.config import LabConfig


@pytest.mark.parametrize(
    ("config", "plans"),
    [
        pytest.param(
            LabConfig(nodes=2),
            [
                NodePlan("node-1", 1, "198.18.0.1", "198.18.128.0/24"),
                NodePlan("node-2", 2, "198.18.0.2", "198.18.129.0/24"),
            ],
            id="defaults",
        ),
        pytest.param(
            LabConfig(nodes=1, underlay_cidr="10.0.0.0/30", pod_cidr="10.1.0.0/16"),
            [NodePlan("node-1", 1, "10.0.0.1", "10.1.0.0/24")],
            id="one node",
        ),
        pytest.param(
            LabConfig(nodes=3, pod_cidr="10.1.0.0/24", node_pod_prefix=26),
            [
                NodePlan("node-1", 1, "198.18.0.1", "10.1.0.0/26"),
                NodePlan("node-2", 2, "198.18.0.2", "10.1.0.64/26"),
                NodePlan("node-3", 3, "198.18.0.3", "10.1.0.128/26"),
            ],
            id="smaller node blocks",
        ),
    ],
)
def test_nodes_get_consecutive_underlay_addresses_and_pod_blocks(
    config: LabConfig, plans: list[NodePlan]
) -> None:
    assert node_plans(config) == plans


def test_node_plans_of_the_largest_lab_are_distinct() -> None:
    plans = node_plans(LabConfig(nodes=64))

    assert [p.name for p in plans] == [f"node-{i}" for i in range(1, 65)]
    assert len({p.underlay_ip for p in plans}) == 64
    assert len({p.pod_cidr for p in plans}) == 64
    assert plans[-1] == NodePlan("node-64", 64, "198.18.0.64", "198.18.191.0/24")


def test_pool_hands_out_host_addresses_in_order() -> None:
    pool = Pool("10.0.0.0/29")

    assert [pool.allocate() for _ in range(6)] == [f"10.0.0.{i}" for i in range(1, 7)]


def test_pool_skips_reserved_addresses() -> None:
    pool = Pool("10.0.0.0/29", reserved=2)

    assert pool.allocate() == "10.0.0.3"


def test_exhausted_pool_says_which_range_is_full() -> None:
    pool = Pool("10.0.0.0/30")
    pool.allocate()
    pool.allocate()

    with pytest.raises(AddressExhausted, match=r"^no free address left in 10\.0\.0\.0/30$"):
        pool.allocate()


def test_released_address_is_reused_only_after_never_used_ones() -> None:
    pool = Pool("10.0.0.0/29")
    first = pool.allocate()
    pool.allocate()

    pool.release(first)

    assert [pool.allocate() for _ in range(5)] == [
        "10.0.0.3",
        "10.0.0.4",
        "10.0.0.5",
        "10.0.0.6",
        "10.0.0.1",
    ]


def test_released_address_of_a_full_pool_is_handed_out_again() -> None:
    pool = Pool("10.0.0.0/30")
    pool.allocate()
    second = pool.allocate()

    pool.release(second)

    assert pool.allocate() == second


def test_releasing_an_address_not_in_use_changes_nothing() -> None:
    pool = Pool("10.0.0.0/29")

    pool.release("10.0.0.1")
    pool.release("192.0.2.1")

    assert pool.allocate() == "10.0.0.1"


def test_claimed_address_is_used_and_skipped_by_allocation() -> None:
    pool = Pool("10.0.0.0/29")

    pool.claim("10.0.0.1")

    assert pool.is_used("10.0.0.1")
    assert pool.allocate() == "10.0.0.2"


@pytest.mark.parametrize(
    ("ip", "message"),
    [
        ("10.0.1.1", "10.0.1.1 is outside 10.0.0.0/29"),
        ("10.0.0.2", "10.0.0.2 is already allocated"),
    ],
)
def test_claim_refuses_addresses_outside_or_taken(ip: str, message: str) -> None:
    pool = Pool("10.0.0.0/29")
    pool.claim("10.0.0.2")

    with pytest.raises(ValueError, match=f"^{message}$"):
        pool.claim(ip)


@pytest.mark.parametrize(
    ("ip", "inside"),
    [
        ("10.0.0.0", False),  # the network address
        ("10.0.0.1", True),
        ("10.0.0.6", True),
        ("10.0.0.7", False),  # the broadcast address
        ("10.0.0.8", False),
        ("9.255.255.255", False),
    ],
)
def test_pool_contains_the_host_addresses_of_its_range(ip: str, inside: bool) -> None:
    assert Pool("10.0.0.0/29").contains(ip) is inside


def test_release_makes_an_address_free_to_claim_again() -> None:
    pool = Pool("10.0.0.0/29")
    pool.claim("10.0.0.5")

    pool.release("10.0.0.5")

    assert not pool.is_used("10.0.0.5")
    pool.claim("10.0.0.5")
    assert pool.is_used("10.0.0.5")
