"""`weftctl dashboard` as a user runs it: the demo lab with Prometheus and traffic flowing,
the dashboard started on a loopback port, and its page loaded in headless Chromium, which
must draw the demo's graph (traffic -> frontend -> backend v1/v2 through the waypoint) with
live rates and mTLS, show a Service's golden signals, explain an edge with `why`, and paint a
connection refused by an AuthorizationPolicy as a denial that `why` pins on that policy.

Screenshots are kept under pytest's tmp dir and, when WEFT_TEST_ARTIFACTS is set, copied
there.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.chromium import Chromium, chromium_binary
from tests.conftest import RUN_ID
from tests.integration.lab.labtools import Lab, leftovers

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(shutil.which("prometheus") is None, reason="no prometheus binary"),
    pytest.mark.skipif(chromium_binary() is None, reason="no chromium binary"),
]

SCRAPE = 2.0  # seconds: the lab's scrape interval here (rates show within a few of them)
DENY_NAME = f"weft-e-{RUN_ID}-deny-traffic"
DENY_TCP_ECHO = f"""
apiVersion: security.weft.dev/v1
kind: AuthorizationPolicy
metadata:
  name: {DENY_NAME}
  namespace: demo
spec:
  selector:
    matchLabels: {{app: tcp-echo}}
  action: DENY
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/demo/sa/traffic"]
"""
# Run in a pod: `count` TCP connections to host:port, each sending a line and reading the
# echo; prints how many were answered and how many refused.
TCP_ROUNDS = """
import json, socket, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
ok = refused = 0
for _ in range(count):
    try:
        with socket.create_connection((host, port), timeout=3) as s:
            s.sendall(b"weft-e\\n")
            ok += bool(s.recv(64))
    except OSError:
        refused += 1
print(json.dumps({"ok": ok, "refused": refused}))
"""


def keep_artifact(path: Path) -> Path:
    target = os.environ.get("WEFT_TEST_ARTIFACTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(target) / path.name)
    return path


@pytest.fixture(scope="module")
def lab() -> Iterator[Lab]:
    lab = Lab(f"weft-e-{RUN_ID}")
    lab_id = ""
    try:
        lab.run(
            "up", "--prometheus", "--prometheus-scrape-interval", str(SCRAPE), "--wait", "90",
            timeout=300,
        )  # fmt: skip
        lab_id = lab.status()["id"]
        yield lab
    finally:
        lab.force_down()
    assert leftovers(lab_id) == []


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def dashboard_url(lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`weftctl dashboard` of the lab on a free loopback port, as a process of its own."""
    port = free_port()
    log = tmp_path_factory.mktemp("dashboard") / "dashboard.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "weftctl.main", "dashboard", "--lab", lab.name,
             "--address", f"127.0.0.1:{port}", "--refresh", "2"],
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{url}/api/config", timeout=2) as resp:
                    assert json.load(resp)["lab"] == lab.name
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"dashboard did not answer (exit {proc.poll()}):\n{log.read_text()}"
                    ) from None
                time.sleep(0.3)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)


def edge(selector_source: str, selector_target: str) -> str:
    return f'.edge[data-source="{selector_source}"][data-target="{selector_target}"]'


def edge_facts(css: str) -> str:
    """JavaScript: the facts of the edge matching `css` (null while it is not drawn)."""
    return (
        f"(() => {{ const e = document.querySelector({json.dumps(css)}); if (!e) return null;"
        " return {cls: e.getAttribute('class'), rps: +e.dataset.requestRate,"
        " cps: +e.dataset.connectionRate, open: +e.dataset.activeConnections,"
        " denied: +e.dataset.denialRate, security: e.dataset.security,"
        " text: e.textContent, lock: !!e.querySelector('.lock')}; })()"
    )


def run(coro: Any) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 240))


