"""Where the kubelet puts a pod's cgroup (node_agent.kubelet): a table of every layout, taken
from the kubelet's own naming (pkg/kubelet/cm: GetPodContainerName, CgroupName.ToSystemd),
the reverse parse of folder names, and `--pods-cgroup auto`'s search."""

from __future__ import annotations

from pathlib import Path

import pytest

from node_agent import kubelet, pods
from node_agent.kubelet import Driver, KubeletLayoutError

UID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"
U_ = "0f1e2d3c_4b5a_6978_8796_a5b4c3d2e1f0"
STATIC_UID = "8f5e0c1bd1b4e5d5c1c2a3b4c5d6e7f8"  # a static pod's uid: its config hash

# (pods root, path of the pod's cgroup below it, driver, qos): one row per kubelet layout.
LAYOUTS = [
    ("kubepods", f"pod{UID}", Driver.CGROUPFS, "guaranteed"),
    ("kubepods", f"burstable/pod{UID}", Driver.CGROUPFS, "burstable"),
    ("kubepods", f"besteffort/pod{UID}", Driver.CGROUPFS, "besteffort"),
    ("kubepods.slice", f"kubepods-pod{U_}.slice", Driver.SYSTEMD, "guaranteed"),
    (
        "kubepods.slice",
        f"kubepods-burstable.slice/kubepods-burstable-pod{U_}.slice",
        Driver.SYSTEMD,
        "burstable",
    ),
    (
        "kubepods.slice",
        f"kubepods-besteffort.slice/kubepods-besteffort-pod{U_}.slice",
        Driver.SYSTEMD,
        "besteffort",
    ),
    # kind: --cgroup-root=/kubelet with the systemd driver
    (
        "kubelet.slice/kubelet-kubepods.slice",
        f"kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{U_}.slice",
        Driver.SYSTEMD,
        "besteffort",
    ),
    ("kubelet/kubepods", f"burstable/pod{UID}", Driver.CGROUPFS, "burstable"),
    ("weft-lab/node-1/pods", f"pod-{UID}", Driver.LAB, ""),
]


@pytest.mark.parametrize(("root", "relative", "driver", "qos"), LAYOUTS)
def test_every_kubelet_layout_is_a_candidate(
    root: str, relative: str, driver: Driver, qos: str
) -> None:
    base = Path("/sys/fs/cgroup") / root
    found = [c for c in kubelet.candidates(base, UID) if c.path == base / relative]
    assert found == [kubelet.PodCgroup(base / relative, driver, qos)]


@pytest.mark.parametrize(("root", "relative", "driver", "qos"), LAYOUTS)
def test_the_pods_cgroup_is_found_on_disk_in_every_layout(
    tmp_path: Path, root: str, relative: str, driver: Driver, qos: str
) -> None:
    (tmp_path / root / relative / "cri-containerd-abc.scope").mkdir(parents=True)
    assert pods.pod_cgroup(tmp_path / root, UID) == tmp_path / root / relative
    assert pods.pod_cgroups(tmp_path / root) == {UID: tmp_path / root / relative}


@pytest.mark.parametrize(("root", "relative", "driver", "qos"), LAYOUTS)
def test_a_pod_folders_name_gives_back_its_uid(
    root: str, relative: str, driver: Driver, qos: str
) -> None:
    assert kubelet.pod_uid(Path(relative).name) == UID


def test_systemd_names_never_keep_a_dash_of_the_uid() -> None:
    for c in kubelet.candidates(Path("/x/kubepods.slice"), UID):
        if c.driver is Driver.SYSTEMD:
            assert UID not in str(c.path)
            assert U_ in c.path.name


def test_a_static_pods_hash_uid_is_found_in_both_drivers() -> None:
    names = [c.path.name for c in kubelet.candidates(Path("/x/kubepods.slice"), STATIC_UID)]
    assert f"kubepods-burstable-pod{STATIC_UID}.slice" in names
    assert kubelet.pod_uid(f"kubepods-pod{STATIC_UID}.slice") == STATIC_UID
    assert kubelet.pod_uid(f"pod{STATIC_UID}") == STATIC_UID


@pytest.mark.parametrize(
    "name",
    [
        "burstable",
        "besteffort",
        "kubepods-burstable.slice",
        "kubepods-besteffort.slice",
        "cri-containerd-0123456789abcdef.scope",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "cgroup.procs",
        "pod",
        "pod-",
        "podxyz",
        "kubepods-pod.slice",
        "kubepods-podzz_zz.slice",
        f"pod-{UID}/x",
        f"crio-pod{UID}.scope",
    ],
)
def test_other_folders_are_not_pods(name: str) -> None:
    assert kubelet.pod_uid(name) is None


