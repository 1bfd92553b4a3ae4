"""Finding a pod's cgroup and one of its processes in a cgroup tree (here, plain folders)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from node_agent import pods

UID = "0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0"


def procs(cgroup: Path, *pids: int, text: str | None = None) -> Path:
    """A cgroup folder with a cgroup.procs file listing `pids` (one a line, like the kernel)."""
    cgroup.mkdir(parents=True, exist_ok=True)
    (cgroup / "cgroup.procs").write_text(
        text if text is not None else "".join(f"{pid}\n" for pid in pids)
    )
    return cgroup


# --- pod_cgroup ---------------------------------------------------------------------------


def test_lab_pod_cgroup_is_pod_dash_uid(tmp_path: Path) -> None:
    (tmp_path / f"pod-{UID}").mkdir()
    assert pods.pod_cgroup(tmp_path, UID) == tmp_path / f"pod-{UID}"


def test_kubepods_cgroup_is_pod_uid_with_underscores(tmp_path: Path) -> None:
    folder = tmp_path / f"pod{UID.replace('-', '_')}"
    folder.mkdir()
    assert pods.pod_cgroup(tmp_path, UID) == folder


def test_kubepods_cgroup_with_the_uid_as_is_is_found(tmp_path: Path) -> None:
    (tmp_path / f"pod{UID}").mkdir()
    assert pods.pod_cgroup(tmp_path, UID) == tmp_path / f"pod{UID}"


def test_other_pods_cgroups_are_not_this_pods(tmp_path: Path) -> None:
    (tmp_path / "pod-11111111-2222-3333-4444-555555555555").mkdir()
    (tmp_path / f"pod-{UID}-old").mkdir()
    assert pods.pod_cgroup(tmp_path, UID) is None


def test_no_cgroup_yet_is_none(tmp_path: Path) -> None:
    assert pods.pod_cgroup(tmp_path, UID) is None


def test_a_plain_file_with_the_pods_name_is_not_its_cgroup(tmp_path: Path) -> None:
    (tmp_path / f"pod-{UID}").write_text("")
    assert pods.pod_cgroup(tmp_path, UID) is None


def test_a_missing_pods_subtree_is_none(tmp_path: Path) -> None:
    assert pods.pod_cgroup(tmp_path / "absent", UID) is None


# --- first_pid ----------------------------------------------------------------------------


def test_first_pid_of_a_leaf_cgroup(tmp_path: Path) -> None:
    assert pods.first_pid(procs(tmp_path / "pod", 4242, 4243)) == 4242


def test_first_pid_is_found_in_nested_container_cgroups(tmp_path: Path) -> None:
    pod = procs(tmp_path / "pod")  # cgroup v2: an inner node holds no processes
    procs(pod / "sandbox")
    procs(pod / "app" / "init")
    procs(pod / "app" / "main", 777)
    assert pods.first_pid(pod) == 777


def test_the_pods_own_processes_come_before_its_children(tmp_path: Path) -> None:
    pod = procs(tmp_path / "pod", 10)
    procs(pod / "app", 20)
    assert pods.first_pid(pod) == 10


def test_first_pid_is_one_of_the_pods_processes(tmp_path: Path) -> None:
    pod = procs(tmp_path / "pod")
    procs(pod / "a", 101, 102)
    procs(pod / "b", 201)
    assert pods.first_pid(pod) in {101, 201}


def test_folders_without_a_procs_file_are_skipped(tmp_path: Path) -> None:
    pod = tmp_path / "pod"
    (pod / "a" / "b").mkdir(parents=True)
    procs(pod / "a" / "b" / "c", 55)
    assert pods.first_pid(pod) == 55


@pytest.mark.parametrize("text", ["", "\n", "  \n\n"])
def test_no_pid_when_every_procs_file_is_empty(tmp_path: Path, text: str) -> None:
    pod = procs(tmp_path / "pod", text=text)
    procs(pod / "app", text=text)
    procs(pod / "app" / "main", text=text)
    assert pods.first_pid(pod) is None


def test_no_pid_when_there_is_no_procs_file(tmp_path: Path) -> None:
    (tmp_path / "pod" / "app").mkdir(parents=True)
    assert pods.first_pid(tmp_path / "pod") is None


def test_no_pid_when_the_cgroup_is_gone(tmp_path: Path) -> None:
    assert pods.first_pid(tmp_path / "gone") is None


# --- netns_cookie (the paths that need no namespace) --------------------------------------


@pytest.fixture
def entered(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Namespaces the code would enter; entering one gives cookie 0xC00C1E."""
    seen: list[str] = []

    def fake_run_in_netns(path: str, fn: Callable[[], int]) -> int:
        seen.append(str(path))
        return 0xC00C1E

    monkeypatch.setattr(pods, "run_in_netns", fake_run_in_netns)
    return seen


def test_cookie_is_none_while_the_pod_has_no_cgroup(tmp_path: Path, entered: list[str]) -> None:
    assert pods.netns_cookie(tmp_path, UID) is None
    assert entered == []


def test_cookie_is_none_while_the_pod_has_no_process(tmp_path: Path, entered: list[str]) -> None:
    procs(tmp_path / f"pod-{UID}" / "app")
    assert pods.netns_cookie(tmp_path, UID) is None
    assert entered == []


def test_cookie_is_read_in_the_netns_of_the_pods_first_process(
    tmp_path: Path, entered: list[str]
) -> None:
    procs(tmp_path / f"pod-{UID}" / "app", 4242)
    assert pods.netns_cookie(tmp_path, UID) == 0xC00C1E
    assert entered == ["/proc/4242/ns/net"]


@pytest.mark.parametrize("error", [FileNotFoundError, ProcessLookupError])
def test_cookie_is_none_when_the_process_just_exited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: type[OSError]
) -> None:
    def exited(path: str, fn: Callable[[], int]) -> int:
        raise error(f"no {path}")

    monkeypatch.setattr(pods, "run_in_netns", exited)
    procs(tmp_path / f"pod-{UID}", 4242)
    assert pods.netns_cookie(tmp_path, UID) is None
