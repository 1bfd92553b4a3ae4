"""structlog set-up shared by every weft process: one line per event, JSON off a terminal."""

from __future__ import annotations

import logging
import os
import sys

import structlog

LEVELS = {"debug": logging.DEBUG, "info": logging.INFO, "warning": logging.WARNING,
          "error": logging.ERROR}  # fmt: skip


def level_from_env(default: int = logging.INFO) -> int:
    """WEFT_LOG_LEVEL (debug, info, warning, error), as the manifests and Helm values set it;
    an unknown value keeps the default, and says so."""
    text = os.environ.get("WEFT_LOG_LEVEL", "").strip().lower()
    if not text:
        return default
    if text not in LEVELS:
        print(
            f"weft: WEFT_LOG_LEVEL={text!r} is not one of {', '.join(LEVELS)}; using info",
            file=sys.stderr,
        )
        return default
    return LEVELS[text]


def configure_logging(*, json_output: bool | None = None, level: int | None = None) -> None:
    if level is None:
        level = level_from_env()
    if json_output is None:
        json_output = not sys.stderr.isatty()
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if json_output else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # one write per line (print() makes two: unbuffered, as the lab runs us, that is
        # two syscalls for every access-log line)
        logger_factory=structlog.WriteLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
