"""`weftctl precheck`'s judgements: can this node and this cluster run weft? Pure functions
from facts (read by weftctl.precheck) to one verdict each, with the reason and what to do.

Node checks follow what the node agent needs (node_agent/programs.py, node_agent/pods.py);
cluster checks what `istioctl x precheck` looks at: the API server's version, Gateway API,
an install already there, another mesh.
"""

from __future__ import annotations

import enum
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

# The newest kernel feature weft relies on: SO_NETNS_COOKIE (Linux 5.14), which the agent uses
# to learn a pod's netns cookie (node_agent/pods.py); the cgroup programs need 5.8 at most
# (getpeername4; node_agent/programs.py CGROUP_PROGRAMS). A test keeps this in step.
MIN_KERNEL = (5, 14)
MIN_KUBERNETES = (1, 25)  # CRD validation rules (CEL) on by default; EndpointSlice v1
CAP_NET_ADMIN, CAP_SYS_ADMIN, CAP_BPF = 12, 21, 39
KERNEL_WITH_CAP_BPF = (5, 8)  # before it, loading programs takes CAP_SYS_ADMIN
CGROUP_ROOT = "/sys/fs/cgroup"
BPFFS = "/sys/fs/bpf"
MAX_CNI_FILE_BYTES = 1 << 20


