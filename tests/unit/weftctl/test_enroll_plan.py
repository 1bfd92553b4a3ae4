"""The enroll/unenroll plan (which label on which object, which pods it captures or releases)
and the judgement of node agents' status against it."""

from __future__ import annotations

from collections.abc import Mapping

import pytest

from weftctl.enrollplan import (
    EnrollError,
    LabelChange,
    Mode,
    NodeView,
    PodInfo,
    PodPlan,
    Result,
    outcome,
    plan_namespace,
    plan_pod,
    pod_label_for,
    settled,
    with_label,
    ztunnels_behind,
)

LABEL = "weft.dev/dataplane-mode"
AMBIENT = {LABEL: "ambient"}
NONE = {LABEL: "none"}


def pod(
    name: str,
    labels: Mapping[str, str] | None = None,
    ns: str = "shop",
    node: str = "node-1",
    owner: str = "",
    phase: str = "Running",
) -> PodInfo:
    return PodInfo(ns, name, node, f"uid-{name}", phase, dict(labels or {}), owner)


def by_name(plans: tuple[PodPlan, ...]) -> dict[str, tuple[bool, bool]]:
    return {p.pod.name: (p.before, p.after) for p in plans}


# --- label arithmetic ------------------------------------------------------------------------


def test_with_label_sets_replaces_and_removes_only_the_dataplane_label() -> None:
    assert with_label({"app": "a"}, "ambient") == {"app": "a", LABEL: "ambient"}
    assert with_label({"app": "a", LABEL: "none"}, "ambient") == {"app": "a", LABEL: "ambient"}
    assert with_label({"app": "a", LABEL: "none"}, None) == {"app": "a"}
    assert with_label({}, None) == {}


@pytest.mark.parametrize(
    ("mode", "pod_label", "ns_enrolled", "after"),
    [
        # Istio: a pod of an enrolled namespace needs no label to be in, `none` to be out
        (Mode.ENROLL, "none", True, None),
        (Mode.ENROLL, None, False, "ambient"),
        (Mode.ENROLL, "none", False, "ambient"),
        (Mode.UNENROLL, None, True, "none"),
        (Mode.UNENROLL, "ambient", True, "none"),
        (Mode.UNENROLL, "ambient", False, None),
    ],
)
def test_pod_label_for_follows_istio(
    mode: Mode, pod_label: str | None, ns_enrolled: bool, after: str | None
) -> None:
    assert pod_label_for(mode, pod_label, ns_enrolled) == after


# --- namespaces ------------------------------------------------------------------------------


def test_enroll_namespace_labels_it_and_captures_its_pods_but_those_opted_out() -> None:
    pods = [pod("a"), pod("b", node="node-2"), pod("out", NONE), pod("other", ns="else")]
    plan = plan_namespace(Mode.ENROLL, "shop", {"shop": {"team": "x"}, "else": {}}, pods)
    assert plan.label == LabelChange("Namespace", "", "shop", None, "ambient")
    assert by_name(plan.pods) == {"a": (False, True), "b": (False, True), "out": (False, False)}
    assert [p.pod.name for p in plan.changing] == ["a", "b"]
    (out,) = [p for p in plan.pods if p.pod.name == "out"]
    assert "weft.dev/dataplane-mode=none opts it out" in out.note


def test_unenroll_namespace_removes_the_label_and_keeps_pods_labeled_ambient() -> None:
    pods = [pod("a"), pod("kept", AMBIENT)]
    plan = plan_namespace(Mode.UNENROLL, "shop", {"shop": {**AMBIENT, "team": "x"}}, pods)
    assert plan.label == LabelChange("Namespace", "", "shop", "ambient", None)
    assert plan.label.describe() == "namespace shop: label weft.dev/dataplane-mode=ambient removed"
    assert by_name(plan.pods) == {"a": (True, False), "kept": (True, True)}
    assert "keeps it in" in plan.pods[1].note


def test_enrolling_an_enrolled_namespace_changes_nothing() -> None:
    plan = plan_namespace(Mode.ENROLL, "shop", {"shop": AMBIENT}, [pod("a")])
    assert plan.label is None
    assert plan.changing == ()
    assert by_name(plan.pods) == {"a": (True, True)}


