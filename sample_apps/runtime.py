"""Process plumbing shared by the sample apps: JSON logs on stderr and signal-driven shutdown."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import structlog
from structlog.typing import FilteringBoundLogger

# Lines must stay machine-readable: a pod's stderr is collected and grepped by event name.
_PROCESSORS: list[structlog.typing.Processor] = [
    structlog.processors.add_log_level,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.dict_tracebacks,
]


def configure_logging(app: str) -> FilteringBoundLogger:
    """Send structlog and stdlib logging (aiohttp, asyncio) to stderr as one JSON object a line."""
    structlog.configure(
        processors=[*_PROCESSORS, structlog.processors.JSONRenderer()],
        wrapper_class=structlog.make_filtering_bound_logger(logging.INFO),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processor=structlog.processors.JSONRenderer(),
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *_PROCESSORS],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    log: FilteringBoundLogger = structlog.get_logger(app=app)
    return log


MainFn = Callable[[asyncio.Event], Coroutine[Any, Any, int]]


def run(main: MainFn, log: FilteringBoundLogger) -> int:
    """Run `main(stop)` on a fresh event loop; SIGTERM/SIGINT set `stop` instead of killing us."""

    async def with_signals() -> int:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()

        def on_signal(sig: signal.Signals) -> None:
            log.info("signal.received", signal=sig.name)
            stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)
        return await main(stop)

    return asyncio.run(with_signals())
