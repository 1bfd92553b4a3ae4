"""Access events: one typed record per connection or request a ztunnel or waypoint ended or
refused, built where its access-log line is built, and a hub that hands them to whoever taps
(`/tap` on the admin listener, meshcore.tapserver) or exports them (OTLP logs,
meshcore.otlplogs).

Nothing here does I/O. Publishing costs one attribute check while nobody listens: call sites
write `if hub.active: hub.publish(AccessEvent(...))`, so the event is not even built. Each
subscriber has a bounded queue; past it, events are dropped for that subscriber only and
counted (it is told how many), never buffered without bound and never slowing the data path.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from prometheus_client import Counter, Gauge

from meshcore.ports import PortError, parse_port

MAX_SUBSCRIBERS = 16  # per process; the next one is refused (429)
QUEUE_EVENTS = 1024  # per subscriber; past it, newer events are dropped and counted

VERDICTS = ("allow", "deny", "error")

DROPPED = Counter(
    "weft_tap_events_dropped",
    "Access events not delivered to a tap subscriber whose queue was full.",
    ("component",),
)
SUBSCRIBERS = Gauge("weft_tap_subscribers", "Tap subscribers now connected.", ("component",))
REFUSED = Counter(
    "weft_tap_subscribers_refused",
    f"Tap subscriptions refused because {MAX_SUBSCRIBERS} were already open.",
    ("component",),
)


@dataclass(frozen=True, slots=True)
class AccessEvent:
    """One connection or request, as its reporter saw it end (or refused it).

    Workloads are pod names (the lab's and Kubernetes' `metadata.name`); principals are SPIFFE
    IDs; addresses are `ip:port` ("" when unknown)."""

    time: float  # unix seconds when the connection/request ended or was refused
    component: str  # "ztunnel" | "waypoint"
    reporter: str  # "source" | "destination" | "waypoint"
    kind: str  # "connection" | "request"
    node: str  # the reporting process's node ("" if it does not know)
    source_workload: str
    source_namespace: str
    source_principal: str
    source_address: str
    destination_workload: str
    destination_namespace: str
    destination_principal: str
    destination_service: str  # hostname, "" if none
    destination_address: str  # "ip:port" as dialled
    verdict: str  # "allow" | "deny" | "error"
    policy: str  # "ns/name" of the deciding policy, "" if none
    reason: str  # why, for deny/error ("" for allow)
    security: str  # "mutual_tls" | "none"
    bytes_sent: int
    bytes_received: int
    duration_ms: float
    response_code: int = 0  # requests (waypoint): HTTP status
    response_flags: str = "-"
    method: str = ""
    path: str = ""
    authority: str = ""

    def to_json(self) -> dict[str, Any]:
        """Flat, the field names above."""
        return asdict(self)

    @property
    def destination_port(self) -> int:
        _, _, port = self.destination_address.rpartition(":")
        return int(port) if port.isdigit() else 0


FIELDS = tuple(f.name for f in fields(AccessEvent))


def _principal_matches(principal: str, wanted: str) -> bool:
    """A full SPIFFE ID matches itself; `ns/NS/sa/SA` (or `NS/SA`) matches any trust domain."""
    if not principal:
        return False
    if wanted.startswith("spiffe://"):
        return principal == wanted
    if wanted.count("/") == 1:
        namespace, account = wanted.split("/")
        wanted = f"ns/{namespace}/sa/{account}"
    return principal.endswith("/" + wanted)


@dataclass(frozen=True)
class TapFilter:
    """Which events a subscriber wants: every set field must match; "" / 0 is any. Namespace,
    pod and identity match either side (source or destination); port is the destination's."""

    namespace: str = ""
    pod: str = ""
    identity: str = ""  # spiffe://td/ns/NS/sa/SA, ns/NS/sa/SA or NS/SA
    port: int = 0
    verdict: str = ""  # allow | deny | error

    PARAMS = ("namespace", "pod", "identity", "port", "verdict")

    def matches(self, event: AccessEvent) -> bool:
        if self.namespace and self.namespace not in (
            event.source_namespace,
            event.destination_namespace,
        ):
            return False
        if self.pod and self.pod not in (event.source_workload, event.destination_workload):
            return False
        if self.identity and not (
            _principal_matches(event.source_principal, self.identity)
            or _principal_matches(event.destination_principal, self.identity)
        ):
            return False
        if self.port and event.destination_port != self.port:
            return False
        return not self.verdict or event.verdict == self.verdict

    @classmethod
    def from_query(cls, query: Mapping[str, str]) -> TapFilter:
        """From `/tap?namespace=..&port=..`; ValueError naming the parameter that is wrong."""
        unknown = sorted(set(query) - set(cls.PARAMS))
        if unknown:
            raise ValueError(f"unknown parameter {unknown[0]!r} (known: {', '.join(cls.PARAMS)})")
        port = 0
        if query.get("port"):
            try:
                port = parse_port(query["port"])
            except PortError as err:
                raise ValueError(f"port: {err}") from None
        verdict = query.get("verdict", "")
        if verdict and verdict not in VERDICTS:
            raise ValueError(f"verdict: {verdict!r} is not one of {', '.join(VERDICTS)}")
        for name in ("namespace", "pod", "identity"):
            value = query.get(name, "")
            if len(value) > 512 or any(c.isspace() for c in value):
                raise ValueError(f"{name}: {value[:40]!r} is not a name")
        return cls(
            query.get("namespace", ""), query.get("pod", ""), query.get("identity", ""),
            port, verdict,
        )  # fmt: skip

    def to_query(self) -> dict[str, str]:
        """The set fields, as from_query reads them."""
        values = {
            "namespace": self.namespace,
            "pod": self.pod,
            "identity": self.identity,
            "port": str(self.port) if self.port else "",
            "verdict": self.verdict,
        }
        return {k: v for k, v in values.items() if v}


