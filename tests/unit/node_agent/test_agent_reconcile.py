"""Controller state in, map operations out: which pods a node captures, and how maps get there."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest

from meshcore.meshstate import MeshService, ServicePort, StateValue, Workload
from meshcore.resources import ResourceKey
from node_agent.reconcile import DesiredPod, MapEntry, Plan, desired_pods, plan

NODE = "node-a"
State = dict[ResourceKey, StateValue]


def wl(
    name: str,
    ip: str = "10.244.1.10",
    *,
    node: str = NODE,
    enrolled: bool = True,
    addresses: tuple[str, ...] | None = None,
    excluded_ports: tuple[int, ...] = (),
) -> Workload:
    return Workload(
        uid=f"uid-{name}",
        name=name,
        namespace="shop",
        service_account="default",
        identity="spiffe://cluster.local/ns/shop/sa/default",
        node=node,
        node_address="192.168.50.11",
        addresses=(ip,) if addresses is None else addresses,
        labels={"app": name},
        enrolled=enrolled,
        ready=True,
        excluded_ports=excluded_ports,
    )


def state(*values: StateValue) -> State:
    return {v.key: v for v in values}


def pod(name: str, ip: str, excluded_ports: tuple[int, ...] = ()) -> DesiredPod:
    return DesiredPod(f"uid-{name}", "shop", name, ip, excluded_ports)


def pods(*values: DesiredPod) -> dict[str, DesiredPod]:
    return {p.uid: p for p in values}


@dataclasses.dataclass
class FakeMaps:
    """The three maps the agent reconciles, as plain values, with `Maps.apply`'s semantics."""

    enrolled: dict[int, MapEntry] = dataclasses.field(default_factory=dict)
    enrolled_ips: dict[str, int] = dataclasses.field(default_factory=dict)
    excluded: set[tuple[int, int]] = dataclasses.field(default_factory=set)

    def plan(
        self,
        desired: dict[str, DesiredPod],
        cookies: dict[str, int],
        global_excluded: frozenset[int] = frozenset(),
    ) -> Plan:
        return plan(
            desired,
            cookies,
            dict(self.enrolled),
            dict(self.enrolled_ips),
            set(self.excluded),
            global_excluded,
        )

    def apply(self, p: Plan) -> None:
        self.enrolled.update(p.enroll)
        self.enrolled_ips.update(p.ips_put)
        self.excluded |= p.ports_put
        self.excluded -= p.ports_delete
        for ip in p.ips_delete:
            self.enrolled_ips.pop(ip, None)
        for cookie in p.unenroll:
            self.enrolled.pop(cookie, None)


# --- desired_pods -------------------------------------------------------------------------


def test_desired_pods_keys_enrolled_pods_on_this_node_by_uid() -> None:
    got = desired_pods(state(wl("cart", "10.244.1.10"), wl("web", "10.244.1.11")), NODE)
    assert got == {
        "uid-cart": DesiredPod("uid-cart", "shop", "cart", "10.244.1.10"),
        "uid-web": DesiredPod("uid-web", "shop", "web", "10.244.1.11"),
    }


def test_desired_pod_carries_its_excluded_ports() -> None:
    got = desired_pods(state(wl("db-client", excluded_ports=(5432, 6379))), NODE)
    assert got["uid-db-client"].excluded_ports == (5432, 6379)


def test_desired_pod_label_is_namespace_slash_name() -> None:
    assert desired_pods(state(wl("cart")), NODE)["uid-cart"].label == "shop/cart"


def test_pods_on_other_nodes_are_not_desired() -> None:
    got = desired_pods(state(wl("cart"), wl("web", node="node-b")), NODE)
    assert set(got) == {"uid-cart"}


def test_unenrolled_pods_are_not_desired() -> None:
    got = desired_pods(state(wl("cart"), wl("legacy", enrolled=False)), NODE)
    assert set(got) == {"uid-cart"}


def test_pods_without_an_address_yet_are_not_desired() -> None:
    got = desired_pods(state(wl("cart"), wl("starting", addresses=())), NODE)
    assert set(got) == {"uid-cart"}


def test_desired_pod_uses_the_first_of_several_addresses() -> None:
    got = desired_pods(state(wl("cart", addresses=("10.244.1.10", "10.244.1.99"))), NODE)
    assert got["uid-cart"].ip == "10.244.1.10"


def test_values_other_than_workloads_are_ignored() -> None:
    svc = MeshService(
        "cart", "shop", "cart.shop.svc.cluster.local", ("10.96.0.10",), (ServicePort("http", 80),)
    )
    assert desired_pods(state(svc, wl("web")), NODE).keys() == {"uid-web"}


def test_no_state_means_no_desired_pods() -> None:
    assert desired_pods({}, NODE) == {}


# --- plan: enrolled (cookie -> pod) -------------------------------------------------------


