"""Versioned mesh state: what changed, and what a node at (epoch, version) must be sent."""

from __future__ import annotations

import dataclasses

import pytest

from controller.distribution import StateLog, Update
from meshcore.api import mesh_pb2 as pb
from meshcore.api.convert import from_proto, key_from_proto
from meshcore.meshstate import MeshService, ServicePort, StateValue, TrustBundle
from meshcore.resources import ResourceKey
from tests.shop_workloads import wl

EPOCH = "epoch-a"
BUNDLE = TrustBundle("cluster.local", ("root-pem",))
State = dict[ResourceKey, StateValue]


def state(*values: StateValue) -> State:
    return {v.key: v for v in values}


def key(name: str) -> ResourceKey:
    return ResourceKey("Workload", "shop", name)


def decoded(update: Update) -> pb.StateUpdate:
    return pb.StateUpdate.FromString(update.payload)


def upserted(update: Update) -> State:
    return {v.key: v for v in (from_proto(m) for m in decoded(update).upserts)}


def removed(update: Update) -> set[ResourceKey]:
    return {key_from_proto(k) for k in decoded(update).removals}


@pytest.fixture
def log() -> StateLog:
    return StateLog(epoch=EPOCH)


# --- versions -----------------------------------------------------------------------------------


def test_a_new_log_is_at_version_zero_and_empty():
    log = StateLog()
    assert (log.version, dict(log.values)) == (0, {})
    assert log.epoch


def test_every_log_gets_its_own_epoch():
    assert StateLog().epoch != StateLog().epoch


def test_a_change_gets_the_next_version_and_names_what_changed(log):
    first = log.update(state(BUNDLE, wl("a"), wl("b")))
    assert first is not None
    assert (first.version, first.upserts, first.removals) == (
        1,
        {BUNDLE.key, key("a"), key("b")},
        set(),
    )
    second = log.update(state(BUNDLE, wl("a", "10.244.1.9"), wl("c")))
    assert second is not None
    assert (second.version, second.upserts, second.removals) == (
        2,
        {key("a"), key("c")},
        {key("b")},
    )
    assert log.version == 2
    assert log.values == state(BUNDLE, wl("a", "10.244.1.9"), wl("c"))


def test_the_same_state_again_is_no_change_and_keeps_the_version(log):
    current = state(BUNDLE, wl("a"))
    log.update(current)
    assert log.update(current) is None
    assert log.version == 1


def test_equal_values_in_new_objects_are_no_change(log):
    log.update(state(BUNDLE, wl("a")))
    assert log.update(state(TrustBundle("cluster.local", ("root-pem",)), wl("a"))) is None
    assert log.version == 1


def test_an_empty_state_at_the_start_is_no_change(log):
    assert log.update({}) is None
    assert log.version == 0


# --- since: nothing, deltas ---------------------------------------------------------------------


def test_a_node_at_the_current_version_gets_nothing(log):
    assert log.since(EPOCH, 0) is None
    log.update(state(BUNDLE))
    assert log.since(EPOCH, 1) is None


def test_a_node_one_version_behind_gets_exactly_that_delta(log):
    log.update(state(BUNDLE, wl("a"), wl("b")))
    log.update(state(BUNDLE, wl("a", "10.244.1.9"), wl("c")))
    update = log.since(EPOCH, 1)
    assert update is not None
    message = decoded(update)
    assert (message.epoch, message.version, message.snapshot) == (EPOCH, 2, False)
    assert upserted(update) == state(wl("a", "10.244.1.9"), wl("c"))
    assert removed(update) == {key("b")}
    assert (update.version, update.snapshot, update.resources, update.removals) == (2, False, 2, 1)


def test_a_delta_accumulates_every_change_since_the_nodes_version(log):
    log.update(state(BUNDLE, wl("a"), wl("b"), wl("c")))  # 1: the node has this
    log.update(state(BUNDLE, wl("a", "10.244.1.2"), wl("b"), wl("c")))  # 2
    log.update(state(BUNDLE, wl("a", "10.244.1.3"), wl("c"), wl("d")))  # 3
    log.update(state(BUNDLE, wl("a", "10.244.1.3"), wl("c", ready=False), wl("d")))  # 4
    update = log.since(EPOCH, 1)
    assert update is not None
    assert upserted(update) == state(wl("a", "10.244.1.3"), wl("c", ready=False), wl("d"))
    assert removed(update) == {key("b")}


def test_a_key_upserted_then_removed_is_only_a_removal(log):
    log.update(state(BUNDLE))
    log.update(state(BUNDLE, wl("a")))
    log.update(state(BUNDLE))
    update = log.since(EPOCH, 1)
    assert update is not None
    assert (upserted(update), removed(update)) == ({}, {key("a")})


