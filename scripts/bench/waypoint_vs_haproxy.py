"""The weft waypoint against HAProxy doing the same L7 job, in one run (not a test).

    .venv/bin/python scripts/bench/waypoint_vs_haproxy.py [--seconds 5] [--rate 1000] [--rounds 3]
    .venv/bin/python scripts/bench/waypoint_vs_haproxy.py --smoke   # tiny counts, for CI

A two-node lab. A client pod on node-1 sends HTTP/1.1 over kept-alive connections, half of it
to /a and half to /b; two echo backends on node-2 answer 1 KB bodies (`http_echo
--body-bytes 1024`). The L7 hop routes /a to backend-a and /b to backend-b, mTLS on both
sides, certificates from weft's CA (ECDSA P-256, TLS 1.3). Three ways:
  - none:    unenrolled pods, the client calls each backend's pod IP directly, plain TCP;
  - haproxy: unenrolled pods; client -> HAProxy in TCP mode in the client pod (TLS out) ->
             HAProxy, the L7 hop (its own pod; TLS frontend with `verify required`, path
             routing, TLS out with `ssl verify required`, server connections reused) ->
             HAProxy in TCP mode in each backend pod (TLS in) -> echo. Debian's build,
             default threads; every instance presents its own certificate and requires the
             peer's. (stunnel as the TLS helpers could not carry 1000 rps of an open-loop
             client: p99 of seconds, so HAProxy plays them too);
  - weft:    an enrolled namespace with a waypoint (`weftctl waypoint apply --enroll-namespace
             --wait`) and an HTTPRoute on Service `web` (/a -> backend-a, /b -> backend-b):
             client -> ztunnel -> HBONE -> waypoint -> HBONE -> ztunnel -> echo.
The HAProxy pod is put on the node the lab scheduled the waypoint on, so both L7 hops sit on
the same node. The TLS helpers stand where weft's ztunnels stand, so the two paths have the
same number of hops and TLS legs.

Measured for each way: added latency p50/p99 at a fixed rate (--rate, 1000 rps: two open-loop
load clients of half the rate, their percentiles averaged) against `none`; requests/s at
saturation (two closed-loop load clients of --concurrency each); and CPU seconds per 1000
requests of the L7 hop alone (the waypoint process; haproxy) and of the whole proxy path
(plus the ztunnels; plus the TLS helpers), from /proc, over the fixed-rate run and over the
saturation run. The ways take turns, round after round (--rounds); each figure is the median
over the rounds, ratios weft/haproxy come from the medians, and the issue's targets are
checked. Every loop is bounded; the lab is removed at the end, also on failure.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _benchlib
import click
from _benchlib import cpu_seconds, medians, stop

LAB = f"weft-bench-wp-{os.getpid() % 10000}"
BODY_BYTES = 1024
CLIENT_PORT = 18080  # the client pod's TLS helper, to the L7 HAProxy
HAPROXY_PORT = 8443
BACKEND_TLS_PORT = 8443  # the backend pods' TLS helpers, to the echo on 8080
# Targets from issue 11.
TARGET_WAYPOINT_VCPU_PER_1000_RPS = 0.25
TARGET_THROUGHPUT_VS_HAPROXY = 0.3
TARGET_ADDED_P50_VS_HAPROXY = 2.0


def manifest(folder: Path) -> str:
    out = """
apiVersion: v1
kind: Namespace
metadata: {name: mesh, labels: {weft.dev/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: mesh}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
"""
    for ns in ("mesh", "plain"):
        out += f"""
---
apiVersion: v1
kind: Pod
metadata: {{name: client, namespace: {ns}}}
spec:
  nodeName: node-1
  containers: [{{name: main, command: ["sleep", "7200"]}}]
"""
        for side in ("a", "b"):
            cfg = folder / "backend.cfg"
            tls = (
                f'\n  - {{name: tls, command: ["haproxy", "-db", "-f", "{cfg}"]}}'
                if ns == "plain"
                else ""
            )
            out += f"""
---
apiVersion: v1
kind: Pod
metadata: {{name: backend-{side}, namespace: {ns}, labels: {{app: web, role: {side}}}}}
spec:
  nodeName: node-2
  containers:
  - {{name: web, image: weft/http-echo, args: ["--port", "8080", "--body-bytes", "{BODY_BYTES}"],
      env: [{{name: POD_NAME, value: backend-{side}}}]}}{tls}
"""
            if ns == "mesh":
                out += f"""
---
apiVersion: v1
kind: Service
metadata: {{name: backend-{side}, namespace: mesh}}
spec:
  selector: {{app: web, role: {side}}}
  ports: [{{name: http, port: 80, targetPort: 8080}}]
"""
    return out


ROUTE = """
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: mesh}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /a}}]
    backendRefs: [{name: backend-a, port: 80}]
  - matches: [{path: {type: PathPrefix, value: /b}}]
    backendRefs: [{name: backend-b, port: 80}]
