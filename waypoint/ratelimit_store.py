"""Global rate limit counters in Redis, shared by every replica of every waypoint, and the
one async call the proxy makes per limited request (`check`).

One decision is one server-side Lua script (atomic: Redis runs a script alone): a fixed
window counter keyed by policy, rule bucket and window start, the window taken from Redis'
own clock (`TIME`) so that replicas with skewed clocks still share a window, and expiring
one second after its window. A Global limit is a fixed window (not a token bucket) because
one INCR per decision is all it needs; the cost is a burst of up to twice the limit across
a window's edge.

The store is given a short timeout (STORE_TIMEOUT); a call that fails or times out is
decided by the policy's `failureMode` and counted (`weft_waypoint_ratelimit_store_errors_total`),
and the store is not asked again for BACKOFF seconds (each such request is decided the same
way, at no cost), so a dead Redis does not add its timeout to every request.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import redis.asyncio as aioredis
import structlog
from redis.exceptions import RedisError

from waypoint.ratelimit import Headers, Limiter, RateLimitTables, Verdict

log = structlog.get_logger("waypoint.ratelimit")

STORE_TIMEOUT = 0.1  # seconds for one decision (connect included)
BACKOFF = 1.0  # seconds the store is left alone after it failed
MAX_CONNECTIONS = 16  # to Redis, per waypoint replica (a decision takes one for one round trip)
KEY_PREFIX = "weft:rl"

# KEYS[1]: the counter's prefix; ARGV[1]: the window in seconds.
# Returns {count in this window (this request included), milliseconds left in the window}.
WINDOW_SCRIPT = """
local t = redis.call('TIME')
local window = tonumber(ARGV[1])
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local start = tonumber(t[1]) - (tonumber(t[1]) % window)
local key = KEYS[1] .. ':' .. start
local n = redis.call('INCR', key)
if n == 1 then redis.call('EXPIRE', key, window + 1) end
return {n, (start + window) * 1000 - now_ms}
"""


class StoreError(Exception):
    """The counter store did not answer (in time)."""


def parse_addr(addr: str) -> dict[str, Any]:
    """`host:port`, `unix:/path/redis.sock` or a `redis://` / `unix://` URL, as redis-py's
    connection arguments."""
    if addr.startswith("unix:") and not addr.startswith("unix://"):
        return {"unix_socket_path": addr[len("unix:") :]}
    if "://" in addr:
        return {"url": addr}
    host, sep, port = addr.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"redis address {addr!r}: expected host:port or unix:/path")
    return {"host": host.strip("[]"), "port": int(port)}


class RedisStore:
    """Fixed-window counters in one Redis (redis-py's asyncio client, pooled connections)."""

    def __init__(
        self,
        addr: str,
        timeout: float = STORE_TIMEOUT,
        backoff: float = BACKOFF,
        clock: object = time.monotonic,
    ) -> None:
        self.addr = addr
        self.timeout = timeout
        self.backoff = backoff
        self._clock = clock
        args = parse_addr(addr)
        # A blocking pool: past MAX_CONNECTIONS a decision waits for a connection (within its
        # timeout) instead of failing, as redis-py's default pool does past its bound.
        common: dict[str, Any] = {
            "max_connections": MAX_CONNECTIONS,
            "timeout": timeout,
            "socket_timeout": timeout,
            "socket_connect_timeout": timeout,
        }
        if "url" in args:
            pool = aioredis.BlockingConnectionPool.from_url(str(args["url"]), **common)
        elif "unix_socket_path" in args:
            pool = aioredis.BlockingConnectionPool(
                connection_class=aioredis.UnixDomainSocketConnection,
                path=args["unix_socket_path"],
                **common,
            )
        else:
            pool = aioredis.BlockingConnectionPool(**args, **common)
        self.client = aioredis.Redis(connection_pool=pool)
        self._script = self.client.register_script(WINDOW_SCRIPT)
        self._down_until = 0.0

    async def hit(self, key: str, window: int) -> tuple[int, float]:
        """Count one request in `key`'s current window: (count so far, seconds left)."""
        now = self._clock()  # type: ignore[operator]
        if now < self._down_until:
            raise StoreError("the store failed less than a backoff ago")
        try:
            async with asyncio.timeout(self.timeout):
                n, left_ms = await self._script(keys=[key], args=[window])
        except (RedisError, OSError, TimeoutError) as err:
            self._down_until = now + self.backoff
            log.warning("ratelimit.store_failed", store=self.addr, error=repr(err))
            raise StoreError(str(err) or type(err).__name__) from err
        return int(n), max(0, int(left_ms)) / 1000.0

    async def close(self) -> None:
        await self.client.aclose()
        await self.client.connection_pool.disconnect()


def counter_key(limiter: Limiter, bucket: str) -> str:
    return f"{KEY_PREFIX}:{limiter.name}:{bucket}"


async def check(
    limiter: Limiter,
    store: RedisStore | None,
    path: str,
    headers: Headers,
    principal: str,
) -> Verdict | None:
    """The verdict on one request under `limiter`'s policy; None: no rule matched."""
    hit = limiter.match(path, headers, principal)
    if hit is None:
        return None
    if not limiter.global_:
        return limiter.decide_local(hit)
    if store is None:  # a Global policy and no store configured: as if it were unreachable
        return limiter.store_failed(hit)
    limit = hit.rule.limit
    try:
        n, left = await store.hit(counter_key(limiter, hit.bucket), limit.unit.seconds)
    except StoreError:
        return limiter.store_failed(hit)
    return limiter.counted(
        Verdict(n <= limit.requests, limit.requests, max(0, limit.requests - n), left)
    )


__all__ = ["RateLimitTables", "RedisStore", "StoreError", "check", "parse_addr"]
