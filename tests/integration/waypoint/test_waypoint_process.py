"""`python -m waypoint run` against a real controller process: it authenticates with its pod's
credential, subscribes, fetches its own SVID, serves HBONE as the Gateway's identity, reports
ready on 15021 and metrics on 15020, and stops cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.main import write_workload_credential
from meshcore import hbone
from meshcore.identity.certs import spiffe_id_of
from tests.integration.controller.controller_harness import BASE, ControllerProcess, free_port
from tests.integration.waypoint.otlp_receiver import OtlpReceiver
from tests.integration.ztunnel.test_pool_peer_identity import fetcher
from ztunnel.identity import IdentityManager
from ztunnel.pool import sni_for

pytestmark = pytest.mark.integration

WAYPOINT_ID = "spiffe://cluster.local/ns/shop/sa/waypoint"
CLIENT_ID = "spiffe://cluster.local/ns/shop/sa/web"
GATEWAY = {
    "apiVersion": "gateway.networking.k8s.io/v1",
    "kind": "Gateway",
    "metadata": {"name": "waypoint", "namespace": "shop"},
    "spec": {
        "gatewayClassName": "weft-waypoint",
        "listeners": [{"name": "mesh", "port": 15008, "protocol": "HBONE"}],
    },
}


def _get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=1) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, ""
    except OSError:
        return 0, ""


@pytest.fixture
def controller(tmp_path: Path) -> Iterator[ControllerProcess]:
    ctl = ControllerProcess(tmp_path)
    for name, text in BASE.items():
        ctl.write(name, text)
    ctl.write("30-gateway.yaml", json.dumps(GATEWAY))
    web = json.loads(BASE["10-web.yaml"])
    web["metadata"]["labels"] = {"weft.dev/use-waypoint": "waypoint"}
    ctl.write("10-web.yaml", json.dumps(web))
    ctl.start()
    try:
        yield ctl
    finally:
        ctl.stop()


def test_the_waypoint_process_runs_with_its_pod_credential_and_stops_on_sigterm(
    controller: ControllerProcess, tmp_path: Path
) -> None:
    receiver = OtlpReceiver().start()  # spans: see test_waypoint_tracing.py
    credential = tmp_path / "pod-credential"
    write_workload_credential(controller.ca(), "shop", "waypoint", credential)
    hbone_port, ready_port, metrics_port, admin_port = (free_port() for _ in range(4))
    log_path = tmp_path / "waypoint.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "waypoint",
                "run",
                "--hbone-addr",
                f"127.0.0.1:{hbone_port}",
                "--readiness-addr",
                f"127.0.0.1:{ready_port}",
                "--metrics-addr",
                f"127.0.0.1:{metrics_port}",
                "--admin-addr",
                f"127.0.0.1:{admin_port}",
            ],
            env={
                **os.environ,
                "WEFT_GATEWAY": "shop/waypoint",
                "WEFT_CONTROLLER_ADDR": controller.target,
                "WEFT_TRUST_DOMAIN": "cluster.local",
                "WEFT_CREDENTIAL": str(credential),
                "WEFT_OTLP_ENDPOINT": receiver.endpoint,
            },
            stdout=log,
            stderr=log,
        )
    try:
        deadline = time.monotonic() + 20
        while _get(f"http://127.0.0.1:{ready_port}/healthz/ready")[0] != 200:
            assert proc.poll() is None, log_path.read_text()
            assert time.monotonic() < deadline, "not ready:\n" + log_path.read_text()
            time.sleep(0.1)

        # 15021 is readiness only, 15020 metrics only
        assert _get(f"http://127.0.0.1:{ready_port}/metrics")[0] == 404
        status, text = _get(f"http://127.0.0.1:{metrics_port}/metrics")
        assert status == 200 and "python_info" in text
        assert _get(f"http://127.0.0.1:{metrics_port}/config_dump")[0] == 404
        status, text = _get(f"http://127.0.0.1:{admin_port}/config_dump")
        dump = json.loads(text)
        assert dump["bound_services"] == ["shop/web"]
        assert [c["identity"] for c in dump["certificates"]] == [WAYPOINT_ID]
        assert dump["controller"]["connected"] is True
        assert dump["tracing"] == {"otlp_endpoint": receiver.endpoint}

        # 15008 presents the waypoint's SVID to a mesh client (ALPN h2)
        async def handshake() -> str:
            ids = IdentityManager(fetcher(controller.ca()))
            ctx = await ids.context(CLIENT_ID, server=False)
            _, writer = await asyncio.open_connection(
                "127.0.0.1", hbone_port, ssl=ctx, server_hostname=sni_for(WAYPOINT_ID)
            )
            ssl_object = writer.get_extra_info("ssl_object")
            assert ssl_object.selected_alpn_protocol() == hbone.ALPN
            der = ssl_object.getpeercert(binary_form=True)
            writer.close()
            from cryptography import x509

            return str(spiffe_id_of(x509.load_der_x509_certificate(der)))

        assert asyncio.run(handshake()) == WAYPOINT_ID

        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0, log_path.read_text()
        assert "waypoint.stopped" in log_path.read_text()
    finally:
        receiver.stop()
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_credential_for_another_identity_is_refused_at_start(
    controller: ControllerProcess, tmp_path: Path
) -> None:
    credential = tmp_path / "pod-credential"
    write_workload_credential(controller.ca(), "shop", "web", credential)
    result = subprocess.run(
        [sys.executable, "-m", "waypoint", "run", "--gateway", "shop/waypoint"],
        env={
            **os.environ,
            "WEFT_CONTROLLER_ADDR": controller.target,
            "WEFT_CREDENTIAL": str(credential),
        },
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode != 0
    assert "not this waypoint's identity" in result.stderr


def test_a_waypoint_that_cannot_listen_exits_for_its_supervisor_to_restart(
    controller: ControllerProcess, tmp_path: Path
) -> None:
    credential = tmp_path / "pod-credential"
    write_workload_credential(controller.ca(), "shop", "waypoint", credential)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "waypoint",
                "run",
                "--gateway",
                "shop/waypoint",
                "--hbone-addr",
                f"127.0.0.1:{port}",
                "--metrics-addr",
                "",
                "--readiness-addr",
                "",
                "--admin-addr",
                "",
            ],
            env={
                **os.environ,
                "WEFT_CONTROLLER_ADDR": controller.target,
                "WEFT_CREDENTIAL": str(credential),
            },
            capture_output=True,
            text=True,
            timeout=30,
        )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "waypoint.listen_failed" in result.stdout + result.stderr