def test_a_namespace_labeled_none_is_relabeled_ambient() -> None:
    plan = plan_namespace(Mode.ENROLL, "shop", {"shop": NONE}, [pod("a")])
    assert plan.label == LabelChange("Namespace", "", "shop", "none", "ambient")
    assert (
        plan.label.describe() == "namespace shop: label weft.dev/dataplane-mode=ambient (was none)"
    )


def test_unknown_namespace_names_those_that_exist() -> None:
    with pytest.raises(EnrollError, match=r"namespace 'nope' not found \(namespaces: a, default\)"):
        plan_namespace(Mode.ENROLL, "nope", {"default": {}, "a": {}}, [])


# --- pods ------------------------------------------------------------------------------------


def test_enroll_pod_of_an_unenrolled_namespace_labels_it_ambient() -> None:
    plan = plan_pod(Mode.ENROLL, "shop", "a", {"shop": {}}, [pod("a", {"app": "a"}), pod("b")])
    assert plan.label == LabelChange("Pod", "shop", "a", None, "ambient")
    assert plan.label.describe() == "pod shop/a: label weft.dev/dataplane-mode=ambient"
    assert by_name(plan.pods) == {"a": (False, True)}  # only that pod is in scope


def test_enroll_pod_opted_out_of_an_enrolled_namespace_removes_its_none() -> None:
    plan = plan_pod(Mode.ENROLL, "shop", "a", {"shop": AMBIENT}, [pod("a", NONE)])
    assert plan.label == LabelChange("Pod", "shop", "a", "none", None)
    assert by_name(plan.pods) == {"a": (False, True)}


def test_unenroll_pod_of_an_enrolled_namespace_labels_it_none() -> None:
    plan = plan_pod(Mode.UNENROLL, "shop", "a", {"shop": AMBIENT}, [pod("a")])
    assert plan.label == LabelChange("Pod", "shop", "a", None, "none")
    assert by_name(plan.pods) == {"a": (True, False)}


def test_unenroll_pod_labeled_ambient_of_an_unenrolled_namespace_removes_the_label() -> None:
    plan = plan_pod(Mode.UNENROLL, "shop", "a", {"shop": {}}, [pod("a", AMBIENT)])
    assert plan.label == LabelChange("Pod", "shop", "a", "ambient", None)


def test_pod_already_as_asked_changes_nothing() -> None:
    assert plan_pod(Mode.ENROLL, "shop", "a", {"shop": AMBIENT}, [pod("a")]).label is None
    assert plan_pod(Mode.UNENROLL, "shop", "a", {"shop": {}}, [pod("a")]).label is None
    assert plan_pod(Mode.UNENROLL, "shop", "a", {"shop": AMBIENT}, [pod("a", NONE)]).label is None


def test_unknown_pod_lists_the_namespace_pods() -> None:
    pods = [pod("b"), pod("a"), pod("x", ns="else")]
    with pytest.raises(EnrollError, match=r"pod shop/nope not found \(pods in shop: a, b\)"):
        plan_pod(Mode.ENROLL, "shop", "nope", {"shop": {}, "else": {}}, pods)
    with pytest.raises(EnrollError, match=r"pod else/nope not found \(it has no pods\)"):
        plan_pod(Mode.ENROLL, "else", "nope", {"shop": {}, "else": {}}, [pod("a")])


def test_a_deployment_replica_cannot_be_labeled_alone() -> None:
    replica = pod("web-abc-xyz", owner="Deployment/web")
    with pytest.raises(EnrollError) as err:
        plan_pod(Mode.ENROLL, "shop", "web-abc-xyz", {"shop": {}}, [replica])
    assert "replica of Deployment shop/web" in str(err.value)
    assert "enroll namespace shop" in str(err.value)


# --- what the node agents say ----------------------------------------------------------------


def view(node: str = "node-1", enrolled: tuple[str, ...] = (), **kw: object) -> NodeView:
    found = kw.pop("found", {"uid-a": False})
    return NodeView(node, enrolled=frozenset(enrolled), found=found, **kw)  # type: ignore[arg-type]