def test_parent_folders_of_each_driver() -> None:
    assert kubelet.parent_folders(Path("/c/kubepods")) == (
        Path("/c/kubepods"),
        Path("/c/kubepods/burstable"),
        Path("/c/kubepods/besteffort"),
    )
    assert kubelet.parent_folders(Path("/c/kubepods.slice")) == (
        Path("/c/kubepods.slice"),
        Path("/c/kubepods.slice/kubepods-burstable.slice"),
        Path("/c/kubepods.slice/kubepods-besteffort.slice"),
    )


def test_pod_cgroups_skips_qos_folders_containers_and_files(tmp_path: Path) -> None:
    root = tmp_path / "kubepods.slice"
    other = "11111111-2222-3333-4444-555555555555"
    (root / f"kubepods-pod{U_}.slice" / "cri-containerd-1.scope").mkdir(parents=True)
    (
        root
        / "kubepods-besteffort.slice"
        / f"kubepods-besteffort-pod{other.replace('-', '_')}.slice"
    ).mkdir(parents=True)
    (root / "kubepods-burstable.slice").mkdir()
    (root / "kubepods-pod99999999_8888_7777_6666_555555555555.slice").write_text("")
    assert set(pods.pod_cgroups(root)) == {UID, other}


def test_pod_cgroups_of_a_missing_root_is_empty(tmp_path: Path) -> None:
    assert pods.pod_cgroups(tmp_path / "absent") == {}


# --- --pods-cgroup auto ------------------------------------------------------------------

HYBRID = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""
UNIFIED = "29 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n"
IN_POD = (
    "700 690 0:26 / /sys/fs/cgroup ro master:4 - cgroup2 cgroup ro\n"
    "701 690 0:26 / /host/sys\\040fs/cgroup rw master:4 - cgroup2 cgroup2 rw\n"
)


def test_cgroup2_mounts_of_a_hybrid_host() -> None:
    assert kubelet.cgroup2_mounts(HYBRID) == (Path("/sys/fs/cgroup/unified"),)


def test_cgroup2_mounts_of_a_unified_host() -> None:
    assert kubelet.cgroup2_mounts(UNIFIED) == (Path("/sys/fs/cgroup"),)


def test_cgroup2_mounts_in_a_pod_with_the_hosts_tree_mounted_and_escapes_read() -> None:
    assert kubelet.cgroup2_mounts(IN_POD) == (Path("/sys/fs/cgroup"), Path("/host/sys fs/cgroup"))


def test_cgroup2_mounts_ignores_garbage_lines() -> None:
    assert kubelet.cgroup2_mounts("garbage\n\n1 2 3 - cgroup2\n - cgroup2 x y\n") == ()


@pytest.mark.parametrize(
    ("present", "expected"),
    [
        (
            ["/sys/fs/cgroup/kubepods.slice", "/sys/fs/cgroup/kubepods"],
            "/sys/fs/cgroup/kubepods.slice",
        ),
        (["/sys/fs/cgroup/kubepods"], "/sys/fs/cgroup/kubepods"),
        (
            ["/sys/fs/cgroup/kubelet.slice/kubelet-kubepods.slice"],
            "/sys/fs/cgroup/kubelet.slice/kubelet-kubepods.slice",
        ),
        (["/host/cg/kubepods.slice"], "/host/cg/kubepods.slice"),
    ],
)
def test_auto_finds_the_kubepods_root(present: list[str], expected: str) -> None:
    mounts = [Path("/sys/fs/cgroup"), Path("/host/cg")]
    assert kubelet.kubepods_root(mounts, lambda p: str(p) in present) == Path(expected)


def test_auto_without_a_kubepods_root_says_where_it_looked() -> None:
    with pytest.raises(KubeletLayoutError) as err:
        kubelet.kubepods_root([Path("/sys/fs/cgroup/unified")], lambda p: False)
    assert "/sys/fs/cgroup/unified/kubepods.slice" in str(err.value)
    assert "/sys/fs/cgroup/unified/kubepods," in str(err.value)
    assert "--pods-cgroup PATH" in str(err.value)


def test_auto_without_cgroup_v2_says_so() -> None:
    with pytest.raises(KubeletLayoutError, match="no cgroup v2"):
        kubelet.kubepods_root([], lambda p: True)


@pytest.mark.parametrize(
    ("root", "expected"),
    [
        ("/sys/fs/cgroup/kubepods.slice", True),
        ("/sys/fs/cgroup/kubepods", True),
        ("/sys/fs/cgroup/kubelet.slice/kubelet-kubepods.slice", True),
        ("/sys/fs/cgroup/unified/weft-ab12/node-1/pods", False),
        ("/sys/fs/cgroup/kubepods.slice/kubepods-burstable.slice", False),
    ],
)
def test_kubelet_roots_are_told_from_the_labs(root: str, expected: bool) -> None:
    assert kubelet.is_kubelet_root(Path(root)) is expected
