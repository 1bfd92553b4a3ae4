"""Rate limit cost at the waypoint, in process (scripts/bench/waypoint_inproc.py's mesh:
client -> waypoint -> ztunnel inbound -> HTTP echo on loopback), with a real redis-server on a
unix socket for Global (tests/integration/redis_server.py):

    .venv/bin/python scripts/bench/waypoint_ratelimit.py [--requests 3000] [--concurrency 8]
    .venv/bin/python scripts/bench/waypoint_ratelimit.py --smoke

1. Routed requests with no policy, a Local policy and a Global policy on the Service (limits
   no request reaches): requests/s and process CPU s per 1000 requests, as ratios of no policy.
2. The decision alone (`ratelimit_store.check`, no HTTP): µs per decision, Local and Global.
3. Global accuracy across two "replicas" (two stores, two limiters, one Redis): decisions at
   3x a per-Second limit for `--seconds`; allowed / (limit x windows seen).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a file: the repo's root

from waypoint_inproc import run as routed  # the same routed loop as that bench

from meshcore.logs import configure_logging
from meshcore.resources import ObjectMeta
from meshcore.resources.ratelimit import (
    RateLimit,
    RateLimitPolicy,
    RateLimitRule,
    RateLimitTargetRef,
    RateLimitType,
    RateLimitUnit,
    TargetKind,
)
from tests.integration.redis_server import RedisServer
from tests.integration.waypoint.waypoint_mesh import Mesh
from waypoint.ratelimit import Limiter
from waypoint.ratelimit_store import RedisStore, check

BIG = 2**31 - 1  # requests per Day: never reached


def policy_yaml(kind: str) -> str:
    return f"""
apiVersion: policy.weft.dev/v1
kind: RateLimitPolicy
metadata: {{name: bench, namespace: shop}}
spec:
  targetRefs: [{{group: "", kind: Service, name: web}}]
  type: {kind}
  rules:
  - limit: {{requests: {BIG}, unit: Day}}
"""


def limiter(kind: RateLimitType, requests: int, unit: RateLimitUnit, name: str) -> Limiter:
    policy = RateLimitPolicy(
        ObjectMeta(name, "shop"),
        (RateLimitTargetRef(TargetKind.SERVICE, "web"),),
        (RateLimitRule(RateLimit(requests, unit)),),
        kind,
    )
    return Limiter(policy, time.monotonic, 10_000)


async def decisions(lim: Limiter, store: RedisStore | None, n: int) -> float:
    for _ in range(50):
        await check(lim, store, "/a", (), "")
    t0 = time.perf_counter()
    for _ in range(n):
        await check(lim, store, "/a", (), "")
    return (time.perf_counter() - t0) / n * 1e6


async def accuracy(addr: str, limit: int, seconds: float) -> tuple[int, int, int]:
    """Two replicas at 3x `limit` per second in all: (allowed, full windows, sent) counted
    over the windows (seconds) the run covered whole, its first and last left out."""
    stores = [RedisStore(addr, timeout=0.5) for _ in range(2)]
    lims = [limiter(RateLimitType.GLOBAL, limit, RateLimitUnit.SECOND, "acc") for _ in stores]
    allowed_in: dict[int, int] = {}
    sent_in: dict[int, int] = {}
    interval = 1 / (3 * limit)
    start = time.monotonic()
    try:
        i = 0
        while time.monotonic() - start < seconds:
            due = start + i * interval
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            window = int(time.time())  # Redis' clock is this machine's
            verdict = await check(lims[i % 2], stores[i % 2], "/", (), "")
            sent_in[window] = sent_in.get(window, 0) + 1
            allowed_in[window] = allowed_in.get(window, 0) + bool(verdict and verdict.allowed)
            i += 1
    finally:
        for s in stores:
            await s.close()
    full = sorted(sent_in)[1:-1]
    return sum(allowed_in[w] for w in full), len(full), sum(sent_in[w] for w in full)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--decisions", type=int, default=5000)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--limit", type=int, default=100, help="per Second, for the accuracy run")
    parser.add_argument("--smoke", action="store_true", help="tiny counts, figures meaningless")
    args = parser.parse_args()
    if args.smoke:
        args.requests, args.concurrency, args.decisions, args.seconds = 80, 2, 100, 1.0
    real_stderr, sys.stderr = sys.stderr, open(os.devnull, "w")  # noqa: SIM115
    configure_logging(json_output=True)
    sys.stderr = real_stderr

    async def body(redis: RedisServer) -> None:
        with tempfile.TemporaryDirectory() as tmp:
            mesh = Mesh(Path(tmp))
            await mesh.start()
            store = RedisStore(redis.addr)
            mesh.waypoint.ratelimit_store = store
            try:
                rows = []
                for kind in ("none", "Local", "Global"):
                    mesh.set_routes(policy_yaml(kind) if kind != "none" else "")
                    rows.append((kind, *await routed(mesh, args.requests, args.concurrency)))
                base_rps, base_cpu = rows[0][1], rows[0][2]
                print(
                    f"routed requests, concurrency {args.concurrency}, {args.requests} per policy:"
                )
                print(
                    f"  {'policy':<8}{'req/s':>10}{'req/s ratio':>13}{'CPU s/1000':>12}"
                    f"{'CPU ratio':>11}"
                )
                for kind, rps, cpu in rows:
                    print(
                        f"  {kind:<8}{rps:>10.0f}{rps / base_rps:>12.3f}x{cpu:>12.3f}"
                        f"{cpu / base_cpu:>10.3f}x"
                    )
                local_us = await decisions(
                    limiter(RateLimitType.LOCAL, BIG, RateLimitUnit.DAY, "l"), None, args.decisions
                )
                global_us = await decisions(
                    limiter(RateLimitType.GLOBAL, BIG, RateLimitUnit.DAY, "g"),
                    store,
                    args.decisions,
                )
                per_request_us = base_cpu * 1000  # CPU µs of one routed request, no policy
                print("decision alone (wall µs, one at a time):")
                print(f"  Local  {local_us:8.1f} µs  ({local_us / per_request_us:.3f}x a request)")
                print(
                    f"  Global {global_us:8.1f} µs  ({global_us / per_request_us:.3f}x a request)"
                )
            finally:
                await store.close()
                await mesh.close()
        allowed, windows, sent = await accuracy(redis.addr, args.limit, args.seconds)
        print(
            f"Global accuracy, 2 replicas, {args.limit}/Second at 3x for {args.seconds:g} s: "
            f"{allowed} allowed of {sent} in {windows} whole windows, expected "
            f"{args.limit * windows}: {allowed / max(1, args.limit * windows):.3f}"
        )

    with tempfile.TemporaryDirectory(prefix="weft-redis-") as folder:
        redis = RedisServer(Path(folder))
        try:
            redis.start()
            uvloop.run(body(redis))
        finally:
            redis.stop()


if __name__ == "__main__":
    main()
