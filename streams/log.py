"""structlog set-up: readable on a terminal, JSON lines otherwise.

Processors bind their context (processor, tenant, session, work unit,
attempt, node) with `structlog.contextvars` or `log.bind`, so every line
says which unit of work it is about.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from onceflow.streams.settings import LogFormat


__all__ = ["configure_logging", "get_logger"]

_configured = False


def configure_logging(fmt: LogFormat = "auto", level: str = "INFO", *, stream: Any = None) -> None:
    global _configured
    stream = stream or sys.stderr
    use_json = fmt == "json" or (fmt == "auto" and not stream.isatty())
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if use_json
        else structlog.dev.ConsoleRenderer(colors=stream.isatty())
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
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level.upper(), logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        cache_logger_on_first_use=False,
    )
    _configured = True


def get_logger(**context: Any) -> Any:
    if not _configured:
        configure_logging()
    return structlog.get_logger().bind(**context)
