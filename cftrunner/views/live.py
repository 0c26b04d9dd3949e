"""The live progress display on a terminal, read from the store, with log lines printed above it."""

from __future__ import annotations

import contextlib
import math
import sys
import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TextIO, cast

import structlog

from cftrunner import logs
from cftrunner.store import Store
from cftrunner.views.progress import LogTally, Tracker

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.live import Live

log = structlog.get_logger("cftrunner")

REFRESH_SECONDS = 0.5  # how often the counts are read
FLUSH_SECONDS = 0.1  # log lines arriving faster than this are printed in batches
JOIN_SECONDS = 2.0  # how long the end of a run waits for the display's last refresh
BAR_WIDTH = 24


def renderable(tracker: Tracker, tally: LogTally | None = None) -> RenderableType:
    """A bar and the figures of each stage, then the run's line, then what became of the log
    lines kept off the terminal, if any."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    grid = Table.grid(padding=(0, 2))
    for justify in ("left", "left", "right", "right", "right", "left"):
        grid.add_column(justify=justify, no_wrap=True)
    for row in tracker.rows:
        name, done, failed, rate, left = row.cells()
        bar = ProgressBar(total=max(1, row.counts.total), completed=row.counts.processed,
                          width=BAR_WIDTH)
        grid.add_row(name, bar, done, Text(failed, style="red" if row.counts.failed else ""),
                     rate, left)
    said = None if tally is None else tally.line()
    lines = [Text(tracker.run_line()), *([] if said is None else [
        Text(said, style="dim", no_wrap=True, overflow="ellipsis")])]
    return Group(grid, *lines)


class RunProgress:
    """While open, a display of a run's progress on `stream`, read from the store about twice a
    second, so it shows the whole run's progress whichever process does the work. It shows when
    `stream` is a terminal, or always with `enabled` True; otherwise it does nothing at all. While
    it shows, log lines below warning stay off the terminal (`logs.divert`): the log file has them,
    and the display counts them. It never makes the run fail: its own errors are logged at debug
    level, once."""

    def __init__(self, store: Store, run_id: str, stream: TextIO, enabled: bool | None = None,
                 interval: float = REFRESH_SECONDS) -> None:
        self.store = store
        self.run_id = run_id
        self.stream = stream
        self.enabled = enabled
        self.interval = interval
        self.tracker = Tracker(run_id)
        self.tally = LogTally(logs.log_file())
        self.live: Live | None = None
        self._lines: _LogLines | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()
        self._closed = False
        self._failed = False
        self._diverted = False
        self._sink_before: logs.Sink | None = None

    def __enter__(self) -> RunProgress:
        if self.enabled is False or (self.enabled is None and not _isatty(self.stream)):
            return self
        try:
            self.live = _start_live(self.stream, forced=self.enabled is True)
            if self.live is not None:
                # Log lines resolve sys.stderr as they are written (logs.configure).
                self._lines = _LogLines(self.live.console, sys.stderr)
                sys.stderr = cast(TextIO, self._lines)
                self._sink_before, self._diverted = logs.divert(self.tally.add), True
                self._thread = threading.Thread(target=self._loop, args=(self.live, self._lines),
                                                name="cftrunner-progress", daemon=True)
                self._thread.start()
        except Exception as exc:  # noqa: BLE001 - a display never stops a run
            self._note(exc)
            self._stop()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(JOIN_SECONDS)
        self._stop()

    def _stop(self) -> None:
        self._closed = True
        if self._diverted:
            self._diverted = False
            logs.divert(self._sink_before)
        try:
            if self._lines is not None:
                if sys.stderr is cast(TextIO, self._lines):
                    sys.stderr = self._lines.original
                self._lines.print_pending(partial=True)
            if self.live is not None:
                self.live.stop()  # the last frame stays on the screen
        except Exception as exc:  # noqa: BLE001
            self._note(exc)

    def _loop(self, live: Live, lines: _LogLines) -> None:
        due = 0.0
        while True:
            stopping = self._stopping.is_set()
            try:
                lines.print_pending()
            except Exception as exc:  # noqa: BLE001
                self._note(exc)
            if stopping or time.monotonic() >= due:
                self._refresh(live, ended=stopping)
                due = time.monotonic() + self.interval
            if stopping:
                return
            self._stopping.wait(FLUSH_SECONDS)

    def _refresh(self, live: Live, ended: bool = False) -> None:
        try:
            state, counts = self.store.stage_counts(self.run_id)
            self.tracker.add(state, counts, ended)
            if not self._closed:
                live.update(_laid_out(live.console, renderable(self.tracker, self.tally)),
                            refresh=True)
        except Exception as exc:  # noqa: BLE001
            self._note(exc)

    def _note(self, exc: Exception) -> None:
        if not self._failed:
            self._failed = True
            log.debug("progress_failed", error=f"{exc.__class__.__name__}: {exc}")


class _LogLines:
    """sys.stderr while the display shows: whole lines are printed above the display, and lines
    that come faster than one every FLUSH_SECONDS wait for the next batch, because the display is
    drawn again under every print and a busy run logs hundreds of lines a second."""

    def __init__(self, console: Console, original: TextIO) -> None:
        self.console = console
        self.original = original
        self._lock = threading.Lock()  # guards the lines below
        self._printing = threading.Lock()  # keeps batches in order
        self._partial = ""
        self._pending: list[str] = []
        self._printed_at = -math.inf

    def write(self, text: str) -> int:
        with self._lock:
            *whole, self._partial = (self._partial + text).split("\n")
            self._pending.extend(whole)
            due = bool(self._pending) and time.monotonic() - self._printed_at >= FLUSH_SECONDS
        if due:
            self.print_pending()
        return len(text)

    def flush(self) -> None:
        """Lines are printed whole, by `write` or by the display's next tick."""

    def print_pending(self, partial: bool = False) -> None:
        from rich.text import Text

        with self._printing:
            with self._lock:
                lines, self._pending = self._pending, []
                if partial and self._partial:
                    lines.append(self._partial)
                    self._partial = ""
                if lines:
                    self._printed_at = time.monotonic()
            if lines:
                self.console.print(Text.from_ansi("\n".join(lines)))

    def isatty(self) -> bool:
        return _isatty(self.original)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.original, name)


