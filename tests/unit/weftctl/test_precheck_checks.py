"""`weftctl precheck`'s judgements, by tables of facts; CNI configs as the plugins write them."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from node_agent.programs import CGROUP_PROGRAMS
from weftctl.precheck import cni_files, node_checks
from weftctl.prechecks import (
    CAP_BPF,
    CAP_NET_ADMIN,
    CAP_SYS_ADMIN,
    MIN_KERNEL,
    CniFile,
    Mount,
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
    kernel_version,
    parse_mounts,
)

OK, WARN, FAIL = Verdict.OK, Verdict.WARN, Verdict.FAIL
ROOT = Path(__file__).resolve().parents[3]


def test_min_kernel_covers_every_kernel_feature_the_node_agent_names() -> None:
    """The agent's programs and pods.py say which Linux each needs; precheck must ask for the
    newest of them, so a kernel it passes can load them all."""
    texts = [p.needs for p in CGROUP_PROGRAMS]
    texts += [(ROOT / "node_agent" / f).read_text() for f in ("pods.py", "programs.py")]
    needed = {(int(a), int(b)) for t in texts for a, b in re.findall(r"Linux (\d+)\.(\d+)\+", t)}
    assert needed, "the node agent stopped naming kernel versions"
    assert max(needed) <= MIN_KERNEL
    assert MIN_KERNEL in needed  # not asking for more than something needs


@pytest.mark.parametrize(
    ("release", "verdict"),
    [
        ("6.1.0-18-amd64", OK),
        ("5.14.0-362.el9.x86_64", OK),
        ("5.15.0-1051-azure", OK),
        ("5.10.0-28-amd64", FAIL),  # Debian 11
        ("4.19.0-26-amd64", FAIL),
        ("6.18.44-fc-v657", OK),
        ("weird", WARN),
    ],
)
def test_kernel(release: str, verdict: Verdict) -> None:
    assert check_kernel(release).verdict is verdict


def test_kernel_version_parses_major_minor() -> None:
    assert kernel_version("5.4.0") == (5, 4)
    assert kernel_version("10.1-rc1") == (10, 1)
    assert kernel_version("x5.4") is None


UNIFIED = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid,nodev,noexec,relatime 0 0"
HYBRID = (
    "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n"
    "cgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0\n"
    "cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0"
)
LEGACY = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\ncgroup /sys/fs/cgroup/memory cgroup rw,memory 0 0"
BPF = "bpf /sys/fs/bpf bpf rw,nosuid,nodev,noexec,relatime,mode=700 0 0"


@pytest.mark.parametrize(
    ("mounts", "verdict", "says"),
    [
        (UNIFIED, OK, "mounted at /sys/fs/cgroup"),
        (HYBRID, WARN, "hybrid"),
        (LEGACY, FAIL, "no cgroup v2"),
        ("", FAIL, "no cgroup v2"),
    ],
)
def test_cgroup2(mounts: str, verdict: Verdict, says: str) -> None:
    check = check_cgroup2(parse_mounts(mounts))
    assert check.verdict is verdict
    assert says in check.why


def test_parse_mounts_unescapes_spaces() -> None:
    assert parse_mounts("a /mnt/with\\040space ext4 rw 0 0") == (
        Mount("a", "/mnt/with space", "ext4"),
    )


@pytest.mark.parametrize(
    ("mounts", "mountable", "verdict"),
    [
        (BPF, None, OK),
        (BPF, False, OK),
        (UNIFIED, True, WARN),  # not mounted, but the kernel has it: mount it
        (UNIFIED, None, WARN),  # not root: not tried
        (UNIFIED, False, FAIL),
        ("bpf /run/other bpf rw 0 0", True, WARN),  # mounted, not where the agent pins
    ],
)
def test_bpffs(mounts: str, mountable: bool | None, verdict: Verdict) -> None:
    assert check_bpffs(parse_mounts(mounts), mountable).verdict is verdict


def test_btf() -> None:
    assert check_btf(True).verdict is OK
    assert check_btf(False).verdict is WARN


def caps(*bits: int) -> int:
    return sum(1 << b for b in bits)


@pytest.mark.parametrize(
    ("cap_eff", "root", "release", "verdict", "says"),
    [
        (caps(CAP_BPF, CAP_NET_ADMIN), True, "6.1.0", OK, "CAP_BPF and CAP_NET_ADMIN"),
        (0x1FFFEFFFFFF, True, "6.1.0", OK, ""),
        (caps(CAP_NET_ADMIN), True, "6.1.0", FAIL, "CAP_BPF not effective even as root"),
        (caps(CAP_BPF), True, "6.1.0", FAIL, "CAP_NET_ADMIN"),
        (0, False, "6.1.0", WARN, "run precheck as root"),
        # before 5.8 there is no CAP_BPF: loading programs takes CAP_SYS_ADMIN
        (caps(CAP_SYS_ADMIN, CAP_NET_ADMIN), True, "5.4.0", OK, "CAP_SYS_ADMIN"),
        (caps(CAP_BPF, CAP_NET_ADMIN), True, "5.4.0", FAIL, "CAP_SYS_ADMIN not effective"),
        (None, True, "6.1.0", WARN, "CapEff"),
    ],
)
def test_capabilities(
    cap_eff: int | None, root: bool, release: str, verdict: Verdict, says: str
) -> None:
    check = check_capabilities(cap_eff, root, release)
    assert check.verdict is verdict
    assert says in check.why


# The configs as each CNI writes them (trimmed to the fields that matter).
K3S_FLANNEL = {
    "name": "cbr0",
    "cniVersion": "1.0.0",
    "plugins": [
        {"type": "flannel", "delegate": {"hairpinMode": True, "forceAddress": True}},
        {"type": "portmap", "capabilities": {"portMappings": True}},
        {"type": "bandwidth", "capabilities": {"bandwidth": True}},
    ],
}
CALICO = {
    "name": "k8s-pod-network",
    "plugins": [
        {"type": "calico", "ipam": {"type": "calico-ipam"}},
        {"type": "bandwidth"},
        {"type": "portmap"},
    ],
}
KINDNET = {
    "name": "kindnet",
    "plugins": [
        {"type": "ptp", "ipMasq": False, "ipam": {"type": "host-local"}},
        {"type": "portmap"},
    ],
}
CILIUM = {"name": "cilium", "cniVersion": "0.3.1", "plugins": [{"type": "cilium-cni"}]}
CILIUM_CHAINED = {
    "name": "generic-veth",
    "plugins": [{"type": "calico"}, {"type": "portmap"}, {"type": "cilium-cni"}],
}
ISTIO_CNI = {"name": "k8s-pod-network", "plugins": [{"type": "istio-cni"}, {"type": "calico"}]}
BRIDGE_CONF = {"name": "mynet", "type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local"}}
OVN = {"name": "ovn-kubernetes", "type": "ovn-k8s-cni-overlay"}


def cni(name: str, doc: object) -> CniFile:
    return CniFile(name, "/etc/cni/net.d", json.dumps(doc))


@pytest.mark.parametrize(
    ("files", "verdict", "says"),
    [
        ([cni("10-flannel.conflist", K3S_FLANNEL)], OK, "Flannel"),
        ([cni("10-calico.conflist", CALICO)], OK, "Calico"),
        ([cni("10-kindnet.conflist", KINDNET)], OK, "ptp"),
        ([cni("10-bridge.conf", BRIDGE_CONF)], OK, "bridge"),
        ([cni("05-cilium.conflist", CILIUM)], WARN, "socket load balancing"),
        ([cni("05-cilium.conflist", CILIUM_CHAINED)], OK, "chained after calico"),
        ([cni("10-calico.conflist", ISTIO_CNI)], WARN, "istio-cni"),
        ([cni("10-ovn.conf", OVN)], WARN, "'ovn-k8s-cni-overlay' is not one weft was checked with"),
        ([], WARN, "no CNI config"),
        ([CniFile("10-x.conflist", "/etc/cni/net.d", "{not json")], WARN, "not JSON"),
        ([cni("10-meta.conflist", {"plugins": [{"type": "portmap"}]})], WARN, "no main plugin"),
        # the runtime reads the first file by name: Cilium's 05- wins over a leftover flannel
        (
            [cni("10-flannel.conflist", K3S_FLANNEL), cni("05-cilium.conflist", CILIUM)],
            WARN,
            "05-cilium",
        ),
    ],
)
def test_cni(files: list[CniFile], verdict: Verdict, says: str) -> None:
    check = check_cni(files)
    assert check.verdict is verdict, check
    assert says in check.why


def test_cni_files_reads_the_first_folder_with_configs(tmp_path: Path) -> None:
    etc = tmp_path / "etc/cni/net.d"
    k3s = tmp_path / "var/lib/rancher/k3s/agent/etc/cni/net.d"
    k3s.mkdir(parents=True)
    (k3s / "10-flannel.conflist").write_text(json.dumps(K3S_FLANNEL))
    (k3s / "README").write_text("not a config")
    assert [f.name for f in cni_files((etc, k3s))] == ["10-flannel.conflist"]
    assert check_cni(cni_files((etc, k3s))).verdict is OK
    etc.mkdir(parents=True)
    (etc / "10-calico.conflist").write_text(json.dumps(CALICO))
    found = cni_files((etc, k3s))
    assert [(f.folder, f.name) for f in found] == [(str(etc), "10-calico.conflist")]


@pytest.mark.parametrize(
    ("version", "verdict"),
    [
        ({"major": "1", "minor": "31", "gitVersion": "v1.31.2+k3s1"}, OK),
        ({"major": "1", "minor": "29+", "gitVersion": "v1.29.4-eks-1"}, OK),
        ({"major": "1", "minor": "24", "gitVersion": "v1.24.17"}, FAIL),
        ({"major": "", "minor": "", "gitVersion": "v1.30.0"}, OK),
        ({"gitVersion": "v1.22.0"}, FAIL),
        ({}, WARN),
    ],
)
def test_kubernetes_version(version: dict[str, str], verdict: Verdict) -> None:
    assert check_kubernetes(version).verdict is verdict


def test_gateway_api() -> None:
    assert (
        check_gateway_api(frozenset({"GatewayClass", "Gateway", "HTTPRoute", "GRPCRoute"})).verdict
        is OK
    )
    partial = check_gateway_api(frozenset({"GatewayClass", "Gateway"}))
    assert partial.verdict is WARN and "HTTPRoute" in partial.why
    assert check_gateway_api(None).verdict is WARN


def test_existing_weft() -> None:
    assert check_existing_weft(False, None, 0).verdict is OK
    upgrade = check_existing_weft(True, "ghcr.io/weft-mesh/weft:0.1.0", 6)
    assert upgrade.verdict is WARN and "upgrades it in place" in upgrade.why
    leftover = check_existing_weft(False, None, 6)
    assert leftover.verdict is WARN and "weft CRDs: 6" in leftover.why


def test_istio() -> None:
    assert check_istio(False, frozenset(), False).verdict is OK
    assert check_istio(True, frozenset({"security.istio.io"}), False).verdict is WARN
    assert check_istio(True, frozenset(), True).verdict is FAIL


def test_exit_code_is_one_on_any_fail() -> None:
    assert exit_code([check_btf(False), check_kernel("6.1")]) == 0
    assert exit_code([check_btf(True), check_kernel("4.19")]) == 1


def test_node_checks_read_a_node_tree(tmp_path: Path) -> None:
    """The probing half, on a prepared tree shaped like a k3s node's /proc, /sys and CNI folder."""
    (tmp_path / "proc/self").mkdir(parents=True)
    (tmp_path / "proc/self/mounts").write_text(f"{UNIFIED}\n{BPF}\n")
    (tmp_path / "proc/self/status").write_text(
        f"Name:\tweftctl\nCapEff:\t{caps(CAP_BPF, CAP_NET_ADMIN, CAP_SYS_ADMIN):016x}\n"
    )
    (tmp_path / "sys/kernel/btf").mkdir(parents=True)
    (tmp_path / "sys/kernel/btf/vmlinux").write_bytes(b"")
    k3s = tmp_path / "var/lib/rancher/k3s/agent/etc/cni/net.d"
    k3s.mkdir(parents=True)
    (k3s / "10-flannel.conflist").write_text(json.dumps(K3S_FLANNEL))
    checks = {c.name: c for c in node_checks(tmp_path)}
    assert [checks[n].verdict for n in ("cgroup-v2", "btf", "bpffs", "cni")] == [OK] * 4
    assert "10-flannel.conflist: Flannel" in checks["cni"].why
    assert checks["capabilities"].verdict is OK  # read from the tree's status, not ours
    (tmp_path / "proc/self/status").write_text("Name:\tweftctl\n")
    assert {c.name: c for c in node_checks(tmp_path)}["capabilities"].verdict is WARN