@pytest.mark.timeout(600)
def test_page_draws_the_demo_graph_with_rates_mtls_signals_and_why(
    lab: Lab, dashboard_url: str, tmp_path: Path
) -> None:
    # New connections as well as the demo's kept-alive one, so the edge has a connection rate
    out = lab.exec(
        "traffic", "demo", sys.executable, "-m", "sample_apps.load_client",
        "http://frontend.demo/", "--count", "20", "--new-connections", "--duration", "30",
        "-o", "json",
    ).stdout  # fmt: skip
    assert json.loads(out)["requests"]["succeeded"] == 20, out

    traffic_frontend = edge("workload:demo/traffic", "service:demo/frontend")
    frontend_v1 = edge("workload:demo/frontend", "service:demo/backend-v1")
    frontend_v2 = edge("workload:demo/frontend", "service:demo/backend-v2")

    async def go() -> None:
        async with Chromium(tmp_path) as browser:
            await browser.goto(dashboard_url + "/")
            # the graph, once Prometheus has two scrapes of the traffic in its window
            await browser.wait_for(
                f"(() => {{ const a = {edge_facts(frontend_v1)}, b = {edge_facts(frontend_v2)},"
                f" c = {edge_facts(traffic_frontend)};"
                " return a && b && c && a.rps > 0 && b.rps > 0 && c.cps > 0; })()",
                timeout=120,
            )
            names = await browser.evaluate(
                "[...document.querySelectorAll('.node.workload')].map(n => n.dataset.name)"
            )
            assert {"traffic", "frontend", "backend-v1", "backend-v2"} <= set(names), names
            assert "waypoint" not in names  # its hops are folded into the edges it carried
            for css in (traffic_frontend, frontend_v1, frontend_v2):
                facts = await browser.evaluate(edge_facts(css))
                assert facts["security"] == "mutual_tls" and facts["lock"], (css, facts)
                assert "ok" in facts["cls"].split(), (css, facts)  # no errors, no denials
            v1 = await browser.evaluate(edge_facts(frontend_v1))
            assert "via demo/waypoint" in v1["text"] and "rps" in v1["text"], v1
            # (no check of the 90/10 split here: the first rates cover a handful of requests)
            keep_artifact(await browser.screenshot(tmp_path / "dashboard-demo-graph.png"))

            # a Service's golden signals
            await browser.click('.node[data-id="service:demo/backend-v1"]')
            rows = await browser.wait_for(
                "document.querySelector('#panel table.signals') && Object.fromEntries("
                "[...document.querySelectorAll('#panel tr')].map(r => [r.dataset.signal,"
                " r.cells[1].innerText]))",
                timeout=30,
            )
            assert rows["requests"].endswith("rps") and rows["requests"] != "0 rps", rows
            assert rows["errors (5xx)"] == "0.0%", rows
            assert rows["latency p50"].endswith(" ms"), rows
            keep_artifact(await browser.screenshot(tmp_path / "dashboard-demo-signals.png"))

            # why, for the edge traffic -> frontend
            await browser.click(traffic_frontend)
            verdict = await browser.wait_for(
                "(document.getElementById('why-error') || {}).innerText ||"
                " (document.getElementById('why-verdict') || {dataset: {}}).dataset.verdict",
                timeout=60,
            )
            assert verdict == "allow"
            panel = await browser.evaluate("document.getElementById('panel').innerText")
            assert "weftctl why demo/traffic frontend.demo" in panel
            keep_artifact(await browser.screenshot(tmp_path / "dashboard-demo-why.png"))
            assert [c for c in browser.console if "uncaught" in c] == []

    run(go())


@pytest.mark.timeout(600)
def test_a_connection_refused_by_policy_is_a_denial_edge_and_why_names_the_policy(
    lab: Lab, dashboard_url: str, tmp_path: Path
) -> None:
    policy = tmp_path / "deny.yaml"
    policy.write_text(DENY_TCP_ECHO)
    lab.run("apply", "-f", str(policy))
    deadline = time.monotonic() + 30
    while True:  # until every ztunnel enforces it (bounded)
        out = lab.exec(
            "traffic", "demo", sys.executable, "-c", TCP_ROUNDS, "tcp-echo.demo", "9000", "5"
        ).stdout
        if json.loads(out)["refused"] == 5 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert json.loads(out) == {"ok": 0, "refused": 5}, out
    denied = edge("workload:demo/traffic", "service:demo/tcp-echo")

    async def go() -> None:
        async with Chromium(tmp_path) as browser:
            await browser.goto(dashboard_url + "/")
            facts = await browser.wait_for(
                f"(() => {{ const e = {edge_facts(denied)}; return e && e.denied > 0 && e; }})()",
                timeout=120,
            )
            assert "bad" in facts["cls"].split(), facts
            assert "denied/s" in facts["text"], facts
            await browser.click(denied)
            verdict = await browser.wait_for(
                "(document.getElementById('why-error') || {}).innerText ||"
                " (document.getElementById('why-verdict') || {dataset: {}}).dataset.verdict",
                timeout=60,
            )
            assert verdict == "deny"
            panel = await browser.evaluate("document.getElementById('panel').innerText")
            assert f"deciding policy: demo/{DENY_NAME}" in panel, panel
            keep_artifact(await browser.screenshot(tmp_path / "dashboard-denied-why.png"))

    try:
        run(go())
    finally:
        lab.run("delete", "-f", str(policy), check=False)
