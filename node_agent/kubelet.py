"""Where the kubelet puts a pod's cgroup, for either cgroup driver and every QoS class. Pure.

The kubelet names a pod's cgroup `pod<uid>` under its QoS parent (pkg/kubelet/cm
pod_container_manager_linux.go GetPodContainerName): Guaranteed pods sit directly under the
kubepods root, Burstable and BestEffort under `burstable` and `besteffort`
(qos_container_manager_linux.go). The cgroupfs driver joins those names as folders
(`kubepods/burstable/pod<uid>`); the systemd driver turns the same name into nested slices,
with every dash of a component escaped to `_` (cgroup_manager_linux.go ToSystemd +
escapeSystemdCgroupName): `kubepods.slice/kubepods-burstable.slice/
kubepods-burstable-pod<uid_with_underscores>.slice`. A `--cgroup-root` (kind's `/kubelet`)
only prefixes the root: `kubelet.slice/kubelet-kubepods.slice/...`, which is why the slice
prefix is taken from the root's own name. The lab names pods `pod-<uid>` under its pods
folder. Containers live in sub-cgroups of the pod's (`cri-containerd-<id>.scope`, `<id>`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

QOS_FOLDERS = ("burstable", "besteffort")  # Guaranteed pods have no QoS folder of their own

# Where `--pods-cgroup auto` looks, relative to a cgroup v2 mount, in this order: systemd
# driver (kubeadm's default since 1.22, k3s's under systemd 244+), cgroupfs driver, and the
# same two under kind's --cgroup-root=/kubelet.
KUBEPODS_ROOTS = (
    "kubepods.slice",
    "kubepods",
    "kubelet.slice/kubelet-kubepods.slice",
    "kubelet/kubepods",
)

# A pod uid as the kubelet writes it: a UUID, or a static pod's 32 hex digits (config hash).
_UID = r"[0-9a-fA-F][0-9a-fA-F_-]{7,63}"
_LAB_OR_CGROUPFS = re.compile(rf"^pod-?(?P<uid>{_UID})$")
_SYSTEMD = re.compile(
    rf"^(?P<prefix>[A-Za-z0-9_.:]+(?:-[A-Za-z0-9_.:]+)*)-pod(?P<uid>{_UID})\.slice$"
)


class Driver(Enum):
    CGROUPFS = "cgroupfs"
    SYSTEMD = "systemd"
    LAB = "lab"


class KubeletLayoutError(RuntimeError):
    """No pods root was found where the kubelet would have made it; the message says where."""


@dataclass(frozen=True)
class PodCgroup:
    """One place a pod's cgroup may be, and how it got that name."""

    path: Path
    driver: Driver
    qos: str  # "guaranteed", "burstable", "besteffort"; "" in the lab


def escape(uid: str) -> str:
    """The uid as the systemd driver writes it into a slice name."""
    return uid.replace("-", "_")


def _slice_prefix(root: Path) -> str | None:
    """`kubepods` for `.../kubepods.slice`, `kubelet-kubepods` for kind's root; None for a
    folder that is not a slice (cgroupfs driver, lab)."""
    return root.name.removesuffix(".slice") if root.name.endswith(".slice") else None


def candidates(root: Path, uid: str) -> tuple[PodCgroup, ...]:
    """Every path where pod `uid`'s cgroup may be under the pods root `root`."""
    out = [PodCgroup(root / f"pod-{uid}", Driver.LAB, "")]
    prefix = _slice_prefix(root)
    if prefix is None:
        out.append(PodCgroup(root / f"pod{uid}", Driver.CGROUPFS, "guaranteed"))
        out += [PodCgroup(root / q / f"pod{uid}", Driver.CGROUPFS, q) for q in QOS_FOLDERS]
        # Seen in the wild with hand-rolled layouts; cgroupfs keeps the dashes.
        out.append(PodCgroup(root / f"pod{escape(uid)}", Driver.CGROUPFS, "guaranteed"))
    else:
        u = escape(uid)
        out.append(PodCgroup(root / f"{prefix}-pod{u}.slice", Driver.SYSTEMD, "guaranteed"))
        out += [
            PodCgroup(
                root / f"{prefix}-{q}.slice" / f"{prefix}-{q}-pod{u}.slice", Driver.SYSTEMD, q
            )
            for q in QOS_FOLDERS
        ]
    return tuple(out)


def is_kubelet_root(root: Path) -> bool:
    """Is `root` a kubelet's pods root (as opposed to the lab's pods folder)?"""
    return root.name in ("kubepods", "kubepods.slice") or root.name.endswith("-kubepods.slice")


def parent_folders(root: Path) -> tuple[Path, ...]:
    """The folders that hold pod cgroups directly: the root and its QoS folders."""
    prefix = _slice_prefix(root)
    if prefix is None:
        return (root, *(root / q for q in QOS_FOLDERS))
    return (root, *(root / f"{prefix}-{q}.slice" for q in QOS_FOLDERS))


def pod_uid(name: str) -> str | None:
    """The pod uid a pod cgroup's folder name carries, or None for any other folder (a QoS
    folder, a container's, a stray one)."""
    if name in QOS_FOLDERS:
        return None
    m = _SYSTEMD.match(name)
    if m is not None:
        return m.group("uid").replace("_", "-")
    m = _LAB_OR_CGROUPFS.match(name)
    if m is not None:
        return m.group("uid")
    return None


def cgroup2_mounts(mountinfo: str) -> tuple[Path, ...]:
    """Mount points of cgroup v2 in a /proc/self/mountinfo text (the filesystem type follows
    the ` - ` separator; the mount point is field 5, with octal escapes for spaces)."""
    out = []
    for line in mountinfo.splitlines():
        head, sep, tail = line.partition(" - ")
        fields = head.split()
        if not sep or len(fields) < 5 or not tail.split() or tail.split()[0] != "cgroup2":
            continue
        out.append(Path(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[4])))
    return tuple(out)


def kubepods_root(mounts: Iterable[Path], is_dir: Callable[[Path], bool] = Path.is_dir) -> Path:
    """The kubelet's pods root under the first cgroup v2 mount that has one (`is_dir` asks
    the file system unless a test says otherwise)."""
    tried = []
    for mount in mounts:
        for relative in KUBEPODS_ROOTS:
            path = mount / relative
            if is_dir(path):
                return path
            tried.append(str(path))
    if not tried:
        raise KubeletLayoutError(
            "--pods-cgroup auto: no cgroup v2 hierarchy is mounted (see /proc/self/mountinfo); "
            "weft's capture programs need cgroup v2"
        )
    raise KubeletLayoutError(
        "--pods-cgroup auto: no kubelet pods cgroup at " + ", ".join(tried) + "; is the kubelet "
        "running on this node with --cgroups-per-qos, and the host's cgroup2 mount visible to the "
        "agent? Otherwise pass the folder with --pods-cgroup PATH"
    )
