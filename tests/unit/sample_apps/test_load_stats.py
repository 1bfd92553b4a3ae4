"""Load-client statistics: percentiles, failure accounting, breakdowns, report rendering."""

from __future__ import annotations

import json

import pytest

from sample_apps.load_stats import NO_HEADER, ErrorKind, Latency, Outcome, Stats, percentile


@pytest.mark.parametrize(
    ("pct", "expected"),
    [(0, 1), (1, 1), (50, 50), (90, 90), (99, 99), (99.5, 100), (100, 100)],
)
def test_nearest_rank_percentile_of_1_to_100(pct: float, expected: float) -> None:
    assert percentile([float(v) for v in range(1, 101)], pct) == expected


def test_percentile_of_few_values_is_an_observed_value() -> None:
    values = [0.010, 0.020, 0.030]
    assert percentile(values, 50) == 0.020
    assert percentile(values, 99) == 0.030
    assert percentile([0.5], 90) == 0.5
    with pytest.raises(ValueError):
        percentile([], 50)


def test_latency_summary_is_in_milliseconds_and_order_independent() -> None:
    latency = Latency.of([0.004, 0.001, 0.003, 0.002, 0.010])
    assert latency == Latency(p50_ms=3.0, p90_ms=10.0, p99_ms=10.0, max_ms=10.0)
    assert Latency.of([]) is None


def ok(latency_s: float, pod: str = "p1", version: str = "v1") -> Outcome:
    return Outcome(latency_s, status=200, pod=pod, version=version)


def canary_stats() -> Stats:
    stats = Stats()
    outcomes = [
        *(ok(0.001 * (i + 1), "echo-v1-a", "v1") for i in range(9)),
        ok(0.050, "echo-v2-b", "v2"),
        Outcome(0.002, status=503, pod="echo-v2-b", version="v2"),
        Outcome(0.001, status=404),  # no replica headers: someone else answered
        Outcome(5.0, error=ErrorKind.TIMEOUT),
        Outcome(0.001, error=ErrorKind.CONNECT),
        Outcome(0.001, error=ErrorKind.CONNECT),
    ]
    for outcome in outcomes:
        stats.request_sent()
        stats.record(outcome)
    stats.request_sent()  # still in flight when the run ends
    return stats


def test_report_counts_successes_failures_and_unfinished() -> None:
    report = canary_stats().report("http://echo/", "HTTP/1.1", elapsed_s=2.0)
    assert (report.sent, report.succeeded, report.failed, report.unfinished) == (16, 10, 5, 1)
    assert report.failures_by_error == {"connect_error": 2, "timeout": 1}
    assert report.failures_by_status == {"404": 1, "503": 1}
    assert report.rate_achieved == 7.5  # finished requests per second


def test_latency_is_over_successful_requests_only() -> None:
    report = canary_stats().report("http://echo/", "HTTP/1.1", elapsed_s=2.0)
    assert report.latency == Latency(p50_ms=5.0, p90_ms=9.0, p99_ms=50.0, max_ms=50.0)


def test_breakdown_by_pod_and_version_counts_every_http_answer() -> None:
    report = canary_stats().report("http://echo/", "HTTP/1.1", elapsed_s=2.0)
    assert report.by_pod == {NO_HEADER: 1, "echo-v1-a": 9, "echo-v2-b": 2}
    assert report.by_version == {NO_HEADER: 1, "v1": 9, "v2": 2}


@pytest.mark.parametrize(
    ("outcomes", "code"),
    [
        ([ok(0.001)], 0),
        ([ok(0.001), Outcome(0.001, status=500)], 1),
        ([Outcome(0.001, error=ErrorKind.CONNECT)], 1),
        ([], 1),  # nothing succeeded: not a pass
    ],
)
def test_exit_code(outcomes: list[Outcome], code: int) -> None:
    stats = Stats()
    for outcome in outcomes:
        stats.request_sent()
        stats.record(outcome)
    assert stats.report("u", "HTTP/1.1", 1.0).exit_code == code


def test_json_report_shape() -> None:
    report = canary_stats().report("http://echo/", "HTTP/2", elapsed_s=2.0)
    data = json.loads(report.render_json())
    assert data == {
        "url": "http://echo/",
        "protocol": "HTTP/2",
        "requests": {"sent": 16, "succeeded": 10, "failed": 5, "unfinished": 1},
        "failures": {
            "by_error": {"connect_error": 2, "timeout": 1},
            "by_status": {"404": 1, "503": 1},
        },
        "elapsed_s": 2.0,
        "rate_achieved": 7.5,
        "latency_ms": {"p50": 5.0, "p90": 9.0, "p99": 50.0, "max": 50.0},
        "responses": {
            "by_pod": {NO_HEADER: 1, "echo-v1-a": 9, "echo-v2-b": 2},
            "by_version": {NO_HEADER: 1, "v1": 9, "v2": 2},
        },
    }


def test_text_report_lines() -> None:
    text = canary_stats().report("http://echo/", "HTTP/1.1", elapsed_s=2.0).render_text()
    assert text.splitlines() == [
        "URL:         http://echo/ (HTTP/1.1)",
        "Requests:    sent 16, succeeded 10, failed 5, unfinished 1",
        "Failures:    connect_error 2, timeout 1, status 404 1, status 503 1",
        "Rate:        7.5 req/s over 2.00 s",
        "Latency ms:  p50 5.00  p90 9.00  p99 50.00  max 50.00",
        "By pod:      (none) 1 (8.3%), echo-v1-a 9 (75.0%), echo-v2-b 2 (16.7%)",
        "By version:  (none) 1 (8.3%), v1 9 (75.0%), v2 2 (16.7%)",
    ]


def test_text_report_without_answers() -> None:
    stats = Stats()
    stats.request_sent()
    stats.record(Outcome(0.001, error=ErrorKind.CONNECT))
    text = stats.report("http://x/", "HTTP/1.1", elapsed_s=0.0).render_text()
    assert "Latency ms:  no successful requests" in text
    assert "By pod:      no responses" in text
    assert "Rate:        0.0 req/s" in text


def test_interval_reports_rate_and_latency_since_previous_interval() -> None:
    stats = Stats()
    for latency in (0.010, 0.020):
        stats.request_sent()
        stats.record(ok(latency))
    first = stats.take_interval(1.0)
    assert (first.sent, first.succeeded, first.rate, first.p99_ms) == (2, 2, 2.0, 20.0)
    stats.request_sent()
    stats.record(ok(0.001))
    stats.request_sent()
    second = stats.take_interval(0.5)
    assert (second.sent, second.in_flight, second.rate, second.p50_ms) == (4, 1, 2.0, 1.0)
    third = stats.take_interval(0.5)
    assert (third.rate, third.p50_ms) == (0.0, None)