"""


def haproxy_pod(node: str) -> str:
    return f"""
apiVersion: v1
kind: Pod
metadata: {{name: haproxy, namespace: plain}}
spec:
  nodeName: {node}
  containers: [{{name: main, command: ["sleep", "7200"]}}]
"""


# Run in the client pod: one GET per URL, printed as [status, x-weft-pod, body length].
CHECK = """
import http.client, json, sys, urllib.parse
out = []
for url in sys.argv[1:]:
    u = urllib.parse.urlsplit(url)
    try:
        conn = http.client.HTTPConnection(u.hostname, u.port, timeout=3)
        conn.request("GET", u.path)
        resp = conn.getresponse()
        out.append([resp.status, resp.getheader("x-weft-pod", ""), len(resp.read())])
        conn.close()
    except OSError as err:
        out.append([0, type(err).__name__, 0])
print(json.dumps(out))
"""


def lab(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return _benchlib.lab(LAB, *args, check=check, timeout=timeout)


def weftctl(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "weftctl.main", *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=timeout,
    )


def exec_args(ns: str, pod: str, *cmd: str) -> list[str]:
    lab_cmd = [sys.executable, "-m", "weftctl.main", "lab", "--name", LAB]
    return [*lab_cmd, "exec", pod, "-n", ns, "--", *cmd]


def status() -> dict[str, Any]:
    result: dict[str, Any] = json.loads(lab("status", "-o", "json").stdout)
    return result


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants, from /proc (a process's CPU includes its threads')."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (FileNotFoundError, ProcessLookupError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo and len(out) < 1000:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
    except FileNotFoundError:
        return ""


def container_pid(st: dict[str, Any], ns: str, pod: str, container: str) -> int:
    for p in st["pods"]:
        if p["namespace"] == ns and p["name"] == pod:
            for c in p["containers"]:
                if c["name"] == container and c["pid"]:
                    return int(c["pid"])
    raise RuntimeError(f"no running container {container} in pod {ns}/{pod}")


def load_pair(ns: str, urls: list[str], args: list[str], timeout: float) -> list[dict[str, Any]]:
    """One load client per URL, side by side in the client pod; their JSON reports."""
    procs = [
        subprocess.Popen(
            exec_args(
                ns,
                "client",
                sys.executable,
                "-m",
                "sample_apps.load_client",
                url,
                *args,
                "-o",
                "json",
            ),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for url in urls
    ]
    reports = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            try:
                reports.append(json.loads(out))
            except ValueError as exc:
                raise RuntimeError(f"load client gave no report: {err[-2000:]}") from exc
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return reports


def measure(
    ns: str,
    urls: list[str],
    hop: list[int],
    path: list[int],
    seconds: int,
    rate: int,
    requests: int,
    concurrency: int,
) -> dict[str, Any]:
    hop_cpu, path_cpu = cpu_seconds(hop), cpu_seconds(path)
    fixed = load_pair(
        ns,
        urls,
        ["--rate", str(rate / len(urls)), "--count", str(rate * seconds // len(urls))],
        timeout=seconds + 60,
    )
    hop_fixed, path_fixed = cpu_seconds(hop) - hop_cpu, cpu_seconds(path) - path_cpu
    done_fixed = sum(r["requests"]["succeeded"] + r["requests"]["failed"] for r in fixed)
    hop_cpu, path_cpu = cpu_seconds(hop), cpu_seconds(path)
    sat = load_pair(
        ns,
        urls,
        ["--count", str(requests), "--concurrency", str(concurrency), "--duration", "60"],
        timeout=120,
    )
    hop_sat, path_sat = cpu_seconds(hop) - hop_cpu, cpu_seconds(path) - path_cpu
    done_sat = sum(r["requests"]["succeeded"] + r["requests"]["failed"] for r in sat)

    def per_1000(cpu: float, done: int) -> float:
        return round(cpu / max(done, 1) * 1000, 4)

    return {
        "rate_achieved": round(sum(r["rate_achieved"] for r in fixed), 1),
        "latency_p50_ms": round(statistics.mean(r["latency_ms"]["p50"] for r in fixed), 3),
        "latency_p99_ms": round(statistics.mean(r["latency_ms"]["p99"] for r in fixed), 3),
        "saturation_rps": round(sum(r["rate_achieved"] for r in sat), 1),
        "hop_cpu_s_per_1000_req": per_1000(hop_fixed, done_fixed),
        "path_cpu_s_per_1000_req": per_1000(path_fixed, done_fixed),
        "hop_cpu_s_per_1000_req_saturated": per_1000(hop_sat, done_sat),
        "path_cpu_s_per_1000_req_saturated": per_1000(path_sat, done_sat),
        "failed": sum(r["requests"]["failed"] for r in fixed + sat),
    }


def wait_for(ns: str, urls: list[str], pods: list[str], tries: int) -> None:
    """Until each URL answers 200 from the pod expected, with a 1 KB body (bounded)."""
    seen: Any = None
    for _ in range(tries):
        out = subprocess.run(
            exec_args(ns, "client", sys.executable, "-c", CHECK, *urls),
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        seen = json.loads(out.strip().splitlines()[-1]) if out.strip() else out
        if [(s[0], s[1]) for s in seen] == [(200, p) for p in pods]:
            if any(s[2] < BODY_BYTES for s in seen):
                raise RuntimeError(f"bodies under {BODY_BYTES} bytes: {seen}")
            return
        time.sleep(0.5)
    raise RuntimeError(f"{ns}: {urls} never answered 200 from {pods}: {seen}")


def wait_running(ns: str, pod: str, tries: int = 60) -> dict[str, Any]:
    for _ in range(tries):
        for p in status()["pods"]:
            if (p["namespace"], p["name"]) == (ns, pod) and p["phase"] == "Running":
                return dict(p)
        time.sleep(0.5)
    raise RuntimeError(f"pod {ns}/{pod} is not running")


def certificates(folder: Path) -> None:
    """Keys and certificates from weft's CA for the client, HAProxy and the backends."""
    from controller.ca import CertificateAuthority
    from meshcore.identity.certs import key_to_pem, make_csr, new_private_key
    from meshcore.identity.spiffe import SpiffeId

    ca = CertificateAuthority.load_or_create(folder / "ca", "cluster.local")
    for side in ("client", "haproxy", "backend"):
        ident = SpiffeId.parse(f"spiffe://cluster.local/ns/plain/sa/{side}")
        key = new_private_key()
        issued = ca.sign_workload(make_csr(key, ident), {ident})
        # HAProxy's `crt`: the chain, then the key, in one file
        (folder / f"{side}.pem").write_bytes(issued.full_chain_pem + key_to_pem(key))
    (folder / "roots.pem").write_text("".join(ca.trust_bundle))


