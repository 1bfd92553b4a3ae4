"""The load client's scheduler, driven against an in-memory transport (no sockets)."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from typing import Any

import structlog
from structlog.testing import capture_logs

from sample_apps.httpwire import HttpTarget
from sample_apps.load_client import LoadConfig, LoadRun
from sample_apps.load_stats import ErrorKind, Report
from sample_apps.load_transport import HttpReply, RequestError

TARGET = HttpTarget.parse("http://echo/")


class FakeTransport:
    protocol = "HTTP/1.1"

    def __init__(self, delay_s: float = 0.0, error: Exception | None = None) -> None:
        self.delay_s = delay_s
        self.error = error
        self.in_flight = 0
        self.max_in_flight = 0
        self.closed = False

    async def get(self) -> HttpReply:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(self.delay_s)
            if self.error is not None:
                raise self.error
            return HttpReply(200, pod="p1", version="v1")
        finally:
            self.in_flight -= 1

    async def close(self) -> None:
        self.closed = True


BASE = LoadConfig(
    target=TARGET,
    rate=None,
    count=None,
    concurrency=1,
    duration_s=5.0,
    timeout_s=1.0,
    interval_s=0.0,
)


def config(**overrides: Any) -> LoadConfig:
    return dataclasses.replace(BASE, **overrides)


def run(cfg: LoadConfig, transport: FakeTransport, stop_after: float | None = None) -> Report:
    async def main() -> Report:
        stop = asyncio.Event()
        if stop_after is not None:
            asyncio.get_running_loop().call_later(stop_after, stop.set)
        return await LoadRun(cfg, transport, structlog.get_logger()).run(stop)

    return asyncio.run(main())


def test_count_mode_keeps_exactly_concurrency_requests_in_flight() -> None:
    transport = FakeTransport(delay_s=0.005)
    report = run(config(count=12, concurrency=3), transport)
    assert (report.sent, report.succeeded, report.failed) == (12, 12, 0)
    assert transport.max_in_flight == 3 and transport.closed
    assert report.by_pod == {"p1": 12}


def test_rate_mode_is_open_loop_and_stops_at_count() -> None:
    transport = FakeTransport(delay_s=0.05)  # slower than the 10 ms schedule
    started = time.monotonic()
    report = run(config(rate=100, count=5), transport)
    assert (report.sent, report.succeeded) == (5, 5)
    assert transport.max_in_flight == 5  # did not wait for answers before sending more
    assert time.monotonic() - started < 0.5


def test_rate_mode_follows_the_schedule_until_duration() -> None:
    report = run(config(rate=50, duration_s=0.3), FakeTransport())
    assert 14 <= report.sent <= 16  # t = 0, 20 ms, ... < 300 ms
    assert report.failed == 0


def test_duration_cuts_requests_in_flight_as_unfinished() -> None:
    started = time.monotonic()
    report = run(config(count=4, concurrency=2, duration_s=0.1), FakeTransport(delay_s=10))
    assert time.monotonic() - started < 1
    assert (report.sent, report.succeeded, report.failed, report.unfinished) == (2, 0, 0, 2)
    assert report.exit_code == 1


def test_stop_signal_ends_the_run_early_with_a_report() -> None:
    report = run(config(rate=20, duration_s=30), FakeTransport(), stop_after=0.12)
    assert 2 <= report.sent <= 4 and report.succeeded == report.sent
    assert report.elapsed_s < 1 and report.exit_code == 0


def test_slow_answers_time_out() -> None:
    report = run(config(count=2, timeout_s=0.02), FakeTransport(delay_s=1))
    assert report.failures_by_error == {ErrorKind.TIMEOUT.value: 2}


def test_transport_errors_are_counted_and_logged_once_per_kind() -> None:
    transport = FakeTransport(error=RequestError(ErrorKind.CONNECT, "refused"))
    with capture_logs() as logs:
        report = run(config(count=5), transport)
    assert report.failures_by_error == {"connect_error": 5}
    assert [e["event"] for e in logs if e["log_level"] == "warning"] == ["load.request_failed"]


def test_unexpected_transport_bug_costs_one_request_not_the_run() -> None:
    with capture_logs() as logs:
        report = run(config(count=3), FakeTransport(error=RuntimeError("bug")))
    assert report.failures_by_error == {"other": 3}
    assert sum(e["event"] == "load.unexpected_error" for e in logs) == 1  # with traceback


def test_interim_lines_are_logged_every_interval() -> None:
    with capture_logs() as logs:
        run(config(rate=50, duration_s=0.35, interval_s=0.1), FakeTransport())
    interim = [e for e in logs if e["event"] == "load.interim"]
    assert 2 <= len(interim) <= 3
    assert interim[0]["rate"] > 0 and interim[0]["failed"] == 0
