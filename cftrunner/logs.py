"""Logging set up once, at the entry point: JSON lines off a terminal, readable text on one."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import MutableMapping
from typing import Any, TextIO

import structlog

from cftrunner.config.settings import LOG_LEVELS

LEVELS = LOG_LEVELS


class _Redact:
    """Replace every occurrence of the secrets in any string field; a last line of defence."""

    def __init__(self, secrets: list[str]) -> None:
        self.secrets = [s for s in secrets if s]

    def __call__(self, _logger: Any, _name: str,
                 event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        for key, value in event.items():
            if isinstance(value, str):
                for secret in self.secrets:
                    value = value.replace(secret, "[redacted]")
                event[key] = value
        return event


class _Unfailing:
    """A stream whose write errors (a closed pipe, a full disk) never stop the run. Without a
    stream of its own it writes to whatever `sys.stderr` is at the time, so that a terminal display
    that redirects stderr while it is live (see `progress`) prints log lines above itself."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self._stream = stream

    def write(self, text: str) -> None:
        # Not only OSError: a display that redirects stderr may fail in its own ways.
        with contextlib.suppress(Exception):
            _or_stderr(self._stream).write(text)

    def flush(self) -> None:
        with contextlib.suppress(Exception):
            _or_stderr(self._stream).flush()


def _or_stderr(stream: TextIO | None) -> TextIO:
    return sys.stderr if stream is None else stream


# The filtering class configure() gave structlog, and the least level it lets through.
_configured: tuple[type, int] | None = None


def enabled(level: int) -> bool:
    """Whether structlog would write a line at `level`: checked before the lines logged for
    every item, which cost a bound logger each through structlog's lazy proxy even when they
    are then filtered out. Only a level below the one configure() set, while structlog still
    has that configuration, is not."""
    if _configured is None or level >= _configured[1]:
        return True
    return structlog.get_config()["wrapper_class"] is not _configured[0]


def configure(level: str = "info", secrets: list[str] | None = None,
              stream: TextIO | None = None) -> None:
    """Log to `stream`, or to stderr as it is when each line is written."""
    global _configured
    least = logging.getLevelNamesMapping()[level.upper()]
    wrapper = structlog.make_filtering_bound_logger(least)
    renderer: Any = (structlog.dev.ConsoleRenderer(colors=False) if _or_stderr(stream).isatty()
                     else structlog.processors.JSONRenderer())
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _Redact(secrets or []),
            renderer,
        ],
        wrapper_class=wrapper,
        logger_factory=structlog.PrintLoggerFactory(_Unfailing(stream)),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    _configured = (wrapper, least)
