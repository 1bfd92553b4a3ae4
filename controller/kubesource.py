"""`KubernetesSource`: the controller's view of a Kubernetes API server, as `LocalSource` is
of a folder (same `Source` interface).

One reflector per kind (`controller.kubekinds.KINDS`) lists, then watches from the list's
resourceVersion with bookmarks, and lists again on 410 Gone (`controller.kubecache`). Errors
(the API server restarting, a dropped connection, a 5xx) back off with jitter and resume
from the last version seen, so nothing is lost; a CRD that is not installed is re-checked
until it is. The first batch is yielded only once every kind has been listed, so the
controller never serves an empty mesh before it has read the cluster.

Reflectors run in threads: the official `kubernetes` client is synchronous (urllib3), and a
thread per kind, blocked on its watch stream, costs nothing while idle. They hand changes to
the event loop with `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import structlog
from kubernetes import client as kclient
from kubernetes import config as kconfig
from prometheus_client import Counter, Gauge

from controller.kubecache import BadEvent, Change, KindCache, WatchExpired
from controller.kubekinds import KINDS, KubeKind
from controller.sources import SourceChange
from meshcore import kubehttp
from meshcore.resources import Document

log = structlog.get_logger("controller.kubernetes")

WATCH_EVENTS = Counter(
    "weft_controller_kube_watch_events", "Watch events received, by kind and type.",
    ["kind", "type"],
)  # fmt: skip
RELISTS = Counter(
    "weft_controller_kube_relists", "Full lists of a kind, by reason (initial, expired, error).",
    ["kind", "reason"],
)  # fmt: skip
WATCH_ERRORS = Counter(
    "weft_controller_kube_watch_errors", "Failed lists and watches, by kind.", ["kind"]
)
SERVED = Gauge(
    "weft_controller_kube_kind_served", "1 when the API server serves the kind (its CRD is in).",
    ["kind"],
)  # fmt: skip

PAGE_SIZE = 500
WATCH_SECONDS = 300  # the server ends each watch after this; it is then resumed
MAX_EVENT_BYTES = 16 << 20  # one watch line (an object); longer is a broken stream
BACKOFF_FIRST, BACKOFF_MAX = 0.2, 30.0
ABSENT_RECHECK = 30.0  # how often a kind whose CRD is missing is looked for again


@dataclass(frozen=True)
class KubeSettings:
    kubeconfig: Path | None = None  # None: in-cluster (ServiceAccount token and CA)
    context: str | None = None
    kinds: tuple[KubeKind, ...] = KINDS
    page_size: int = PAGE_SIZE
    watch_seconds: int = WATCH_SECONDS


def api_client(settings: KubeSettings) -> kclient.ApiClient:
    configuration = kclient.Configuration()
    if settings.kubeconfig is not None:
        kconfig.load_kube_config(
            config_file=str(settings.kubeconfig),
            context=settings.context,
            client_configuration=configuration,
        )
    else:
        kconfig.load_incluster_config(client_configuration=configuration)
    return kclient.ApiClient(configuration)


class ApiError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:300]}")
        self.status = status


class NotServed(Exception):
    """404 on a kind's collection: its CRD (or API group) is not installed."""


