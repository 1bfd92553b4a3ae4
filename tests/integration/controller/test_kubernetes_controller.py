"""The controller process on a real API server (`--source kubernetes`): it publishes its CA
root, nodes trade their pod's projected token for a node credential (TokenReview), the
credential then works on the config stream, and problems become Events."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from meshcore.configclient import ConfigClient, NodeCredential
from meshcore.identity.spiffe import node_id
from meshcore.nodebootstrap import Bootstrap, BootstrapRefused, request_credential
from tests.integration.controller.controller_harness import free_port
from tests.integration.controller.test_kubernetes_source import call, create, namespace
from tests.kubeapi import KubeAPI, kube_api  # noqa: F401  (the fixture)

pytestmark = [pytest.mark.integration, pytest.mark.kubernetes]

ROOT = Path(__file__).resolve().parents[3]
TD = "cluster.local"


def node_pod(
    name: str, node: str, sa: str = "weft-node", ns: str = "weft-system"
) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "nodeName": node,
            "serviceAccountName": sa,
            "containers": [{"name": "agent", "image": "ghcr.io/weft-mesh/weft:0.1.0"}],
        },
    }


def service_account(name: str, ns: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": {"name": name, "namespace": ns},
    }


def token_for(api: KubeAPI, ns: str, sa: str, pod: str, audience: str = "weft") -> str:
    """What the kubelet projects into the pod: a token bound to it, for `audience`."""
    body = {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "audiences": [audience],
            "expirationSeconds": 3600,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": pod},
        },
    }
    answer = call(api, "POST", f"/api/v1/namespaces/{ns}/serviceaccounts/{sa}/token", body)
    return str(answer["status"]["token"])


@dataclass
class RunningController:
    grpc_port: int
    bootstrap_port: int
    folder: Path

    def roots(self, api: KubeAPI) -> Path:
        """The CA root as node pods get it: from the ConfigMap the controller publishes."""
        deadline = time.monotonic() + 20
        while True:
            try:
                cm = call(api, "GET", "/api/v1/namespaces/weft-system/configmaps/weft-ca-root-cert")
                break
            except AssertionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        path = self.folder / "root-cert.pem"
        path.write_text(cm["data"]["root-cert.pem"])
        return path


@pytest.fixture(scope="module")
def controller(
    kube_api: KubeAPI,  # noqa: F811
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RunningController]:
    folder = tmp_path_factory.mktemp("weft-k8s-controller")
    for obj in (
        namespace("weft-system"),
        namespace("shop"),
        service_account("weft-node", "weft-system"),
        service_account("default", "shop"),
        node_pod("weft-node-a", "node-a"),
        node_pod("web-1", "node-a", sa="default", ns="shop"),
    ):
        with contextlib.suppress(AssertionError):  # (exists: the server makes "default" itself)
            create(kube_api, obj)
    kube_api.kubectl("apply", "-f", str(ROOT / "daemonset" / "crds"))
    ports = [free_port() for _ in range(3)]
    argv = [
        sys.executable, "-m", "controller", "run",
        "--source", "kubernetes",
        "--kubeconfig", str(kube_api.kubeconfig),
        "--state-dir", str(folder / "state"),
        "--grpc-listen", f"127.0.0.1:{ports[0]}",
        "--bootstrap-listen", f"127.0.0.1:{ports[1]}",
        "--readiness-addr", f"127.0.0.1:{ports[2]}",
        "--admin-addr", "",
        "--metrics-addr", "",
        "--serving-address", "127.0.0.1",
    ]  # fmt: skip
    log = open(folder / "controller.log", "wb")  # noqa: SIM115  (closed below)
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=os.environ)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{ports[2]}/ready", timeout=1):
                    break
            except OSError:
                assert proc.poll() is None, (folder / "controller.log").read_text()[-3000:]
                assert time.monotonic() < deadline, (folder / "controller.log").read_text()[-3000:]
                time.sleep(0.2)
        yield RunningController(ports[0], ports[1], folder)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def bootstrap(ctl: RunningController, api: KubeAPI, token: str) -> Bootstrap:
    token_file = ctl.folder / f"token-{time.monotonic_ns()}"
    token_file.write_text(token)
    return Bootstrap(token_file, f"127.0.0.1:{ctl.bootstrap_port}", ctl.roots(api))


def test_a_node_pods_token_gets_the_node_credential_that_then_works_on_the_config_stream(
    controller: RunningController,
    kube_api: KubeAPI,  # noqa: F811
) -> None:
    token = token_for(kube_api, "weft-system", "weft-node", "weft-node-a")
    how = bootstrap(controller, kube_api, token)

    async def scenario() -> NodeCredential:
        credential = await request_credential(node_id(TD, "node-a"), how)
        client = ConfigClient("node-a", f"127.0.0.1:{controller.grpc_port}", credential)
        follower = asyncio.create_task(client.run())
        try:
            await asyncio.wait_for(client.synced.wait(), 20)
        finally:
            follower.cancel()
            await client.close()
        return credential

    credential = asyncio.run(scenario())
    assert credential.identity == node_id(TD, "node-a")


@pytest.mark.parametrize(
    ("what", "make"),
    [
        (
            "a token for another node's identity",
            lambda api: (token_for(api, "weft-system", "weft-node", "weft-node-a"), "node-b"),
        ),
        (
            "a pod's token of another ServiceAccount",
            lambda api: (token_for(api, "shop", "default", "web-1"), "node-a"),
        ),
        (
            "a token for another audience",
            lambda api: (
                token_for(api, "weft-system", "weft-node", "weft-node-a", "api"),
                "node-a",
            ),
        ),
        ("no token at all", lambda api: ("not-a-jwt", "node-a")),
    ],
)
def test_refused(controller: RunningController, kube_api: KubeAPI, what: str, make: Any) -> None:  # noqa: F811
    token, node = make(kube_api)
    how = bootstrap(controller, kube_api, token)
    with pytest.raises((BootstrapRefused, grpc.aio.AioRpcError)) as err:
        asyncio.run(request_credential(node_id(TD, node), how))
    assert isinstance(err.value, BootstrapRefused), f"{what}: {err.value}"


def test_a_problem_becomes_an_event_on_its_object(
    controller: RunningController,
    kube_api: KubeAPI,  # noqa: F811
) -> None:
    policy = {
        "apiVersion": "security.weft.dev/v1",
        "kind": "AuthorizationPolicy",
        "metadata": {"name": "ask-nobody", "namespace": "shop"},
        "spec": {
            "action": "CUSTOM",
            "provider": {"name": "no-such-provider"},
            "rules": [{"to": [{"operation": {"paths": ["/admin"]}}]}],
        },
    }
    call(
        kube_api, "POST", "/apis/security.weft.dev/v1/namespaces/shop/authorizationpolicies", policy
    )
    deadline = time.monotonic() + 20
    while True:
        events = call(kube_api, "GET", "/api/v1/namespaces/shop/events")["items"]
        mine = [e for e in events if e["involvedObject"]["name"] == "ask-nobody"]
        if mine:
            break
        assert time.monotonic() < deadline, json.dumps(events)[:2000]
        time.sleep(0.3)
    assert mine[0]["type"] == "Warning"
    assert mine[0]["involvedObject"]["kind"] == "AuthorizationPolicy"
    assert "no-such-provider" in mine[0]["message"] or "provider" in mine[0]["message"]