def sidecar_config(folder: Path, name: str, bind: str, server: str) -> Path:
    """HAProxy in TCP mode as a TLS helper: TLS origination in the client pod (`server` has
    TLS), termination in a backend pod (`bind` has TLS). stunnel in this role gave p99s of
    seconds at 1000 rps from an open-loop client (TCP retransmits); HAProxy does not."""
    conf = folder / f"{name}.cfg"
    conf.write_text(
        f"""global
  maxconn 4096
  ssl-default-bind-options ssl-min-ver TLSv1.3
  ssl-default-server-options ssl-min-ver TLSv1.3
defaults
  mode tcp
  timeout connect 5s
  timeout client 60s
  timeout server 60s
listen {name}
  bind {bind}
  server {name} {server}
"""
    )
    return conf


def tls_opts(folder: Path, side: str) -> str:
    return f"crt {folder / side}.pem ca-file {folder / 'roots.pem'} verify required"


def backend_sidecar(folder: Path) -> Path:
    return sidecar_config(
        folder,
        "backend",
        f":{BACKEND_TLS_PORT} ssl {tls_opts(folder, 'backend')}",
        "127.0.0.1:8080",
    )


def client_sidecar(folder: Path, hop_ip: str) -> Path:
    return sidecar_config(
        folder,
        "client",
        f"127.0.0.1:{CLIENT_PORT}",
        f"{hop_ip}:{HAPROXY_PORT} ssl {tls_opts(folder, 'client')}",
    )


