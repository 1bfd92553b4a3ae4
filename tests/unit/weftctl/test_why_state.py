"""The controller's `/debug/state` JSON read back into the typed state nodes hold (weftctl
why's input): each resource converts as a node converts it, a bad one is named and left out
while the rest is kept, and a state past the bound is refused, not parsed."""

from __future__ import annotations

import pytest
from google.protobuf.json_format import MessageToDict

from meshcore.api.convert import to_proto
from meshcore.meshstate import MeshService, ServicePort, Workload
from weftctl.whylab import MAX_RESOURCES, LabUnreachable, parse_state

WORKLOAD = Workload(
    uid="u1",
    name="api",
    namespace="shop",
    service_account="api",
    identity="spiffe://cluster.local/ns/shop/sa/api",
    node="node-1",
    node_address="198.18.0.1",
    addresses=("10.1.0.2",),
    labels={"app": "api"},
    enrolled=True,
    ready=True,
)
SERVICE = MeshService("api", "shop", "api.shop.svc.cluster.local", ("10.96.0.1",),
                      (ServicePort("http", 80, "TCP", "http"),))  # fmt: skip


def as_served(value: object) -> dict[str, object]:
    """A value as the controller's /debug/state serves it."""
    return MessageToDict(to_proto(value), preserving_proto_field_name=True)  # type: ignore[arg-type]


def test_the_served_state_reads_back_as_the_same_values() -> None:
    state, problems = parse_state({"resources": [as_served(WORKLOAD), as_served(SERVICE)]})
    assert problems == []
    assert state == {WORKLOAD.key: WORKLOAD, SERVICE.key: SERVICE}


def test_a_resource_that_does_not_convert_is_named_and_the_rest_kept() -> None:
    bad = as_served(WORKLOAD)
    bad["workload"]["addresses"] = ["not-an-ip"]  # type: ignore[index]
    bad["key"]["name"] = "broken"  # type: ignore[index]
    state, problems = parse_state({"resources": [bad, as_served(SERVICE)]})
    assert list(state) == [SERVICE.key]
    assert len(problems) == 1 and "broken" in problems[0], problems


def test_a_state_past_the_bound_is_refused_before_parsing() -> None:
    with pytest.raises(LabUnreachable, match=f"at most {MAX_RESOURCES}"):
        parse_state({"resources": [{}] * (MAX_RESOURCES + 1)})
    with pytest.raises(LabUnreachable, match="no resources list"):
        parse_state({"resources": "nope"})
