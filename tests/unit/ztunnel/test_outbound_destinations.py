"""Where ztunnel sends a captured connection (ztunnel/destinations.py), as a table: Service
VIPs with and without a waypoint, pod IPs bound through their Service or themselves, waypoints
with and without ready replicas, and what is not in the mesh."""

from __future__ import annotations

import dataclasses

import pytest

from meshcore.meshstate import (
    MeshService,
    ServiceMembership,
    ServicePort,
    Waypoint,
    Workload,
)
from ztunnel.destinations import (
    GATEWAY_NAME_LABEL,
    Passthrough,
    Plan,
    Refuse,
    ToEndpoints,
    ViaWaypoint,
    resolve,
)
from ztunnel.state import MeshView

TD = "cluster.local"
ECHO_VIP, BOUND_VIP = "10.96.0.10", "10.96.0.20"


def workload(
    name: str, ip: str, *, sa: str = "default", ready: bool = True, waypoint: str = "",
    labels: dict[str, str] | None = None, services: tuple[ServiceMembership, ...] = (),
    enrolled: bool = True,
) -> Workload:  # fmt: skip
    return Workload(
        uid=f"uid-{name}",
        name=name,
        namespace="shop",
        service_account=sa,
        identity=f"spiffe://{TD}/ns/shop/sa/{sa}",
        node="node-1",
        node_address="198.18.0.1",
        addresses=(ip,),
        labels=labels or {"app": name},
        enrolled=enrolled,
        ready=ready,
        waypoint=waypoint,
        services=services,
    )


def member(service: str) -> tuple[ServiceMembership, ...]:
    return (ServiceMembership("shop", service, {80: 8080}),)


def service(name: str, vip: str, waypoint: str = "") -> MeshService:
    return MeshService(
        name, "shop", f"{name}.shop.svc.cluster.local", (vip,), (ServicePort("http", 80),),
        waypoint,
    )  # fmt: skip


def waypoint_pod(name: str, ip: str, *, ready: bool = True) -> Workload:
    return workload(name, ip, sa="waypoint", ready=ready, labels={GATEWAY_NAME_LABEL: "waypoint"})


def view(*values: object, replicas_ready: bool = True, traffic_type: str = "service") -> MeshView:
    v = MeshView("node-1")
    state = {}
    wp = Waypoint("waypoint", "shop", ("10.96.0.99",))
    if any(f.name == "traffic_type" for f in dataclasses.fields(wp)):
        wp = dataclasses.replace(wp, traffic_type=traffic_type)  # type: ignore[call-arg]
    defaults = (
        service("echo", ECHO_VIP),
        service("bound", BOUND_VIP, waypoint="shop/waypoint"),
        workload("echo-1", "10.0.1.1", services=member("echo")),
        workload("bound-1", "10.0.1.2", services=member("bound")),
        workload("pod-bound", "10.0.1.3", waypoint="shop/waypoint"),
        workload("legacy", "10.0.1.4", enrolled=False),
        waypoint_pod("waypoint-a", "10.0.2.1", ready=replicas_ready),
        waypoint_pod("waypoint-b", "10.0.2.2", ready=replicas_ready),
        wp,
    )
    for i, value in enumerate((*defaults, *values)):
        state[(type(value).__name__, i)] = value
    v.update(state)  # type: ignore[arg-type]
    return v


def names(plan: Plan) -> list[str]:
    if isinstance(plan, ViaWaypoint):
        return sorted(w.name for w in plan.replicas)
    if isinstance(plan, ToEndpoints):
        return [w.name for w, _ in plan.candidates]
    return []


def test_a_service_without_a_waypoint_goes_to_its_endpoints() -> None:
    plan = resolve(view(), ECHO_VIP, 80)
    assert isinstance(plan, ToEndpoints) and names(plan) == ["echo-1"]
    assert plan.candidates[0][1] == 8080


def test_a_service_bound_to_a_waypoint_goes_to_a_replica_with_the_vip_as_target() -> None:
    plan = resolve(view(), BOUND_VIP, 80)
    assert isinstance(plan, ViaWaypoint)
    assert names(plan) == ["waypoint-a", "waypoint-b"]
    assert (plan.target.ip, plan.target.port) == (BOUND_VIP, 80)
    assert plan.waypoint == "shop/waypoint"


def test_a_bound_service_fails_closed_without_a_ready_replica() -> None:
    plan = resolve(view(replicas_ready=False), BOUND_VIP, 80)
    assert isinstance(plan, Refuse) and "no ready replica" in plan.reason


def test_pod_ip_traffic_to_a_pod_bound_only_through_its_service_is_not_routed() -> None:
    plan = resolve(view(), "10.0.1.2", 8080)  # MeshFrontend: straight to the pod
    assert isinstance(plan, ToEndpoints) and names(plan) == ["bound-1"]


@pytest.mark.parametrize(("traffic_type", "via"), [("service", False), ("workload", True),
                                                    ("all", True), ("none", False)])  # fmt: skip
def test_a_pod_bound_itself_goes_through_a_waypoint_that_serves_workloads(
    traffic_type: str, via: bool
) -> None:
    v = view(traffic_type=traffic_type)
    if "traffic_type" not in {f.name for f in dataclasses.fields(Waypoint)}:
        pytest.skip("the state does not carry waypoint-for yet")
    plan = resolve(v, "10.0.1.3", 8080)
    assert isinstance(plan, ViaWaypoint) is via


def test_an_address_outside_the_mesh_view_is_passed_through() -> None:
    assert resolve(view(), "192.0.2.7", 443) == Passthrough("192.0.2.7", 443)


def test_a_service_with_no_ready_endpoint_is_refused() -> None:
    plan = resolve(view(service("empty", "10.96.0.30")), "10.96.0.30", 80)
    assert isinstance(plan, Refuse) and "no ready endpoint" in plan.reason


def test_an_unenrolled_pod_is_reached_directly() -> None:
    plan = resolve(view(), "10.0.1.4", 80)
    assert isinstance(plan, ToEndpoints) and not plan.candidates[0][0].enrolled
