"""Load client: fixed-rate or fixed-count GETs against one URL, then a report on stdout.

    python -m sample_apps.load_client URL --rate R [--count N] [options]
    python -m sample_apps.load_client URL --count N [--concurrency C] [options]

--rate is an open-loop schedule (request i goes out at start + i/R whether or not earlier
ones have answered), so a slow server shows up as latency, not as a lower send rate.
--count alone sends N requests from C workers, each waiting for its previous answer.
The run always ends by itself: after --count requests or when --duration is up, whichever
comes first; requests still in flight then are reported as "unfinished", not as failures.
Progress lines (--interval) and diagnostics go to stderr as JSON; stdout carries only
the report. Exit code: 0 if something succeeded and nothing failed, 1 otherwise, 2 on
bad arguments.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from dataclasses import dataclass

import click
from structlog.typing import FilteringBoundLogger

from sample_apps.httpwire import HttpTarget
from sample_apps.load_stats import ErrorKind, Outcome, Report, Stats
from sample_apps.load_transport import RequestError, Transport, make_transport
from sample_apps.runtime import configure_logging, run

MAX_DURATION_S = 86_400.0
MAX_RATE = 100_000.0
MAX_CONCURRENCY = 10_000
MAX_DISTINCT_ERRORS_LOGGED = 50


@dataclass(frozen=True)
class LoadConfig:
    target: HttpTarget
    rate: float | None
    count: int | None
    concurrency: int
    duration_s: float
    timeout_s: float
    interval_s: float


class LoadRun:
    """One run: schedules requests, records outcomes in `Stats`, honours duration and `stop`."""

    def __init__(self, config: LoadConfig, transport: Transport, log: FilteringBoundLogger) -> None:
        self._config = config
        self._transport = transport
        self._log = log
        self.stats = Stats()
        self._errors_seen: set[str] = set()

    async def run(self, stop: asyncio.Event) -> Report:
        loop = asyncio.get_running_loop()
        started = loop.time()
        work = asyncio.create_task(self._by_rate() if self._config.rate else self._by_count())
        stopped = asyncio.create_task(_wait_for(stop))
        helpers = [stopped]
        if self._config.interval_s > 0:
            helpers.append(asyncio.create_task(self._report_progress()))
        await asyncio.wait(
            [work, stopped], timeout=self._config.duration_s, return_when=asyncio.FIRST_COMPLETED
        )
        for task in [work, *helpers]:
            task.cancel()
        await asyncio.wait([work, *helpers])
        elapsed = loop.time() - started
        await self._transport.close()
        if not work.cancelled():
            work.result()  # surfaces a scheduler bug instead of reporting a silent short run
        return self.stats.report(self._config.target.url, self._transport.protocol, elapsed)

    async def _by_rate(self) -> None:
        assert self._config.rate is not None
        loop = asyncio.get_running_loop()
        start = loop.time()
        in_flight: set[asyncio.Task[None]] = set()
        sent = 0
        try:
            while self._config.count is None or sent < self._config.count:
                # sleep(0) when behind schedule: catch up, but still let answers be processed.
                await asyncio.sleep(max(0.0, start + sent / self._config.rate - loop.time()))
                task = asyncio.create_task(self._one())
                in_flight.add(task)
                task.add_done_callback(in_flight.discard)
                sent += 1
            if in_flight:
                await asyncio.wait(in_flight)
        finally:
            await _cancel_all(in_flight)

    async def _by_count(self) -> None:
        assert self._config.count is not None
        remaining = self._config.count

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                await self._one()

        workers = {
            asyncio.create_task(worker())
            for _ in range(min(self._config.concurrency, self._config.count))
        }
        try:
            await asyncio.gather(*workers)
        finally:
            await _cancel_all(workers)

    async def _one(self) -> None:
        self.stats.request_sent()
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self._config.timeout_s):
                reply = await self._transport.get()
        except TimeoutError:
            outcome = Outcome(time.perf_counter() - started, error=ErrorKind.TIMEOUT)
        except RequestError as exc:
            if self._first_time(f"{exc.kind.value}: {exc.detail}"):
                self._log.warning("load.request_failed", kind=exc.kind.value, detail=exc.detail)
            outcome = Outcome(time.perf_counter() - started, error=exc.kind)
        except Exception as exc:  # a transport bug must cost one request, not the whole run
            if self._first_time(f"bug: {type(exc).__name__}"):
                self._log.exception("load.unexpected_error", error=repr(exc))
            outcome = Outcome(time.perf_counter() - started, error=ErrorKind.OTHER)
        else:
            outcome = Outcome(
                time.perf_counter() - started,
                status=reply.status,
                pod=reply.pod,
                version=reply.version,
            )
        self.stats.record(outcome)

    def _first_time(self, error: str) -> bool:
        # One log line per distinct error: a dead backend must not flood stderr at --rate 1000.
        if error in self._errors_seen or len(self._errors_seen) >= MAX_DISTINCT_ERRORS_LOGGED:
            return False
        self._errors_seen.add(error)
        return True

    async def _report_progress(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            await asyncio.sleep(self._config.interval_s)
            interval = self.stats.take_interval(self._config.interval_s)
            self._log.info(
                "load.interim",
                elapsed_s=round(loop.time() - started, 3),
                **dataclasses.asdict(interval),
            )


async def _wait_for(event: asyncio.Event) -> None:
    await event.wait()


async def _cancel_all(tasks: set[asyncio.Task[None]]) -> None:
    pending = [task for task in tasks if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending)


async def run_load(
    config: LoadConfig,
    http2: bool,
    new_connections: bool,
    output: str,
    log: FilteringBoundLogger,
    stop: asyncio.Event,
) -> int:
    transport = make_transport(config.target, http2=http2, new_connections=new_connections)
    log.info(
        "load.started",
        url=config.target.url,
        protocol=transport.protocol,
        rate=config.rate,
        count=config.count,
        concurrency=config.concurrency,
        duration_s=config.duration_s,
        new_connections=new_connections,
    )
    report = await LoadRun(config, transport, log).run(stop)
    log.info(
        "load.finished",
        sent=report.sent,
        succeeded=report.succeeded,
        failed=report.failed,
        unfinished=report.unfinished,
    )
    click.echo(report.render_json() if output == "json" else report.render_text())
    return report.exit_code


def _parse_url(ctx: click.Context, param: click.Parameter, value: str) -> HttpTarget:
    try:
        return HttpTarget.parse(value)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("url", callback=_parse_url)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True, max=MAX_RATE),
    help="Requests per second, on a fixed open-loop schedule.",
)
@click.option("--count", type=click.IntRange(min=1), help="Number of requests (caps --rate too).")
@click.option(
    "--concurrency",
    type=click.IntRange(1, MAX_CONCURRENCY),
    default=1,
    show_default=True,
    help="Parallel workers for --count without --rate.",
)
@click.option(
    "--duration",
    type=click.FloatRange(min=0, min_open=True, max=MAX_DURATION_S),
    default=10.0,
    show_default=True,
    help="Hard upper bound on run time, seconds.",
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=5.0,
    show_default=True,
    help="Per request, seconds.",
)
@click.option(
    "--new-connections", is_flag=True, help="One new TCP connection per request (no keep-alive)."
)
@click.option("--http2", is_flag=True, help="h2c with prior knowledge instead of HTTP/1.1.")
@click.option(
    "--interval",
    type=click.FloatRange(min=0),
    default=0.0,
    show_default=True,
    help="Log an interim summary to stderr every this many seconds (0: never).",
)
@click.option(
    "-o",
    "--output",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Final report format (stdout).",
)
@click.pass_context
def main(
    ctx: click.Context,
    url: HttpTarget,
    rate: float | None,
    count: int | None,
    concurrency: int,
    duration: float,
    timeout: float,
    new_connections: bool,
    http2: bool,
    interval: float,
    output: str,
) -> None:
    """Send GET requests to URL and report success, latency and which pods answered."""
    if rate is None and count is None:
        raise click.UsageError("give --rate, --count, or both")
    concurrency_source = ctx.get_parameter_source("concurrency")
    if rate is not None and concurrency_source is click.core.ParameterSource.COMMANDLINE:
        raise click.UsageError(
            "--concurrency applies to --count alone; --rate is open-loop (no worker limit)"
        )
    log = configure_logging("load_client")
    config = LoadConfig(
        target=url,
        rate=rate,
        count=count,
        concurrency=concurrency,
        duration_s=duration,
        timeout_s=timeout,
        interval_s=interval,
    )
    ctx.exit(run(lambda stop: run_load(config, http2, new_connections, output, log, stop), log))


if __name__ == "__main__":
    main(prog_name="python -m sample_apps.load_client")
