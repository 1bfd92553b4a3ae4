"""A node's copy of the mesh state: StateUpdates in, the new state and what changed out.

Resources that do not convert, or that the process's own check refuses, keep their last good
value (or stay absent) and are reported; everything else in the update applies.
"""

from __future__ import annotations

import dataclasses

import pytest

from meshcore.api import mesh_pb2 as pb
from meshcore.api.convert import key_to_proto, to_proto
from meshcore.configclient import apply_update
from meshcore.meshstate import MeshService, ServicePort, StateValue, TrustBundle, Workload
from meshcore.resources import ResourceKey
from tests.shop_workloads import wl

State = dict[ResourceKey, StateValue]
BUNDLE = TrustBundle("cluster.local", ("root-pem",))
CART_SVC = MeshService(
    "cart", "shop", "cart.shop.svc.cluster.local", ("10.96.0.20",), (ServicePort("http", 80),)
)


def key(name: str) -> ResourceKey:
    return ResourceKey("Workload", "shop", name)


def state(*values: StateValue) -> State:
    return {v.key: v for v in values}


def update(
    *upserts: StateValue | pb.Resource,
    removals: tuple[ResourceKey, ...] = (),
    snapshot: bool = False,
    version: int = 7,
) -> pb.StateUpdate:
    return pb.StateUpdate(
        epoch="e",
        version=version,
        snapshot=snapshot,
        upserts=[u if isinstance(u, pb.Resource) else to_proto(u) for u in upserts],
        removals=[key_to_proto(k) for k in removals],
    )


def with_bad_address(value: Workload) -> pb.Resource:
    message = to_proto(value)
    message.workload.addresses[:] = ["not-an-ip"]
    return message


BEFORE = state(BUNDLE, wl("a"), wl("b"), CART_SVC)


# --- snapshots and deltas -----------------------------------------------------------------------


def test_a_snapshot_replaces_the_whole_state():
    new, applied = apply_update(
        BEFORE, update(BUNDLE, wl("b", "10.244.1.9"), wl("c"), snapshot=True)
    )
    assert new == state(BUNDLE, wl("b", "10.244.1.9"), wl("c"))
    assert applied.changed == {key("a"), key("b"), key("c"), CART_SVC.key}
    assert (applied.version, applied.snapshot, dict(applied.rejected)) == (7, True, {})


def test_an_empty_snapshot_empties_the_state():
    new, applied = apply_update(BEFORE, update(snapshot=True))
    assert new == {}
    assert applied.changed == BEFORE.keys()


def test_a_delta_upserts_and_removes_and_leaves_the_rest_as_it_was():
    new, applied = apply_update(
        BEFORE, update(wl("a", "10.244.1.9"), wl("c"), removals=(key("b"),))
    )
    assert new == state(BUNDLE, wl("a", "10.244.1.9"), wl("c"), CART_SVC)
    assert new[BUNDLE.key] is BEFORE[BUNDLE.key]
    assert new[CART_SVC.key] is BEFORE[CART_SVC.key]
    assert applied.changed == {key("a"), key("b"), key("c")}
    assert applied.snapshot is False


def test_removing_a_key_the_node_does_not_hold_is_harmless():
    new, applied = apply_update(BEFORE, update(removals=(key("ghost"),)))
    assert new == BEFORE
    assert applied.changed == frozenset()


def test_the_state_given_is_not_modified():
    before = dict(BEFORE)
    apply_update(before, update(wl("c"), removals=(key("a"),)))
    apply_update(before, update(snapshot=True))
    assert before == BEFORE


# --- changed ------------------------------------------------------------------------------------


def test_an_upsert_of_an_equal_value_is_not_a_change():
    new, applied = apply_update(BEFORE, update(wl("a"), dataclasses.replace(CART_SVC)))
    assert new == BEFORE
    assert applied.changed == frozenset()


def test_a_snapshot_with_the_same_values_changes_nothing():
    _, applied = apply_update(BEFORE, update(*BEFORE.values(), snapshot=True))
    assert applied.changed == frozenset()


def test_changed_lists_exactly_the_keys_whose_values_changed():
    _, applied = apply_update(
        BEFORE, update(wl("a"), wl("b", "10.244.1.9"), removals=(key("ghost"),))
    )
    assert applied.changed == {key("b")}


# --- rejected resources -------------------------------------------------------------------------


def test_a_resource_that_does_not_convert_keeps_its_last_good_value_and_the_rest_applies():
    new, applied = apply_update(BEFORE, update(with_bad_address(wl("a", "10.244.1.9")), wl("c")))
    assert new[key("a")] is BEFORE[key("a")]
    assert new[key("c")] == wl("c")
    assert applied.rejected.keys() == {key("a")}
    assert applied.rejected[key("a")] == "Workload shop/a: 'not-an-ip' is not an IP address"
    assert applied.changed == {key("c")}


def test_a_new_resource_that_does_not_convert_stays_absent():
    new, applied = apply_update(BEFORE, update(with_bad_address(wl("c")), wl("a", "10.244.1.9")))
    assert key("c") not in new
    assert new[key("a")] == wl("a", "10.244.1.9")
    assert applied.rejected.keys() == {key("c")}
    assert applied.changed == {key("a")}


def test_a_snapshot_keeps_the_last_good_value_of_a_resource_it_cannot_convert():
    new, applied = apply_update(
        BEFORE, update(BUNDLE, with_bad_address(wl("a", "10.244.1.9")), snapshot=True)
    )
    assert new == state(BUNDLE, wl("a"))
    assert applied.rejected.keys() == {key("a")}
    assert applied.changed == {key("b"), CART_SVC.key}


def test_a_resource_the_validator_refuses_keeps_its_last_good_value_with_the_reason():
    def refuse_b(value: StateValue) -> str | None:
        return "b is refused here" if value.key == key("b") else None

    new, applied = apply_update(
        BEFORE, update(wl("a", "10.244.1.9"), wl("b", "10.244.1.8")), refuse_b
    )
    assert new[key("b")] is BEFORE[key("b")]
    assert new[key("a")] == wl("a", "10.244.1.9")
    assert applied.rejected == {key("b"): "Workload shop/b: b is refused here"}
    assert applied.changed == {key("a")}


def test_a_new_resource_the_validator_refuses_stays_absent():
    new, applied = apply_update(
        BEFORE, update(wl("c")), lambda v: "no" if v.key == key("c") else None
    )
    assert new == BEFORE
    assert applied.rejected.keys() == {key("c")}
    assert applied.changed == frozenset()


def test_the_validator_sees_the_converted_value():
    seen: list[StateValue] = []

    def record(value: StateValue) -> None:
        seen.append(value)

    apply_update({}, update(wl("c"), CART_SVC), record)
    assert seen == [wl("c"), CART_SVC]


@pytest.mark.parametrize("snapshot", [False, True])
def test_a_resource_without_a_body_is_rejected_by_its_key(snapshot: bool):
    others = [v for k, v in BEFORE.items() if k != key("a")] if snapshot else []
    body_less = pb.Resource(key=key_to_proto(key("a")))
    new, applied = apply_update(BEFORE, update(body_less, *others, snapshot=snapshot))
    assert new == BEFORE
    assert new[key("a")] is BEFORE[key("a")]
    assert applied.rejected == {key("a"): "Workload shop/a: resource has no body"}
    assert applied.changed == frozenset()
