"""A real OTLP/gRPC trace receiver on loopback: `opentelemetry.proto.collector.trace.v1.
TraceService/Export` served by grpcio from opentelemetry-proto's generated classes, keeping
every span it is sent. What the waypoint's exporter talks to in the tests, as it would to a
collector: over the network, in protobuf, nothing of ours mocked.

`python -m tests.integration.waypoint.otlp_receiver --listen <ip>:<port>` runs one on its own
and prints each span it gets as a JSON line: what the lab's end-to-end test runs where the
lab's pods can reach it (the control plane's namespace)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span


def _value(v: AnyValue) -> Any:
    kind = v.WhichOneof("value")
    return getattr(v, kind) if kind else None


def attributes(kvs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in kvs if isinstance(kv, KeyValue)}


@dataclass(frozen=True)
class ReceivedSpan:
    """A span as the receiver got it, ids in hex."""

    name: str
    kind: int  # Span.SpanKind
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    status_code: int  # Status.StatusCode
    resource: dict[str, Any]
    scope: str

    @property
    def is_server(self) -> bool:
        return self.kind == Span.SPAN_KIND_SERVER

    @property
    def is_client(self) -> bool:
        return self.kind == Span.SPAN_KIND_CLIENT


class _Service(trace_service_pb2_grpc.TraceServiceServicer):
    def __init__(self, receiver: OtlpReceiver) -> None:
        self.receiver = receiver

    def Export(  # the generated servicer's name
        self, request: trace_service_pb2.ExportTraceServiceRequest, context: grpc.ServicerContext
    ) -> trace_service_pb2.ExportTraceServiceResponse:
        got = []
        for rs in request.resource_spans:
            resource = attributes(rs.resource.attributes)
            for ss in rs.scope_spans:
                for span in ss.spans:
                    got.append(
                        ReceivedSpan(
                            name=span.name,
                            kind=span.kind,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_span_id=span.parent_span_id.hex(),
                            attributes=attributes(span.attributes),
                            status_code=span.status.code,
                            resource=resource,
                            scope=ss.scope.name,
                        )
                    )
        with self.receiver.changed:
            self.receiver.spans += got
            self.receiver.exports += 1
            self.receiver.changed.notify_all()
        return trace_service_pb2.ExportTraceServiceResponse()


class OtlpReceiver:
    """Start with `start()`; its address is `endpoint` (`127.0.0.1:<port>` unless `listen`
    says another)."""

    def __init__(self, listen: str = "127.0.0.1:0") -> None:
        self.spans: list[ReceivedSpan] = []
        self.exports = 0
        self.changed = threading.Condition()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(_Service(self), self._server)
        self.port = self._server.add_insecure_port(listen)
        if not self.port:
            raise OSError(f"the OTLP receiver cannot listen on {listen}")
        self.endpoint = f"{listen.rpartition(':')[0]}:{self.port}"

    def start(self) -> OtlpReceiver:
        self._server.start()
        return self

    def stop(self) -> None:
        self._server.stop(grace=None)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedSpan]:
        """At least `count` spans (blocking: call it from a thread in async tests)."""
        deadline = time.monotonic() + timeout
        with self.changed:
            while len(self.spans) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(self.spans)} spans received, {count} expected")
                self.changed.wait(left)
            return list(self.spans)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--listen", default="127.0.0.1:4317")
    listen = parser.parse_args().listen
    receiver = OtlpReceiver(listen).start()
    print(json.dumps({"listening": receiver.endpoint}), flush=True)
    printed = 0
    with receiver.changed:
        while True:
            receiver.changed.wait()
            for span in receiver.spans[printed:]:
                print(json.dumps(dataclasses.asdict(span)), flush=True)
            printed = len(receiver.spans)
            sys.stdout.flush()


if __name__ == "__main__":
    main()
