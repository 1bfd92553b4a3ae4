"""The latency ztunnel adds at a fixed rate, and its CPU per 1000 requests/s (not a test).

    .venv/bin/python scripts/bench/ztunnel_tail.py [--seconds 10] [--rate 1000] [--rounds 3]
        [--connections 4] [--profile DIR]
    .venv/bin/python scripts/bench/ztunnel_tail.py --smoke   # tiny counts, for CI

A two-node lab; a client pod on node-1 and an HTTP echo pod on node-2 (`--body-bytes 1024`),
once in an enrolled namespace (mesh: capture -> ztunnel -> HBONE mTLS -> ztunnel -> pod) and
once, the same pods, in a namespace that is not (plain TCP). The two ways take turns, round
after round, in the same run: the added latency of a round is mesh minus plain of that round.

The load generator (GENERATOR below, run in the client pod) is open loop with absolute
deadlines: request i is due at start + i/rate, sent on the first idle kept-alive connection
(of --connections), and its latency runs from when it was due to when its whole answer is in,
so a late send or a queued request counts against the path, never hides it (`sent_p*`:
the same from the actual send, as fortio measures). It waits in
select() with microsecond timeouts (epoll's are milliseconds) and reports how late it sent
(`send_late_ms`): the generator is not the tail while its p99 lateness is far below the
added p99. A warm-up second precedes each measured run, unmeasured.

Per way: p50/p90/p99/p99.9/max; for the mesh, each ztunnel's CPU seconds (with its workers,
`--workers`) over the measured window from /proc (vCPU per 1000 rps = CPU s / s / (rate /
1000)) and RSS. Medians over the rounds with their spread (min..max). `--profile DIR` adds a
mesh run, in no figure, during which py-spy samples each ztunnel (py-spy on PATH, or
PY_SPY=path), written as speedscope JSON. The lab is removed at the end, also on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import _benchlib
import click
import waypoint_vs_haproxy as haproxy_bench  # its certificates and HAProxy TLS helpers
from _benchlib import cpu_seconds, median

LAB = f"weft-bench-tail-{os.getpid() % 10000}"
BODY_BYTES = 1024
# Published by Istio (istio.io performance and scalability, ambient): per ztunnel at 1000
# rps (1.24), and the latency ambient adds at 1000 rps (1.22). Targets of issue 16.
ISTIO_VCPU_PER_1000_RPS = 0.06
ISTIO_ADDED_P90_MS, ISTIO_ADDED_P99_MS = 0.17, 0.20
TARGET_ADDED_P99_MS = 0.5
HAPROXY_CLIENT_PORT = 18080  # the client pod's HAProxy (TLS out), `haproxy` way
WAYS = ("plain", "haproxy", "mesh")
# latency from the actual send, not from when the request was due (fortio's way): apart
# from the generator's own lateness, which more busy processes on the same cores also raise
SENT_KEYS = ("sent_p50_ms", "sent_p90_ms", "sent_p99_ms")


def manifest(folder: Path) -> str:
    """Client on node-1, echo on node-2, in both namespaces; the plain echo pod also runs
    HAProxy terminating TLS in front of the echo (the `haproxy` way)."""
    out = """
apiVersion: v1
kind: Namespace
metadata: {name: mesh, labels: {weft.dev/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
"""
    for ns in ("mesh", "plain"):
        tls = (
            f'\n  - {{name: tls, command: ["haproxy", "-db", "-f", "{folder / "backend.cfg"}"]}}'
            if ns == "plain"
            else ""
        )
        out += f"""
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {ns}}}
spec:
  nodeName: node-1
  containers: [{{name: main, command: ["sleep", "7200"]}}]
---
apiVersion: v1
kind: Pod
metadata: {{name: server, namespace: {ns}}}
spec:
  nodeName: node-2
  containers:
  - {{name: web, image: weft/http-echo,
      args: ["--port", "8080", "--body-bytes", "{BODY_BYTES}"]}}{tls}
"""
    return out


# Run in the client pod: argv host port rate seconds connections warmup_s. Prints one JSON
# line per phase ("warm", then "run") on stdout, each when that phase is over.
GENERATOR = r"""
import json, math, select, socket, sys, time
host, port = sys.argv[1], int(sys.argv[2])
rate, seconds = float(sys.argv[3]), float(sys.argv[4])
nconn, warm = int(sys.argv[5]), float(sys.argv[6])
REQ = b"GET / HTTP/1.1\r\nhost: server\r\nuser-agent: weft-bench\r\n\r\n"
conns = []
for _ in range(nconn):
    s = socket.create_connection((host, port), timeout=5)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.setblocking(False)
    conns.append(s)
def pct(v, p):
    return v[max(math.ceil(p / 100 * len(v)), 1) - 1] * 1000 if v else None
