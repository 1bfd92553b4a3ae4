"""Access events exported as OpenTelemetry log records over OTLP/gRPC: a TapHub sink
(meshcore.accessevents) for the ztunnel and the waypoint (Istio's ztunnel cannot do this).

One record per event: the body is the access log's event name (`connection.closed`,
`connection.denied`, `request.completed`...), the attributes are the event's fields under
their AccessEvent names, the timestamp its `time`. Records go through the SDK's batch
processor, whose worker thread exports them; the sink itself never blocks. The queue is
bounded here (MAX_QUEUE records not yet exported): past it a record is dropped and counted
in `weft_otlp_log_records_dropped_total`, never held.

The OpenTelemetry SDK is imported when a sink is made, not with this module: a ztunnel with no
collector configured does not carry it (about 2 MB of its idle RSS, docs/scale.md).
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import structlog
from prometheus_client import Counter

if TYPE_CHECKING:
    from opentelemetry.sdk._logs import ReadableLogRecord
    from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult

from meshcore.accessevents import AccessEvent

log = structlog.get_logger("otlplogs")

MAX_QUEUE = 2048
EXPORT_BATCH = 512
EXPORT_DELAY_MS = 1000
EXPORT_TIMEOUT_MS = 10_000
SCOPE = "weft.access"

DROPPED = Counter(
    "weft_otlp_log_records_dropped",
    "Access-log records not exported over OTLP because MAX_QUEUE were waiting.",
    ("component",),
)
EXPORTED = Counter(
    "weft_otlp_log_records_exported",
    "Access-log records handed to the OTLP collector, by outcome.",
    ("component", "outcome"),
)


def event_name(event: AccessEvent) -> str:
    """The access log's event name for this event."""
    if event.kind == "request":
        return "request.completed"
    if event.verdict == "allow":
        return "connection.closed"
    return "connection.denied" if event.verdict == "deny" else "connection.failed"


@functools.cache
def _counting_class() -> type[LogRecordExporter]:
    from opentelemetry.sdk._logs.export import LogRecordExporter, LogRecordExportResult

    class _Counting(LogRecordExporter):
        """The real exporter, counting what left the queue (exported or failed)."""

        def __init__(self, inner: LogRecordExporter, sink: OtlpLogs) -> None:
            self.inner = inner
            self.sink = sink

        def export(self, batch: Sequence[ReadableLogRecord]) -> LogRecordExportResult:
            try:
                result = self.inner.export(batch)
            finally:
                self.sink._exported(len(batch))
            ok = result is LogRecordExportResult.SUCCESS
            EXPORTED.labels(self.sink.component, "success" if ok else "failure").inc(len(batch))
            return result

        def shutdown(self) -> None:
            self.inner.shutdown()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return self.inner.force_flush(timeout_millis)

    return _Counting


class OtlpLogs:
    """Call with an AccessEvent (a TapHub sink). `endpoint`: `host:port` or an http(s):// URL
    (plaintext unless https), as the waypoint's span exporter takes it."""

    def __init__(
        self,
        exporter: LogRecordExporter,
        service_name: str,
        component: str,
        attributes: dict[str, str] | None = None,
        *,
        max_queue: int = MAX_QUEUE,
    ) -> None:
        from opentelemetry._logs import SeverityNumber
        from opentelemetry.sdk._logs import LoggerProvider
        from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
        from opentelemetry.sdk.resources import Resource

        self._info = SeverityNumber.INFO
        self.component = component
        self.max_queue = max_queue
        self._lock = threading.Lock()
        self._pending = 0  # emitted and not yet exported (or failed)
        resource = Resource.create(
            {"service.name": service_name, "weft.component": component, **(attributes or {})}
        )
        self.provider = LoggerProvider(resource=resource)
        self.provider.add_log_record_processor(
            BatchLogRecordProcessor(
                _counting_class()(exporter, self),  # type: ignore[call-arg]
                schedule_delay_millis=EXPORT_DELAY_MS,
                max_export_batch_size=min(EXPORT_BATCH, max_queue),
                export_timeout_millis=EXPORT_TIMEOUT_MS,
                max_queue_size=max_queue,
            )
        )
        self.logger = self.provider.get_logger(SCOPE)
        self._dropped = DROPPED.labels(component)

    @classmethod
    def otlp(cls, endpoint: str, service_name: str, component: str, **attributes: str) -> OtlpLogs:
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter

        insecure = not endpoint.startswith("https://")
        exporter = OTLPLogExporter(endpoint=endpoint, insecure=insecure)
        log.info("otlp_logs.enabled", otlp_logs_endpoint=endpoint, component=component)
        return cls(exporter, service_name, component, attributes)

    @property
    def pending(self) -> int:
        """Records emitted and not yet exported (or failed)."""
        return self._pending

    def _exported(self, count: int) -> None:
        with self._lock:
            self._pending -= count

    def __call__(self, event: AccessEvent) -> None:
        with self._lock:
            if self._pending >= self.max_queue:
                full = True
            else:
                full = False
                self._pending += 1
        if full:
            self._dropped.inc()
            return
        attributes: dict[str, Any] = event.to_json()
        self.logger.emit(
            timestamp=int(event.time * 1e9),
            severity_number=self._info,
            severity_text="INFO",
            body=event_name(event),
            attributes=attributes,
            event_name=event_name(event),
        )

    def flush(self, timeout_ms: int = 5000) -> bool:
        return self.provider.force_flush(timeout_ms)

    def shutdown(self) -> None:
        """Export what is queued, then stop the processor's thread."""
        self.provider.shutdown()
