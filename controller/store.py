"""Documents from the source of truth -> the last good version of every resource.

A document that fails validation is reported and skipped, and the last good version of the
same resource (same file, same kind/namespace/name) stays in force; a file that is not even
valid YAML keeps everything it last defined. One bad file never stops the rest.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import structlog

from meshcore.resources import Document, ManifestError, Resource, ResourceKey, parse_resource

log = structlog.get_logger("controller.store")


@dataclass(frozen=True)
class Problem:
    """A resource (or file) the controller could not accept, and what it does instead."""

    source: str
    resource: str
    field: str
    reason: str
    keeps_last_good: bool
    since: float

    @property
    def message(self) -> str:
        return str(
            ManifestError(self.reason, source=self.source, resource=self.resource, field=self.field)
        )


def _key_of(raw: object) -> ResourceKey | None:
    """Best-effort identity of a raw document, to find its last good version."""
    if not isinstance(raw, dict):
        return None
    kind, meta = raw.get("kind"), raw.get("metadata")
    if not isinstance(kind, str) or not isinstance(meta, dict):
        return None
    name, namespace = meta.get("name"), meta.get("namespace")
    if not isinstance(name, str):
        return None
    if kind == "Namespace":
        return ResourceKey(kind, "", name)
    return ResourceKey(
        kind, namespace if isinstance(namespace, str) and namespace else "default", name
    )


class ResourceStore:
    def __init__(self) -> None:
        self._by_source: dict[str, dict[ResourceKey, Resource]] = {}
        self._problems: dict[str, list[Problem]] = {}
        self._merged: dict[ResourceKey, Resource] | None = None
        self.generation = 0

    def set_source(self, source: str, docs: list[Document] | ManifestError) -> None:
        """Replace what `source` (a file, a watch stream) defines."""
        previous = self._by_source.get(source, {})
        now = time.time()
        problems: list[Problem] = []
        if isinstance(docs, ManifestError):
            problems.append(
                Problem(source, docs.resource, docs.field, docs.reason, bool(previous), now)
            )
            self._commit(source, previous, problems)
            return
        current: dict[ResourceKey, Resource] = {}
        for doc in docs:
            try:
                resource = parse_resource(doc).resource
            except ManifestError as err:
                key = _key_of(doc.raw)
                kept = key is not None and key in previous
                if kept and key is not None:
                    current[key] = previous[key]
                problems.append(
                    Problem(
                        err.source or doc.source, err.resource, err.field, err.reason, kept, now
                    )
                )
                continue
            if resource.key in current:
                problems.append(
                    Problem(
                        doc.source,
                        str(resource.key),
                        "metadata.name",
                        "defined twice in this source; the first one is used",
                        True,
                        now,
                    )
                )
                continue
            # Keep the old object when nothing changed, so consumers can compare by identity.
            old = previous.get(resource.key)
            current[resource.key] = old if old == resource else resource
        self._commit(source, current, problems)

    def remove_source(self, source: str) -> None:
        if source in self._by_source or source in self._problems:
            self._by_source.pop(source, None)
            self._problems.pop(source, None)
            self._merged = None
            self.generation += 1

    def _commit(
        self, source: str, resources: dict[ResourceKey, Resource], problems: list[Problem]
    ) -> None:
        old = self._by_source.get(source)
        old_problems = {o.message: o for o in self._problems.get(source, [])}
        # A problem that was already there keeps the time it was first seen.
        problems = [
            dataclasses.replace(p, since=old_problems[p.message].since)
            if p.message in old_problems
            else p
            for p in problems
        ]
        for p in problems:
            if p.message not in old_problems:
                log.warning(
                    "config.invalid",
                    source=p.source,
                    resource=p.resource,
                    field=p.field,
                    reason=p.reason,
                    keeps_last_good=p.keeps_last_good,
                )
        if problems:
            self._problems[source] = problems
        else:
            self._problems.pop(source, None)
        if (
            old is None
            or old.keys() != resources.keys()
            or any(old[k] is not v for k, v in resources.items())
        ):
            self._by_source[source] = resources
            self._merged = None
            self.generation += 1

    def resources(self) -> dict[ResourceKey, Resource]:
        """Every accepted resource; when two sources define one key, the first source wins."""
        if self._merged is None:
            merged: dict[ResourceKey, Resource] = {}
            for source in sorted(self._by_source):
                for key, resource in self._by_source[source].items():
                    merged.setdefault(key, resource)
            self._merged = merged
        return self._merged

    def source_of(self, key: ResourceKey) -> str:
        """The source whose definition of `key` is in force ("" when none defines it)."""
        return next((s for s in sorted(self._by_source) if key in self._by_source[s]), "")

    def problems(self) -> list[Problem]:
        found = [p for source in sorted(self._problems) for p in self._problems[source]]
        owner: dict[ResourceKey, str] = {}
        for source in sorted(self._by_source):
            for key in self._by_source[source]:
                if key in owner:
                    found.append(
                        Problem(
                            source,
                            str(key),
                            "metadata.name",
                            f"also defined in {owner[key]}, which is used",
                            True,
                            0.0,
                        )
                    )
                else:
                    owner[key] = source
        return found