def phase(total):
    idle = list(conns)
    busy = {}  # socket -> [due, buffer, sent]
    lat, lat_sent, late, errors = [], [], [], 0
    queued = []  # due times waiting for an idle connection
    start = time.perf_counter() + 0.002
    i = 0
    deadline = start + total / rate + 5.0
    while (i < total or busy or queued) and time.perf_counter() < deadline:
        now = time.perf_counter()
        while i < total and start + i / rate <= now:
            queued.append(start + i / rate)
            i += 1
        while queued and idle:
            s = idle.pop()
            due = queued.pop(0)
            sent = time.perf_counter()
            late.append(sent - due)
            s.sendall(REQ)
            busy[s] = [due, b"", sent]
        wait = (start + i / rate - time.perf_counter()) if i < total else 0.05
        ready = select.select(list(busy), [], [], max(0.0, wait))[0] if busy else (
            time.sleep(max(0.0, wait)) or [])
        for s in ready:
            try:
                chunk = s.recv(65536)
            except BlockingIOError:
                continue
            if not chunk:
                raise SystemExit("server closed a kept-alive connection")
            entry = busy[s]
            entry[1] += chunk
            head, sep, body = entry[1].partition(b"\r\n\r\n")
            if not sep:
                continue
            length = 0
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
            if len(body) < length:
                continue
            now = time.perf_counter()
            lat.append(now - entry[0])
            lat_sent.append(now - entry[2])
            if not head.startswith(b"HTTP/1.1 200"):
                errors += 1
            del busy[s]
            idle.append(s)
    lat.sort()
    lat_sent.sort()
    late.sort()
    return {
        "requests": total, "answered": len(lat), "errors": errors,
        "elapsed_s": round(time.perf_counter() - start, 3),
        "wall_start": time.time() - (time.perf_counter() - start),
        "p50_ms": pct(lat, 50), "p90_ms": pct(lat, 90), "p99_ms": pct(lat, 99),
        "p999_ms": pct(lat, 99.9), "max_ms": lat[-1] * 1000 if lat else None,
        "sent_p50_ms": pct(lat_sent, 50), "sent_p90_ms": pct(lat_sent, 90),
        "sent_p99_ms": pct(lat_sent, 99),
        "send_late_p99_ms": pct(late, 99), "send_late_max_ms": late[-1] * 1000 if late else None,
    }
