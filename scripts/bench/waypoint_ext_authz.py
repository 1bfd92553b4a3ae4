"""What AuthorizationPolicy CUSTOM (ext_authz) costs per request at the waypoint, in process
(scripts/bench/waypoint_inproc.py's mesh: client -> waypoint -> ztunnel inbound -> HTTP echo
on loopback), with the real sample ext_authz server (`sample_apps.extauthz`) in its own
process as the provider, reached over HBONE through node-2's ztunnel as a mesh pod would be:

    .venv/bin/python scripts/bench/waypoint_ext_authz.py [--requests 3000] [--concurrency 8]
        [--rounds 3] [--time-cap 60] [-o table|json]
    .venv/bin/python scripts/bench/waypoint_ext_authz.py --smoke   # tiny counts, for CI

Ways, interleaved per round: `none` (no policy), `http` and `grpc` (a CUSTOM policy on Service
web whose provider is the sample server over HTTP (aiohttp) or gRPC (grpcio)). Every request
carries `x-ext-authz: allow`, so every one passes. Per way: requests/s, per-request latency
p50/p90/p99, and CPU s per 1000 requests of the bench process (the whole loop: client,
waypoint, node-2's ztunnel and echo share it, as in waypoint_inproc.py), each as a ratio to
`none`; the provider's own CPU is counted apart (`provider_cpu_per_1000`, from /proc). Medians
over the rounds.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a file: the repo's root

from _benchlib import cpu_seconds, medians, stop

from meshcore.logs import configure_logging
from meshcore.meshstate import ServiceMembership, ServicePort, Workload
from meshcore.resources.meshconfig import ExtAuthzKind, ExtAuthzProvider, MeshSettings
from tests.integration.waypoint.waypoint_mesh import (
    NS,
    WEB_IP,
    HttpClient,
    Mesh,
    free_port,
    service,
)

ROOT = Path(__file__).resolve().parents[2]
REQUEST = (
    b"GET /a HTTP/1.1\r\nhost: web.shop.svc.cluster.local\r\nuser-agent: bench\r\n"
    b"x-ext-authz: allow\r\n\r\n"
)
AUTHZ_VIP = "10.96.0.30"
HTTP_PROVIDER_PORT, GRPC_PROVIDER_PORT = 8000, 9000
WAYS = ("none", "http", "grpc")
WARMUP = 20  # requests per client before each measured loop


def provider(kind: ExtAuthzKind) -> ExtAuthzProvider:
    http = kind is ExtAuthzKind.HTTP
    return ExtAuthzProvider(
        name=f"bench-{kind.name.lower()}",
        kind=kind,
        service=f"ext-authz.{NS}.svc.cluster.local",
        service_namespace=NS,
        service_name="ext-authz",
        port=HTTP_PROVIDER_PORT if http else GRPC_PROVIDER_PORT,
        timeout=3.0,
        include_request_headers_in_check=("x-ext-authz",) if http else (),
        headers_to_upstream_on_allow=("x-ext-authz-check-result",),
    )


def policy_yaml(provider_name: str) -> str:
    return f"""
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata: {{name: bench, namespace: {NS}}}
spec:
  targetRefs: [{{kind: Service, group: "", name: web}}]
  action: CUSTOM
  provider: {{name: {provider_name}}}
  rules:
  - to: [{{operation: {{paths: ["/*"]}}}}]
"""


def start_provider(grpc_port: int, http_port: int) -> subprocess.Popen[bytes]:
    """The sample server in its own process (its logs to /dev/null), once both ports answer."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "sample_apps.extauthz", "--host", WEB_IP,
         "--grpc-port", str(grpc_port), "--http-port", str(http_port)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    deadline = time.monotonic() + 30
    for port in (grpc_port, http_port):
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"sample_apps.extauthz exited {proc.returncode} at start")
            try:
                socket.create_connection((WEB_IP, port), timeout=1).close()
                break
            except OSError as err:
                if time.monotonic() > deadline:
                    stop([proc])
                    raise RuntimeError(f"sample_apps.extauthz: port {port} not up in 30 s") from err
                time.sleep(0.1)
    return proc


def add_provider_service(mesh: Mesh, grpc_port: int, http_port: int) -> None:
    """Service ext-authz (8000 HTTP, 9000 gRPC) on web's pod, and the mesh config naming it."""
    state = dict(mesh.state)
    web = next(w for w in state.values() if isinstance(w, Workload) and w.name == "web")
    member = ServiceMembership(
        NS, "ext-authz", {HTTP_PROVIDER_PORT: http_port, GRPC_PROVIDER_PORT: grpc_port}
    )
    web = dataclasses.replace(web, services=(*web.services, member))
    state[web.key] = web
    ports = (ServicePort("http", HTTP_PROVIDER_PORT), ServicePort("grpc", GRPC_PROVIDER_PORT))
    authz = service("ext-authz", AUTHZ_VIP, ports, bound=False)
    state[authz.key] = authz
    settings = MeshSettings({p.name: p for p in map(provider, ExtAuthzKind)})
    state[settings.key] = settings
    mesh.state = state
    mesh.waypoint.view.update(state)
    mesh.inbound.view.update(state)  # type: ignore[arg-type]


