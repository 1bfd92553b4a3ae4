"""Load-client bookkeeping: outcomes in, percentiles, pod/version breakdown and reports out.

Pure on purpose: the load client's timing code records `Outcome`s, everything derived from
them is here and unit-tested.
"""

from __future__ import annotations

import enum
import json
import math
from array import array
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

NO_HEADER = "(none)"


class ErrorKind(enum.StrEnum):
    """Why a request got no HTTP answer; the keys of the report's `failures.by_error`."""

    CONNECT = "connect_error"
    TIMEOUT = "timeout"
    DISCONNECTED = "disconnected"
    STREAM_RESET = "stream_reset"
    PROTOCOL = "protocol_error"
    OTHER = "other"


@dataclass(frozen=True)
class Outcome:
    """One finished request: an HTTP status (with the replica headers) or an error."""

    latency_s: float
    status: int | None = None
    error: ErrorKind | None = None
    pod: str | None = None
    version: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status is not None and 200 <= self.status < 300


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile (always a value that was observed); `sorted_values` non-empty."""
    if not sorted_values:
        raise ValueError("percentile of no values")
    rank = math.ceil(pct / 100 * len(sorted_values))
    return sorted_values[max(rank, 1) - 1]


@dataclass(frozen=True)
class Latency:
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float

    @classmethod
    def of(cls, seconds: Sequence[float]) -> Latency | None:
        if not seconds:
            return None
        ordered = sorted(seconds)

        def ms(value: float) -> float:
            return round(value * 1000, 3)

        return cls(
            p50_ms=ms(percentile(ordered, 50)),
            p90_ms=ms(percentile(ordered, 90)),
            p99_ms=ms(percentile(ordered, 99)),
            max_ms=ms(ordered[-1]),
        )

    def to_json(self) -> dict[str, float]:
        return {"p50": self.p50_ms, "p90": self.p90_ms, "p99": self.p99_ms, "max": self.max_ms}


@dataclass(frozen=True)
class Report:
    url: str
    protocol: str
    sent: int
    succeeded: int
    failed: int
    unfinished: int  # still in flight when the run ended (duration or signal): not failures
    failures_by_error: Mapping[str, int]
    failures_by_status: Mapping[str, int]
    elapsed_s: float
    latency: Latency | None
    by_pod: Mapping[str, int]
    by_version: Mapping[str, int]

    @property
    def rate_achieved(self) -> float:
        """Finished requests (ok or not) per second of run time."""
        finished = self.succeeded + self.failed
        return finished / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def exit_code(self) -> int:
        return 0 if self.succeeded > 0 and self.failed == 0 else 1

    def to_json(self) -> dict[str, Any]:
        return {
            "url": self.url,
            "protocol": self.protocol,
            "requests": {
                "sent": self.sent,
                "succeeded": self.succeeded,
                "failed": self.failed,
                "unfinished": self.unfinished,
            },
            "failures": {
                "by_error": dict(self.failures_by_error),
                "by_status": dict(self.failures_by_status),
            },
            "elapsed_s": round(self.elapsed_s, 3),
            "rate_achieved": round(self.rate_achieved, 3),
            "latency_ms": self.latency.to_json() if self.latency else None,
            "responses": {"by_pod": dict(self.by_pod), "by_version": dict(self.by_version)},
        }

    def render_json(self) -> str:
        return json.dumps(self.to_json(), indent=2)

    def render_text(self) -> str:
        lines = [
            f"URL:         {self.url} ({self.protocol})",
            f"Requests:    sent {self.sent}, succeeded {self.succeeded}, failed {self.failed}"
            + (f", unfinished {self.unfinished}" if self.unfinished else ""),
        ]
        if self.failed:
            parts = [f"{kind} {n}" for kind, n in self.failures_by_error.items()]
            parts += [f"status {status} {n}" for status, n in self.failures_by_status.items()]
            lines.append(f"Failures:    {', '.join(parts)}")
        lines.append(f"Rate:        {self.rate_achieved:.1f} req/s over {self.elapsed_s:.2f} s")
        if self.latency:
            lat = self.latency
            lines.append(
                f"Latency ms:  p50 {lat.p50_ms:.2f}  p90 {lat.p90_ms:.2f}"
                f"  p99 {lat.p99_ms:.2f}  max {lat.max_ms:.2f}"
            )
        else:
            lines.append("Latency ms:  no successful requests")
        lines.append(f"By pod:      {_shares(self.by_pod)}")
        lines.append(f"By version:  {_shares(self.by_version)}")
        return "\n".join(lines)


def _shares(counts: Mapping[str, int]) -> str:
    total = sum(counts.values())
    if not total:
        return "no responses"
    return ", ".join(f"{key} {n} ({100 * n / total:.1f}%)" for key, n in counts.items())


@dataclass(frozen=True)
class Interval:
    """Progress since the previous interval, for the periodic `load.interim` log line."""

    sent: int
    succeeded: int
    failed: int
    in_flight: int
    rate: float  # finished per second over the interval
    p50_ms: float | None
    p99_ms: float | None


@dataclass
class Stats:
    sent: int = 0
    succeeded: int = 0
    failed: int = 0
    by_error: Counter[str] = field(default_factory=Counter)
    by_status: Counter[str] = field(default_factory=Counter)
    by_pod: Counter[str] = field(default_factory=Counter)
    by_version: Counter[str] = field(default_factory=Counter)
    # array('d'): a day at a few hundred req/s must still fit in memory.
    latencies: array[float] = field(default_factory=lambda: array("d"))
    _mark_finished: int = 0
    _mark_latencies: int = 0

    def request_sent(self) -> None:
        self.sent += 1

    def record(self, outcome: Outcome) -> None:
        if outcome.status is not None:
            self.by_pod[outcome.pod or NO_HEADER] += 1
            self.by_version[outcome.version or NO_HEADER] += 1
        if outcome.ok:
            self.succeeded += 1
            self.latencies.append(outcome.latency_s)
        else:
            self.failed += 1
            if outcome.error is not None:
                self.by_error[outcome.error.value] += 1
            else:
                self.by_status[str(outcome.status)] += 1

    @property
    def finished(self) -> int:
        return self.succeeded + self.failed

    @property
    def in_flight(self) -> int:
        return self.sent - self.finished

    def take_interval(self, interval_s: float) -> Interval:
        """Counts so far plus rate and latency since the last call."""
        recent = self.latencies[self._mark_latencies :]
        latency = Latency.of(recent)
        finished_now = self.finished - self._mark_finished
        self._mark_finished = self.finished
        self._mark_latencies = len(self.latencies)
        return Interval(
            sent=self.sent,
            succeeded=self.succeeded,
            failed=self.failed,
            in_flight=self.in_flight,
            rate=round(finished_now / interval_s, 3) if interval_s > 0 else 0.0,
            p50_ms=latency.p50_ms if latency else None,
            p99_ms=latency.p99_ms if latency else None,
        )

    def report(self, url: str, protocol: str, elapsed_s: float) -> Report:
        return Report(
            url=url,
            protocol=protocol,
            sent=self.sent,
            succeeded=self.succeeded,
            failed=self.failed,
            unfinished=self.in_flight,
            failures_by_error=dict(sorted(self.by_error.items())),
            failures_by_status=dict(sorted(self.by_status.items())),
            elapsed_s=elapsed_s,
            latency=Latency.of(self.latencies),
            by_pod=dict(sorted(self.by_pod.items())),
            by_version=dict(sorted(self.by_version.items())),
        )