def _isatty(stream: TextIO | None) -> bool:
    try:
        return stream is not None and stream.isatty()
    except (AttributeError, ValueError, OSError):
        return False


def _start_live(stream: TextIO, forced: bool) -> Live | None:
    from rich.console import Console
    from rich.live import Live

    # Soft wrap: log lines printed above the display keep their own lines, for copying.
    console = Console(file=stream, force_terminal=True if forced else None, soft_wrap=True)
    if not forced and (not console.is_terminal or console.is_dumb_terminal):
        return None
    live = Live(console=console, auto_refresh=False, transient=False, redirect_stderr=False,
                redirect_stdout=_isatty(sys.stdout))
    live.start()
    # A second Ctrl-C exits at once (shutdown.install); it must not leave the cursor hidden.
    with contextlib.suppress(Exception):
        console.show_cursor(True)
    return live


def _laid_out(console: Console, frame: RenderableType) -> RenderableType:
    """`frame` laid out once a refresh: the display is drawn again under every batch of log lines,
    and laying out its table each time would cost a millisecond a batch."""
    from rich.segment import Segments

    return Segments(list(console.render(frame)))


Display = Callable[[Store, str], AbstractContextManager[object]]


def on(stream: TextIO, enabled: bool | None = None) -> Display:
    """A display for each run a command drives: RunProgress on `stream`."""

    def display(store: Store, run_id: str) -> AbstractContextManager[object]:
        return RunProgress(store, run_id, stream, enabled)

    return display


def no_display(_store: Store, _run_id: str) -> AbstractContextManager[object]:
    return contextlib.nullcontext()
