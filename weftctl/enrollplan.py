"""What `weftctl enroll` / `unenroll` change, and whether the node agents have done it.

Pure: the cluster's namespaces and pods come in as typed values, a plan comes out (which label
to set on which object, which pods that captures or releases), and node agents' status reads
are judged against it. The label rules are Istio ambient's (`controller.meshbuilder.is_enrolled`:
a pod's own label decides when set, else its namespace's), so the CLI and the mesh cannot
disagree about who is in.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from controller.meshbuilder import is_enrolled
from meshcore.meshstate import DATAPLANE_MODE_AMBIENT, DATAPLANE_MODE_LABEL, DATAPLANE_MODE_NONE


class EnrollError(ValueError):
    """A namespace or pod that cannot be enrolled as asked; the message says what exists."""


class Mode(enum.StrEnum):
    ENROLL = "enroll"
    UNENROLL = "unenroll"


@dataclass(frozen=True, slots=True)
class PodInfo:
    """A pod as the lab reports it (`/v1/status`), with what the plan needs."""

    namespace: str
    name: str
    node: str
    uid: str
    phase: str
    labels: Mapping[str, str]
    owner: str = ""  # "Deployment/<name>" for a Deployment's replica

    @property
    def ref(self) -> str:
        return f"{self.namespace}/{self.name}"

    @classmethod
    def from_status(cls, raw: Mapping[str, Any]) -> PodInfo:
        return cls(
            namespace=str(raw["namespace"]),
            name=str(raw["name"]),
            node=str(raw.get("node", "")),
            uid=str(raw.get("uid", "")),
            phase=str(raw.get("phase", "Pending")),
            labels=dict(raw.get("labels") or {}),
            owner=str(raw.get("owner") or ""),
        )


@dataclass(frozen=True, slots=True)
class LabelChange:
    """Set (`after`) or remove (`after` None) the dataplane-mode label of one object."""

    kind: str  # "Namespace" | "Pod"
    namespace: str  # "" for a Namespace
    name: str
    before: str | None
    after: str | None

    @property
    def target(self) -> str:
        if self.kind == "Namespace":
            return f"namespace {self.name}"
        return f"pod {self.namespace}/{self.name}"

    def describe(self) -> str:
        if self.after is None:
            return f"{self.target}: label {DATAPLANE_MODE_LABEL}={self.before} removed"
        was = f" (was {self.before})" if self.before is not None else ""
        return f"{self.target}: label {DATAPLANE_MODE_LABEL}={self.after}{was}"

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "namespace": self.namespace,
            "name": self.name,
            "label": DATAPLANE_MODE_LABEL,
            "before": self.before,
            "after": self.after,
        }


@dataclass(frozen=True, slots=True)
class PodPlan:
    pod: PodInfo
    before: bool  # enrolled by the labels before the change
    after: bool  # ... and after it
    note: str = ""  # why a pod in scope does not change

    @property
    def changes(self) -> bool:
        return self.before != self.after


@dataclass(frozen=True, slots=True)
class EnrollPlan:
    mode: Mode
    label: LabelChange | None  # None: the labels already say so
    pods: tuple[PodPlan, ...]

    @property
    def changing(self) -> tuple[PodPlan, ...]:
        return tuple(p for p in self.pods if p.changes)


def with_label(labels: Mapping[str, str], value: str | None) -> dict[str, str]:
    """`labels` with the dataplane-mode label set to `value`, or removed when None."""
    out = {k: v for k, v in labels.items() if k != DATAPLANE_MODE_LABEL}
    if value is not None:
        out[DATAPLANE_MODE_LABEL] = value
    return out


def _namespace_labels(
    namespaces: Mapping[str, Mapping[str, str]], namespace: str
) -> Mapping[str, str]:
    if namespace not in namespaces:
        raise EnrollError(
            f"namespace {namespace!r} not found (namespaces: {', '.join(sorted(namespaces))})"
        )
    return namespaces[namespace]


def _pod_plans(
    pods: Iterable[PodInfo],
    ns_before: Mapping[str, str],
    ns_after: Mapping[str, str],
    changed: tuple[str, str] | None = None,
    pod_after: Mapping[str, str] | None = None,
) -> tuple[PodPlan, ...]:
    plans = []
    for pod in sorted(pods, key=lambda p: p.ref):
        labels_after = pod_after if changed == (pod.namespace, pod.name) else pod.labels
        assert labels_after is not None
        before = is_enrolled(pod.labels, ns_before)
        after = is_enrolled(labels_after, ns_after)
        note = ""
        own = labels_after.get(DATAPLANE_MODE_LABEL)
        if before == after and own in (DATAPLANE_MODE_NONE, DATAPLANE_MODE_AMBIENT):
            verb = "opts it out" if own == DATAPLANE_MODE_NONE else "keeps it in"
            note = f"its own label {DATAPLANE_MODE_LABEL}={own} {verb}"
        plans.append(PodPlan(pod, before, after, note))
    return tuple(plans)


def plan_namespace(
    mode: Mode,
    namespace: str,
    namespaces: Mapping[str, Mapping[str, str]],
    pods: Iterable[PodInfo],
) -> EnrollPlan:
    """Enroll: label the namespace `ambient`. Unenroll: remove its label (as
    `kubectl label ns NS istio.io/dataplane-mode-`). Pods with a label of their own keep it."""
    labels = _namespace_labels(namespaces, namespace)
    before = labels.get(DATAPLANE_MODE_LABEL)
    after = DATAPLANE_MODE_AMBIENT if mode is Mode.ENROLL else None
    new_labels = with_label(labels, after)
    label = None if before == after else LabelChange("Namespace", "", namespace, before, after)
    in_ns = [p for p in pods if p.namespace == namespace]
    return EnrollPlan(mode, label, _pod_plans(in_ns, labels, new_labels))


def pod_label_for(mode: Mode, pod_label: str | None, namespace_enrolled: bool) -> str | None:
    """The pod's dataplane-mode label after enrolling or unenrolling it, Istio's way: a pod of
    an enrolled namespace needs no label to be in (enroll removes its `none`) and `none` to be
    out; a pod of an unenrolled namespace needs `ambient` to be in and no label to be out."""
    if mode is Mode.ENROLL:
        return None if namespace_enrolled else DATAPLANE_MODE_AMBIENT
    if namespace_enrolled:
        return DATAPLANE_MODE_NONE
    return None if pod_label in (None, DATAPLANE_MODE_AMBIENT) else pod_label


def plan_pod(
    mode: Mode,
    namespace: str,
    name: str,
    namespaces: Mapping[str, Mapping[str, str]],
    pods: Iterable[PodInfo],
) -> EnrollPlan:
    ns_labels = _namespace_labels(namespaces, namespace)
    pods = list(pods)
    pod = next((p for p in pods if p.namespace == namespace and p.name == name), None)
    if pod is None:
        others = sorted(p.name for p in pods if p.namespace == namespace)
        listing = f"pods in {namespace}: {', '.join(others)}" if others else "it has no pods"
        raise EnrollError(f"pod {namespace}/{name} not found ({listing})")
    if pod.owner:
        kind, _, owner = pod.owner.partition("/")
        raise EnrollError(
            f"pod {pod.ref} is a replica of {kind} {namespace}/{owner}: the lab gives a "
            f"{kind}'s pods its template's labels, so one replica cannot be labeled alone; "
            f"enroll namespace {namespace}, or set {DATAPLANE_MODE_LABEL} in the {kind}'s "
            "spec.template.metadata.labels (its pods are relabeled live)"
        )
    ns_enrolled = ns_labels.get(DATAPLANE_MODE_LABEL) == DATAPLANE_MODE_AMBIENT
    before = pod.labels.get(DATAPLANE_MODE_LABEL)
    wanted = is_enrolled(pod.labels, ns_labels) != (mode is Mode.ENROLL)
    after = pod_label_for(mode, before, ns_enrolled) if wanted else before
    new_labels = with_label(pod.labels, after)
    label = None if before == after else LabelChange("Pod", namespace, name, before, after)
    return EnrollPlan(
        mode, label, _pod_plans([pod], ns_labels, ns_labels, (namespace, name), new_labels)
    )


# --- what the node agents say --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeView:
    """One node agent's `/debug/status`, as far as capture goes; `error` when unreachable."""

    node: str
    error: str = ""
    enrolled: frozenset[str] = frozenset()  # "ns/name" in the capture maps
    found: Mapping[str, bool] | None = None  # pod uid -> runs in the host network
    pending: frozenset[str] = frozenset()  # "ns/name" whose namespace it has not seen yet

    @classmethod
    def from_status(cls, node: str, data: Mapping[str, Any]) -> NodeView:
        return cls(
            node=node,
            enrolled=frozenset(str(e.get("pod", "")) for e in data.get("enrolled") or []),
            found={
                str(p.get("uid", "")): bool(p.get("host_network"))
                for p in data.get("pods_found") or []
            },
            pending=frozenset(str(p) for p in data.get("pending") or []),
        )


