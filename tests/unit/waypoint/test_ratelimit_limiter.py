"""The Local limiter's state machine on a fake clock (token buckets per rule and Distinct
value, the bucket bound), which rule and which policy decide a request (waypoint/ratelimit.py),
and `check` with a fake Global store (waypoint/ratelimit_store.py)."""

from __future__ import annotations

import asyncio

import pytest

from meshcore.meshstate import MeshService
from meshcore.resources import ObjectMeta, ResourceKey
from meshcore.resources.ratelimit import (
    ClientSelector,
    FailureMode,
    HeaderMatchType,
    HeaderSelector,
    PathMatchType,
    PathSelector,
    RateLimit,
    RateLimitPolicy,
    RateLimitRule,
    RateLimitTargetRef,
    RateLimitType,
    RateLimitUnit,
    TargetKind,
)
from waypoint import ratelimit_store
from waypoint.ratelimit import DECISIONS, STORE_ERRORS, Limiter, RateLimitTables, match
from waypoint.ratelimit_store import StoreError, check


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def rule(requests: int, unit: RateLimitUnit, *selectors: ClientSelector) -> RateLimitRule:
    return RateLimitRule(RateLimit(requests, unit), selectors)


def policy(
    *rules: RateLimitRule,
    name: str = "p",
    targets: tuple[RateLimitTargetRef, ...] = (RateLimitTargetRef(TargetKind.SERVICE, "echo"),),
    kind: RateLimitType = RateLimitType.LOCAL,
    failure_mode: FailureMode = FailureMode.ALLOW,
) -> RateLimitPolicy:
    return RateLimitPolicy(ObjectMeta(name, "shop"), targets, rules, kind, failure_mode)


def distinct(name: str) -> ClientSelector:
    return ClientSelector(headers=(HeaderSelector(name, HeaderMatchType.DISTINCT),))


def limiter(p: RateLimitPolicy, clock: FakeClock, max_buckets: int = 100) -> Limiter:
    return Limiter(p, clock, max_buckets)


def allowed(lim: Limiter, path: str = "/", headers=(), principal: str = "") -> bool | None:
    hit = lim.match(path, headers, principal)
    return None if hit is None else lim.decide_local(hit).allowed


@pytest.mark.parametrize(
    ("unit", "seconds"),
    [
        (RateLimitUnit.SECOND, 1),
        (RateLimitUnit.MINUTE, 60),
        (RateLimitUnit.HOUR, 3600),
        (RateLimitUnit.DAY, 86400),
    ],
)
def test_a_bucket_allows_the_limit_then_refills_at_limit_per_unit(unit, seconds):
    clock = FakeClock()
    lim = limiter(policy(rule(4, unit)), clock)
    assert [allowed(lim) for _ in range(5)] == [True, True, True, True, False]
    clock.now += seconds / 4 * 0.99  # not quite one token back
    assert allowed(lim) is False
    clock.now += seconds / 4 * 0.02
    assert allowed(lim) is True
    assert allowed(lim) is False
    clock.now += seconds * 10  # refills to the limit, never past it
    assert [allowed(lim) for _ in range(5)] == [True, True, True, True, False]


def test_the_verdict_says_limit_remaining_and_when_to_retry():
    clock = FakeClock()
    lim = limiter(policy(rule(2, RateLimitUnit.MINUTE)), clock)
    hit = lim.match("/", (), "")
    assert hit is not None
    first = lim.decide_local(hit)
    assert (first.allowed, first.limit, first.remaining) == (True, 2, 1)
    lim.decide_local(hit)
    over = lim.decide_local(hit)
    assert (over.allowed, over.remaining) == (False, 0)
    assert over.reset_after == pytest.approx(30.0)
    assert dict(over.headers()) == {
        "x-ratelimit-limit": "2",
        "x-ratelimit-remaining": "0",
        "retry-after": "30",
    }


def test_a_distinct_header_keys_a_bucket_per_value_and_skips_requests_without_it():
    clock = FakeClock()
    lim = limiter(policy(rule(1, RateLimitUnit.HOUR, distinct("x-user"))), clock)
    assert allowed(lim, headers=(("x-user", "ann"),)) is True
    assert allowed(lim, headers=(("x-user", "ann"),)) is False
    assert allowed(lim, headers=(("x-user", "bob"),)) is True
    assert allowed(lim, headers=(("X-User", "bob"),)) is False  # names match in any case
    assert allowed(lim) is None  # no header: the rule does not match, not limited


def test_distinct_values_cannot_collide_into_one_bucket():
    p = policy(rule(1, RateLimitUnit.HOUR, distinct("a"), distinct("b")))
    one = match(p, "/", (("a", "x:1=y"), ("b", "z")), "")
    two = match(p, "/", (("a", "x"), ("b", "y:1=z")), "")
    assert one is not None and two is not None
    assert one.bucket != two.bucket