class TooManySubscribers(Exception):
    """The process already serves MAX_SUBSCRIBERS taps."""


class Subscription:
    """One subscriber's bounded queue. `take()` waits for events; it returns the events queued
    and how many were dropped since the last take (the queue was full)."""

    def __init__(self, flt: TapFilter, limit: int, component: str) -> None:
        self.filter = flt
        self.limit = limit
        self.dropped = 0
        self.closed = False
        self._events: collections.deque[AccessEvent] = collections.deque()
        self._ready = asyncio.Event()
        self._dropped_metric = DROPPED.labels(component)

    def offer(self, event: AccessEvent) -> None:
        if not self.filter.matches(event):
            return
        if len(self._events) >= self.limit:
            self.dropped += 1
            self._dropped_metric.inc()
        else:
            self._events.append(event)
        self._ready.set()

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def take(self, timeout: float | None = None) -> tuple[list[AccessEvent], int]:
        """What is queued (waiting up to `timeout` for something; ([], 0) if nothing came)."""
        if not self._events and not self.dropped and not self.closed:
            try:
                await asyncio.wait_for(self._ready.wait(), timeout)
            except TimeoutError:
                return [], 0
        self._ready.clear()
        events = list(self._events)
        self._events.clear()
        dropped, self.dropped = self.dropped, 0
        return events, dropped


Sink = Callable[[AccessEvent], None]


class TapHub:
    """The access events of one process (a ztunnel, a waypoint): its tap subscribers and its
    sinks (an OTLP log exporter). `active` is True while anyone listens."""

    def __init__(
        self,
        component: str,
        node: str = "",
        *,
        max_subscribers: int = MAX_SUBSCRIBERS,
        queue_events: int = QUEUE_EVENTS,
    ) -> None:
        self.component = component
        self.node = node
        self.max_subscribers = max_subscribers
        self.queue_events = queue_events
        self.active = False
        self._subscribers: tuple[Subscription, ...] = ()
        self._sinks: tuple[Sink, ...] = ()
        self._gauge = SUBSCRIBERS.labels(component)

    @property
    def subscribers(self) -> int:
        return len(self._subscribers)

    def publish(self, event: AccessEvent) -> None:
        for sink in self._sinks:
            sink(event)
        for sub in self._subscribers:
            sub.offer(event)

    def add_sink(self, sink: Sink) -> None:
        self._sinks = (*self._sinks, sink)
        self.active = True

    def remove_sink(self, sink: Sink) -> None:
        self._sinks = tuple(s for s in self._sinks if s is not sink)
        self.active = bool(self._subscribers or self._sinks)

    def subscribe(self, flt: TapFilter) -> Subscription:
        if len(self._subscribers) >= self.max_subscribers:
            REFUSED.labels(self.component).inc()
            raise TooManySubscribers(
                f"this {self.component} already serves {self.max_subscribers} taps; "
                "stop one and try again"
            )
        sub = Subscription(flt, self.queue_events, self.component)
        self._subscribers = (*self._subscribers, sub)
        self._gauge.inc()
        self.active = True
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        if sub in self._subscribers:
            self._subscribers = tuple(s for s in self._subscribers if s is not sub)
            self._gauge.dec()
        sub.close()
        self.active = bool(self._subscribers or self._sinks)

    def close(self) -> None:
        """The process stops: every subscriber's stream ends."""
        for sub in self._subscribers:
            self.unsubscribe(sub)


def event_line(event: AccessEvent) -> dict[str, Any]:
    """The `/tap` ndjson line of an event."""
    return {"type": "event", **event.to_json()}
