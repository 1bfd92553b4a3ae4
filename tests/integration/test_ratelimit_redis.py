"""Global rate limits against a real redis-server (waypoint/ratelimit_store.py): counting in
one fixed window, atomicity under concurrent decisions from two "replicas", and failureMode
when Redis is stopped or too slow."""

from __future__ import annotations

import asyncio
import time

import pytest

from meshcore.resources import ObjectMeta
from meshcore.resources.ratelimit import (
    ClientSelector,
    FailureMode,
    HeaderMatchType,
    HeaderSelector,
    RateLimit,
    RateLimitPolicy,
    RateLimitRule,
    RateLimitTargetRef,
    RateLimitType,
    RateLimitUnit,
    TargetKind,
)
from tests.integration.redis_server import RedisServer, redis_server  # noqa: F401
from waypoint.ratelimit import STORE_ERRORS, Limiter
from waypoint.ratelimit_store import RedisStore, check

pytestmark = pytest.mark.integration


def global_limiter(
    requests: int,
    name: str,
    failure_mode: FailureMode = FailureMode.ALLOW,
    *selectors: ClientSelector,
) -> Limiter:
    policy = RateLimitPolicy(
        ObjectMeta(name, "shop"),
        (RateLimitTargetRef(TargetKind.SERVICE, "echo"),),
        (RateLimitRule(RateLimit(requests, RateLimitUnit.HOUR), selectors),),
        RateLimitType.GLOBAL,
        failure_mode,
    )
    return Limiter(policy, time.monotonic, 100)


def test_global_counts_one_window_shared_by_two_replicas(redis_server: RedisServer) -> None:  # noqa: F811
    async def main() -> None:
        a, b = RedisStore(redis_server.addr), RedisStore(redis_server.addr)
        try:
            lim_a, lim_b = global_limiter(5, "count"), global_limiter(5, "count")
            verdicts = []
            for i in range(8):
                lim, store = (lim_a, a) if i % 2 else (lim_b, b)
                verdicts.append(await check(lim, store, "/", (), ""))
            assert [v.allowed for v in verdicts if v] == [True] * 5 + [False] * 3
            assert [v.remaining for v in verdicts if v] == [4, 3, 2, 1, 0, 0, 0, 0]
            last = verdicts[-1]
            assert last is not None and 0 < last.reset_after <= 3600
            assert dict(last.headers())["x-ratelimit-limit"] == "5"
            keys = await a.client.keys("weft:rl:shop/count:*")
            assert len(keys) == 1  # one window counter, with an expiry
            assert 0 < await a.client.ttl(keys[0]) <= 3601
        finally:
            await a.close()
            await b.close()

    asyncio.run(main())


def test_distinct_values_count_apart_in_redis(redis_server: RedisServer) -> None:  # noqa: F811
    async def main() -> None:
        store = RedisStore(redis_server.addr)
        try:
            lim = global_limiter(
                1,
                "distinct",
                FailureMode.ALLOW,
                ClientSelector(headers=(HeaderSelector("x-user", HeaderMatchType.DISTINCT),)),
            )
            got = [
                await check(lim, store, "/", (("x-user", u),), "") for u in ("ann", "bob", "ann")
            ]
            assert [v.allowed for v in got if v] == [True, True, False]
        finally:
            await store.close()

    asyncio.run(main())


def test_concurrent_decisions_are_atomic(redis_server: RedisServer) -> None:  # noqa: F811
    async def main() -> None:
        stores = [RedisStore(redis_server.addr, timeout=2.0) for _ in range(2)]
        try:
            lims = [global_limiter(50, "atomic") for _ in stores]
            verdicts = await asyncio.gather(
                *(check(lims[i % 2], stores[i % 2], "/", (), "") for i in range(300))
            )
            assert sum(1 for v in verdicts if v and v.allowed) == 50
        finally:
            for s in stores:
                await s.close()

    asyncio.run(main())


@pytest.mark.parametrize(
    ("mode", "allowed"), [(FailureMode.ALLOW, True), (FailureMode.DENY, False)]
)
def test_failure_mode_decides_when_redis_is_stopped(
    redis_server: RedisServer,  # noqa: F811
    mode: FailureMode,
    allowed: bool,
) -> None:
    async def main() -> None:
        store = RedisStore(redis_server.addr, backoff=0.2)
        try:
            lim = global_limiter(1, f"down-{mode.value}", mode)
            first = await check(lim, store, "/", (), "")
            assert first is not None and first.allowed
            redis_server.stop()
            before = STORE_ERRORS.labels(lim.name)._value.get()
            started = time.monotonic()
            got = [await check(lim, store, "/", (), "") for _ in range(20)]
            assert [v.allowed for v in got if v] == [allowed] * 20
            assert time.monotonic() - started < 1.0  # a dead store is not waited for each time
            assert STORE_ERRORS.labels(lim.name)._value.get() == before + 20
            redis_server.start()  # back: counted again (a new server, a new window)
            await asyncio.sleep(0.25)  # the backoff
            again = await check(lim, store, "/", (), "")
            assert again is not None and again.allowed
            over = await check(lim, store, "/", (), "")
            assert over is not None and not over.allowed
        finally:
            await store.close()

    asyncio.run(main())


def test_a_slow_redis_is_decided_by_failure_mode_within_the_timeout(
    redis_server: RedisServer,  # noqa: F811
) -> None:
    async def main() -> None:
        store = RedisStore(redis_server.addr, timeout=0.1)
        admin = RedisStore(redis_server.addr, timeout=2.0)
        try:
            lim = global_limiter(100, "slow", FailureMode.DENY)
            assert (await check(lim, store, "/", (), "")).allowed  # type: ignore[union-attr]
            await admin.client.execute_command("CLIENT", "PAUSE", "1000", "ALL")
            started = time.monotonic()
            verdict = await check(lim, store, "/", (), "")
            assert verdict is not None and not verdict.allowed
            assert time.monotonic() - started < 0.5
        finally:
            await store.close()
            await admin.close()

    asyncio.run(main())
