"""Structured logging for every Carewatch process (key=value on a terminal, JSON lines in production)."""

from __future__ import annotations

import logging
import sys

import structlog

from carewatch.settings import Settings


class _CurrentStderr:
    """Whatever ``sys.stderr`` is at the moment of writing. structlog keeps the stream it is given; a caller that
    swaps stderr for a while (a CLI test runner, pytest's capture) would leave it writing to a closed file."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


def configure_logging(settings: Settings) -> None:
    level = getattr(logging, settings.log_level.upper(), logging.INFO)
    logging.basicConfig(level=level, stream=_CurrentStderr(), format="%(message)s")
    renderer = structlog.processors.JSONRenderer() if settings.log_json else structlog.dev.ConsoleRenderer(colors=False)
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        # a proxy to whatever sys.stderr is now (tests swap it); it writes like a TextIO without being one
        logger_factory=structlog.PrintLoggerFactory(file=_CurrentStderr()),  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