async def one_client(client: HttpClient, n: int, until: float, latencies: list[float]) -> None:
    for _ in range(n):
        if time.monotonic() > until:
            return
        t0 = time.perf_counter()
        client.send_raw(REQUEST)
        head, body = await client.response()
        latencies.append(time.perf_counter() - t0)
        if head.status_code != 200:
            raise RuntimeError(f"request refused: {head.status_code} {body[:200]!r}")


def percentile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


async def provider_decides(mesh: Mesh) -> bool:
    """Whether a request without `x-ext-authz: allow` is refused (the policy is in force)."""
    client = await mesh.http()
    client.send_raw(REQUEST.replace(b"x-ext-authz: allow\r\n", b""))
    head, _body = await client.response()
    return bool(head.status_code == 403)


async def measure(
    mesh: Mesh, total: int, concurrency: int, cap: float, provider_pid: int
) -> dict[str, float]:
    clients = [await mesh.http() for _ in range(concurrency)]
    far = time.monotonic() + cap
    await asyncio.gather(*(one_client(c, WARMUP, far, []) for c in clients))
    latencies: list[float] = []
    until = time.monotonic() + cap
    wall0, cpu0, pcpu0 = time.perf_counter(), time.process_time(), cpu_seconds([provider_pid])
    per = max(1, total // concurrency)
    await asyncio.gather(*(one_client(c, per, until, latencies) for c in clients))
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    pcpu = cpu_seconds([provider_pid]) - pcpu0
    done = len(latencies)
    latencies.sort()
    return {
        "requests": done,
        "rps": done / wall,
        "p50_ms": percentile(latencies, 0.50) * 1e3,
        "p90_ms": percentile(latencies, 0.90) * 1e3,
        "p99_ms": percentile(latencies, 0.99) * 1e3,
        "cpu_per_1000": cpu / done * 1000,
        "provider_cpu_per_1000": pcpu / done * 1000,
    }


def with_ratios(result: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    base = result["none"]
    for way in WAYS:
        row = result[way]
        for key in ("rps", "p50_ms", "p90_ms", "p99_ms", "cpu_per_1000"):
            row[f"{key}_ratio"] = round(row[key] / base[key], 3)
    return result


def table(result: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    lines = [
        f"routed requests, concurrency {args.concurrency}, {args.requests} per way, "
        f"median of {args.rounds} round(s); ratio to none in ( )",
        f"  {'way':<6}{'req/s':>16}{'p50 ms':>16}{'p90 ms':>16}{'p99 ms':>16}"
        f"{'CPU s/1000':>16}{'provider CPU':>14}",
    ]
    for way in WAYS:
        r = result[way]
        cells = "".join(
            f"{r[k]:>8.{d}f} ({r[k + '_ratio']:.2f}x)"
            for k, d in (("rps", 0), ("p50_ms", 3), ("p90_ms", 3), ("p99_ms", 3))
        )
        lines.append(
            f"  {way:<6}{cells}{r['cpu_per_1000']:>8.3f} ({r['cpu_per_1000_ratio']:.2f}x)"
            f"{r['provider_cpu_per_1000']:>14.3f}"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--time-cap", type=float, default=60.0, help="seconds per measured loop")
    parser.add_argument("-o", "--output", choices=("table", "json"), default="table")
    parser.add_argument("--smoke", action="store_true", help="tiny counts, figures meaningless")
    args = parser.parse_args()
    if args.smoke:
        args.requests, args.concurrency, args.rounds, args.time_cap = 40, 2, 1, 10.0
    real_stderr, sys.stderr = sys.stderr, open(os.devnull, "w")  # noqa: SIM115
    configure_logging(json_output=True)  # production logging, to /dev/null
    sys.stderr = real_stderr
    grpc_port, http_port = free_port(), free_port()
    proc = start_provider(grpc_port, http_port)
    rounds: dict[str, list[dict[str, Any]]] = {way: [] for way in WAYS}

    async def body() -> None:
        with tempfile.TemporaryDirectory(prefix="weft-bench-") as tmp:
            mesh = Mesh(Path(tmp))
            await mesh.start()
            try:
                add_provider_service(mesh, grpc_port, http_port)
                for _ in range(args.rounds):
                    for way in WAYS:
                        mesh.set_routes(policy_yaml(f"bench-{way}") if way != "none" else "")
                        if await provider_decides(mesh) != (way != "none"):
                            raise RuntimeError(f"{way}: the CUSTOM policy is not as expected")
                        rounds[way].append(
                            await measure(
                                mesh, args.requests, args.concurrency, args.time_cap, proc.pid
                            )
                        )
            finally:
                await mesh.close()

    try:
        uvloop.run(body())
    finally:
        stop([proc])
    result = with_ratios(medians(rounds))
    if args.output == "json":
        print(json.dumps(result, indent=2))
    else:
        print(table(result, args))


if __name__ == "__main__":
    main()
