"""Logging set up once, at the entry point: to stderr (JSON off a terminal, text on one) and to a log file."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import threading
from collections.abc import Callable, Mapping, MutableMapping
from typing import IO, Any, TextIO

import structlog

from cftrunner.config.settings import LOG_FORMATS, LOG_LEVELS
from cftrunner.exceptions import InputError

LEVELS = LOG_LEVELS
FORMATS = LOG_FORMATS
_NUMBERS = logging.getLevelNamesMapping()

# Told of every event written while set (see `divert`): the event, and whether stderr showed it.
Sink = Callable[[Mapping[str, Any], bool], None]


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

    def __init__(self, stream: IO[str] | None = None) -> None:
        self._stream = stream

    def write(self, text: str) -> None:
        # Not only OSError: a display that redirects stderr may fail in its own ways.
        with contextlib.suppress(Exception):
            _or_stderr(self._stream).write(text)

    def flush(self) -> None:
        with contextlib.suppress(Exception):
            _or_stderr(self._stream).flush()


def _or_stderr(stream: IO[str] | None) -> IO[str]:
    return sys.stderr if stream is None else stream


def _renderer(fmt: str) -> Any:
    if fmt == "console":
        return structlog.dev.ConsoleRenderer(colors=False)
    return structlog.processors.JSONRenderer()


class _Route:
    """The last processor: each event to the log file, if there is one, and to stderr unless it
    is below warning and a log file or a live display (`divert`) takes it instead."""

    def __init__(self, stderr_format: str, file: IO[str] | None, file_format: str) -> None:
        self.stderr = _renderer(stderr_format)
        self.file = file
        self.to_file = _renderer(file_format)
        self._lock = threading.Lock()  # whole lines in the file, from any thread

    def __call__(self, logger: Any, name: str, event: MutableMapping[str, Any]) -> str:
        sink = _sink
        seen = dict(event) if sink is not None else None
        if self.file is not None:
            line = self.to_file(logger, name, dict(event)) + "\n"
            with self._lock, contextlib.suppress(Exception):  # a full disk never stops a run
                self.file.write(line)
        loud = _NUMBERS.get(str(event.get("level", "info")).upper(), logging.INFO) >= logging.WARNING
        shown = loud or (self.file is None and sink is None)
        if seen is not None and sink is not None:
            with contextlib.suppress(Exception):
                sink(seen, shown)
        if not shown:
            raise structlog.DropEvent
        return str(self.stderr(logger, name, event))


# The filtering class configure() gave structlog, and the least level it lets through.
_configured: tuple[type, int] | None = None
_file: IO[str] | None = None
_file_path: str | None = None
_sink: Sink | None = None


def enabled(level: int) -> bool:
    """Whether structlog would write a line at `level`: checked before the lines logged for
    every item, which cost a bound logger each through structlog's lazy proxy even when they
    are then filtered out. Only a level below the one configure() set, while structlog still
    has that configuration, is not."""
    if _configured is None or level >= _configured[1]:
        return True
    return structlog.get_config()["wrapper_class"] is not _configured[0]


def configure(level: str = "info", secrets: list[str] | None = None,
              stream: TextIO | None = None, *, fmt: str | None = None,
              file: str | None = None) -> None:
    """Log events at `level` and above to `stream`, or to stderr as it is when each line is
    written: as `fmt` ("json" or "console"), by default text on a terminal and JSON lines off
    one. With `file`, every event also goes to that file (appended; JSON lines unless `fmt` says
    otherwise), and stderr keeps only warnings and errors. Secrets are redacted from both.
    InputError when the file cannot be opened for writing."""
    global _configured, _file, _file_path
    least = _NUMBERS[level.upper()]
    wrapper = structlog.make_filtering_bound_logger(least)
    opened = _open(file) if file else None
    if _file is not None:
        with contextlib.suppress(Exception):
            _file.close()
    _file, _file_path = opened, file if opened is not None else None
    stderr_format = fmt or ("console" if _isatty(_or_stderr(stream)) else "json")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _Redact(secrets or []),
            _Route(stderr_format, opened, fmt or "json"),
        ],
        wrapper_class=wrapper,
        logger_factory=structlog.PrintLoggerFactory(_Unfailing(stream)),  # type: ignore[arg-type]
        cache_logger_on_first_use=False,
    )
    _configured = (wrapper, least)


def log_file() -> str | None:
    """The file configure() logs to, if any."""
    return _file_path


def divert(sink: Sink | None) -> Sink | None:
    """While `sink` is set (a live display sets it), events below warning no longer print on
    stderr: the log file alone has them, and `sink` is told of every event, to count them.
    Returns the sink set before, to set back."""
    global _sink
    previous, _sink = _sink, sink
    return previous


def _open(path: str) -> IO[str]:
    """The log file, appended to, line by line; created readable by its owner only."""
    try:
        return open(path, "a", encoding="utf-8", buffering=1,  # noqa: SIM115 - kept open
                    opener=lambda name, flags: os.open(name, flags, 0o600))
    except OSError as exc:
        reason = exc.strerror or exc.__class__.__name__
        raise InputError(f"cannot write the log file {path}: {reason}") from None


def _isatty(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False
