"""The DestinationRule state machines, driven by a fake clock and a seeded random source:
round robin order, least request, consistent hash stability, circuit breaker limits, outlier
ejection, return and the max percent, bounded tables."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from meshcore.resources.destinationrule import (
    ConnectionPool,
    ConsistentHash,
    HttpCookie,
    LoadBalancer,
    OutlierDetection,
    SimpleLB,
    TrafficPolicy,
)
from waypoint.trafficpolicy import (
    Admission,
    Balancer,
    CircuitBreaker,
    ClusterKey,
    OutlierDetector,
    TrafficPolicies,
    hash_key,
    rendezvous_order,
    set_cookie_header,
)

HOSTS = ["10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80"]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def same(h: str) -> str:
    return h


# --- load balancing ---------------------------------------------------------------------------


def test_round_robin_takes_each_endpoint_in_turn_whatever_order_they_come_in() -> None:
    lb = Balancer(SimpleLB.ROUND_ROBIN, None, random.Random(1))
    firsts = []
    for i in range(6):
        hosts = HOSTS[i % 3 :] + HOSTS[: i % 3]  # the view gives them in any order
        firsts.append(hosts[lb.order(hosts, None, {})[0]])
    assert firsts == HOSTS + HOSTS


def test_round_robin_puts_the_others_after_the_pick_for_retries() -> None:
    lb = Balancer(SimpleLB.ROUND_ROBIN, None, random.Random(1))
    assert [HOSTS[i] for i in lb.order(HOSTS, None, {})] == HOSTS
    assert [HOSTS[i] for i in lb.order(HOSTS, None, {})] == HOSTS[1:] + HOSTS[:1]


def test_least_request_picks_the_less_loaded_of_two_random_choices() -> None:
    lb = Balancer(SimpleLB.LEAST_REQUEST, None, random.Random(7))
    active = {HOSTS[0]: 5, HOSTS[1]: 0, HOSTS[2]: 5}
    picks = Counter(HOSTS[lb.order(HOSTS, None, active)[0]] for _ in range(300))
    # the idle endpoint wins every draw it is in: 2 of 3 draws
    assert picks[HOSTS[1]] == pytest.approx(200, abs=40)
    assert picks[HOSTS[0]] + picks[HOSTS[2]] == 300 - picks[HOSTS[1]]


def test_least_request_never_picks_the_busiest_of_two() -> None:
    lb = Balancer(SimpleLB.LEAST_REQUEST, None, random.Random(3))
    active = {HOSTS[0]: 0, HOSTS[1]: 9}
    assert {HOSTS[lb.order(HOSTS[:2], None, active)[0]] for _ in range(50)} == {HOSTS[0]}


def test_random_spreads_over_every_endpoint() -> None:
    lb = Balancer(SimpleLB.RANDOM, None, random.Random(5))
    picks = Counter(HOSTS[lb.order(HOSTS, None, {})[0]] for _ in range(600))
    assert all(150 < picks[h] < 250 for h in HOSTS)


def test_consistent_hash_keeps_a_key_on_one_endpoint_while_the_set_is_unchanged() -> None:
    lb = Balancer(SimpleLB.UNSPECIFIED, ConsistentHash("x-user"), random.Random(1))
    first = {key: HOSTS[lb.order(HOSTS, key, {})[0]] for key in ("ann", "bob", "cy", "dee")}
    for _ in range(5):
        shuffled = random.sample(HOSTS, 3)
        for key, host in first.items():
            assert shuffled[lb.order(shuffled, key, {})[0]] == host


def test_consistent_hash_moves_only_the_keys_of_an_endpoint_that_left() -> None:
    keys = [f"user-{i}" for i in range(200)]
    before = {k: HOSTS[rendezvous_order(k, HOSTS)[0]] for k in keys}
    left = HOSTS[:2]
    after = {k: left[rendezvous_order(k, left)[0]] for k in keys}
    moved = [k for k in keys if before[k] != after[k]]
    assert all(before[k] == HOSTS[2] for k in moved)
    assert len(set(before.values())) == 3


def test_consistent_hash_without_a_key_on_the_request_is_random() -> None:
    lb = Balancer(SimpleLB.UNSPECIFIED, ConsistentHash("x-user"), random.Random(2))
    assert len({HOSTS[lb.order(HOSTS, None, {})[0]] for _ in range(50)}) == 3


def test_hash_key_reads_a_header_the_source_ip_or_a_cookie() -> None:
    headers = {"x-user": "ann", "cookie": "a=1; sess=abc"}
    assert hash_key(ConsistentHash("X-User"), headers.get, "10.1.1.1") == ("ann", None)
    assert hash_key(ConsistentHash(use_source_ip=True), headers.get, "10.1.1.1") == (
        "10.1.1.1",
        None,
    )
    cookie = ConsistentHash(http_cookie=HttpCookie("sess", "/", 60.0))
    assert hash_key(cookie, headers.get, "") == ("abc", None)
    none: dict[str, str] = {}
    made, to_set = hash_key(cookie, none.get, "")
    assert made and made == to_set
    assert set_cookie_header(cookie, made) == (
        "set-cookie",
        f"sess={made}; Path=/; Max-Age=60; HttpOnly",
    )
    assert hash_key(ConsistentHash(http_cookie=HttpCookie("sess")), none.get, "") == (None, None)
    assert hash_key(None, headers.get, "10.1.1.1") == (None, None)


# --- circuit breaking ---------------------------------------------------------------------------


def test_requests_over_max_connections_wait_up_to_the_pending_limit_then_overflow() -> None:
    cb = CircuitBreaker(ConnectionPool(max_connections=1, http1_max_pending_requests=1))
    assert cb.admit("a") is Admission.ACTIVE
    assert cb.admit("b") is Admission.PENDING
    assert cb.admit("c") is Admission.OVERFLOW
    assert (cb.active, cb.pending, cb.overflows) == (1, 1, 1)
    assert cb.release() == "b"  # a's slot goes to b
    assert (cb.active, cb.pending) == (1, 0)
    assert cb.release() is None
    assert (cb.active, cb.pending) == (0, 0)
    assert cb.admit("d") is Admission.ACTIVE


def test_max_requests_bounds_requests_in_flight_without_queueing() -> None:
    cb = CircuitBreaker(ConnectionPool(http2_max_requests=2))
    assert [cb.admit() for _ in range(3)] == [
        Admission.ACTIVE,
        Admission.ACTIVE,
        Admission.OVERFLOW,
    ]
    cb.release()
    assert cb.admit() is Admission.ACTIVE


def test_a_waiter_that_gives_up_leaves_the_queue() -> None:
    cb = CircuitBreaker(ConnectionPool(max_connections=1, http1_max_pending_requests=2))
    cb.admit("a")
    cb.admit("b")
    cb.admit("c")
    cb.cancel("b")
    cb.cancel("zz")  # not waiting: nothing happens
    assert cb.release() == "c"


def test_max_retries_bounds_retries_in_flight() -> None:
    cb = CircuitBreaker(ConnectionPool(max_retries=1))
    assert cb.retry_started()
    assert not cb.may_retry()
    assert not cb.retry_started()
    cb.retry_done()
    assert cb.retry_started()


def test_max_requests_per_connection_ends_keep_alive() -> None:
    cb = CircuitBreaker(ConnectionPool(max_requests_per_connection=2))
    assert cb.keep_alive(1)
    assert not cb.keep_alive(2)
    assert CircuitBreaker(ConnectionPool()).keep_alive(10_000)


# --- outlier detection ----------------------------------------------------------------------------


def detector(clock: Clock, **kw: object) -> OutlierDetector:
    config = OutlierDetection(**{"interval": 1.0, "base_ejection_time": 10.0, **kw})  # type: ignore[arg-type]
    od = OutlierDetector(config, clock)
    od.sync(HOSTS)
    return od


def test_n_consecutive_5xx_eject_an_endpoint_for_the_base_time() -> None:
    clock = Clock()
    od = detector(clock, consecutive_5xx_errors=3, max_ejection_percent=100)
    assert not od.record(HOSTS[0], 500)
    assert not od.record(HOSTS[0], 503)
    assert od.record(HOSTS[0], 500)
    assert od.ejected() == [HOSTS[0]]
    assert od.usable(HOSTS) == [1, 2]
    clock.now += 9.9
    assert od.is_ejected(HOSTS[0])
    clock.now += 0.1
    assert od.ejected() == []
    assert od.usable(HOSTS) == [0, 1, 2]
    assert od.ejections_total == 1


def test_a_success_between_errors_resets_the_count() -> None:
    od = detector(Clock(), consecutive_5xx_errors=2, max_ejection_percent=100)
    for status in (500, 200, 500, 404, 500):
        assert not od.record(HOSTS[0], status)


def test_no_response_counts_as_a_gateway_error() -> None:
    od = detector(Clock(), consecutive_5xx_errors=0, consecutive_gateway_errors=2)
    assert not od.record(HOSTS[0], None)
    assert od.record(HOSTS[0], None)


def test_gateway_errors_count_only_502_503_504() -> None:
    od = detector(Clock(), consecutive_5xx_errors=0, consecutive_gateway_errors=2)
    assert not od.record(HOSTS[0], 502)
    assert not od.record(HOSTS[0], 500)  # a 5xx, not a gateway error: the run restarts
    assert not od.record(HOSTS[0], 504)
    assert od.record(HOSTS[0], 503)


def test_each_ejection_lasts_longer_and_the_multiplier_decays_while_healthy() -> None:
    clock = Clock()
    od = detector(clock, consecutive_5xx_errors=1, max_ejection_percent=100)
    assert od.record(HOSTS[0], 500)  # 10 s
    clock.now += 10
    assert od.record(HOSTS[0], 500)  # back, fails again: 20 s
    clock.now += 19
    assert od.is_ejected(HOSTS[0])
    clock.now += 1
    assert od.ejected() == []
    clock.now += 1.5  # one interval healthy: the multiplier goes from 2 to 1
    assert od.record(HOSTS[0], 500)
    clock.now += 19.9
    assert od.is_ejected(HOSTS[0])
    clock.now += 0.1
    assert od.ejected() == []  # 2 x 10 s again, not 3 x 10 s


def test_max_ejection_percent_limits_ejections_but_one_may_always_go() -> None:
    od = detector(Clock(), consecutive_5xx_errors=1, max_ejection_percent=10)
    assert od.max_ejected() == 1  # 10 % of 3 rounds down to 0: Envoy ejects one anyway
    assert od.record(HOSTS[0], 500)
    assert not od.record(HOSTS[1], 500)
    assert od.ejected() == [HOSTS[0]]


def test_the_last_endpoint_is_never_ejected() -> None:
    od = detector(Clock(), consecutive_5xx_errors=1, max_ejection_percent=100)
    assert od.max_ejected() == 2
    assert od.record(HOSTS[0], 500)
    assert od.record(HOSTS[1], 500)
    assert not od.record(HOSTS[2], 500)
    single = detector(Clock(), consecutive_5xx_errors=1, max_ejection_percent=100)
    single.sync(HOSTS[:1])
    assert not single.record(HOSTS[0], 500)


def test_a_zero_percent_or_a_zero_count_never_ejects() -> None:
    assert not detector(Clock(), consecutive_5xx_errors=1, max_ejection_percent=0).record(
        HOSTS[0], 500
    )
    od = detector(Clock(), consecutive_5xx_errors=0, max_ejection_percent=100)
    assert not any(od.record(HOSTS[0], 500) for _ in range(20))


def test_endpoints_that_left_are_forgotten_and_if_all_are_out_all_are_used() -> None:
    od = detector(Clock(), consecutive_5xx_errors=1, max_ejection_percent=100)
    assert od.record(HOSTS[0], 500)
    od.sync(HOSTS[1:])
    assert set(od.hosts) == set(HOSTS[1:])
    assert not od.record(HOSTS[0], 500)  # not an endpoint any more
    od.sync(HOSTS[:1])  # it is back, as a new endpoint: not ejected
    assert od.ejected() == []
    assert od.usable(HOSTS[:1]) == [0]


# --- clusters -------------------------------------------------------------------------------------


def policy(**kw: object) -> TrafficPolicy:
    return TrafficPolicy(**kw)  # type: ignore[arg-type]


def test_a_cluster_leaves_ejected_endpoints_out_and_reports_ejections() -> None:
    clock = Clock()
    seen: list[str] = []
    policies = TrafficPolicies(clock, random.Random(1), on_eject=lambda c, h: seen.append(h))
    p = policy(outlier_detection=OutlierDetection(2, 0, 1.0, 5.0, 50))
    c = policies.cluster(ClusterKey("ns", "echo", 80), p, "echo.ns.svc.cluster.local")
    c.order(HOSTS, same, None)
    for _ in range(2):
        c.attempt_started(HOSTS[1])
        c.attempt_done(HOSTS[1], 503)
    assert seen == [HOSTS[1]]
    assert policies.ejected() == {"echo.ns.svc.cluster.local": [HOSTS[1]]}
    orders = [c.order(HOSTS, same, None)[0] for _ in range(4)]
    assert HOSTS[1] not in orders
    assert c.active == {}
    (described,) = policies.describe()
    assert described["ejected"] == [{"endpoint": HOSTS[1], "times_ejected": 1, "back_in_s": 5.0}]
    clock.now += 5
    assert HOSTS[1] in {c.order(HOSTS, same, None)[0] for _ in range(3)}


def test_a_cluster_keeps_its_state_while_the_policy_is_equal_and_starts_over_on_change() -> None:
    policies = TrafficPolicies(Clock(), random.Random(1))
    key = ClusterKey("ns", "echo", 80, "v1")
    p = policy(connection_pool=ConnectionPool(http2_max_requests=1))
    c = policies.cluster(key, p, "h")
    assert c.admit() is Admission.ACTIVE
    assert (
        policies.cluster(key, policy(connection_pool=ConnectionPool(http2_max_requests=1)), "h")
        is c
    )
    assert c.admit() is Admission.OVERFLOW
    fresh = policies.cluster(key, policy(connection_pool=ConnectionPool(http2_max_requests=2)), "h")
    assert fresh is not c and fresh.admit() is Admission.ACTIVE


def test_no_policy_means_round_robin_and_no_limits() -> None:
    c = TrafficPolicies(Clock(), random.Random(1)).cluster(ClusterKey("ns", "e", 80), None, "h")
    assert c.breaker is None and c.outlier is None
    assert all(c.admit() is Admission.ACTIVE for _ in range(100))
    assert [c.order(HOSTS, same, None)[0] for _ in range(3)] == HOSTS


def test_the_cluster_table_is_bounded() -> None:
    policies = TrafficPolicies(Clock(), random.Random(1), max_clusters=3)
    lb = policy(load_balancer=LoadBalancer(SimpleLB.RANDOM))
    for i in range(10):
        policies.cluster(ClusterKey("ns", f"s{i}", 80), lb, "h")
    assert [k.name for k in policies.clusters] == ["s7", "s8", "s9"]


def test_in_flight_entries_of_endpoints_that_left_are_dropped() -> None:
    c = TrafficPolicies(Clock(), random.Random(1)).cluster(ClusterKey("ns", "e", 80), None, "h")
    for i in range(100):
        c.attempt_started(f"10.9.0.{i}:80")  # never finished, and gone
    c.order(HOSTS, same, None)
    assert c.active == {}
