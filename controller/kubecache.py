"""What the controller knows of one watched kind, and the changes a list or a watch event
makes to it. Pure: the I/O is `controller.kubesource`'s.

Kubernetes' list/watch contract, as client-go's reflector keeps it: a list returns a
snapshot and its resourceVersion; a watch from that version streams ADDED / MODIFIED /
DELETED events (and BOOKMARKs that only move the version); a version the server has
compacted away ends the watch with 410 Gone, and the client lists again. A relist is a new
snapshot: whatever the cache holds that the snapshot lacks was deleted while nobody watched,
so the diff of the two is what is reported; nothing is lost and nothing reported twice.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

Obj = dict[str, Any]


class WatchExpired(Exception):
    """410 Gone: the version to resume from is no longer kept; list again."""


class BadEvent(Exception):
    """A watch event that is not one (no type, no object): the stream is resumed."""


@dataclass(frozen=True)
class Change:
    """One object's new content (`obj`), or its removal (`obj` None)."""

    namespace: str
    name: str
    obj: Obj | None


def object_id(obj: Mapping[str, Any]) -> tuple[str, str]:
    meta = obj.get("metadata")
    if not isinstance(meta, Mapping) or not isinstance(meta.get("name"), str):
        raise BadEvent("object without metadata.name")
    namespace = meta.get("namespace") or ""
    return (namespace if isinstance(namespace, str) else ""), meta["name"]


def resource_version(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata")
    rv = meta.get("resourceVersion") if isinstance(meta, Mapping) else None
    return rv if isinstance(rv, str) else ""


class KindCache:
    """The objects of one kind by (namespace, name) with their resourceVersions, and the
    version to resume a watch from."""

    def __init__(self) -> None:
        self.versions: dict[tuple[str, str], str] = {}
        self.resume_from = ""  # "" until the first list
        self.listed = False

    def relist(self, items: Iterable[Obj], list_version: str) -> list[Change]:
        """A full snapshot replaces what was known: upserts for what is new or changed,
        removals for what is gone."""
        seen: dict[tuple[str, str], str] = {}
        changes: list[Change] = []
        for obj in items:
            oid = object_id(obj)
            rv = resource_version(obj)
            seen[oid] = rv
            if self.versions.get(oid) != rv:
                changes.append(Change(oid[0], oid[1], obj))
        changes += [Change(ns, name, None) for ns, name in sorted(self.versions.keys() - seen)]
        self.versions = seen
        self.resume_from = list_version
        self.listed = True
        return changes

    def event(self, event: Mapping[str, Any]) -> Change | None:
        """Apply one watch event; the change to report, if any. Raises WatchExpired on a
        410 error event, BadEvent on anything malformed."""
        kind = event.get("type")
        obj = event.get("object")
        if not isinstance(kind, str) or not isinstance(obj, Mapping):
            raise BadEvent(f"watch event without type or object: {str(event)[:200]}")
        if kind == "ERROR":
            code = obj.get("code")
            if code == 410 or obj.get("reason") in ("Expired", "Gone"):
                raise WatchExpired(str(obj.get("message", "410 Gone")))
            raise BadEvent(f"watch error {code}: {obj.get('message', '')}")
        rv = resource_version(obj)
        if kind == "BOOKMARK":
            if rv:
                self.resume_from = rv
            return None
        oid = object_id(obj)
        if rv:
            self.resume_from = rv
        if kind == "DELETED":
            if self.versions.pop(oid, None) is None:
                return None  # (deleted before we knew it: nothing to report)
            return Change(oid[0], oid[1], None)
        if kind not in ("ADDED", "MODIFIED"):
            raise BadEvent(f"unknown watch event type {kind!r}")
        if self.versions.get(oid) == rv and rv:
            return None  # (a replay of what the list already gave)
        self.versions[oid] = rv
        return Change(oid[0], oid[1], dict(obj))

    def forget(self) -> list[Change]:
        """The kind stopped being served (its CRD was deleted): every object is gone."""
        gone = [Change(ns, name, None) for ns, name in sorted(self.versions)]
        self.versions.clear()
        self.resume_from = ""
        return gone
