"""The waypoint process's access log: the same line structlog would write, in batches (a
timer or a size bound), everything written by close."""

from __future__ import annotations

import asyncio
import io
import json
import re

from structlog.testing import capture_logs

from waypoint import telemetry
from waypoint.telemetry import AccessLog, Peer, RequestRecord

ISO = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def record() -> RequestRecord:
    r = RequestRecord("GET", "/a", "web.shop", Peer(None, "spiffe://td/ns/shop/sa/c"), "10.1.0.9")
    r.response_code = 200
    r.upstream_host = "10.1.0.5:8080"
    return r


def test_lines_wait_for_the_timer_then_go_out_in_one_write() -> None:
    async def body() -> None:
        out = io.StringIO()
        log = AccessLog()
        log.open(out)
        log.write({"method": "GET"})
        log.write({"method": "POST"})
        assert out.getvalue() == ""
        await asyncio.sleep(AccessLog.FLUSH_INTERVAL * 2)
        lines = [json.loads(line) for line in out.getvalue().splitlines()]
        assert [line["method"] for line in lines] == ["GET", "POST"]
        assert all(ISO.fullmatch(line["timestamp"]) for line in lines)
        assert {line["event"] for line in lines} == {"request.completed"}

    asyncio.run(body())


def test_a_full_buffer_is_written_at_once_and_close_writes_the_rest() -> None:
    async def body() -> None:
        out = io.StringIO()
        log = AccessLog()
        log.open(out)
        big = "x" * (AccessLog.MAX_BUFFERED // 2)
        log.write({"path": big})
        assert out.getvalue() == ""
        log.write({"path": big})
        assert out.getvalue().count("\n") == 2
        log.write({"path": "/last"})
        log.close()
        assert out.getvalue().splitlines()[-1].startswith('{"path": "/last"')
        assert log.stream is None

    asyncio.run(body())


def test_the_batched_line_has_what_the_structlog_line_has() -> None:
    async def body() -> None:
        with capture_logs() as captured:
            record().done(1.5)
        (through_structlog,) = [e for e in captured if e["event"] == "request.completed"]
        out = io.StringIO()
        telemetry.ACCESS_LOG.open(out)
        try:
            record().done(1.5)
        finally:
            telemetry.ACCESS_LOG.close()
        (line,) = [json.loads(x) for x in out.getvalue().splitlines()]
        # (capture_logs says log_level where the configured chain says level)
        expected = {k: v for k, v in through_structlog.items() if k != "log_level"}
        expected["level"] = through_structlog["log_level"]
        assert set(line) == set(expected) | {"timestamp"}
        assert {k: line[k] for k in expected} == expected

    asyncio.run(body())