print(json.dumps({"phase": "warm", **phase(max(1, int(rate * warm)))}), flush=True)
print(json.dumps({"phase": "run", **phase(max(1, int(rate * seconds)))}), flush=True)
"""


def lab(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return _benchlib.lab(LAB, *args, check=check, timeout=timeout)


def rss_mb(pids: list[int]) -> float:
    """Resident MB of these processes together."""
    kb = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                kb += int(line.split()[1])
    return round(kb / 1024, 1)


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (a ztunnel's workers), from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo and len(out) < 100:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


class CpuSampler:
    """Each process group's CPU seconds, sampled every 50 ms with the wall clock: the window the
    generator measured (which the bench only learns afterwards) is read off the samples."""

    def __init__(self, pids: dict[str, list[int]]) -> None:
        self.pids = pids
        self.samples: list[tuple[float, dict[str, float]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> CpuSampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.samples.append(
                (time.time(), {name: cpu_seconds(pids) for name, pids in self.pids.items()})
            )
            self._stop.wait(0.05)

    def between(self, start: float, end: float) -> dict[str, float]:
        """CPU seconds per process from the last sample at or before `start` to the first
        at or after `end` (a window up to 100 ms wider than asked: ~1% at 10 s)."""
        before = [s for s in self.samples if s[0] <= start] or self.samples[:1]
        after = [s for s in self.samples if s[0] >= end] or self.samples[-1:]
        (t0, c0), (t1, c1) = before[-1], after[0]
        return {name: (c1[name] - c0[name]) / max(t1 - t0, 1e-9) for name in self.pids}


def generate(
    ns: str, host: str, port: int, rate: int, seconds: float, connections: int, warm_s: float
) -> dict[str, Any]:
    """One generator run in `ns`'s client pod; the measured phase's report."""
    argv = [
        sys.executable,
        "-m",
        "weftctl.main",
        "lab",
        "--name",
        LAB,
        "exec",
        "client",
        "-n",
        ns,
        "--",
        sys.executable,
        "-c",
        GENERATOR,
        host,
        str(port),
        str(rate),
        str(seconds),
        str(connections),
        str(warm_s),
    ]
    proc = subprocess.run(
        argv, capture_output=True, text=True, timeout=seconds + warm_s + 60, check=False
    )
    phases = {}
    for line in proc.stdout.splitlines():
        if line.startswith("{"):
            report = json.loads(line)
            phases[report["phase"]] = report
    if proc.returncode != 0 or "run" not in phases:
        raise RuntimeError(f"{ns}: the generator failed ({proc.returncode}): {proc.stderr[-2000:]}")
    run = phases["run"]
    if run["answered"] < run["requests"] or run["errors"]:
        raise RuntimeError(f"{ns}: {run}")
    return dict(run)


def spread(values: list[float]) -> dict[str, float]:
    return {"median": median(values), "min": round(min(values), 3), "max": round(max(values), 3)}


def profile(ztunnels: dict[str, int], seconds: float, out: Path) -> list[subprocess.Popen[bytes]]:
    """py-spy on each ztunnel for `seconds`, without pausing it (--nonblocking)."""
    spy = os.environ.get("PY_SPY") or shutil.which("py-spy")
    if spy is None:
        raise click.UsageError("--profile needs py-spy on PATH (or PY_SPY=/path/to/py-spy)")
    out.mkdir(parents=True, exist_ok=True)
    return [
        subprocess.Popen(
            [
                spy,
                "record",
                "--nonblocking",
                "--pid",
                str(pid),
                "--duration",
                str(int(seconds)),
                "--rate",
                "250",
                "--format",
                "speedscope",
                "--output",
                str(out / f"ztunnel-{node}.json"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for node, pid in ztunnels.items()
    ]


@click.command()
@click.option(
    "--seconds", default=10.0, show_default=True, help="Measured run, per way, per round."
)
@click.option("--rate", default=1000, show_default=True, help="Requests/s, open loop.")
@click.option("--connections", default=4, show_default=True, help="Kept-alive connections.")
@click.option("--rounds", default=3, show_default=True, help="Interleaved rounds.")
@click.option("--workers", default=1, show_default=True, help="Per ztunnel (lab up).")
@click.option(
    "--nice",
    type=click.IntRange(-20, 19),
    default=None,
    help="Set the ztunnels' (and the HAProxy helpers') nice value: how much of the tail is "
    "waiting for a core.",
)
@click.option("--warm", default=1.0, show_default=True, help="Unmeasured seconds before each.")
@click.option("--profile", "profile_dir", type=click.Path(path_type=Path), default=None)
@click.option("--smoke", is_flag=True, help="Tiny counts: checks the benchmark runs, no figures.")
def main(
    seconds: float,
    rate: int,
    connections: int,
    rounds: int,
    workers: int,
    nice: int | None,
    warm: float,
    profile_dir: Path | None,
    smoke: bool,
) -> None:
    if smoke:
        seconds, rate, connections, rounds, warm = 1.0, 50, 2, 1, 0.2
    seen: dict[str, list[dict[str, Any]]] = {way: [] for way in WAYS}
    helpers: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="weft-bench-") as tmp:
        folder = Path(tmp)
        click.echo(f"working in {folder}", err=True)
        with contextlib.redirect_stdout(sys.stderr):  # the CA's log lines; stdout is the report
            haproxy_bench.certificates(folder)
        haproxy_bench.backend_sidecar(folder)
        (folder / "bench.yaml").write_text(manifest(folder))
        try:
            lab(
                "up",
                *("--nodes", "2", "--ztunnel-workers", str(workers), "--wait", "60"),
                *("--manifests", str(folder / "bench.yaml")),
            )
            st = json.loads(lab("status", "-o", "json").stdout)
            click.echo(f"lab {LAB} (id {st['id']}) up", err=True)
            pods = {(p["namespace"], p["name"]): p for p in st["pods"]}
            server_ip = pods[("plain", "server")]["ip"]
            conf = haproxy_bench.sidecar_config(
                folder,
                "client",
                f"127.0.0.1:{HAPROXY_CLIENT_PORT}",
                f"{server_ip}:{haproxy_bench.BACKEND_TLS_PORT} ssl "
                + haproxy_bench.tls_opts(folder, "client"),
            )
            netns = pods[("plain", "client")]["netns"]
            helpers.append(
                subprocess.Popen(
                    ["ip", "netns", "exec", netns, "haproxy", "-db", "-f", str(conf)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            ztunnels = {node: int(z["pid"]) for node, z in sorted(st["ztunnels"].items())}
            server_tls = haproxy_bench.container_pid(st, "plain", "server", "tls")
            # (namespace, host, port) the generator targets, per way
            targets = {
                "plain": ("plain", server_ip, 8080),
                "haproxy": ("plain", "127.0.0.1", HAPROXY_CLIENT_PORT),
                "mesh": ("mesh", pods[("mesh", "server")]["ip"], 8080),
            }
            if nice is not None:
                for pid in [helpers[0].pid, server_tls, *ztunnels.values()]:
                    for member in process_tree(pid):  # nice is per thread: every thread
                        for task in Path(f"/proc/{member}/task").iterdir():
                            os.setpriority(os.PRIO_PROCESS, int(task.name), nice)
            for target in targets.values():  # until each answers (bounded)
                for attempt in range(30):
                    try:
                        generate(*target, 20, 0.2, 1, 0.05)
                        break
                    except RuntimeError:
                        if attempt == 29:
                            raise
                        time.sleep(0.5)
            for r in range(rounds):
                for way in WAYS:  # interleaved: drift in the machine's speed hits all alike
                    proxies = {
                        "plain": {},
                        "haproxy": {"node-1": [helpers[0].pid], "node-2": [server_tls]},
                        "mesh": {node: process_tree(pid) for node, pid in ztunnels.items()},
                    }[way]
                    with CpuSampler(proxies) as sampler:
                        run = generate(*targets[way], rate, seconds, connections, warm)
                    cpu = sampler.between(run["wall_start"], run["wall_start"] + run["elapsed_s"])
                    run["proxy_vcpu"] = {n: round(v, 4) for n, v in cpu.items()}
                    seen[way].append(run)
                    click.echo(f"round {r + 1} {way}: {json.dumps(run)}", err=True)
            if profile_dir is not None:  # one more mesh run, sampled, in no figure
                spies = profile(ztunnels, seconds + warm, profile_dir)
                generate(*targets["mesh"], rate, seconds, connections, warm)
                for spy in spies:
                    spy.wait(60)
            rss = {node: rss_mb(process_tree(pid)) for node, pid in ztunnels.items()}
        finally:
            _benchlib.stop(helpers)
            lab("down", check=False)
    click.echo(json.dumps(summary(workers, nice, seen, rss, rate), indent=2))


def summary(
    workers: int,
    nice: int | None,
    seen: dict[str, list[dict[str, Any]]],
    rss: dict[str, float],
    rate: int,
) -> dict[str, Any]:
    keys = ("p50_ms", "p90_ms", "p99_ms", "p999_ms", "max_ms", *SENT_KEYS)
    ways = {
        way: {k: spread([r[k] for r in runs]) for k in (*keys, "send_late_p99_ms")}
        for way, runs in seen.items()
    }
    # per round: that round's way minus that round's plain, then medians of those
    added = {
        way: {
            k: spread([m[k] - p[k] for m, p in zip(seen[way], seen["plain"], strict=True)])
            for k in keys
        }
        for way in ("mesh", "haproxy")
    }
    per_1000 = {
        way: {
            node: spread([r["proxy_vcpu"][node] / (rate / 1000) for r in seen[way]])
            for node in ("node-1", "node-2")
        }
        for way in ("mesh", "haproxy")
    }
    per_proxy = {
        way: median([sum(r["proxy_vcpu"].values()) / 2 / (rate / 1000) for r in seen[way]], 4)
        for way in ("mesh", "haproxy")
    }
    mesh_p99 = added["mesh"]["p99_ms"]["median"]
    return {
        "rate_rps": rate,
        "workers_per_ztunnel": workers,
        "proxies_nice": nice,
        "rounds": len(seen["mesh"]),
        "latency_ms": ways,
        "added_ms": added,
        "vcpu_per_1000_rps": per_1000,
        "vcpu_per_1000_rps_per_proxy": per_proxy,
        "ztunnel_rss_mb": rss,
        "vs_istio": {
            "vcpu_per_1000_rps_per_ztunnel": {
                "weft": per_proxy["mesh"],
                "haproxy_same_lab": per_proxy["haproxy"],
                "istio": ISTIO_VCPU_PER_1000_RPS,
            },
            "added_p90_ms": {
                "weft": added["mesh"]["p90_ms"]["median"],
                "haproxy_same_lab": added["haproxy"]["p90_ms"]["median"],
                "istio": ISTIO_ADDED_P90_MS,
            },
            "added_p99_ms": {
                "weft": mesh_p99,
                "haproxy_same_lab": added["haproxy"]["p99_ms"]["median"],
                "istio": ISTIO_ADDED_P99_MS,
            },
            "added_p99_ms_from_send": {
                "weft": added["mesh"]["sent_p99_ms"]["median"],
                "haproxy_same_lab": added["haproxy"]["sent_p99_ms"]["median"],
                "istio": ISTIO_ADDED_P99_MS,
            },
        },
        "targets": {
            f"vcpu_per_1000_rps <= {ISTIO_VCPU_PER_1000_RPS}": per_proxy["mesh"]
            <= ISTIO_VCPU_PER_1000_RPS,
            f"added_p99_ms < {TARGET_ADDED_P99_MS}": mesh_p99 < TARGET_ADDED_P99_MS,
        },
    }


if __name__ == "__main__":
    main()