def test_a_key_removed_then_added_back_is_only_an_upsert_of_its_latest_value(log):
    log.update(state(BUNDLE, wl("a")))
    log.update(state(BUNDLE))
    log.update(state(BUNDLE, wl("a", "10.244.1.7")))
    update = log.since(EPOCH, 1)
    assert update is not None
    assert (upserted(update), removed(update)) == (state(wl("a", "10.244.1.7")), set())


def test_a_key_changed_twice_is_sent_once_with_its_latest_value(log):
    log.update(state(BUNDLE, wl("a")))
    log.update(state(BUNDLE, wl("a", "10.244.1.2")))
    log.update(state(BUNDLE, wl("a", "10.244.1.3")))
    update = log.since(EPOCH, 1)
    assert update is not None
    assert len(decoded(update).upserts) == 1
    assert upserted(update) == state(wl("a", "10.244.1.3"))


def test_a_node_at_version_zero_of_this_epoch_gets_everything_as_a_delta(log):
    log.update(state(BUNDLE, wl("a")))
    update = log.since(EPOCH, 0)
    assert update is not None
    assert update.snapshot is False
    assert upserted(update) == state(BUNDLE, wl("a"))


# --- since: snapshots ---------------------------------------------------------------------------


def assert_snapshot_of(update: Update | None, log: StateLog) -> None:
    assert update is not None
    message = decoded(update)
    assert (message.epoch, message.version, message.snapshot) == (log.epoch, log.version, True)
    assert (update.snapshot, update.resources, update.removals) == (True, len(log.values), 0)
    assert upserted(update) == log.values
    assert removed(update) == set()


def test_a_node_from_another_epoch_gets_a_snapshot_even_at_the_same_version_number(log):
    log.update(state(BUNDLE, wl("a")))
    log.update(state(BUNDLE, wl("b")))
    assert_snapshot_of(log.since("older-epoch", 2), log)
    assert_snapshot_of(log.since("older-epoch", 1), log)
    assert_snapshot_of(log.since("", 0), log)


def test_a_node_ahead_of_the_log_gets_a_snapshot(log):
    log.update(state(BUNDLE, wl("a")))
    assert_snapshot_of(log.since(EPOCH, 5), log)


def test_a_node_behind_the_kept_history_gets_a_snapshot():
    log = StateLog(history=2, epoch=EPOCH)
    for i in range(1, 5):  # versions 1..4; deltas 3 and 4 are kept
        log.update(state(BUNDLE, wl("a", f"10.244.1.{i}")))
    assert_snapshot_of(log.since(EPOCH, 1), log)
    assert_snapshot_of(log.since(EPOCH, 0), log)
    at_edge = log.since(EPOCH, 2)
    assert at_edge is not None and at_edge.snapshot is False
    assert upserted(at_edge) == state(wl("a", "10.244.1.4"))


def test_a_snapshot_holds_exactly_the_current_state(log):
    log.update(state(BUNDLE, wl("a"), wl("b")))
    log.update(state(BUNDLE, wl("b", "10.244.1.5")))
    assert_snapshot_of(log.snapshot(), log)
    assert log.snapshot().resources == 2


def test_a_snapshot_of_an_empty_log_is_an_empty_version_zero(log):
    update = log.snapshot()
    message = decoded(update)
    assert (message.version, message.snapshot, len(message.upserts)) == (0, True, 0)


def test_every_kind_of_value_decodes_from_a_snapshot(log):
    svc = MeshService(
        "cart", "shop", "cart.shop.svc.cluster.local", ("10.96.0.1",), (ServicePort("http", 80),)
    )
    log.update(state(BUNDLE, wl("a"), svc))
    assert upserted(log.snapshot()) == state(BUNDLE, wl("a"), svc)


# --- cost ---------------------------------------------------------------------------------------


def _one_change_delta(total: int) -> Update:
    log = StateLog(epoch=EPOCH)
    values = [wl(f"w-{i:05d}", f"10.{i // 65536}.{i // 256 % 256}.{i % 256}") for i in range(total)]
    log.update(state(BUNDLE, *values))
    values[0] = dataclasses.replace(values[0], ready=False)
    log.update(state(BUNDLE, *values))
    update = log.since(EPOCH, 1)
    assert update is not None
    return update


def test_a_one_workload_delta_does_not_grow_with_the_rest_of_the_state():
    small, large = _one_change_delta(10), _one_change_delta(2_000)
    assert (small.resources, large.resources) == (1, 1)
    assert len(large.payload) == len(small.payload)
    assert large.payload == small.payload


def test_created_at_is_known_for_versions_still_in_the_history():
    log = StateLog(history=1, epoch=EPOCH)
    log.update(state(BUNDLE))
    log.update(state(BUNDLE, wl("a")))
    assert log.created_at(1) is None
    assert isinstance(log.created_at(2), float)
