"""The mesh state's values store what pods share once (docs/scale.md), and still behave as
plain frozen values: equal by content, read-only, copyable, convertible to and from protobuf."""

from __future__ import annotations

import copy
import dataclasses
import gc
import pickle

import pytest

from meshcore.api.convert import from_proto, key_from_proto, to_proto
from meshcore.meshstate import _SHARED, MeshService, ServiceMembership, Shared, Workload, shared


def workload(i: int, labels: dict[str, str] | None = None) -> Workload:
    # every string built at run time, as protobuf hands them over: equal, not identical
    ns, sa = "".join(["ns-", "a"]), "".join(["svc-", "b"])
    return Workload(
        uid=f"uid-{i}",
        name=f"pod-{i}",
        namespace=ns,
        service_account=sa,
        identity=f"spiffe://cluster.local/ns/{ns}/sa/{sa}",
        node="".join(["node-", "1"]),
        node_address="".join(["198.18.0.", "1"]),
        addresses=(f"10.0.0.{i}",),
        labels=labels if labels is not None else {"app": "".join(["svc-", "b"])},
        enrolled=True,
        ready=True,
        workload_name="".join(["svc-", "b"]),
        services=(ServiceMembership(ns, "".join(["svc-", "b"]), {80: 8080}),),
    )


def test_pods_of_a_service_share_strings_labels_and_ports() -> None:
    a, b = workload(1), workload(2)
    for name in ("namespace", "service_account", "identity", "node", "node_address"):
        assert getattr(a, name) is getattr(b, name), name
    assert a.workload_name is b.workload_name
    assert a.labels is b.labels
    assert a.services[0].ports is b.services[0].ports
    assert a.services[0].name is b.services[0].name


def test_a_bare_pods_workload_name_is_its_name_not_a_copy() -> None:
    w = dataclasses.replace(workload(1), workload_name="".join(["pod-", "1"]))
    assert w.workload_name is w.name


def test_values_are_slotted() -> None:
    for value in (workload(1), workload(1).services[0], MeshService("s", "ns", "h", (), ())):
        assert not hasattr(value, "__dict__"), type(value).__name__


def test_shared_maps_equal_plain_dicts_in_any_order() -> None:
    w = workload(1, {"b": "2", "a": "1"})
    assert w.labels == {"b": "2", "a": "1"}
    assert workload(2, {"a": "1", "b": "2"}).labels is w.labels  # protobuf maps have no order
    assert w.services[0].ports == {80: 8080}
    assert isinstance(w.labels, dict)
    assert w == workload(1, {"b": "2", "a": "1"})
    assert w != workload(1, {"b": "3", "a": "1"})


@pytest.mark.parametrize(
    "mutate",
    [
        lambda m: m.__setitem__("x", "y"),
        lambda m: m.__delitem__("app"),
        lambda m: m.update(x="y"),
        lambda m: m.pop("app"),
        lambda m: m.popitem(),
        lambda m: m.setdefault("x", "y"),
        lambda m: m.clear(),
    ],
)
def test_shared_maps_are_read_only(mutate: object) -> None:
    w = workload(1)
    with pytest.raises(TypeError, match="read-only"):
        mutate(w.labels)  # type: ignore[operator]
    assert w.labels == {"app": "svc-b"}  # and the other pods of the service keep theirs


def test_the_caller_s_dict_is_not_held() -> None:
    labels = {"app": "svc-b"}
    w = workload(1, labels)
    labels["app"] = "changed"
    assert w.labels == {"app": "svc-b"}


def test_copies_pickles_and_replacements_are_equal() -> None:
    w = workload(1)
    assert copy.deepcopy(w) == w
    assert copy.copy(w) == w
    assert pickle.loads(pickle.dumps(w)) == w
    assert dataclasses.replace(w, ready=False).labels is w.labels
    assert dataclasses.asdict(w)["labels"] == {"app": "svc-b"}


def test_protobuf_round_trip() -> None:
    w = workload(3, {"app": "svc-b", "version": "v1"})
    msg = to_proto(w)
    back = from_proto(msg)
    assert back == w
    assert isinstance(back, Workload)
    assert back.labels is w.labels  # the same shared map
    key = key_from_proto(msg.key)
    assert key == w.key
    assert key.namespace is w.namespace


def test_the_shared_table_holds_no_more_than_the_live_values() -> None:
    gc.collect()
    before = len(_SHARED)
    made = [workload(i, {"app": f"gone-{i}"}) for i in range(50)]
    assert len(_SHARED) >= before + 50
    del made
    gc.collect()
    assert len(_SHARED) <= before + 1  # a map goes with the last value holding it


def test_shared_of_a_shared_map_is_itself() -> None:
    m = shared({"a": "1"})
    assert isinstance(m, Shared)
    assert shared(m) is m
    assert shared({"a": "1"}) is m
