"""The progress display on a real store: nothing at all off a terminal; on one, the store's counts
as they change, warnings printed above it, other log lines counted, and never an error out of it."""

from __future__ import annotations

import io
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import sqlalchemy as sa
import structlog
from structlog.testing import capture_logs

from cftrunner import logs
from cftrunner.states import RunState
from cftrunner.store import Store
from cftrunner.store.schema import items
from cftrunner.views.live import RunProgress
from tests.conftest import make_run

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture(autouse=True)
def a_plain_terminal(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.setenv("TERM", "xterm-256color")
    monkeypatch.setenv("COLUMNS", "100")
    yield
    structlog.reset_defaults()


@pytest.fixture
def run(store: Store) -> str:
    store.create_run(make_run("r1"), ["a", "b", "c"])
    return "r1"


def set_stages(store: Store, stages: dict[int, str]) -> None:
    """Move items as another process driving the run would."""
    with store.engine.begin() as conn:
        for position, stage in stages.items():
            conn.execute(items.update().where(items.c.run_id == "r1", items.c.position == position)
                         .values(stage=stage))


def screen(stream: io.StringIO) -> list[str]:
    """What was written, without colours and cursor moves, one line per row drawn."""
    return [line.rstrip() for line in re.split(r"\r\n|\r|\n", ANSI.sub("", stream.getvalue()))
            if line.strip()]


def words(line: str) -> str:
    return " ".join(line.replace("━", "").replace("╸", "").replace("╺", "").split())


def wait_for(condition: Callable[[], bool], seconds: float = 5.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_stage_counts_are_the_run_state_and_its_items_per_stage(store: Store, run: str) -> None:
    set_stages(store, {0: "GENERATED", 1: "GEN_FAILED"})
    assert store.stage_counts(run) == (RunState.CREATED,
                                       {"PENDING": 1, "GENERATED": 1, "GEN_FAILED": 1})


def test_off_a_terminal_the_display_starts_no_thread_and_sends_no_query(
        store: Store, run: str) -> None:
    sent: list[str] = []
    for engine in (store.engine, store.write_engine):
        sa.event.listen(engine, "before_cursor_execute",
                        lambda _conn, _cursor, statement, *_: sent.append(statement))
    threads = threading.active_count()
    stream = io.StringIO()
    with RunProgress(store, run, stream, interval=0.01) as shown:
        time.sleep(0.1)
        assert threading.active_count() == threads
    assert shown.live is None and stream.getvalue() == "" and sent == []


def test_no_progress_shows_nothing_even_on_a_terminal(store: Store, run: str) -> None:
    stream = Terminal()
    with RunProgress(store, run, stream, enabled=False, interval=0.01) as shown:
        time.sleep(0.05)
    assert shown.live is None and stream.getvalue() == ""


def test_on_a_terminal_it_shows_the_counts_in_the_store_as_they_change(
        store: Store, run: str) -> None:
    stream = Terminal()
    with RunProgress(store, run, stream, interval=0.02):
        wait_for(lambda: any(words(line).startswith("generate 0/3") for line in screen(stream)))
        set_stages(store, {0: "ADDED", 1: "ADDED", 2: "JUDGE_FAILED"})
        wait_for(lambda: any(words(line).startswith("add 2/2") for line in screen(stream)))
    last = [words(line) for line in screen(stream)[-5:]]
    assert [" ".join(line.split()[:4]) for line in last[:4]] == [
        "generate 3/3 0 failed", "judge 2/3 1 failed", "trace 2/2 0 failed", "add 2/2 0 failed"]
    assert all(line.endswith(" done") for line in last[:4])
    assert last[4].startswith("run r1 CREATED: items in progress")


def test_warnings_written_while_it_shows_print_above_it(
        store: Store, run: str, monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    logs.configure("info")
    with RunProgress(store, run, sys.stderr, interval=0.02):
        wait_for(lambda: "generate" in terminal.getvalue())
        structlog.get_logger("cftrunner").warning("request_retry", what="trace", status_code=503)
    assert sys.stderr is terminal
    lines = screen(terminal)
    [logged] = [n for n, line in enumerate(lines) if line.startswith("20") and "request_retry" in line]
    assert "status_code=503" in lines[logged] and "generate" not in lines[logged]
    assert any(line.startswith("generate") for line in lines[logged + 1:])


def test_lines_below_warning_stay_off_the_terminal_and_the_display_counts_them(
        store: Store, run: str, monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    logs.configure("info")
    with RunProgress(store, run, sys.stderr, interval=0.02):
        wait_for(lambda: "generate" in terminal.getvalue())
        for n in range(3):
            structlog.get_logger("cftrunner").info("effect_done", key=f"add:{n}")
        wait_for(lambda: "lines not shown" in terminal.getvalue())
    lines = screen(terminal)
    assert not any("effect_done" in line for line in lines if not line.startswith("log: "))
    assert lines[-1] == "log: 3 lines not shown (--log-file FILE keeps them), last: effect_done key=add:2"
    structlog.get_logger("cftrunner").info("after", n=1)  # once it is closed, lines print again
    assert "after" in terminal.getvalue()


def test_a_display_that_cannot_read_the_store_never_fails_and_says_so_once(store: Store) -> None:
    stream = Terminal()
    with capture_logs() as logged, RunProgress(store, "ghost", stream, interval=0.01):
        time.sleep(0.1)
    assert [(e["event"], e["log_level"]) for e in logged] == [("progress_failed", "debug")]
    assert "RunNotFoundError" in logged[0]["error"]


def test_a_burst_of_log_lines_prints_in_order_without_a_redraw_for_each(
        store: Store, run: str, monkeypatch: pytest.MonkeyPatch) -> None:
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    logs.configure("info")
    with RunProgress(store, run, sys.stderr, interval=0.02):
        wait_for(lambda: "generate" in terminal.getvalue())
        for n in range(500):
            structlog.get_logger("cftrunner").warning("effect_unknown", n=n)
    lines = screen(terminal)
    assert [int(line.rsplit("n=", 1)[1]) for line in lines if "effect_unknown" in line] == list(range(500))
    assert sum(line.startswith("generate") for line in lines) < 50
