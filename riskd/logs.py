"""structlog set-up: JSON lines on stdout (console rendering on a terminal).

Context (market, gateway, stream) is bound by the code that knows it.  Money
decisions are logged at INFO without account ids: accounts appear only at
DEBUG, so INFO logs can be shipped where account data must not go.
"""

from __future__ import annotations

import logging
import sys

import structlog

__all__ = ["configure", "level"]

_level = "info"


def level() -> str:
    """The level :func:`configure` last set (a child process logs at the same)."""
    return _level


def configure(level: str = "info", *, json: bool | None = None) -> None:
    global _level
    _level = level
    if json is None:
        json = not sys.stdout.isatty()
    renderer: structlog.types.Processor = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.dict_tracebacks,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.WriteLoggerFactory(sys.stdout),
        cache_logger_on_first_use=True,
    )