def test_the_bucket_bound_drops_the_least_recently_used_and_counts_it():
    clock = FakeClock()
    lim = limiter(policy(rule(1, RateLimitUnit.HOUR, distinct("x-user"))), clock, max_buckets=2)
    for user in ("a", "b"):
        assert allowed(lim, headers=(("x-user", user),)) is True
    assert allowed(lim, headers=(("x-user", "a"),)) is False  # a is now the most recent
    assert allowed(lim, headers=(("x-user", "c"),)) is True  # b dropped
    assert len(lim.local) == 2
    assert lim.local.evicted == 1
    assert allowed(lim, headers=(("x-user", "a"),)) is False  # a was kept
    assert allowed(lim, headers=(("x-user", "b"),)) is True  # b starts again, full


def test_the_first_matching_rule_decides():
    clock = FakeClock()
    api = ClientSelector(path=PathSelector(PathMatchType.PATH_PREFIX, "/api"))
    lim = limiter(policy(rule(1, RateLimitUnit.HOUR, api), rule(3, RateLimitUnit.HOUR)), clock)
    assert allowed(lim, "/api/x") is True
    assert allowed(lim, "/api?q=1") is False  # the /api rule's bucket, not the catch-all's
    assert [allowed(lim, "/apix") for _ in range(4)] == [True, True, True, False]


@pytest.mark.parametrize(
    ("selector", "path", "headers", "principal", "matches"),
    [
        (
            ClientSelector(path=PathSelector(PathMatchType.PATH_PREFIX, "/api")),
            "/api",
            (),
            "",
            True,
        ),
        (
            ClientSelector(path=PathSelector(PathMatchType.PATH_PREFIX, "/api")),
            "/api/",
            (),
            "",
            True,
        ),
        (
            ClientSelector(path=PathSelector(PathMatchType.PATH_PREFIX, "/api")),
            "/apix",
            (),
            "",
            False,
        ),
        (
            ClientSelector(path=PathSelector(PathMatchType.PATH_PREFIX, "/")),
            "/anything",
            (),
            "",
            True,
        ),
        (ClientSelector(path=PathSelector(PathMatchType.EXACT, "/a")), "/a?x=1", (), "", True),
        (ClientSelector(path=PathSelector(PathMatchType.EXACT, "/a")), "/a/", (), "", False),
        (ClientSelector(headers=(HeaderSelector("k", value="v"),)), "/", (("k", "v"),), "", True),
        (ClientSelector(headers=(HeaderSelector("k", value="v"),)), "/", (("k", "w"),), "", False),
        (ClientSelector(headers=(HeaderSelector("k", value="v"),)), "/", (), "", False),
        (
            ClientSelector(source_principals=("cluster.local/ns/a/sa/b",)),
            "/",
            (),
            "spiffe://cluster.local/ns/a/sa/b",
            True,
        ),
        (
            ClientSelector(source_principals=("cluster.local/ns/a/sa/b",)),
            "/",
            (),
            "spiffe://cluster.local/ns/a/sa/c",
            False,
        ),
        (
            ClientSelector(source_principals=("cluster.local/ns/a/*",)),
            "/",
            (),
            "spiffe://cluster.local/ns/a/sa/c",
            True,
        ),
        (  # every field of a selector must match
            ClientSelector(
                headers=(HeaderSelector("k", value="v"),),
                path=PathSelector(PathMatchType.PATH_PREFIX, "/api"),
            ),
            "/other",
            (("k", "v"),),
            "",
            False,
        ),
    ],
)
def test_client_selectors_match_as_written(selector, path, headers, principal, matches):
    p = policy(rule(1, RateLimitUnit.SECOND, selector))
    assert (match(p, path, headers, principal) is not None) is matches


def test_all_selectors_of_a_rule_must_match():
    p = policy(
        rule(
            1,
            RateLimitUnit.SECOND,
            ClientSelector(headers=(HeaderSelector("a", value="1"),)),
            ClientSelector(headers=(HeaderSelector("b", value="2"),)),
        )
    )
    assert match(p, "/", (("a", "1"),), "") is None
    assert match(p, "/", (("a", "1"), ("b", "2")), "") is not None


SVC = MeshService("echo", "shop", "echo.shop.svc.cluster.local", ("10.96.0.1",), (), "shop/wp")
OTHER = MeshService("other", "shop", "other.shop.svc.cluster.local", ("10.96.0.2",), (), "shop/wp")
ROUTE = ResourceKey("HTTPRoute", "shop", "r")


