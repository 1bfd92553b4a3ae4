"""ztunnel against a stunnel pair and against no mesh, in one run (not a test).

    .venv/bin/python scripts/bench/ztunnel_vs_stunnel.py [--seconds 5] [--rate 200] [--rounds 3]
    .venv/bin/python scripts/bench/ztunnel_vs_stunnel.py --smoke   # tiny counts, for CI

A two-node lab. Pod to pod across the two nodes, three ways:
  - none:    unenrolled pods, plain TCP;
  - stunnel: unenrolled pods, a stunnel client in the client pod and a stunnel server in the
             server pod (mutual TLS, TLS 1.3, ECDSA P-256 certificates from weft's CA);
  - weft:    enrolled pods: eBPF capture -> ztunnel -> HBONE mTLS -> ztunnel -> pod.
Measured for each: bulk throughput (iperf3, one stream), request latency p50/p99 at a fixed
rate over kept-alive connections (load client against the HTTP echo), new connections per
second (a new connection per request), and proxy CPU seconds per Gbit during the iperf3 run.
The three ways take turns, round after round (--rounds), and each figure is the median over
the rounds: single runs of a latency test on a shared 2-core machine drift by tens of
microseconds. Reported with ratios weft/stunnel, from the medians. Every loop is bounded;
the lab is removed at the end.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _benchlib
import click
from _benchlib import cpu_seconds, medians, stop

LAB = f"weft-bench-zt-{os.getpid() % 10000}"

MANIFEST = """
apiVersion: v1
kind: Namespace
metadata: {name: mesh, labels: {weft.dev/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Namespace
metadata: {name: plain}
"""
for ns in ("mesh", "plain"):
    MANIFEST += f"""
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
  - {{name: iperf, command: ["iperf3", "-s", "-p", "5201"]}}
  - {{name: web, image: weft/http-echo, args: ["--port", "8080"]}}
"""


def lab(*args: str, check: bool = True, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return _benchlib.lab(LAB, *args, check=check, timeout=timeout)


def in_pod(ns: str, pod: str, *cmd: str, timeout: float = 120) -> str:
    return lab("exec", pod, "-n", ns, "--", *cmd, timeout=timeout).stdout


def bulk(ns: str, host: str, port: int, proxies: list[int], seconds: int) -> dict[str, float]:
    cpu_before = cpu_seconds(proxies)
    iperf = json.loads(
        in_pod(
            ns,
            "client",
            "iperf3",
            "-c",
            host,
            "-p",
            str(port),
            "-t",
            str(seconds),
            "-J",
            timeout=seconds + 60,
        )
    )
    cpu_used = cpu_seconds(proxies) - cpu_before
    gbits_moved = iperf["end"]["sum_received"]["bytes"] * 8 / 1e9
    return {
        "throughput_gbps": round(iperf["end"]["sum_received"]["bits_per_second"] / 1e9, 3),
        "proxy_cpu_s_per_gbit": round(cpu_used / gbits_moved, 3) if proxies else 0.0,
    }


def load(ns: str, url: str, *args: str) -> dict[str, Any]:
    return json.loads(
        in_pod(
            ns,
            "client",
            sys.executable,
            "-m",
            "sample_apps.load_client",
            url,
            *args,
            "-o",
            "json",
            timeout=120,
        )
    )


def latency(ns: str, url: str, seconds: int, rate: int) -> dict[str, Any]:
    return load(
        ns,
        url,
        "--rate",
        str(rate),
        "--count",
        str(rate * seconds),
        "--duration",
        str(seconds + 30),
    )


def new_connections(ns: str, url: str, count: int) -> dict[str, Any]:
    return load(
        ns,
        url,
        "--count",
        str(count),
        "--concurrency",
        "8",
        "--new-connections",
        "--duration",
        "60",
    )


def stunnel_configs(folder: Path, server_ip: str) -> tuple[Path, Path]:
    from controller.ca import CertificateAuthority
    from meshcore.identity.certs import key_to_pem, make_csr, new_private_key
    from meshcore.identity.spiffe import SpiffeId

    ca = CertificateAuthority.load_or_create(folder / "ca", "cluster.local")
    files = {}
    for side in ("client", "server"):
        ident = SpiffeId.parse(f"spiffe://cluster.local/ns/plain/sa/{side}")
        key = new_private_key()
        issued = ca.sign_workload(make_csr(key, ident), {ident})
        (folder / f"{side}.key").write_bytes(key_to_pem(key))
        (folder / f"{side}.crt").write_bytes(issued.full_chain_pem)
        files[side] = folder / f"{side}.conf"
    (folder / "roots.pem").write_text("".join(ca.trust_bundle))
    common = (
        "foreground = yes\npid =\nsslVersionMin = TLSv1.3\nverifyChain = yes\n"
        f"CAfile = {folder / 'roots.pem'}\nsocket = l:TCP_NODELAY=1\n"
        "socket = r:TCP_NODELAY=1\n"
    )
    files["client"].write_text(
        common + f"cert = {folder / 'client.crt'}\nkey = {folder / 'client.key'}\n"
        f"[iperf]\nclient = yes\naccept = 127.0.0.1:15201\nconnect = {server_ip}:15202\n"
        f"[web]\nclient = yes\naccept = 127.0.0.1:18080\nconnect = {server_ip}:18081\n"
    )
    files["server"].write_text(
        common + f"cert = {folder / 'server.crt'}\nkey = {folder / 'server.key'}\n"
        "[iperf]\naccept = 0.0.0.0:15202\nconnect = 127.0.0.1:5201\n"
        "[web]\naccept = 0.0.0.0:18081\nconnect = 127.0.0.1:8080\n"
    )
    return files["client"], files["server"]


@click.command()
@click.option("--seconds", default=5, show_default=True)
@click.option("--rate", default=200, show_default=True, help="Requests/s for the latency run.")
@click.option("--rounds", default=3, show_default=True, help="Interleaved rounds; medians kept.")
@click.option("--connections", default=1500, show_default=True, help="For new connections/s.")
@click.option("--smoke", is_flag=True, help="Tiny counts: checks the benchmark runs, no figures.")
def main(seconds: int, rate: int, rounds: int, connections: int, smoke: bool) -> None:
    if smoke:
        seconds, rate, rounds, connections = 1, 20, 1, 40
    results: dict[str, Any] = {}
    stunnels: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="weft-bench-") as tmp:
        folder = Path(tmp)
        (folder / "bench.yaml").write_text(MANIFEST)
        try:
            lab("up", "--nodes", "2", "--manifests", str(folder / "bench.yaml"))
            status = json.loads(lab("status", "-o", "json").stdout)
            click.echo(f"lab {LAB} (id {status['id']}) up", err=True)
            pods = {(p["namespace"], p["name"]): p for p in status["pods"]}
            ztunnels = [z["pid"] for z in status["ztunnels"].values()]
            client_conf, server_conf = stunnel_configs(folder, pods[("plain", "server")]["ip"])
            for pod, conf in (("server", server_conf), ("client", client_conf)):
                stunnels.append(
                    subprocess.Popen(
                        [
                            "ip",
                            "netns",
                            "exec",
                            pods[("plain", pod)]["netns"],
                            "stunnel4",
                            str(conf),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )
            time.sleep(1)
            # (namespace, host, iperf port, http port, proxy pids) for each way
            ways = {
                "none": ("plain", pods[("plain", "server")]["ip"], 5201, 8080, []),
                "stunnel": ("plain", "127.0.0.1", 15201, 18080, [p.pid for p in stunnels]),
                "weft": ("mesh", pods[("mesh", "server")]["ip"], 5201, 8080, ztunnels),
            }
            rounds_seen: dict[str, list[dict[str, Any]]] = {way: [] for way in ways}
            # interleaved rounds: drift in the machine's speed hits all three ways alike
            for _ in range(rounds):
                for way, (ns, host, iperf_port, http_port, proxies) in ways.items():
                    url = f"http://{host}:{http_port}/"
                    lat = latency(ns, url, seconds, rate)
                    conns = new_connections(ns, url, connections)
                    rounds_seen[way].append(
                        {
                            **bulk(ns, host, iperf_port, proxies, seconds),
                            "latency_p50_ms": lat["latency_ms"]["p50"],
                            "latency_p99_ms": lat["latency_ms"]["p99"],
                            "new_connections_per_s": round(conns["rate_achieved"], 1),
                            "failed": lat["requests"]["failed"] + conns["requests"]["failed"],
                        }
                    )
            results.update(medians(rounds_seen))
        finally:
            stop(stunnels)
            lab("down", check=False)
    w, s, n = results["weft"], results["stunnel"], results["none"]
    results["ratios"] = {
        "throughput_weft_vs_stunnel": round(w["throughput_gbps"] / s["throughput_gbps"], 3),
        "added_p50_ms_weft": round(w["latency_p50_ms"] - n["latency_p50_ms"], 3),
        "added_p50_ms_stunnel": round(s["latency_p50_ms"] - n["latency_p50_ms"], 3),
        "added_p50_weft_vs_stunnel": round(
            (w["latency_p50_ms"] - n["latency_p50_ms"])
            / max(s["latency_p50_ms"] - n["latency_p50_ms"], 1e-6),
            2,
        ),
        "new_connections_weft_vs_stunnel": round(
            w["new_connections_per_s"] / s["new_connections_per_s"], 3
        ),
        "cpu_per_gbit_weft_vs_stunnel": round(
            w["proxy_cpu_s_per_gbit"] / max(s["proxy_cpu_s_per_gbit"], 1e-6), 2
        ),
    }
    click.echo(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