def haproxy_config(folder: Path, backend_a: str, backend_b: str) -> Path:
    """The L7 hop: TLS in (client certificate required), route by path, TLS out."""
    tls = tls_opts(folder, "haproxy")
    conf = folder / "haproxy.cfg"
    conf.write_text(
        f"""global
  maxconn 4096
  ssl-default-bind-options ssl-min-ver TLSv1.3
  ssl-default-server-options ssl-min-ver TLSv1.3
defaults
  mode http
  option http-keep-alive
  http-reuse always
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend mesh
  bind :{HAPROXY_PORT} ssl {tls}
  http-request return status 404 if !{{ path_beg /a }} !{{ path_beg /b }}
  use_backend a if {{ path /a }} || {{ path_beg /a/ }}
  use_backend b if {{ path /b }} || {{ path_beg /b/ }}
backend a
  server a {backend_a}:{BACKEND_TLS_PORT} ssl {tls}
backend b
  server b {backend_b}:{BACKEND_TLS_PORT} ssl {tls}
"""
    )
    return conf


def ratio(a: float, b: float) -> float:
    return round(a / b, 3) if b > 0 else float("inf")


def summary(results: dict[str, Any], rate: int) -> dict[str, Any]:
    w, h, n = results["weft"], results["haproxy"], results["none"]
    added = {
        way: {
            "p50_ms": round(results[way]["latency_p50_ms"] - n["latency_p50_ms"], 3),
            "p99_ms": round(results[way]["latency_p99_ms"] - n["latency_p99_ms"], 3),
        }
        for way in ("weft", "haproxy")
    }
    ratios = {
        "saturation_rps_weft_vs_haproxy": ratio(w["saturation_rps"], h["saturation_rps"]),
        "added_p50_weft_vs_haproxy": ratio(added["weft"]["p50_ms"], added["haproxy"]["p50_ms"]),
        "added_p99_weft_vs_haproxy": ratio(added["weft"]["p99_ms"], added["haproxy"]["p99_ms"]),
        "hop_cpu_per_1000_req_weft_vs_haproxy": ratio(
            w["hop_cpu_s_per_1000_req"], h["hop_cpu_s_per_1000_req"]
        ),
        "path_cpu_per_1000_req_weft_vs_haproxy": ratio(
            w["path_cpu_s_per_1000_req"], h["path_cpu_s_per_1000_req"]
        ),
    }
    # CPU seconds per 1000 requests is vCPU per 1000 rps.
    vcpu = w["hop_cpu_s_per_1000_req"]
    targets = {
        f"waypoint_vcpu_per_1000_rps <= {TARGET_WAYPOINT_VCPU_PER_1000_RPS}": {
            "value": vcpu,
            "met": vcpu <= TARGET_WAYPOINT_VCPU_PER_1000_RPS,
        },
        f"throughput >= {TARGET_THROUGHPUT_VS_HAPROXY}x haproxy": {
            "value": ratios["saturation_rps_weft_vs_haproxy"],
            "met": ratios["saturation_rps_weft_vs_haproxy"] >= TARGET_THROUGHPUT_VS_HAPROXY,
        },
        f"added p50 <= {TARGET_ADDED_P50_VS_HAPROXY}x haproxy": {
            "value": ratios["added_p50_weft_vs_haproxy"],
            "met": ratios["added_p50_weft_vs_haproxy"] <= TARGET_ADDED_P50_VS_HAPROXY,
        },
    }
    return {"fixed_rate_rps": rate, "added_latency": added, "ratios": ratios, "targets": targets}


