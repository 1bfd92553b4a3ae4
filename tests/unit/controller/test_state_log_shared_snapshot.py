"""Every stream that needs the snapshot of a version sends the same bytes object: 100 nodes
subscribing at once hold one copy of it, not 100 (docs/scale.md)."""

from __future__ import annotations

import dataclasses

from controller.distribution import StateLog
from meshcore.api import mesh_pb2 as pb
from meshcore.meshstate import StateValue
from meshcore.resources import ResourceKey
from tests.shop_workloads import wl

EPOCH = "e1"


def state(*values: StateValue) -> dict[ResourceKey, StateValue]:
    return {v.key: v for v in values}


def test_streams_share_one_snapshot_per_version() -> None:
    log = StateLog(epoch=EPOCH)
    a = wl("a")
    log.update(state(a, wl("b")))
    first = log.snapshot()
    # a new node, a node of another epoch, a node ahead of the log: all get that snapshot
    assert log.since("", 0) is first
    assert log.since("other", 1) is first
    assert log.since(EPOCH, 99) is first
    assert log.snapshot().payload is first.payload


def test_a_new_version_makes_a_new_snapshot() -> None:
    log = StateLog(epoch=EPOCH)
    a = wl("a")
    log.update(state(a, wl("b")))
    first = log.snapshot()
    log.update(state(dataclasses.replace(a, ready=False), wl("b")))
    second = log.snapshot()
    assert second is not first
    assert (first.version, second.version) == (1, 2)
    msg = pb.StateUpdate.FromString(second.payload)
    assert (msg.version, msg.snapshot, len(msg.upserts)) == (2, True, 2)
    ready = {u.key.name: u.workload.ready for u in msg.upserts}
    assert ready == {"a": False, "b": True}


def test_no_change_keeps_the_snapshot() -> None:
    log = StateLog(epoch=EPOCH)
    log.update(state(wl("a")))
    first = log.snapshot()
    assert log.update(state(wl("a"))) is None
    assert log.snapshot() is first