def test_known_pods_are_enrolled_by_cookie_into_empty_maps() -> None:
    p = plan(
        pods(pod("cart", "10.244.1.10"), pod("web", "10.244.1.11")),
        {"uid-cart": 101, "uid-web": 102},
        {},
        {},
        set(),
    )
    assert p.enroll == {101: MapEntry("10.244.1.10"), 102: MapEntry("10.244.1.11")}
    assert p.unenroll == []
    assert p.pending == []


def test_a_correct_entry_is_not_rewritten() -> None:
    p = plan(
        pods(pod("cart", "10.244.1.10"), pod("web", "10.244.1.11")),
        {"uid-cart": 101, "uid-web": 102},
        {101: MapEntry("10.244.1.10")},
        {},
        set(),
    )
    assert p.enroll == {102: MapEntry("10.244.1.11")}


def test_an_entry_with_another_ip_is_rewritten() -> None:
    p = plan(
        pods(pod("cart", "10.244.1.20")),
        {"uid-cart": 101},
        {101: MapEntry("10.244.1.10")},
        {"10.244.1.10": 0},
        set(),
    )
    assert p.enroll == {101: MapEntry("10.244.1.20")}
    assert p.ips_put == {"10.244.1.20": 0}
    assert p.ips_delete == ["10.244.1.10"]


def test_an_entry_with_other_flags_is_rewritten() -> None:
    p = plan(
        pods(pod("cart", "10.244.1.10")),
        {"uid-cart": 101},
        {101: MapEntry("10.244.1.10", flags=1)},
        {"10.244.1.10": 1},
        set(),
    )
    assert p.enroll == {101: MapEntry("10.244.1.10")}
    assert p.ips_put == {"10.244.1.10": 0}


def test_cookies_no_longer_desired_are_unenrolled_in_order() -> None:
    p = plan(
        pods(pod("cart", "10.244.1.10")),
        {"uid-cart": 101},
        {303: MapEntry("10.244.1.30"), 101: MapEntry("10.244.1.10"), 202: MapEntry("10.244.1.20")},
        {"10.244.1.10": 0},
        set(),
    )
    assert p.unenroll == [202, 303]
    assert p.enroll == {}


def test_everything_is_unenrolled_when_no_pod_is_desired() -> None:
    p = plan({}, {}, {101: MapEntry("10.244.1.10")}, {"10.244.1.10": 0}, {(101, 5432)})
    assert p.unenroll == [101]
    assert p.ips_delete == ["10.244.1.10"]
    assert p.ports_delete == {(101, 5432)}


# --- plan: pending pods (cookie unknown) --------------------------------------------------


def test_a_pod_whose_cookie_is_unknown_is_pending_not_enrolled() -> None:
    cart = pod("cart", "10.244.1.10")
    p = plan(pods(cart), {}, {}, {}, set())
    assert p.pending == [cart]
    assert p.enroll == {}


def test_a_pending_pods_ip_is_enrolled_for_the_inbound_path() -> None:
    p = plan(pods(pod("cart", "10.244.1.10")), {}, {}, {}, set())
    assert p.ips_put == {"10.244.1.10": 0}


def test_nothing_is_unenrolled_while_any_pod_is_pending() -> None:
    p = plan(
        pods(pod("cart", "10.244.1.10"), pod("web", "10.244.1.11")),
        {"uid-web": 102},
        {101: MapEntry("10.244.1.10"), 102: MapEntry("10.244.1.11"), 999: MapEntry("10.244.1.99")},
        {"10.244.1.10": 0, "10.244.1.11": 0},
        set(),
    )
    assert [x.uid for x in p.pending] == ["uid-cart"]
    assert p.unenroll == []


def test_restarted_agent_keeps_capture_until_it_finds_the_cookies() -> None:
    # Before the restart the maps were correct; the new agent knows no cookie yet.
    desired = pods(pod("cart", "10.244.1.10"), pod("web", "10.244.1.11"))
    maps = FakeMaps()
    maps.apply(maps.plan(desired, {"uid-cart": 101, "uid-web": 102}))
    before = (dict(maps.enrolled), dict(maps.enrolled_ips))

    p = maps.plan(desired, {})

    assert p.unenroll == []
    assert p.ips_delete == []
    assert p.enroll == {}
    assert {x.uid for x in p.pending} == {"uid-cart", "uid-web"}
    maps.apply(p)
    assert (maps.enrolled, maps.enrolled_ips) == before


def test_stale_cookies_go_once_no_pod_is_pending() -> None:
    maps = FakeMaps({101: MapEntry("10.244.1.10"), 999: MapEntry("10.244.1.99")})
    desired = pods(pod("cart", "10.244.1.10"))
    maps.apply(maps.plan(desired, {}))
    assert 999 in maps.enrolled

    maps.apply(maps.plan(desired, {"uid-cart": 101}))
    assert maps.enrolled == {101: MapEntry("10.244.1.10")}


def test_pending_pods_are_listed_in_uid_order() -> None:
    p = plan(pods(pod("web", "10.244.1.11"), pod("cart", "10.244.1.10")), {}, {}, {}, set())
    assert [x.uid for x in p.pending] == ["uid-cart", "uid-web"]