class Reflector:
    """List + watch of one kind, in a thread, reporting `Change`s through `emit`."""

    def __init__(
        self,
        kind: KubeKind,
        api: kclient.ApiClient,
        settings: KubeSettings,
        emit: Callable[[KubeKind, list[Change]], None],  # called from this thread
        stopping: threading.Event,
    ) -> None:
        self.kind = kind
        self.api = api
        self.settings = settings
        self.emit = emit
        self.stopping = stopping
        self.cache = KindCache()
        self._response: Any = None
        self.served: bool | None = None  # None: not known yet
        self.thread = threading.Thread(target=self._run, name=f"weft-kube-{kind.kind}", daemon=True)

    # --- HTTP -----------------------------------------------------------------------

    def _get(self, query: list[tuple[str, str]], read_timeout: float) -> Any:
        response = kubehttp.send(
            self.api, "GET", self.kind.list_path(), query=query, timeout=(10, read_timeout)
        )
        # (an error's body is read whole: a connection handed back with a response unread
        # would be given to the next request still busy)
        if response.status == 404:
            response.read()
            raise NotServed(self.kind.list_path())
        if response.status == 410:
            raise WatchExpired(response.read().decode("utf-8", "replace"))
        if response.status >= 400:
            body = response.read().decode("utf-8", "replace")
            raise ApiError(response.status, body)
        return response

    def _selectors(self) -> list[tuple[str, str]]:
        return [("fieldSelector", self.kind.field_selector)] if self.kind.field_selector else []

    def list(self) -> tuple[list[dict[str, Any]], str]:
        """Every object, a page at a time; the snapshot's resourceVersion."""
        items: list[dict[str, Any]] = []
        token = ""
        while True:
            query = [("limit", str(self.settings.page_size)), *self._selectors()]
            if token:
                query.append(("continue", token))
            body = json.loads(self._get(query, 60).read())
            items.extend(body.get("items") or ())
            meta = body.get("metadata") or {}
            token = meta.get("continue") or ""
            if not token:
                return items, str(meta.get("resourceVersion", ""))

    def watch(self, resource_version: str) -> Iterator[dict[str, Any]]:
        """The events after `resource_version` until the server ends the watch."""
        query = [
            ("watch", "true"),
            ("allowWatchBookmarks", "true"),
            ("resourceVersion", resource_version),
            ("timeoutSeconds", str(self.settings.watch_seconds)),
            *self._selectors(),
        ]
        response = self._get(query, self.settings.watch_seconds + 30)
        self._response = response.response
        try:
            buffer = bytearray()
            for chunk in response.response.stream(amt=None, decode_content=True):
                buffer.extend(chunk)
                while (end := buffer.find(b"\n")) >= 0:
                    line, buffer = bytes(buffer[:end]), buffer[end + 1 :]
                    if line.strip():
                        yield json.loads(line)
                if len(buffer) > MAX_EVENT_BYTES:
                    raise BadEvent(f"a watch event over {MAX_EVENT_BYTES} bytes")
        finally:
            self._response = None
            response.response.release_conn()

    def close(self) -> None:
        """Unblock a thread waiting on its watch stream."""
        response = self._response
        if response is not None:
            try:
                response.shutdown()
            except Exception:  # (urllib3 versions differ; closing is enough)
                response.close()

    # --- the loop -----------------------------------------------------------------------

    def _relist(self, reason: str) -> None:
        RELISTS.labels(self.kind.kind, reason).inc()
        items, version = self.list()
        changes = self.cache.relist(items, version)
        if self.served is not True:
            self.served = True
            SERVED.labels(self.kind.kind).set(1)
        self.emit(self.kind, changes)

    def _run(self) -> None:
        backoff = BACKOFF_FIRST
        reason = "initial"
        while not self.stopping.is_set():
            try:
                if not self.cache.listed or reason != "resume":
                    self._relist(reason)
                for event in self.watch(self.cache.resume_from):
                    if self.stopping.is_set():
                        return
                    WATCH_EVENTS.labels(self.kind.kind, str(event.get("type"))).inc()
                    change = self.cache.event(event)
                    if change is not None:
                        self.emit(self.kind, [change])
                    backoff = BACKOFF_FIRST
                reason = "resume"  # the server ended the watch (timeoutSeconds): go on
            except WatchExpired as err:
                log.info("kube.watch_expired", kind=self.kind.kind, detail=str(err)[:200])
                reason = "expired"
            except NotServed:
                # Not installed (yet): empty for now, and the first batch need not wait
                # for it; looked for again until it is. A CRD deleted while watched takes
                # its objects with it.
                if self.served is not False:  # (said once, not every recheck)
                    self.served = False
                    SERVED.labels(self.kind.kind).set(0)
                    log.log(
                        40 if not self.kind.optional else 20,
                        "kube.kind_not_served",
                        kind=self.kind.kind,
                        path=self.kind.list_path(),
                    )
                self.emit(self.kind, self.cache.forget())
                reason = "initial"
                self.stopping.wait(ABSENT_RECHECK)
            except Exception as err:  # (any failure: back off, resume)
                if self.stopping.is_set():
                    return
                WATCH_ERRORS.labels(self.kind.kind).inc()
                log.warning(
                    "kube.watch_failed",
                    kind=self.kind.kind,
                    error=f"{type(err).__name__}: {str(err)[:300]}",
                    retry_in=round(backoff, 2),
                )
                reason = "resume" if self.cache.listed else "initial"
                self.stopping.wait(backoff * random.uniform(0.5, 1.5))
                backoff = min(backoff * 2, BACKOFF_MAX)


class KubernetesSource:
    """The `Source` that reads a Kubernetes API server."""

    def __init__(self, settings: KubeSettings, api: kclient.ApiClient | None = None) -> None:
        self.settings = settings
        self.api = api if api is not None else api_client(settings)
        self._stopping = threading.Event()
        self._reflectors: list[Reflector] = []

    @staticmethod
    def source_of(kind: KubeKind, namespace: str, name: str) -> str:
        """How a Kubernetes object is named where the controller reports it."""
        where = f"{namespace}/{name}" if namespace else name
        return f"kubernetes:{kind.kind}/{where}"

    def _change(self, kind: KubeKind, change: Change) -> SourceChange:
        source = self.source_of(kind, change.namespace, change.name)
        if change.obj is None:
            return SourceChange(source, None)
        return SourceChange(source, [Document(source, kind.document(change.obj))])

    async def batches(self) -> AsyncIterator[list[SourceChange]]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[KubeKind, list[Change]]] = asyncio.Queue()
        pending = {k.kind for k in self.settings.kinds}

        def emit(kind: KubeKind, changes: list[Change]) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, (kind, changes))

        self._reflectors = [
            Reflector(k, self.api, self.settings, emit, self._stopping) for k in self.settings.kinds
        ]
        for r in self._reflectors:
            r.thread.start()
        try:
            first: list[SourceChange] = []
            started = time.monotonic()
            while pending:
                kind, changes = await queue.get()
                pending.discard(kind.kind)
                first += [self._change(kind, c) for c in changes]
            log.info(
                "kube.synced",
                objects=len(first),
                kinds=len(self.settings.kinds),
                seconds=round(time.monotonic() - started, 3),
            )
            yield first
            while True:
                kind, changes = await queue.get()
                batch = [self._change(kind, c) for c in changes]
                while not queue.empty():  # (coalesce what arrived meanwhile)
                    kind, changes = queue.get_nowait()
                    batch += [self._change(kind, c) for c in changes]
                if batch:
                    yield batch
        finally:
            self.close()

    def close(self) -> None:
        self._stopping.set()
        for r in self._reflectors:
            r.close()