def test_the_route_policy_wins_over_the_service_one_over_the_gateway_one():
    tables = RateLimitTables("shop/wp", FakeClock())
    by_route = policy(
        rule(1, RateLimitUnit.SECOND),
        name="route",
        targets=(RateLimitTargetRef(TargetKind.HTTPROUTE, "r"),),
    )
    by_service = policy(rule(1, RateLimitUnit.SECOND), name="svc")
    by_gateway = policy(
        rule(1, RateLimitUnit.SECOND),
        name="gw",
        targets=(RateLimitTargetRef(TargetKind.GATEWAY, "wp"),),
    )
    tables.update([by_gateway, by_service, by_route], [SVC, OTHER])
    assert tables.for_request(SVC, ROUTE).name == "shop/route"  # type: ignore[union-attr]
    assert tables.for_request(SVC, None).name == "shop/svc"  # type: ignore[union-attr]
    assert tables.for_request(OTHER, None).name == "shop/gw"  # type: ignore[union-attr]


def test_no_policy_means_no_limiter_and_a_gateway_policy_of_another_waypoint_is_not_ours():
    tables = RateLimitTables("shop/wp", FakeClock())
    tables.update([], [SVC])
    assert tables.empty and tables.for_request(SVC, ROUTE) is None
    other_gw = policy(
        rule(1, RateLimitUnit.SECOND), targets=(RateLimitTargetRef(TargetKind.GATEWAY, "another"),)
    )
    tables.update([other_gw], [SVC])
    assert tables.for_request(SVC, None) is None


def test_an_unchanged_policy_keeps_its_buckets_across_state_updates():
    clock = FakeClock()
    tables = RateLimitTables("shop/wp", clock)
    p = policy(rule(1, RateLimitUnit.HOUR))
    tables.update([p], [SVC])
    first = tables.for_request(SVC, None)
    assert first is not None and allowed(first) is True
    tables.update([p], [SVC, OTHER])  # some other change of the mesh
    assert tables.for_request(SVC, None) is first and allowed(first) is False
    tables.update([policy(rule(2, RateLimitUnit.HOUR))], [SVC])  # the policy changed: anew
    assert tables.for_request(SVC, None) is not first


class FakeStore:
    def __init__(self, fail: bool = False) -> None:
        self.counts: dict[str, int] = {}
        self.fail = fail

    async def hit(self, key: str, window: int) -> tuple[int, float]:
        if self.fail:
            raise StoreError("down")
        self.counts[key] = self.counts.get(key, 0) + 1
        return self.counts[key], 12.5


def test_global_counts_in_the_store_and_failure_mode_decides_when_it_fails():
    async def run() -> None:
        clock = FakeClock()
        p = policy(rule(2, RateLimitUnit.MINUTE), name="g", kind=RateLimitType.GLOBAL)
        lim = limiter(p, clock)
        store = FakeStore()
        got = [await check(lim, store, "/", (), "") for _ in range(3)]  # type: ignore[arg-type]
        assert [v.allowed for v in got if v] == [True, True, False]
        assert got[2] is not None and dict(got[2].headers())["retry-after"] == "13"
        assert list(store.counts) == [ratelimit_store.counter_key(lim, "0")]
        errors = STORE_ERRORS.labels("shop/g")._value.get()
        down = FakeStore(fail=True)
        verdict = await check(lim, down, "/", (), "")  # type: ignore[arg-type]
        assert verdict is not None and verdict.allowed
        deny = limiter(
            policy(
                rule(2, RateLimitUnit.MINUTE),
                name="g",
                kind=RateLimitType.GLOBAL,
                failure_mode=FailureMode.DENY,
            ),
            clock,
        )
        verdict = await check(deny, down, "/", (), "")  # type: ignore[arg-type]
        assert verdict is not None and not verdict.allowed
        assert STORE_ERRORS.labels("shop/g")._value.get() == errors + 2
        assert DECISIONS.labels("shop/g", "store_error_denied")._value.get() >= 1

    asyncio.run(run())


@pytest.mark.parametrize(
    ("addr", "args"),
    [
        ("10.0.0.1:6379", {"host": "10.0.0.1", "port": 6379}),
        ("[fd00::1]:6379", {"host": "fd00::1", "port": 6379}),
        ("unix:/run/redis.sock", {"unix_socket_path": "/run/redis.sock"}),
        ("redis://h:1/0", {"url": "redis://h:1/0"}),
    ],
)
def test_store_addresses(addr, args):
    assert ratelimit_store.parse_addr(addr) == args


def test_a_bad_store_address_is_refused():
    with pytest.raises(ValueError, match="host:port"):
        ratelimit_store.parse_addr("nowhere")
