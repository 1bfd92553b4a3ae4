"""lab.kubemirror.plan_sync: what the lab writes to the API server, in which order."""

from __future__ import annotations

from typing import Any

from lab.kubemirror import Synced, _digest, key_of, plan_sync


def obj(kind: str, name: str, ns: str = "", **extra: Any) -> dict[str, Any]:
    meta = {"name": name, **({"namespace": ns} if ns else {})}
    return {"apiVersion": "v1", "kind": kind, "metadata": meta, **extra}


def synced_after(docs: dict[str, dict[str, Any]]) -> Synced:
    s = Synced()
    for d in docs.values():
        body = {k: v for k, v in d.items() if k != "status"}
        s.objects[key_of(d)] = _digest(body)
        if "status" in d:
            s.statuses[key_of(d)] = _digest(d["status"])
    return s


DOCS = {
    "pod": obj("Pod", "web-1", "shop", spec={"nodeName": "n1"}, status={"phase": "Pending"}),
    "svc": obj("Service", "web", "shop", spec={"clusterIP": "10.96.0.9"}),
    "ns": obj("Namespace", "shop"),
    "sa": obj("ServiceAccount", "web", "shop"),
}


def test_first_sync_writes_namespaces_first_and_status_apart() -> None:
    plan = plan_sync(Synced(), DOCS)
    assert [key_of(o)[0] for o in plan.apply] == ["Namespace", "ServiceAccount", "Service", "Pod"]
    assert all("status" not in o for o in plan.apply)
    assert plan.status == [(("Pod", "shop", "web-1"), {"phase": "Pending"})]
    assert plan.delete == []


def test_nothing_changed_nothing_written() -> None:
    plan = plan_sync(synced_after(DOCS), DOCS)
    assert (plan.apply, plan.status, plan.delete) == ([], [], [])


def test_only_a_status_change_writes_only_the_status() -> None:
    later = dict(
        DOCS, pod=obj("Pod", "web-1", "shop", spec={"nodeName": "n1"}, status={"phase": "Running"})
    )
    plan = plan_sync(synced_after(DOCS), later)
    assert plan.apply == []
    assert plan.status == [(("Pod", "shop", "web-1"), {"phase": "Running"})]


def test_removed_objects_are_deleted_pods_before_their_namespace() -> None:
    plan = plan_sync(synced_after(DOCS), {})
    assert [k[0] for k in plan.delete] == ["Pod", "Service", "ServiceAccount", "Namespace"]
