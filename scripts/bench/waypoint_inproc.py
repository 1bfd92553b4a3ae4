"""In-process waypoint micro-benchmark: client -> waypoint -> ztunnel inbound -> HTTP echo,
all on loopback in one process (tests/integration/waypoint/waypoint_mesh.py's mesh), with the
waypoint's production logging (JSON lines to stderr, redirected to /dev/null here).

    .venv/bin/python scripts/bench/waypoint_inproc.py [--requests 3000] [--concurrency 1,8]
        [--profile out.prof]
    .venv/bin/python scripts/bench/waypoint_inproc.py --smoke   # tiny counts, for CI

No lab, seconds: for before/after comparisons of the waypoint's per-request code. Prints
requests/s and process CPU seconds per 1000 requests (the whole loop: the client, the
waypoint, node-2's ztunnel and the echo share the process, so compare runs of this script with
each other, not with waypoint_vs_haproxy.py). `--profile` writes a cProfile of the measured
loops (`python -m pstats`).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import sys
import tempfile
import time
from pathlib import Path

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a file: the repo's root

from meshcore.logs import configure_logging
from tests.integration.waypoint.waypoint_mesh import HttpClient, Mesh

REQUEST = b"GET /a HTTP/1.1\r\nhost: web.shop.svc.cluster.local\r\nuser-agent: bench\r\n\r\n"


async def one_client(client: HttpClient, n: int) -> None:
    for _ in range(n):
        client.send_raw(REQUEST)
        head, _body = await client.response()
        assert head.status_code == 200, head


async def run(mesh: Mesh, total: int, concurrency: int) -> tuple[float, float]:
    clients = [await mesh.http() for _ in range(concurrency)]
    await asyncio.gather(*(one_client(c, 20) for c in clients))  # warm up
    per = total // concurrency
    wall0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(one_client(c, per) for c in clients))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    done = per * concurrency
    return done / wall, cpu / done * 1000


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", default="1,8")
    parser.add_argument("--profile", help="write a cProfile of the measured loops here")
    parser.add_argument("--smoke", action="store_true", help="tiny counts, figures meaningless")
    args = parser.parse_args()
    if args.smoke:
        args.requests, args.concurrency = 40, "1,4"
    # production logging: one JSON line per request, to a file that costs nothing to write
    real_stderr, sys.stderr = sys.stderr, open(os.devnull, "w")  # noqa: SIM115
    configure_logging(json_output=True)  # (its logger factory keeps the file it was given)
    sys.stderr = real_stderr

    async def body() -> None:
        with tempfile.TemporaryDirectory() as tmp:
            mesh = Mesh(Path(tmp))
            await mesh.start()
            try:
                prof = cProfile.Profile() if args.profile else None
                for conc in (int(c) for c in args.concurrency.split(",")):
                    if prof:
                        prof.enable()
                    rps, cpu = await run(mesh, args.requests, conc)
                    if prof:
                        prof.disable()
                    print(
                        f"concurrency {conc}: {rps:.0f} requests/s, "
                        f"{cpu:.3f} CPU s per 1000 requests (whole loop)",
                        flush=True,
                    )
                if prof:
                    prof.dump_stats(args.profile)
            finally:
                await mesh.close()

    uvloop.run(body())


if __name__ == "__main__":
    main()
