"""Access events exported as OTLP log records (meshcore.otlplogs) to a real OTLP/gRPC logs
receiver on loopback (`LogsService/Export` served by grpcio from opentelemetry-proto, beside
the trace receiver the waypoint's tracing tests use): a real ztunnel inbound connection
arrives as one record with the event's fields as attributes; past the bounded queue,
records are dropped and counted while the exporter is stuck."""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1 import logs_service_pb2, logs_service_pb2_grpc
from prometheus_client import REGISTRY

from meshcore.accessevents import FIELDS, TapHub
from meshcore.otlplogs import OtlpLogs
from tests.integration.waypoint.otlp_receiver import attributes
from tests.integration.ztunnel.test_inbound_admission_io import CLIENT, WEB, Node, Target, run
from tests.integration.ztunnel.test_tap_ztunnel import app_connection
from tests.unit.meshcore.test_accessevents import event

pytestmark = pytest.mark.integration


@dataclass(frozen=True)
class ReceivedRecord:
    body: str
    attributes: dict[str, Any]
    resource: dict[str, Any]
    scope: str
    time_unix_nano: int


class _Logs(logs_service_pb2_grpc.LogsServiceServicer):
    def __init__(self, receiver: OtlpLogsReceiver) -> None:
        self.receiver = receiver

    def Export(  # the generated servicer's name
        self, request: logs_service_pb2.ExportLogsServiceRequest, context: grpc.ServicerContext
    ) -> logs_service_pb2.ExportLogsServiceResponse:
        self.receiver.release.wait(30)  # a stuck collector, when a test holds it
        got = [
            ReceivedRecord(
                record.body.string_value,
                attributes(record.attributes),
                attributes(rl.resource.attributes),
                sl.scope.name,
                record.time_unix_nano,
            )
            for rl in request.resource_logs
            for sl in rl.scope_logs
            for record in sl.log_records
        ]
        with self.receiver.changed:
            self.receiver.records += got
            self.receiver.changed.notify_all()
        return logs_service_pb2.ExportLogsServiceResponse()


class OtlpLogsReceiver:
    def __init__(self) -> None:
        self.records: list[ReceivedRecord] = []
        self.changed = threading.Condition()
        self.release = threading.Event()
        self.release.set()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        logs_service_pb2_grpc.add_LogsServiceServicer_to_server(_Logs(self), self._server)
        port = self._server.add_insecure_port("127.0.0.1:0")
        self.endpoint = f"127.0.0.1:{port}"
        self._server.start()

    def stop(self) -> None:
        self.release.set()
        self._server.stop(grace=None)

    def wait_for(self, count: int, timeout: float = 10.0) -> list[ReceivedRecord]:
        deadline = time.monotonic() + timeout
        with self.changed:
            while len(self.records) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{len(self.records)} records received, {count} expected")
                self.changed.wait(left)
            return list(self.records)


@pytest.fixture
def receiver() -> Any:
    r = OtlpLogsReceiver()
    try:
        yield r
    finally:
        r.stop()


def test_a_ztunnel_connection_becomes_one_otlp_log_record(
    tmp_path: Path, receiver: OtlpLogsReceiver
) -> None:
    sink = OtlpLogs.otlp(receiver.endpoint, "ztunnel", "ztunnel", **{"k8s.node.name": "node-2"})

    async def body(node: Node, target: Target, port: int) -> None:
        node.inbound.tap.add_sink(sink)
        reader, writer, status = await app_connection(node, CLIENT, port)
        assert status == 200
        writer.write(b"abc")
        assert await reader.readexactly(3) == b"abc"
        writer.write_eof()
        assert await reader.read() == b""
        writer.close()
        await asyncio.to_thread(receiver.wait_for, 1)

    try:
        run(tmp_path, body)
    finally:
        sink.shutdown()
    (record,) = receiver.records
    assert record.body == "connection.closed" and record.scope == "weft.access"
    assert record.resource["service.name"] == "ztunnel"
    assert record.resource["k8s.node.name"] == "node-2"
    assert set(record.attributes) == set(FIELDS)  # the same fields as the tap's events
    assert record.attributes["source_principal"] == CLIENT
    assert record.attributes["destination_principal"] == WEB
    assert record.attributes["bytes_sent"] == 3 and record.attributes["verdict"] == "allow"
    assert abs(record.time_unix_nano / 1e9 - time.time()) < 30


def _dropped(component: str) -> float:
    return (
        REGISTRY.get_sample_value("weft_otlp_log_records_dropped_total", {"component": component})
        or 0.0
    )


def test_a_stuck_collector_costs_dropped_records_not_memory(receiver: OtlpLogsReceiver) -> None:
    receiver.release.clear()  # the collector takes the first batch and sits on it
    sink = OtlpLogs.otlp(receiver.endpoint, "ztunnel", "ztunnel-otlp-bound")
    sink.max_queue = 8  # (the SDK's queue was sized by the default; ours is the tighter bound)
    hub = TapHub("ztunnel")
    hub.add_sink(sink)
    try:
        for i in range(50):
            hub.publish(event(bytes_sent=i))
        assert _dropped("ztunnel-otlp-bound") == 42
        receiver.release.set()
        got = receiver.wait_for(8)
        assert sorted(r.attributes["bytes_sent"] for r in got) == list(range(8))
        deadline = time.monotonic() + 10  # the exporter counts them out after the answer
        while sink.pending and time.monotonic() < deadline:
            time.sleep(0.02)
        assert sink.pending == 0
        hub.publish(event(bytes_sent=99))  # room again once exported
        assert sink.flush()
        assert receiver.wait_for(9)[-1].attributes["bytes_sent"] == 99
    finally:
        sink.shutdown()