class Result(enum.StrEnum):
    CAPTURED = "captured"
    UNCAPTURED = "uncaptured"
    ALREADY_CAPTURED = "already captured"
    NOT_CAPTURED = "not captured"  # stays out, as asked or by its own label
    FAILED = "FAILED"  # should have changed and has not (reason says why)


@dataclass(frozen=True, slots=True)
class PodOutcome:
    pod: PodInfo
    result: Result
    reason: str = ""

    @property
    def ok(self) -> bool:
        return self.result is not Result.FAILED

    def to_json(self) -> dict[str, Any]:
        return {
            "pod": self.pod.ref,
            "node": self.pod.node,
            "result": self.result.value,
            "reason": self.reason,
        }


def _why_not(pod: PodInfo, view: NodeView | None, want: bool) -> str:
    """Why a pod is not (or still is) in its node's capture maps, most fundamental first."""
    if view is None or view.error:
        detail = f" ({view.error})" if view and view.error else ""
        return f"no node agent answers on {pod.node}{detail}"
    if want:
        if pod.phase != "Running":
            return f"the pod is {pod.phase}, not running"
        if view.found is not None and view.found.get(pod.uid):
            return "it runs in the host network (capturing it would capture the node)"
        if view.found is not None and pod.uid not in view.found:
            return f"the node agent of {pod.node} has not found the pod's processes"
        if pod.ref in view.pending:
            return f"the node agent of {pod.node} has not seen its namespace yet"
        return f"not in the capture maps of {pod.node}"
    return f"still in the capture maps of {pod.node}"


