"""What the controller writes to a Kubernetes API server: what users look at.

- Objects it owns (a waypoint's Deployment, Service and ServiceAccount, the CA root ConfigMap
  `weft-ca-root-cert` that node pods mount) by server-side apply, field manager
  `weft-controller`: its fields are its own, and a user's edits to others are kept.
- Status (Gateway, HTTPRoute, GRPCRoute) through the status subresource.
- Problems as Events on the object they are about (`kubectl describe` shows why a resource
  was refused or is not enforced), each said once per controller run.

The same `ObjectWriter` interface as the lab's (`controller.deployer.LabObjectWriter`), so
the deployer runs unchanged against either.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
from typing import Any

import structlog
from kubernetes import client as kclient

from controller.deployer import WriteError
from controller.kubekinds import KINDS, KubeKind
from controller.store import Problem
from meshcore import kubehttp
from meshcore.resources.security import ROOT_NAMESPACE

log = structlog.get_logger("controller.kubewriter")

FIELD_MANAGER = "weft-controller"
ROOT_CONFIGMAP = "weft-ca-root-cert"
ROOT_CONFIGMAP_KEY = "root-cert.pem"
SOURCE_PREFIX = "kubernetes:"
MAX_EVENT_MESSAGE = 1024  # the API server's own limit for an Event message

_BY_KIND = {k.kind: k for k in KINDS}
_EXTRA = {
    "ServiceAccount": KubeKind("ServiceAccount", "", "v1", "serviceaccounts"),
    "ConfigMap": KubeKind("ConfigMap", "", "v1", "configmaps"),
}


def _kind(kind: str) -> KubeKind:
    found = _BY_KIND.get(kind) or _EXTRA.get(kind)
    if found is None:
        raise WriteError(f"weft does not write {kind} objects")
    return found


def problem_target(problem: Problem) -> tuple[str, str, str] | None:
    """(kind, namespace, name) of the object a problem is about, when it came from the API
    server (`kubernetes:Kind/ns/name`, `kubernetes:Kind/name`)."""
    if not problem.source.startswith(SOURCE_PREFIX):
        return None
    kind, _, rest = problem.source[len(SOURCE_PREFIX) :].partition("/")
    namespace, _, name = rest.rpartition("/")
    if not kind or not name:
        return None
    return kind, namespace, name


def problem_event(problem: Problem, now: dt.datetime) -> dict[str, Any] | None:
    """The Event that tells a problem on its object (None for problems of no API object)."""
    target = problem_target(problem)
    if target is None:
        return None
    kind, namespace, name = target
    kk = _BY_KIND.get(kind)
    stamp = now.strftime("%Y-%m-%dT%H:%M:%SZ")
    field = f"{problem.field}: " if problem.field else ""
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {"generateName": f"{name[:200]}.weft-", "namespace": namespace or "default"},
        "involvedObject": {
            "kind": kind,
            "name": name,
            **({"namespace": namespace} if namespace else {}),
            **({"apiVersion": kk.api_version} if kk is not None else {}),
        },
        "reason": "Ignored" if not problem.keeps_last_good else "KeptLastGood",
        "message": f"{field}{problem.reason}"[:MAX_EVENT_MESSAGE],
        "type": "Warning",
        "source": {"component": FIELD_MANAGER},
        "reportingComponent": FIELD_MANAGER,
        "firstTimestamp": stamp,
        "lastTimestamp": stamp,
        "count": 1,
    }


class KubernetesObjectWriter:
    """Writes through the API server with the controller's own client."""

    def __init__(self, api: kclient.ApiClient) -> None:
        self.api = api
        self._told: set[tuple[str, str, str]] = set()  # problems already made Events

    def _call(
        self,
        method: str,
        path: str,
        body: Any,
        content_type: str = "application/json",
        query: list[tuple[str, str]] | None = None,
    ) -> dict[str, Any]:
        try:
            code, data = kubehttp.exchange(
                self.api, method, path, body=body, content_type=content_type, query=query
            )
        except Exception as err:  # (connection refused, TLS, timeout: all one to the caller)
            raise WriteError(f"{method} {path}: {type(err).__name__}: {err}") from None
        if code >= 300:
            message = data.decode("utf-8", "replace")
            with contextlib.suppress(ValueError, AttributeError):
                message = json.loads(data).get("message", message)
            raise WriteError(f"{method} {path}: HTTP {code}: {message[:500]}")
        return json.loads(data) if data else {}

    def _apply(self, obj: dict[str, Any]) -> None:
        kind = _kind(str(obj.get("kind")))
        meta = obj.get("metadata") or {}
        path = kind.object_path(meta.get("namespace", ""), meta["name"])
        self._call(
            "PATCH",
            path,
            obj,
            "application/apply-patch+yaml",  # (JSON is YAML)
            [("fieldManager", FIELD_MANAGER), ("force", "true")],
        )

    async def apply(self, source: str, objects: list[dict[str, Any]]) -> None:
        for obj in objects:
            await asyncio.to_thread(self._apply, obj)

    async def set_status(
        self, kind: str, namespace: str, name: str, status: dict[str, Any]
    ) -> None:
        path = _kind(kind).object_path(namespace, name) + "/status"
        await asyncio.to_thread(
            self._call, "PATCH", path, {"status": status}, "application/merge-patch+json"
        )

    async def publish_roots(self, roots: list[str]) -> None:
        """ConfigMap weft-ca-root-cert in weft-system: what node pods trust us by."""
        await self.apply(
            "controller:roots",
            [
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": ROOT_CONFIGMAP, "namespace": ROOT_NAMESPACE},
                    "data": {ROOT_CONFIGMAP_KEY: "".join(roots)},
                }
            ],
        )

    async def tell_problems(self, problems: list[Problem]) -> int:
        """An Event for each problem not told yet; how many were written."""
        written = 0
        now = dt.datetime.now(dt.UTC)
        for problem in problems:
            told = (problem.source, problem.field, problem.reason)
            if told in self._told:
                continue
            event = problem_event(problem, now)
            if event is None:
                continue
            path = f"/api/v1/namespaces/{event['metadata']['namespace']}/events"
            try:
                await asyncio.to_thread(self._call, "POST", path, event)
            except WriteError as err:
                log.warning("problem.event_failed", source=problem.source, error=str(err))
                continue
            self._told.add(told)
            written += 1
        # (a problem fixed and made again is told again)
        current = {(p.source, p.field, p.reason) for p in problems}
        self._told &= current
        return written
