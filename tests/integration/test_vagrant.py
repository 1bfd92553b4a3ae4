"""The Vagrant k3s lab, as far as a machine without a hypervisor can check it: Debian's
`vagrant validate` on the Vagrantfile (offline, VAGRANT_HOME in a tmp dir, on a copy so no
.vagrant/ lands in the checkout), shellcheck on every provisioning script, every script the
Vagrantfile names present, and the demo rewritten for the cluster. Booting VMs is not tested
(docs/vagrant.md says what that leaves out)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from lab.images import SAMPLE_APPS

ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = ROOT / "scripts" / "vagrant"
SHELL_SCRIPTS = sorted(p.name for p in SCRIPTS.glob("*.sh"))
SOURCED = {"lib-k3s.sh"}  # sourced by the others, not a provisioner of its own
TIMEOUT_S = 120

needs_vagrant = pytest.mark.skipif(
    shutil.which("vagrant") is None, reason="no vagrant (scripts/setup.sh --test installs it)"
)
needs_shellcheck = pytest.mark.skipif(
    shutil.which("shellcheck") is None, reason="no shellcheck (scripts/setup.sh --test installs it)"
)


def lab_copy(tmp_path: Path) -> Path:
    """The Vagrantfile and its scripts, where `vagrant validate` may write .vagrant/."""
    root = tmp_path / "weft-vagrant"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "Vagrantfile", root / "Vagrantfile")
    shutil.copytree(SCRIPTS, root / "scripts" / "vagrant")
    return root


def validate(root: Path, tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "VAGRANT_HOME": str(tmp_path / "vagrant-home"),
        "VAGRANT_CHECKPOINT_DISABLE": "1",  # no version check over the network
        "VAGRANT_BOX_UPDATE_CHECK_DISABLE": "1",
        "VAGRANT_NO_COLOR": "1",
        **env,
    }
    # --ignore-provider: neither VirtualBox nor vagrant-libvirt is installed here; the
    # provider blocks are then not validated (the libvirt one is unread without its plugin).
    return subprocess.run(
        ["vagrant", "validate", "--ignore-provider"],
        cwd=root,
        env=environment,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )


def machines(output: str) -> list[str]:
    return sorted(set(re.findall(r"^==> (\S+): Ignoring provider config", output, re.M)))


@needs_vagrant
def test_vagrantfile_validates_with_a_server_and_two_agents(tmp_path: Path) -> None:
    root = lab_copy(tmp_path)
    done = validate(root, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "validated successfully" in done.stdout
    assert machines(done.stdout) == ["agent1", "agent2", "server"]
    token = root / ".vagrant" / "weft-k3s-token"
    assert token.stat().st_mode & 0o077 == 0, "the join secret is readable by others"
    again = validate(root, tmp_path)
    assert again.returncode == 0
    assert (root / ".vagrant" / "weft-k3s-token").read_text() == token.read_text()


@needs_vagrant
def test_agent_count_comes_from_the_environment(tmp_path: Path) -> None:
    done = validate(lab_copy(tmp_path), tmp_path, WEFT_AGENTS="3", WEFT_K3S_TOKEN="t")
    assert done.returncode == 0, done.stdout + done.stderr
    assert machines(done.stdout) == ["agent1", "agent2", "agent3", "server"]


@needs_vagrant
@pytest.mark.parametrize("script", sorted(set(SHELL_SCRIPTS) - SOURCED))
def test_validate_fails_when_a_provisioning_script_is_missing(tmp_path: Path, script: str) -> None:
    root = lab_copy(tmp_path)
    (root / "scripts" / "vagrant" / script).unlink()
    done = validate(root, tmp_path)
    assert done.returncode != 0
    assert f"scripts/vagrant/{script}" in done.stdout + done.stderr


def test_every_script_is_used() -> None:
    vagrantfile = (ROOT / "Vagrantfile").read_text()
    named = set(re.findall(r'path: "scripts/vagrant/([^"]+)"', vagrantfile))
    assert named == set(SHELL_SCRIPTS) - SOURCED
    for name in SOURCED:
        users = [
            s
            for s in SHELL_SCRIPTS
            if f"/vagrant/scripts/vagrant/{name}" in (SCRIPTS / s).read_text()
        ]
        assert users, f"{name} is sourced by no script"
    assert "demo_manifests.py" in (SCRIPTS / "weft-install.sh").read_text()


def test_k3s_and_gateway_api_are_pinned() -> None:
    vagrantfile = (ROOT / "Vagrantfile").read_text()
    assert re.search(r'"WEFT_K3S_VERSION", "v\d+\.\d+\.\d+\+k3s\d+"', vagrantfile)
    assert re.search(r'"WEFT_GATEWAY_API_VERSION", "v\d+\.\d+\.\d+"', vagrantfile)
    lib = (SCRIPTS / "lib-k3s.sh").read_text()
    assert "https://get.k3s.io" not in lib  # the installer of the pinned tag, not the latest
    assert "raw.githubusercontent.com/k3s-io/k3s/${version" in lib


@needs_shellcheck
@pytest.mark.parametrize("script", SHELL_SCRIPTS)
def test_shellcheck(script: str) -> None:
    done = subprocess.run(
        ["shellcheck", "--external-sources", f"scripts/vagrant/{script}"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr


@needs_shellcheck
def test_shellcheck_finds_what_it_should(tmp_path: Path) -> None:
    """The check above can fail: an unquoted expansion is reported."""
    bad = tmp_path / "bad.sh"
    bad.write_text("#!/usr/bin/env bash\nrm -rf $1/x\n")
    done = subprocess.run(["shellcheck", str(bad)], capture_output=True, text=True, check=False)
    assert done.returncode != 0 and "SC2086" in done.stdout


def test_demo_manifests_run_the_sample_apps_from_weft_image() -> None:
    image = "ghcr.io/weft-mesh/weft:0.1.0"
    done = subprocess.run(
        [
            sys.executable,
            str(SCRIPTS / "demo_manifests.py"),
            "--image",
            image,
            str(ROOT / "lab" / "demo"),
        ],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        check=True,
    )
    docs = list(yaml.safe_load_all(done.stdout))
    namespace = next(d for d in docs if d["kind"] == "Namespace")
    assert namespace["metadata"]["labels"]["weft.dev/dataplane-mode"] == "ambient"
    seen = 0
    for doc in docs:
        spec = doc.get("spec") or {}
        pod = spec if doc["kind"] == "Pod" else (spec.get("template") or {}).get("spec")
        for c in (pod or {}).get("containers") or ():
            seen += 1
            assert c["image"] == image
            assert c["imagePullPolicy"] == "IfNotPresent"
            command = c["command"]
            assert (command[:2] == ["python3", "-m"] and command[2] in SAMPLE_APPS.values()) or (
                command[0] == "sh"
            ), command
    assert seen >= 4
