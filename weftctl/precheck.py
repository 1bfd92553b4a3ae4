"""`weftctl precheck`: does this node, and (with a kubeconfig) this cluster, fit weft?

Reads facts (this module: /proc, /sys, the CNI config folders, the API server) and hands them
to the pure judgements in weftctl.prechecks. One line per check: ok, warn or fail with why;
exit code 1 when any check fails. Run it on a node (as root, like the DaemonSet) for the
node checks to mean what the node agent will find.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from dataclasses import asdict
from pathlib import Path

import click

from weftctl.install import CONTEXT_OPTION, KUBECONFIG_OPTION
from weftctl.kubeapi import KubeApi, KubeError
from weftctl.prechecks import (
    MAX_CNI_FILE_BYTES,
    Check,
    CniFile,
    Verdict,
    check_bpffs,
    check_btf,
    check_capabilities,
    check_cgroup2,
    check_cni,
    check_existing_weft,
    check_gateway_api,
    check_istio,
    check_kernel,
    check_kubernetes,
    exit_code,
    parse_mounts,
)
from weftctl.render import ObjectRef

CNI_DIRS = (Path("/etc/cni/net.d"), Path("/var/lib/rancher/k3s/agent/etc/cni/net.d"))
WEFT_GROUPS = ("security.weft.dev/v1", "networking.weft.dev/v1", "policy.weft.dev/v1")
ISTIO_GROUPS = ("security.istio.io/v1", "networking.istio.io/v1")


def _cap_eff(status: str) -> int | None:
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return int(line.split()[1], 16)
    return None


def _bpffs_mountable() -> bool | None:
    """Mount bpffs on a scratch folder and unmount it: tells whether the kernel has it.
    Only as root (otherwise not tried)."""
    if os.geteuid() != 0:
        return None
    with tempfile.TemporaryDirectory(prefix="weft-precheck-") as scratch:
        done = subprocess.run(
            ["mount", "-t", "bpf", "bpf", scratch], capture_output=True, check=False
        )
        if done.returncode != 0:
            return False
        subprocess.run(["umount", scratch], capture_output=True, check=False)
        return True


def cni_files(dirs: tuple[Path, ...] = CNI_DIRS) -> list[CniFile]:
    out = []
    for folder in dirs:
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix in (".conflist", ".conf", ".json") and path.is_file():
                text = path.read_bytes()[:MAX_CNI_FILE_BYTES].decode("utf-8", "replace")
                out.append(CniFile(path.name, str(folder), text))
        if out:
            return out  # the first folder with configs is the one the runtime reads
    return out


def node_checks(root: Path = Path("/")) -> list[Check]:
    """Node facts from `root` (/ on a node; a prepared tree in tests)."""
    release = os.uname().release
    mounts = parse_mounts((root / "proc/self/mounts").read_text())
    try:
        cap_eff = _cap_eff((root / "proc/self/status").read_text())
    except OSError:
        cap_eff = None
    bpffs_mounted = any(m.target == "/sys/fs/bpf" and m.fstype == "bpf" for m in mounts)
    return [
        check_kernel(release),
        check_cgroup2(mounts),
        check_btf((root / "sys/kernel/btf/vmlinux").exists()),
        check_bpffs(mounts, None if bpffs_mounted else _bpffs_mountable()),
        check_capabilities(cap_eff, os.geteuid() == 0, release),
        check_cni(cni_files(tuple(root / str(d).lstrip("/") for d in CNI_DIRS))),
    ]


def cluster_checks(kube: KubeApi) -> list[Check]:
    checks = [check_kubernetes(kube.version())]
    gateway = kube.resources("gateway.networking.k8s.io/v1")
    checks.append(check_gateway_api(None if gateway is None else frozenset(gateway)))
    namespace = kube.get(ObjectRef("v1", "Namespace", "weft-system")) is not None
    controller = kube.get(ObjectRef("apps/v1", "Deployment", "weft-controller", "weft-system"))
    image = None
    if controller is not None:
        pods = controller.get("spec", {}).get("template", {}).get("spec", {})
        image = next((c.get("image") for c in pods.get("containers") or ()), "unknown")
    crds = sum(len(kube.resources(g) or ()) for g in WEFT_GROUPS)
    checks.append(check_existing_weft(namespace, image, crds))
    istio_ns = kube.get(ObjectRef("v1", "Namespace", "istio-system")) is not None
    istio_groups = frozenset(g.split("/")[0] for g in ISTIO_GROUPS if kube.resources(g))
    ztunnel = (
        istio_ns
        and kube.get(ObjectRef("apps/v1", "DaemonSet", "ztunnel", "istio-system")) is not None
    )
    checks.append(check_istio(istio_ns, istio_groups, ztunnel))
    return checks


@click.command("precheck")
@KUBECONFIG_OPTION
@CONTEXT_OPTION
@click.option(
    "--node/--no-node",
    "node",
    default=True,
    show_default=True,
    help="Check this machine as a node (kernel, cgroups, bpffs, capabilities, CNI).",
)
@click.option(
    "--cluster/--no-cluster",
    "cluster",
    default=None,
    help="Check the cluster (default: when a kubeconfig is given or $KUBECONFIG is set).",
)
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
def precheck(
    kubeconfig: Path | None, context: str | None, node: bool, cluster: bool | None, output: str
) -> None:
    """Check whether this node and cluster can run weft (like istioctl x precheck)."""
    checks: list[Check] = []
    if node:
        checks.extend(node_checks())
    if cluster is None:
        cluster = kubeconfig is not None or bool(os.environ.get("KUBECONFIG"))
    if cluster:
        try:
            kube = KubeApi.from_kubeconfig(kubeconfig, context)
            try:
                checks.extend(cluster_checks(kube))
            finally:
                kube.close()
        except KubeError as err:
            checks.append(Check("cluster", Verdict.FAIL, str(err)))
    if output == "json":
        rows = [dict(asdict(c), verdict=c.verdict.value) for c in checks]
        click.echo(json.dumps(rows, indent=2))
    else:
        width = max((len(c.name) for c in checks), default=0)
        for c in checks:
            click.echo(f"{c.verdict.value:<4}  {c.name:<{width}}  {c.why}")
    raise SystemExit(exit_code(checks))
