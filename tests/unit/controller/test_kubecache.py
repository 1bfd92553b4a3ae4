"""KindCache: Kubernetes' list/watch bookkeeping (relist diffs, events, 410, bookmarks)."""

from __future__ import annotations

import pytest

from controller.kubecache import BadEvent, Change, KindCache, WatchExpired


def pod(name: str, rv: str, ns: str = "shop", **extra: object) -> dict[str, object]:
    return {"metadata": {"name": name, "namespace": ns, "resourceVersion": rv}, **extra}


def names(changes: list[Change]) -> list[tuple[str, bool]]:
    return [(c.name, c.obj is not None) for c in changes]


def test_first_list_reports_every_object_and_sets_the_resume_version() -> None:
    cache = KindCache()
    changes = cache.relist([pod("a", "1"), pod("b", "2")], "10")
    assert names(changes) == [("a", True), ("b", True)]
    assert cache.resume_from == "10" and cache.listed


def test_relist_after_410_reports_only_what_changed_and_what_was_deleted_meanwhile() -> None:
    cache = KindCache()
    cache.relist([pod("a", "1"), pod("b", "2"), pod("c", "3")], "10")
    changes = cache.relist([pod("a", "1"), pod("b", "7"), pod("d", "8")], "20")
    # a unchanged: not reported; b modified; d added; c deleted while nobody watched
    assert names(changes) == [("b", True), ("d", True), ("c", False)]
    assert cache.resume_from == "20"


def test_watch_events_add_modify_delete() -> None:
    cache = KindCache()
    cache.relist([pod("a", "1")], "5")
    added = cache.event({"type": "ADDED", "object": pod("b", "6")})
    assert added == Change("shop", "b", pod("b", "6"))
    modified = cache.event({"type": "MODIFIED", "object": pod("a", "7")})
    assert modified is not None and modified.obj is not None
    deleted = cache.event({"type": "DELETED", "object": pod("a", "8")})
    assert deleted == Change("shop", "a", None)
    assert cache.resume_from == "8"
    assert cache.versions == {("shop", "b"): "6"}


def test_a_replayed_event_is_not_reported_twice() -> None:
    cache = KindCache()
    cache.relist([pod("a", "1")], "5")
    assert cache.event({"type": "ADDED", "object": pod("a", "1")}) is None


def test_delete_of_an_unknown_object_reports_nothing() -> None:
    cache = KindCache()
    cache.relist([], "5")
    assert cache.event({"type": "DELETED", "object": pod("x", "9")}) is None
    assert cache.resume_from == "9"


def test_bookmark_moves_the_resume_version_only() -> None:
    cache = KindCache()
    cache.relist([pod("a", "1")], "5")
    bookmark = {"type": "BOOKMARK", "object": {"metadata": {"resourceVersion": "42"}}}
    assert cache.event(bookmark) is None
    assert cache.resume_from == "42" and cache.versions == {("shop", "a"): "1"}


@pytest.mark.parametrize(
    "status",
    [
        {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"},
        {"kind": "Status", "reason": "Gone", "message": "too old"},
    ],
)
def test_410_error_event_asks_for_a_relist(status: dict[str, object]) -> None:
    cache = KindCache()
    cache.relist([], "5")
    with pytest.raises(WatchExpired):
        cache.event({"type": "ERROR", "object": status})


@pytest.mark.parametrize(
    "event",
    [
        {},
        {"type": "ADDED"},
        {"type": "ADDED", "object": "not an object"},
        {"type": "ADDED", "object": {"metadata": {}}},
        {"type": "WHATEVER", "object": pod("a", "1")},
        {"type": "ERROR", "object": {"code": 500, "message": "boom"}},
    ],
)
def test_malformed_events_are_refused_not_applied(event: dict[str, object]) -> None:
    cache = KindCache()
    cache.relist([pod("a", "1")], "5")
    with pytest.raises(BadEvent):
        cache.event(event)
    assert cache.versions == {("shop", "a"): "1"}


def test_cluster_scoped_objects_have_an_empty_namespace() -> None:
    cache = KindCache()
    changes = cache.relist([{"metadata": {"name": "shop", "resourceVersion": "1"}}], "2")
    assert changes == [Change("", "shop", {"metadata": {"name": "shop", "resourceVersion": "1"}})]


def test_forget_removes_everything() -> None:
    cache = KindCache()
    cache.relist([pod("a", "1"), pod("b", "2")], "5")
    assert names(cache.forget()) == [("a", False), ("b", False)]
    assert cache.versions == {} and cache.resume_from == ""