def test_node_view_reads_the_agent_status() -> None:
    data = {
        "enrolled": [{"pod": "shop/a", "ip": "10.0.0.1", "netns_cookie": 7}],
        "pods_found": [{"uid": "u1", "host_network": False}, {"uid": "u2", "host_network": True}],
        "pending": ["shop/b"],
    }
    v = NodeView.from_status("node-1", data)
    assert v.enrolled == {"shop/a"} and v.found == {"u1": False, "u2": True}
    assert v.pending == {"shop/b"} and v.error == ""


def plan_for(p: PodInfo, before: bool, after: bool, note: str = "") -> PodPlan:
    return PodPlan(p, before, after, note)


def test_captured_and_released_pods_are_reported_so() -> None:
    a = pod("a")
    assert outcome(plan_for(a, False, True), view(enrolled=("shop/a",))).result is Result.CAPTURED
    assert outcome(plan_for(a, True, True), view(enrolled=("shop/a",))).result is (
        Result.ALREADY_CAPTURED
    )
    assert outcome(plan_for(a, True, False), view()).result is Result.UNCAPTURED
    out = outcome(plan_for(a, False, False, "its own label ... opts it out"), view())
    assert out.result is Result.NOT_CAPTURED and out.ok and "opts it out" in out.reason


@pytest.mark.parametrize(
    ("p", "v", "reason"),
    [
        (
            pod("a"),
            NodeView("node-1", error="ConnectionRefused"),
            "no node agent answers on node-1",
        ),
        (pod("a"), None, "no node agent answers on node-1"),
        (pod("a", phase="Pending"), view(), "the pod is Pending, not running"),
        (pod("a"), view(found={"uid-a": True}), "runs in the host network"),
        (pod("a"), view(found={}), "has not found the pod's processes"),
        (pod("a"), view(pending=frozenset({"shop/a"})), "has not seen its namespace yet"),
        (pod("a"), view(), "not in the capture maps of node-1"),
    ],
)
def test_a_pod_not_captured_says_why(p: PodInfo, v: NodeView | None, reason: str) -> None:
    out = outcome(plan_for(p, False, True), v)
    assert out.result is Result.FAILED and not out.ok
    assert reason in out.reason


def test_a_pod_still_captured_after_unenroll_fails() -> None:
    out = outcome(plan_for(pod("a"), True, False), view(enrolled=("shop/a",)))
    assert out.result is Result.FAILED and "still in the capture maps of node-1" in out.reason


def test_a_pod_left_out_on_an_unreachable_node_is_not_a_failure() -> None:
    out = outcome(plan_for(pod("a"), False, False), NodeView("node-1", error="gone"))
    assert out.ok and out.result is Result.NOT_CAPTURED


def test_settled_once_every_pod_is_where_its_labels_say() -> None:
    pods = [pod("a"), pod("b", node="node-2")]
    plan = plan_namespace(Mode.ENROLL, "shop", {"shop": {}}, pods)
    half = {"node-1": view(enrolled=("shop/a",)), "node-2": view("node-2", found={"uid-b": False})}
    assert not settled(plan, half)
    both = {**half, "node-2": view("node-2", enrolled=("shop/b",))}
    assert settled(plan, both)


def test_ztunnels_behind_the_controller_state_are_named() -> None:
    nodes = {
        "version": 9,
        "nodes": [
            {"node": "node-1", "component": "ztunnel", "connected": True, "acked_version": 9},
            {"node": "node-2", "component": "ztunnel", "connected": True, "acked_version": 8},
            {"node": "node-2", "component": "agent", "connected": True, "acked_version": 3},
            {"node": "node-3", "component": "ztunnel", "connected": False, "acked_version": 1},
        ],
    }
    assert ztunnels_behind(nodes) == ["ztunnel of node-2 (ACKed 8 of 9)"]
    nodes["nodes"][1]["acked_version"] = 9  # type: ignore[index]
    assert ztunnels_behind(nodes) == []
