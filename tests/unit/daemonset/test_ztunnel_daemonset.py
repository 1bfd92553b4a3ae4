"""daemonset/ztunnel.yaml: ztunnel in a DaemonSet of its own, rolled with surge, so that a
rolling update hands the listening sockets over (docs/ztunnel-restart.md, "On Kubernetes").

The old and the new pod must fit on a node side by side (no declared port, which on the host
network would be a host port), find each other (the handover socket on one host path, which
their arguments name), judge readiness each by its own process (not by the node's 15021,
which is the old one's until the handover is done), and the old one must be given the time to
drain (grace period above the drain timeout)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path
from typing import Any

import click
from aiohttp import web

from meshcore import adminserver
from tests.unit.daemonset.manifests import container, find
from ztunnel.app import GOAWAY_GRACE_S, ZtunnelConfig


def _ds() -> dict[str, Any]:
    return find("DaemonSet", "weft-ztunnel")


def _spec() -> dict[str, Any]:
    spec: dict[str, Any] = _ds()["spec"]["template"]["spec"]
    return spec


def _params() -> dict[str, Any]:
    from ztunnel.main import run

    args = container(_ds(), "ztunnel")["args"]
    assert args[0] == "run"
    with run.make_context("run", list(args[1:])) as ctx:
        assert isinstance(ctx.command, click.Command)
        return dict(ctx.params)


def _keys(obj: object) -> set[str]:
    if isinstance(obj, dict):
        return set(obj) | {k for v in obj.values() for k in _keys(v)}
    if isinstance(obj, list):
        return {k for v in obj for k in _keys(v)}
    return set()


def test_ztunnel_rolls_with_surge_and_the_node_pod_one_at_a_time() -> None:
    assert _ds()["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
    }
    node = find("DaemonSet", "weft-node")
    assert node["spec"]["updateStrategy"] == {
        "type": "RollingUpdate",
        "rollingUpdate": {"maxUnavailable": 1},
    }
    names = [c["name"] for c in node["spec"]["template"]["spec"]["containers"]]
    assert "ztunnel" not in names
    selector = _ds()["spec"]["selector"]["matchLabels"]
    assert selector.items() <= _ds()["spec"]["template"]["metadata"]["labels"].items()
    assert selector != node["spec"]["selector"]["matchLabels"], "the two must not share pods"


def test_the_ztunnel_pod_declares_no_port() -> None:
    """On the host network a declared port is a host port: the surge pod would stay Pending."""
    spec = _spec()
    assert spec["hostNetwork"] is True
    assert [c["name"] for c in spec["containers"]] == ["ztunnel"]
    assert "initContainers" not in spec
    assert not {"ports", "hostPort", "containerPort"} & _keys(spec)


def test_the_handover_socket_is_on_the_host_path_the_arguments_name() -> None:
    params = _params()
    socket = params["handover_socket"]
    assert socket is not None and params["takeover"] == socket, "takes over from its own kind"
    mounts = {m["mountPath"]: m for m in container(_ds(), "ztunnel")["volumeMounts"]}
    mount = mounts[str(socket.parent)]
    assert "subPath" not in mount and not mount.get("readOnly")
    volumes = {v["name"]: v for v in _spec()["volumes"]}
    assert volumes[mount["name"]]["hostPath"] == {
        "path": "/var/run/weft/ztunnel",
        "type": "DirectoryOrCreate",
    }
    # the node agent's CNI socket is in the host's /var/run/weft: ztunnel sees only its folder
    hosts = {v["hostPath"]["path"] for v in volumes.values() if "hostPath" in v}
    assert hosts == {"/var/run/weft/ztunnel"}


def test_a_drained_ztunnel_waits_to_be_deleted() -> None:
    # an exit would be restarted by the kubelet and take the sockets back from its successor
    assert _params()["after_drain"] == "wait"


def test_the_grace_period_outlasts_the_drain() -> None:
    params = _params()
    grace = _spec()["terminationGracePeriodSeconds"]
    assert params["drain_timeout"] == 600
    assert grace > params["drain_timeout"] + GOAWAY_GRACE_S


def test_bootstrapped_and_scheduled_as_the_node_pod() -> None:
    spec, node = _spec(), find("DaemonSet", "weft-node")["spec"]["template"]["spec"]
    for key in ("serviceAccountName", "automountServiceAccountToken", "priorityClassName",
                "tolerations", "dnsPolicy"):  # fmt: skip
        assert spec[key] == node[key], key
    assert spec["priorityClassName"] == "system-node-critical"
    assert spec["tolerations"] == [{"operator": "Exists"}]
    volumes = {v["name"]: v for v in spec["volumes"]}
    node_volumes = {v["name"]: v for v in node["volumes"]}
    for name in ("credential", "token", "controller-roots"):
        assert volumes[name] == node_volumes[name], name
    # no host PID namespace (it reads no other process), but not PID 1 of its own either
    assert not spec.get("hostPID") and spec["shareProcessNamespace"] is True
    labels = _ds()["spec"]["template"]["metadata"]["labels"]
    assert labels["weft.dev/dataplane-mode"] == "none"


def test_metrics_are_announced_on_the_port_ztunnel_serves() -> None:
    annotations = _ds()["spec"]["template"]["metadata"]["annotations"]
    port = ZtunnelConfig.metrics_addr.rpartition(":")[2]
    assert annotations["prometheus.io/port"] == port
    node = find("DaemonSet", "weft-node")["spec"]["template"]["metadata"]["annotations"]
    assert node["prometheus.io/port"] == "15014"  # the agent's, now alone in its pod


def _probe(socket: Path) -> subprocess.CompletedProcess[str]:
    """The readiness probe's command as the kubelet runs it (python: this interpreter)."""
    probe = container(_ds(), "ztunnel")["readinessProbe"]
    argv = list(probe["exec"]["command"])
    assert argv[0] == "python" and argv[-1] == str(_params()["admin_socket"])
    argv = [sys.executable, *argv[1:-1], str(socket)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=10)


def test_readiness_is_asked_of_this_pods_process_on_its_own_admin_socket(tmp_path: Path) -> None:
    """The probe's command, run against ztunnel's real admin server: not ready while nobody
    serves the socket (a successor before the handover) or while not ready, ready once ready,
    not ready again once the listeners are let go of (a replaced ztunnel)."""
    admin = _params()["admin_socket"]
    mounts = {m["mountPath"]: m["name"] for m in container(_ds(), "ztunnel")["volumeMounts"]}
    volumes = {v["name"]: v for v in _spec()["volumes"]}
    assert "emptyDir" in volumes[mounts[str(admin.parent)]], "the pod's own, not the host's"
    probe = container(_ds(), "ztunnel")["readinessProbe"]
    assert "httpGet" not in probe and probe["timeoutSeconds"] >= 3

    socket = tmp_path / "ztunnel.sock"

    async def dump(_request: web.Request) -> web.Response:
        return web.json_response({})

    async def scenario() -> list[int]:
        codes = [(await asyncio.to_thread(_probe, socket)).returncode]
        ready = asyncio.Event()
        runners = await adminserver.serve_proxy(
            dump, ready, admin_addr="", admin_socket=socket, metrics_addr="", readiness_addr=""
        )
        try:
            codes.append((await asyncio.to_thread(_probe, socket)).returncode)
            ready.set()
            codes.append((await asyncio.to_thread(_probe, socket)).returncode)
        finally:
            for runner in runners:
                await runner.cleanup()
        codes.append((await asyncio.to_thread(_probe, socket)).returncode)
        return codes

    assert asyncio.run(scenario()) == [1, 1, 0, 1]