def outcome(plan: PodPlan, view: NodeView | None) -> PodOutcome:
    """What became of one pod of the plan, given its node agent's status now."""
    pod = plan.pod
    reachable = view is not None and not view.error
    captured = reachable and view is not None and pod.ref in view.enrolled
    if plan.after:
        if captured:
            return PodOutcome(pod, Result.CAPTURED if plan.changes else Result.ALREADY_CAPTURED)
        return PodOutcome(pod, Result.FAILED, _why_not(pod, view, want=True))
    if not reachable and not plan.changes:
        return PodOutcome(pod, Result.NOT_CAPTURED, plan.note or _why_not(pod, view, want=False))
    if reachable and not captured:
        return PodOutcome(
            pod, Result.UNCAPTURED if plan.changes else Result.NOT_CAPTURED, plan.note
        )
    return PodOutcome(pod, Result.FAILED, _why_not(pod, view, want=False))


def outcomes(plan: EnrollPlan, views: Mapping[str, NodeView]) -> list[PodOutcome]:
    return [outcome(p, views.get(p.pod.node)) for p in plan.pods]


def settled(plan: EnrollPlan, views: Mapping[str, NodeView]) -> bool:
    """Every pod of the plan is where its labels say (the caller stops waiting)."""
    return all(o.ok for o in outcomes(plan, views))


def ztunnels_behind(nodes: Mapping[str, Any]) -> list[str]:
    """The ztunnels (from the controller's `/debug/nodes`) that have not ACKed its current
    state version: until they have, one may still treat a just-(un)enrolled pod as before."""
    version = int(nodes.get("version", 0))
    return sorted(
        f"ztunnel of {s.get('node', '?')} (ACKed {s.get('acked_version', 0)} of {version})"
        for s in nodes.get("nodes") or []
        if s.get("component") == "ztunnel"
        and s.get("connected")
        and int(s.get("acked_version", 0)) < version
    )
