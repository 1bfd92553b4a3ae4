"""The HBONE pool's dials, without sockets: one dial per key at a time, shared by every request
that waits for it, its error given to all of them at once."""

from __future__ import annotations

import asyncio
import time

import pytest

from meshcore import hbone
from ztunnel.hbone_conn import HboneConnection
from ztunnel.pool import Pool, PoolKey

KEY = PoolKey("spiffe://cluster.local/ns/shop/sa/web", "198.18.0.2", "spiffe://td/ns/a/sa/b")
OTHER = PoolKey("spiffe://cluster.local/ns/shop/sa/web", "198.18.0.3", "spiffe://td/ns/a/sa/b")
DIAL_TIME = 0.3


class Dialer:
    """Stands in for Pool._open: each dial takes DIAL_TIME, then fails or succeeds."""

    def __init__(self, fail: bool) -> None:
        self.fail = fail
        self.dials: list[PoolKey] = []

    async def __call__(self, key: PoolKey) -> HboneConnection:
        self.dials.append(key)
        await asyncio.sleep(DIAL_TIME)
        if self.fail:
            raise ConnectionRefusedError(f"peer at {key.node_address} refused")
        return HboneConnection(hbone.HboneClient())


def pool_with(dialer: Dialer) -> Pool:
    pool = Pool(identities=None)  # type: ignore[arg-type]  # _open is replaced
    pool._open = dialer  # type: ignore[method-assign]
    return pool


def test_a_failing_dial_fails_every_waiting_request_at_once() -> None:
    async def scenario() -> None:
        dialer = Dialer(fail=True)
        pool = pool_with(dialer)
        started = time.monotonic()
        results = await asyncio.gather(*(pool.get(KEY) for _ in range(5)), return_exceptions=True)
        elapsed = time.monotonic() - started
        assert all(isinstance(r, ConnectionRefusedError) for r in results), results
        assert dialer.dials == [KEY]  # one dial, not one per waiting request in turn
        assert elapsed < 2 * DIAL_TIME, elapsed
        # The failure is not remembered: the next request dials again.
        with pytest.raises(ConnectionRefusedError):
            await pool.get(KEY)
        assert dialer.dials == [KEY, KEY]

    asyncio.run(scenario())


def test_concurrent_requests_share_one_dial_and_its_connection() -> None:
    async def scenario() -> None:
        dialer = Dialer(fail=False)
        pool = pool_with(dialer)
        conns = await asyncio.gather(*(pool.get(KEY) for _ in range(5)))
        assert len({id(c) for c in conns}) == 1
        assert dialer.dials == [KEY]
        assert pool.stats()[0]["connections"] == 1

    asyncio.run(scenario())


def test_dials_for_different_keys_do_not_wait_for_each_other() -> None:
    async def scenario() -> None:
        dialer = Dialer(fail=True)
        pool = pool_with(dialer)
        started = time.monotonic()
        await asyncio.gather(pool.get(KEY), pool.get(OTHER), return_exceptions=True)
        assert sorted(k.node_address for k in dialer.dials) == ["198.18.0.2", "198.18.0.3"]
        assert time.monotonic() - started < 2 * DIAL_TIME

    asyncio.run(scenario())


def test_a_request_that_gives_up_leaves_the_dial_to_the_others() -> None:
    async def scenario() -> None:
        dialer = Dialer(fail=False)
        pool = pool_with(dialer)
        quitter = asyncio.create_task(pool.get(KEY))
        stayer = asyncio.create_task(pool.get(KEY))
        await asyncio.sleep(DIAL_TIME / 3)
        quitter.cancel()
        conn = await stayer
        assert isinstance(conn, HboneConnection)
        assert quitter.cancelled()
        assert dialer.dials == [KEY]

    asyncio.run(scenario())
