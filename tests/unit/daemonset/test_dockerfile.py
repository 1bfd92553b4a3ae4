"""The Dockerfile, checked without a container engine (none here): Debian bookworm, every
Debian package pinned (to this machine's version where it has the package), the venv made
as scripts/setup.sh makes it, everything `pip install -e` needs copied, and the processes
the manifests start exist as modules of the image."""

from __future__ import annotations

import fnmatch
import importlib.util
import re
import shlex
import shutil
import subprocess
import tomllib

import pytest

from tests.unit.daemonset.crdschema import ROOT
from tests.unit.daemonset.manifests import find, objects

DOCKERFILE = ROOT / "Dockerfile"


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for line in DOCKERFILE.read_text().splitlines():
        if line.strip().startswith("#") or not line.strip():
            continue
        if line.rstrip().endswith("\\"):
            pending += line.rstrip()[:-1] + " "
            continue
        full = (pending + line).strip()
        pending = ""
        word, _, rest = full.partition(" ")
        out.append((word.upper(), rest.strip()))
    assert not pending, "a continuation line at the end"
    return out


def _installs() -> list[list[str]]:
    """The package arguments of every `apt-get install` in a RUN."""
    found = []
    for word, rest in instructions():
        if word != "RUN":
            continue
        for command in re.split(r"&&|;", rest):
            tokens = shlex.split(command)
            if tokens[:2] == ["apt-get", "install"]:
                found.append(tokens[2:])
    return found


def test_stages_are_debian_bookworm() -> None:
    froms = [rest for word, rest in instructions() if word == "FROM"]
    assert froms
    stages = {rest.split()[-1] for rest in froms if " AS " in rest}
    for rest in froms:
        image = rest.split()[0]
        assert image in stages or re.fullmatch(r"debian:bookworm(-slim)?(@sha256:\w+)?", image)


def test_every_debian_package_is_pinned_without_recommends() -> None:
    installs = _installs()
    assert installs, "no apt-get install"
    for args in installs:
        assert "--no-install-recommends" in args
        packages = [a for a in args if not a.startswith("-")]
        for package in packages:
            name, eq, version = package.partition("=")
            assert eq and version, f"{name} is not pinned"


@pytest.mark.skipif(shutil.which("dpkg-query") is None, reason="not a Debian machine")
def test_pins_are_this_machines_versions() -> None:
    checked = 0
    for args in _installs():
        for package in (a for a in args if not a.startswith("-")):
            name, _, version = package.partition("=")
            proc = subprocess.run(
                ["dpkg-query", "-W", "-f=${Version}", name], capture_output=True, text=True
            )
            if proc.returncode != 0:
                continue  # not installed here
            assert proc.stdout == version, (
                f"{name}: pinned {version}, this machine has {proc.stdout}"
            )
            checked += 1
    assert checked >= 5


def test_the_runtime_has_what_the_node_agent_checks_for() -> None:
    """node_agent.programs.check_kernel needs bcc (python3-bpfcc), bpftool and nft."""
    names = {a.partition("=")[0] for args in _installs() for a in args}
    assert {"python3-bpfcc", "bpftool", "nftables", "iproute2", "python3", "python3-venv"} <= names


def test_the_venv_is_made_as_setup_sh_makes_it() -> None:
    runs = " ".join(rest for word, rest in instructions() if word == "RUN")
    assert "python3 -m venv --system-site-packages" in runs
    assert "pip install --no-cache-dir -q -e /opt/weft/src" in runs
    setup = (ROOT / "scripts" / "setup.sh").read_text()
    assert "venv --system-site-packages" in setup and 'pip" install -q -e' in setup


def test_everything_the_install_needs_is_copied_and_not_ignored() -> None:
    copied = set()
    for word, rest in instructions():
        if word == "COPY" and not rest.startswith("--from"):
            *sources, _dest = rest.split()
            for source in sources:
                assert (ROOT / source).exists(), source
                copied.add(source)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages = {p.rstrip("*") for p in project["tool"]["setuptools"]["packages"]["find"]["include"]}
    assert packages | {"bpf", "pyproject.toml", "setup.py", project["project"]["readme"]} <= copied
    ignored = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for source in copied:
        assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), source
    assert ".venv" in ignored and ".git" in ignored


def test_the_image_runs_unprivileged_unless_a_manifest_says_otherwise() -> None:
    users = [rest for word, rest in instructions() if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    ds = find("DaemonSet", "weft-node")
    for c in ds["spec"]["template"]["spec"]["containers"]:
        assert c["securityContext"]["runAsUser"] == 0  # (daemonset/README.md says why)
    controller = find("Deployment", "weft-controller")["spec"]["template"]["spec"]
    assert controller["securityContext"]["runAsNonRoot"] is True


def _module_with_main(module: str) -> bool:
    return importlib.util.find_spec(f"{module}.__main__") is not None


def test_every_process_started_is_a_module_of_the_image() -> None:
    (entrypoint,) = [rest for word, rest in instructions() if word == "ENTRYPOINT"]
    import json

    argv = json.loads(entrypoint)
    assert argv[:2] == ["python", "-m"] and _module_with_main(argv[2])
    from waypoint.main import cli

    assert argv[3] in cli.commands  # type: ignore[attr-defined]
    started = 0
    for o in objects():
        if o["kind"] not in ("Deployment", "DaemonSet"):
            continue
        for c in o["spec"]["template"]["spec"]["containers"]:
            command = c["command"]
            assert command[:2] == ["python", "-m"], c["name"]
            assert _module_with_main(command[2]), command
            started += 1
    assert started == 4  # controller; agent, ztunnel, install-cni