@click.command()
@click.option("--seconds", default=5, show_default=True, help="Length of the fixed-rate run.")
@click.option("--rate", default=1000, show_default=True, help="Requests/s for the latency run.")
@click.option(
    "--requests", default=3000, show_default=True, help="Per load client, saturation run."
)
@click.option(
    "--concurrency", default=16, show_default=True, help="Per load client, saturation run."
)
@click.option("--rounds", default=3, show_default=True, help="Interleaved rounds; medians kept.")
@click.option("--smoke", is_flag=True, help="Tiny counts: checks the benchmark runs, no figures.")
def main(
    seconds: int, rate: int, requests: int, concurrency: int, rounds: int, smoke: bool
) -> None:
    if smoke:
        seconds, rate, requests, concurrency, rounds = 1, 20, 20, 2, 1
    results: dict[str, Any] = {}
    helpers: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="weft-bench-") as tmp:
        folder = Path(tmp)
        click.echo(f"working in {folder}", err=True)
        with contextlib.redirect_stdout(sys.stderr):  # the CA's log lines; stdout is the report
            certificates(folder)
        backend_sidecar(folder)
        (folder / "bench.yaml").write_text(manifest(folder))
        (folder / "route.yaml").write_text(ROUTE)
        try:
            lab("up", "--nodes", "2", "--manifests", str(folder / "bench.yaml"), "--wait", "60")
            st = status()
            click.echo(f"lab {LAB} (id {st['id']}) up", err=True)
            weftctl(
                "waypoint",
                "--lab",
                LAB,
                "apply",
                "-n",
                "mesh",
                "--enroll-namespace",
                "--wait",
                "--timeout",
                "60",
            )
            lab("apply", "-f", str(folder / "route.yaml"))
            st = status()
            (waypoint,) = [
                p
                for p in st["pods"]
                if p["namespace"] == "mesh" and p["name"].startswith("waypoint-")
            ]
            (folder / "haproxy.yaml").write_text(haproxy_pod(waypoint["node"]))
            lab("apply", "-f", str(folder / "haproxy.yaml"))
            hap = wait_running("plain", "haproxy")
            st = status()
            pods = {(p["namespace"], p["name"]): p for p in st["pods"]}
            vips = {(s["namespace"], s["name"]): s["vip"] for s in st["services"]}
            plain_a, plain_b = (pods[("plain", f"backend-{s}")]["ip"] for s in "ab")
            for netns, cmd in (
                (
                    hap["netns"],
                    ["haproxy", "-db", "-f", str(haproxy_config(folder, plain_a, plain_b))],
                ),
                (
                    pods[("plain", "client")]["netns"],
                    ["haproxy", "-db", "-f", str(client_sidecar(folder, hap["ip"]))],
                ),
            ):
                helpers.append(
                    subprocess.Popen(
                        ["ip", "netns", "exec", netns, *cmd],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
            ztunnels = [int(z["pid"]) for z in st["ztunnels"].values()]
            backend_tls = [container_pid(st, "plain", f"backend-{s}", "tls") for s in "ab"]
            wp_pid = container_pid(st, "mesh", waypoint["name"], waypoint["containers"][0]["name"])
            # (namespace, URLs, L7 hop pids, whole proxy path pids) for each way
            web = vips[("mesh", "web")]
            ways: dict[str, tuple[str, list[str], list[int], list[int]]] = {
                "none": ("plain", [f"http://{plain_a}:8080/a", f"http://{plain_b}:8080/b"], [], []),
                "haproxy": (
                    "plain",
                    [f"http://127.0.0.1:{CLIENT_PORT}/{s}" for s in "ab"],
                    [helpers[0].pid],
                    [helpers[0].pid, helpers[1].pid, *backend_tls],
                ),
                "weft": (
                    "mesh",
                    [f"http://{web}/{s}" for s in "ab"],
                    [wp_pid],
                    [wp_pid, *ztunnels],
                ),
            }
            for ns, urls, _, _ in ways.values():
                # each path three times over new connections: a Service's load balancing alone
                # would answer this right once in 64
                wait_for(ns, urls * 3, ["backend-a", "backend-b"] * 3, tries=60)
            trees = {
                way: (
                    [q for p in hop for q in process_tree(p)],
                    [q for p in path for q in process_tree(p)],
                )
                for way, (_, _, hop, path) in ways.items()
            }
            click.echo(
                f"waypoint and haproxy on {waypoint['node']}; waypoint process tree "
                f"{[cmdline(p) for p in trees['weft'][0]]}; measuring {rounds} round(s)",
                err=True,
            )
            rounds_seen: dict[str, list[dict[str, Any]]] = {way: [] for way in ways}
            # interleaved rounds: drift in the machine's speed hits all three ways alike
            for _ in range(rounds):
                for way, (ns, urls, _, _) in ways.items():
                    hop_pids, path_pids = trees[way]
                    rounds_seen[way].append(
                        measure(ns, urls, hop_pids, path_pids, seconds, rate, requests, concurrency)
                    )
            results.update(medians(rounds_seen, 4))
            results["proxies_on"] = waypoint["node"]
        finally:
            stop(helpers)
            lab("down", check=False)
    results["summary"] = summary(results, rate)
    click.echo(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