class Verdict(enum.Enum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"


@dataclass(frozen=True)
class Check:
    name: str
    verdict: Verdict
    why: str


@dataclass(frozen=True)
class Mount:
    source: str
    target: str
    fstype: str


@dataclass(frozen=True)
class CniFile:
    name: str  # file name in the CNI config folder
    folder: str
    text: str


def parse_mounts(text: str) -> tuple[Mount, ...]:
    """/proc/self/mounts lines (octal escapes for spaces as the kernel writes them)."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) >= 3:
            unescape = lambda s: re.sub(r"\\([0-7]{3})", lambda m: chr(int(m[1], 8)), s)  # noqa: E731
            out.append(Mount(unescape(parts[0]), unescape(parts[1]), parts[2]))
    return tuple(out)


def kernel_version(release: str) -> tuple[int, int] | None:
    """`6.1.0-18-amd64` -> (6, 1); None when it does not start with two numbers."""
    m = re.match(r"^(\d+)\.(\d+)", release)
    return (int(m[1]), int(m[2])) if m else None


def _v(version: tuple[int, int]) -> str:
    return f"{version[0]}.{version[1]}"


def check_kernel(release: str) -> Check:
    version = kernel_version(release)
    if version is None:
        return Check("kernel", Verdict.WARN, f"cannot read the version in {release!r}")
    if version < MIN_KERNEL:
        return Check(
            "kernel",
            Verdict.FAIL,
            f"Linux {release} is older than {_v(MIN_KERNEL)}: the node agent needs "
            "SO_NETNS_COOKIE (5.14) and cgroup getpeername4 (5.8)",
        )
    return Check("kernel", Verdict.OK, f"Linux {release} (>= {_v(MIN_KERNEL)})")


def check_cgroup2(mounts: Sequence[Mount]) -> Check:
    v2 = [m.target for m in mounts if m.fstype == "cgroup2"]
    if CGROUP_ROOT in v2:
        return Check("cgroup-v2", Verdict.OK, f"cgroup v2 is mounted at {CGROUP_ROOT}")
    if v2:
        return Check(
            "cgroup-v2",
            Verdict.WARN,
            f"hybrid cgroups: v2 only at {', '.join(v2)}; the kubelet then runs pods on v1 and "
            "weft attaches to their v2 cgroups, which only the systemd driver creates; boot "
            "with systemd.unified_cgroup_hierarchy=1",
        )
    return Check(
        "cgroup-v2",
        Verdict.FAIL,
        "no cgroup v2 hierarchy is mounted; weft attaches its programs to pods' v2 cgroups "
        "(boot with systemd.unified_cgroup_hierarchy=1)",
    )


def check_btf(present: bool) -> Check:
    if present:
        return Check("btf", Verdict.OK, "/sys/kernel/btf/vmlinux is there")
    return Check(
        "btf",
        Verdict.WARN,
        "no /sys/kernel/btf/vmlinux (CONFIG_DEBUG_INFO_BTF): bpftool prints programs with "
        "truncated names; bcc compiles against the kernel headers instead",
    )


def check_bpffs(mounts: Sequence[Mount], mountable: bool | None) -> Check:
    """`mountable`: a trial mount of bpffs worked (True), failed (False), was not tried (None)."""
    if any(m.target == BPFFS and m.fstype == "bpf" for m in mounts):
        return Check("bpffs", Verdict.OK, f"the BPF filesystem is mounted at {BPFFS}")
    if mountable is False:
        return Check(
            "bpffs",
            Verdict.FAIL,
            "the BPF filesystem is not mounted and cannot be (kernel without CONFIG_BPF_SYSCALL?)",
        )
    return Check(
        "bpffs",
        Verdict.WARN,
        f"the BPF filesystem is not mounted at {BPFFS} on this host; the node agent pins its "
        f"maps there: mount -t bpf bpf {BPFFS} (and in /etc/fstab)",
    )


def check_capabilities(cap_eff: int | None, is_root: bool, release: str) -> Check:
    version = kernel_version(release) or MIN_KERNEL
    bpf_cap = CAP_BPF if version >= KERNEL_WITH_CAP_BPF else CAP_SYS_ADMIN
    bpf_name = "CAP_BPF" if bpf_cap == CAP_BPF else "CAP_SYS_ADMIN"
    if cap_eff is None:
        return Check("capabilities", Verdict.WARN, "cannot read CapEff from /proc/self/status")
    missing = [
        name
        for bit, name in ((bpf_cap, bpf_name), (CAP_NET_ADMIN, "CAP_NET_ADMIN"))
        if not cap_eff >> bit & 1
    ]
    if not missing:
        return Check("capabilities", Verdict.OK, f"{bpf_name} and CAP_NET_ADMIN are effective")
    why = f"{' and '.join(missing)} not effective"
    if not is_root:
        return Check(
            "capabilities",
            Verdict.WARN,
            f"{why} for this user; run precheck as root on the node to check what the node "
            "DaemonSet gets",
        )
    return Check(
        "capabilities",
        Verdict.FAIL,
        f"{why} even as root (a container or a seccomp/LSM policy dropped them); the node "
        "agent loads eBPF programs and changes pods' network settings",
    )


# CNI plugin type -> (name, gives pods a host-side veth weft can see)
_CNI_KNOWN = {
    "flannel": ("Flannel (bridge cni0 and veths; k3s's default)", True),
    "calico": ("Calico (cali* veths)", True),
    "kindnet": ("kindnet (ptp veths)", True),
    "ptp": ("ptp (veths)", True),
    "bridge": ("bridge (veths)", True),
    "cilium-cni": ("Cilium", True),
    "weave-net": ("Weave Net (veths)", True),
}
_CNI_CONFLICTS = {
    "cilium-cni": (
        "Cilium as the main CNI: its socket load balancing rewrites connects in the same "
        "cgroup hooks as weft; run Cilium in chaining mode, or with socketLB off"
    ),
    "istio-cni": "istio-cni is configured: Istio's traffic capture and weft's would both apply",
}
_CNI_META = frozenset({"portmap", "bandwidth", "tuning", "firewall", "sbr", "loopback"})


def _plugin_types(doc: object) -> list[str]:
    if not isinstance(doc, dict):
        return []
    plugins = doc.get("plugins")
    if isinstance(plugins, list):
        types = [p.get("type") for p in plugins if isinstance(p, dict)]
    else:
        types = [doc.get("type")]
    return [t for t in types if isinstance(t, str)]


def check_cni(files: Sequence[CniFile]) -> Check:
    """The kubelet (containerd/CRI-O) uses the first config file by name; so do we."""
    if not files:
        return Check(
            "cni",
            Verdict.WARN,
            "no CNI config in /etc/cni/net.d or k3s's folder: not a node, or no CNI installed yet",
        )
    first = sorted(files, key=lambda f: f.name)[0]
    where = f"{first.folder}/{first.name}"
    try:
        types = _plugin_types(json.loads(first.text))
    except ValueError as err:
        return Check("cni", Verdict.WARN, f"{where}: not JSON ({err})")
    main = [t for t in types if t not in _CNI_META]
    if not main:
        return Check("cni", Verdict.WARN, f"{where}: no main plugin among {types or 'none'}")
    conflict = next((t for t in main if t in _CNI_CONFLICTS), None)
    if conflict == "cilium-cni" and main.index(conflict) > 0:
        return Check(
            "cni",
            Verdict.OK,
            f"{where}: Cilium chained after {main[0]}: pods get the main plugin's veths",
        )
    if conflict is not None:
        return Check("cni", Verdict.WARN, f"{where}: {_CNI_CONFLICTS[conflict]}")
    known = _CNI_KNOWN.get(main[0])
    if known is None:
        return Check(
            "cni",
            Verdict.WARN,
            f"{where}: CNI {main[0]!r} is not one weft was checked with; weft needs each pod "
            "to have a host-side veth (Flannel, Calico, kindnet, k3s's flannel do)",
        )
    return Check("cni", Verdict.OK, f"{where}: {known[0]}")


# --- cluster -----------------------------------------------------------------------------


def kubernetes_version(version: Mapping[str, object]) -> tuple[int, int] | None:
    """From /version: major "1", minor "29+" (some distributions add a +)."""
    try:
        major = int(str(version.get("major", "")).rstrip("+"))
        minor = int(str(version.get("minor", "")).rstrip("+"))
    except ValueError:
        m = re.match(r"^v(\d+)\.(\d+)", str(version.get("gitVersion", "")))
        return (int(m[1]), int(m[2])) if m else None
    return major, minor


def check_kubernetes(version: Mapping[str, object]) -> Check:
    found = kubernetes_version(version)
    shown = version.get("gitVersion") or "unknown"
    if found is None:
        return Check("kubernetes", Verdict.WARN, f"cannot read the API server's version {shown}")
    if found < MIN_KUBERNETES:
        return Check(
            "kubernetes",
            Verdict.FAIL,
            f"Kubernetes {shown} is older than {_v(MIN_KUBERNETES)} (weft's CRDs use validation "
            "rules; its controller reads discovery.k8s.io/v1 EndpointSlices)",
        )
    return Check("kubernetes", Verdict.OK, f"Kubernetes {shown}")


GATEWAY_KINDS = ("GatewayClass", "Gateway", "HTTPRoute")


def check_gateway_api(served_v1: frozenset[str] | None) -> Check:
    """`served_v1`: the kinds gateway.networking.k8s.io/v1 serves; None when it serves none."""
    missing = [k for k in GATEWAY_KINDS if served_v1 is None or k not in served_v1]
    if missing:
        return Check(
            "gateway-api",
            Verdict.WARN,
            f"Gateway API v1 {', '.join(missing)} not served: waypoints and L7 routes need "
            "them; install the standard channel (docs/install.md)",
        )
    return Check("gateway-api", Verdict.OK, "Gateway API v1 is installed")


def check_existing_weft(namespace: bool, controller_image: str | None, crds: int) -> Check:
    if controller_image is not None:
        return Check(
            "weft",
            Verdict.WARN,
            f"weft is already installed (controller image {controller_image}); "
            "weftctl install upgrades it in place",
        )
    if namespace or crds:
        return Check(
            "weft",
            Verdict.WARN,
            f"parts of a weft install are there (namespace weft-system: "
            f"{'yes' if namespace else 'no'}, weft CRDs: {crds}); weftctl install completes it",
        )
    return Check("weft", Verdict.OK, "no weft install yet")


def check_istio(namespace: bool, groups: frozenset[str], ztunnel: bool) -> Check:
    if ztunnel:
        return Check(
            "istio",
            Verdict.FAIL,
            "Istio's ztunnel DaemonSet runs in istio-system: two ambient meshes would both "
            "capture pods' traffic; uninstall Istio ambient first",
        )
    if namespace or groups:
        found = ", ".join(sorted(groups)) or "namespace istio-system"
        return Check(
            "istio",
            Verdict.WARN,
            f"Istio is installed ({found}): keep weft's and Istio's enrolled namespaces apart",
        )
    return Check("istio", Verdict.OK, "no Istio install")


def exit_code(checks: Sequence[Check]) -> int:
    return 1 if any(c.verdict is Verdict.FAIL for c in checks) else 0
