"""`lab up` and `lab down` leave the machine as it was, also after a crash."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lab.state import daemon_alive
from tests.conftest import RUN_ID
from tests.integration.lab.labtools import Lab, leftovers, state_dir

pytestmark = pytest.mark.integration

SMALL = """
apiVersion: v1
kind: Pod
metadata: {name: one, labels: {app: one}}
spec:
  containers:
  - name: echo
    image: weft/tcp-echo
    args: ["--port", "9000"]
    ports: [{containerPort: 9000}]
---
apiVersion: v1
kind: Service
metadata: {name: one}
spec:
  selector: {app: one}
  ports: [{port: 9000}]
"""


def _host_view() -> dict[str, str]:
    """What the host's own namespace looks like; a lab must not change any of it."""
    return {
        "links": subprocess.run(["ip", "-o", "link"], capture_output=True, text=True).stdout,
        "addrs": subprocess.run(["ip", "-o", "addr"], capture_output=True, text=True).stdout,
        "routes": subprocess.run(["ip", "route"], capture_output=True, text=True).stdout,
        "nft": subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout,
    }


@pytest.fixture
def small_lab(tmp_path: Path, request: pytest.FixtureRequest):
    lab = Lab(f"weft-lc-{RUN_ID}-{request.node.name[:8].replace('_', '-').strip('-')}")
    manifest = tmp_path / "small.yaml"
    manifest.write_text(SMALL)
    try:
        yield lab, manifest
    finally:
        lab.force_down()


def test_down_leaves_nothing_behind(small_lab) -> None:
    lab, manifest = small_lab
    host_before = _host_view()
    lab.run("up", "--nodes", "2", "--manifests", str(manifest))
    record = lab.record()
    assert record is not None
    assert leftovers(record.lab_id)  # the check below can see what a lab makes
    assert _host_view() == host_before
    out = lab.run("down").stdout
    assert "removed" in out
    assert leftovers(record.lab_id) == []
    assert not state_dir(lab.name).exists()
    assert _host_view() == host_before
    again = lab.run("down")
    assert "nothing to remove" in again.stdout


def test_down_after_the_daemon_was_killed_removes_everything(small_lab) -> None:
    lab, manifest = small_lab
    lab.run("up", "--nodes", "1", "--manifests", str(manifest))
    record = lab.record()
    assert record is not None and daemon_alive(record)
    os.kill(record.daemon_pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while daemon_alive(record) and time.monotonic() < deadline:
        time.sleep(0.05)
    # The pods outlive their daemon, as containers outlive a crashed kubelet.
    assert any(item.startswith("process") for item in leftovers(record.lab_id))
    status = lab.run("status", check=False)
    assert status.returncode != 0
    lab.run("down")
    assert leftovers(record.lab_id) == []


def test_up_after_a_crash_cleans_the_dead_lab_first(small_lab) -> None:
    lab, manifest = small_lab
    lab.run("up", "--nodes", "1", "--manifests", str(manifest))
    first = lab.record()
    assert first is not None
    os.kill(first.daemon_pid, signal.SIGKILL)
    time.sleep(0.2)
    out = lab.run("up", "--nodes", "1", "--manifests", str(manifest)).stdout
    assert "cleaning up what a dead lab" in out
    assert leftovers(first.lab_id) == []
    second = lab.record()
    assert second is not None and second.lab_id != first.lab_id
    assert lab.status()["phase"] == "Ready"


def test_bad_manifests_on_up_create_nothing(small_lab, tmp_path: Path) -> None:
    lab, _ = small_lab
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "a.yaml").write_text(SMALL)
    (bad / "b.yaml").write_text("""
apiVersion: v1
kind: Service
metadata: {name: one}
spec:
  ports: [{port: 9000}]
---
apiVersion: v1
kind: Gizmo
metadata: {name: g}
""")
    before = set(os.listdir("/run/netns")) if os.path.exists("/run/netns") else set()
    proc = lab.run("up", "--manifests", str(bad), check=False)
    assert proc.returncode == 1
    assert "b.yaml#1: Service default/one: metadata.name: duplicate" in proc.stderr
    assert "b.yaml#2: Gizmo g: kind: unknown kind 'Gizmo'" in proc.stderr
    assert lab.record() is None
    after = set(os.listdir("/run/netns")) if os.path.exists("/run/netns") else set()
    assert after == before


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pod-cidr", "198.18.0.0/16"], "overlaps"),
        (["--service-cidr", "10.0.0.300/16"], "--service-cidr: '10.0.0.300/16' is not an IPv4"),
        (["--nodes", "0"], "--nodes: must be between 1"),
    ],
)
def test_bad_settings_are_refused_before_anything_is_made(
    small_lab, args: list[str], message: str
) -> None:
    lab, manifest = small_lab
    proc = lab.run("up", "--manifests", str(manifest), *args, check=False)
    assert proc.returncode == 1
    assert message in proc.stderr
    assert lab.record() is None


def test_a_failing_container_is_restarted_with_backoff(small_lab, tmp_path: Path) -> None:
    lab, _ = small_lab
    crash = tmp_path / "crash.yaml"
    crash.write_text("""
apiVersion: v1
kind: Pod
metadata: {name: crashy}
spec:
  containers: [{name: main, command: ["sh", "-c", "echo starting; exit 3"]}]
""")
    proc = lab.run("up", "--nodes", "1", "--manifests", str(crash), "--wait", "3", check=False)
    # 3 ("not ready") unless `up` looked in the instant the container ran: no probe, so a
    # running container counts as ready, as in Kubernetes.
    assert proc.returncode in (0, 3), proc.stderr
    deadline = time.monotonic() + 15
    while True:
        [pod] = lab.status()["pods"]
        if pod["restarts"] >= 1 or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert pod["restarts"] >= 1
    assert pod["containers"][0]["reason"] == "CrashLoopBackOff"
    assert "starting" in lab.run("logs", "crashy").stdout


def test_up_as_a_normal_user_says_it_needs_root(tmp_path: Path) -> None:
    import shutil
    import sys

    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("setpriv (util-linux) is not installed")
    proc = subprocess.run(
        [
            setpriv,
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            sys.executable,
            "-m",
            "weftctl.main",
            "lab",
            "--name",
            f"weft-nr-{RUN_ID}",
            "up",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "PYTHONPATH": str(Path(__file__).parents[3])},
    )
    assert proc.returncode == 1
    assert "must run as root" in proc.stderr