def test_a_plan_with_only_pending_pods_is_empty() -> None:
    p = plan(pods(pod("cart", "10.244.1.10")), {}, {}, {"10.244.1.10": 0}, set())
    assert p.pending
    assert p.empty


# --- plan: enrolled_ips -------------------------------------------------------------------


def test_ips_of_pods_no_longer_desired_are_deleted_in_order() -> None:
    p = plan(
        pods(pod("cart", "10.244.1.10")),
        {"uid-cart": 101},
        {101: MapEntry("10.244.1.10")},
        {"10.244.1.30": 0, "10.244.1.10": 0, "10.244.1.20": 0},
        set(),
    )
    assert p.ips_put == {}
    assert p.ips_delete == ["10.244.1.20", "10.244.1.30"]


# --- plan: excluded ports -----------------------------------------------------------------


def test_excluded_ports_are_keyed_by_the_pods_cookie() -> None:
    p = plan(pods(pod("cart", "10.244.1.10", (5432, 6379))), {"uid-cart": 101}, {}, {}, set())
    assert p.ports_put == {(101, 5432), (101, 6379)}
    assert p.ports_delete == set()


def test_global_excluded_ports_are_keyed_by_cookie_zero() -> None:
    p = plan({}, {}, {}, {}, set(), frozenset({22, 53}))
    assert p.ports_put == {(0, 22), (0, 53)}


def test_global_excluded_ports_are_kept_with_no_pods() -> None:
    p = plan({}, {}, {}, {}, {(0, 22)}, frozenset({22}))
    assert p.empty


def test_a_pending_pods_excluded_ports_wait_for_its_cookie() -> None:
    p = plan(pods(pod("cart", "10.244.1.10", (5432,))), {}, {}, {}, set())
    assert p.ports_put == set()


def test_excluded_ports_change_by_set_difference() -> None:
    p = plan(
        pods(pod("cart", "10.244.1.10", (5432, 8125))),
        {"uid-cart": 101},
        {101: MapEntry("10.244.1.10")},
        {"10.244.1.10": 0},
        {(101, 5432), (101, 6379), (0, 22), (0, 53), (999, 80)},
        frozenset({22, 2379}),
    )
    assert p.ports_put == {(101, 8125), (0, 2379)}
    assert p.ports_delete == {(101, 6379), (0, 53), (999, 80)}


# --- plan: convergence --------------------------------------------------------------------


def test_an_already_correct_map_gives_an_empty_plan() -> None:
    p = plan(
        pods(pod("cart", "10.244.1.10", (5432,)), pod("web", "10.244.1.11")),
        {"uid-cart": 101, "uid-web": 102},
        {101: MapEntry("10.244.1.10"), 102: MapEntry("10.244.1.11")},
        {"10.244.1.10": 0, "10.244.1.11": 0},
        {(101, 5432), (0, 22)},
        frozenset({22}),
    )
    assert p.empty
    assert p == Plan()


def test_a_new_plan_has_every_kind_of_operation_and_is_not_empty() -> None:
    p = plan(
        pods(pod("cart", "10.244.1.10", (5432,))),
        {"uid-cart": 101},
        {999: MapEntry("10.244.1.99")},
        {"10.244.1.99": 0},
        {(999, 80)},
    )
    assert p.enroll and p.unenroll and p.ips_put and p.ips_delete
    assert p.ports_put and p.ports_delete
    assert not p.empty


def stale_maps() -> FakeMaps:
    return FakeMaps(
        {101: MapEntry("10.244.9.9", 1), 7: MapEntry("10.244.1.7")},
        {"10.244.1.7": 0, "10.244.1.10": 1},
        {(7, 80), (101, 1), (0, 9999)},
    )


@pytest.mark.parametrize("make", [FakeMaps, stale_maps], ids=["empty-maps", "stale-maps"])
def test_applying_a_plan_then_planning_again_gives_an_empty_plan(
    make: Callable[[], FakeMaps],
) -> None:
    start = make()
    desired = pods(pod("cart", "10.244.1.10", (5432,)), pod("web", "10.244.1.11", (6379, 8125)))
    cookies = {"uid-cart": 101, "uid-web": 102}
    start.apply(start.plan(desired, cookies, frozenset({22})))

    assert start.plan(desired, cookies, frozenset({22})).empty
    assert start.enrolled == {101: MapEntry("10.244.1.10"), 102: MapEntry("10.244.1.11")}
    assert start.enrolled_ips == {"10.244.1.10": 0, "10.244.1.11": 0}
    assert start.excluded == {(101, 5432), (102, 6379), (102, 8125), (0, 22)}


def test_plan_reads_but_never_changes_its_inputs() -> None:
    enrolled = {999: MapEntry("10.244.1.99")}
    ips = {"10.244.1.99": 0}
    excluded = {(999, 80)}
    plan(pods(pod("cart", "10.244.1.10", (5432,))), {"uid-cart": 101}, enrolled, ips, excluded)
    assert enrolled == {999: MapEntry("10.244.1.99")}
    assert ips == {"10.244.1.99": 0}
    assert excluded == {(999, 80)}
