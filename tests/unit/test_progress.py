"""The progress display's figures: stage counts, rate and time left from samples, and its lines."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from cftrunner.states import RunState
from cftrunner.views.live import renderable
from cftrunner.views.progress import Speed, StageCounts, StageRow, Tracker, eta, stage_counts


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def by_name(counts: dict[str, int]) -> dict[str, StageCounts]:
    return {stage.name: stage for stage in stage_counts(counts)}


def test_an_item_at_a_later_stage_counts_as_done_at_every_earlier_one() -> None:
    stages = by_name({"PENDING": 4, "GENERATED": 3, "JUDGED": 2, "TRACED": 1})
    assert [(s.done, s.total) for s in stages.values()] == [(6, 10), (3, 10), (1, 10), (0, 10)]


def test_an_item_failed_at_a_stage_is_failed_there_done_before_and_absent_after() -> None:
    stages = by_name({"ADDED": 5, "JUDGE_FAILED": 2, "GEN_FAILED": 1})
    assert stages["generate"] == StageCounts("generate", total=8, done=7, failed=1)
    assert stages["judge"] == StageCounts("judge", total=7, done=5, failed=2)
    assert stages["trace"] == StageCounts("trace", total=5, done=5, failed=0)
    assert stages["add"].remaining == 0


def test_the_rate_is_the_count_gained_over_the_window() -> None:
    speed = Speed(window=20)
    for t, count in ((0, 0), (10, 100), (20, 300), (30, 600)):
        speed.add(t, count)
    # The window's span is 10..30: (600 - 100) / 20.
    assert speed.recent() == 25.0


def test_the_rate_is_unknown_from_a_single_sample() -> None:
    speed = Speed()
    speed.add(5.0, 42)
    assert speed.recent() is None and speed.overall() is None


def test_a_stopped_stage_keeps_the_rate_it_was_seen_moving_at() -> None:
    speed = Speed(window=20)
    for t, count in ((0, 0), (5, 0), (10, 50), (15, 100), (60, 100), (90, 100)):
        speed.add(t, count)
    assert speed.recent() == 0.0
    assert speed.overall() == 10.0  # 100 items from t=5, the last sample before any, to t=15


def test_time_left_is_the_remaining_items_at_the_rate() -> None:
    assert eta(300, 25.0) == 12.0
    assert eta(0, None) == 0.0
    assert eta(10, 0.0) is None and eta(10, None) is None


def test_a_stage_line_shows_done_of_total_failed_rate_and_time_left() -> None:
    row = StageRow(StageCounts("judge", total=19_990, done=1_234, failed=10), rate=12.5,
                   eta=(19_990 - 1_244) / 12.5)
    assert row.cells() == ("judge", "1,234/19,990", "10 failed", "12.5/s", "ETA 24m59s")


def test_a_finished_stage_says_done_and_an_unknown_rate_is_a_dash() -> None:
    row = StageRow(StageCounts("add", total=8, done=7, failed=1), rate=None, eta=0.0)
    assert row.cells()[3:] == ("-/s", "done")
    waiting = StageRow(StageCounts("trace", total=8, done=0, failed=0), rate=0.0, eta=None)
    assert waiting.cells()[3:] == ("0.0/s", "ETA -")


def test_the_tracker_turns_successive_counts_into_rates_and_time_left() -> None:
    clock = Clock()
    tracker = Tracker("r1", clock=clock, window=20)
    tracker.add(RunState.CREATED, {"PENDING": 1000})
    clock.now += 10
    tracker.add(RunState.CREATED, {"PENDING": 800, "GENERATED": 150, "GEN_FAILED": 50})
    generate = tracker.rows[0]
    assert generate.cells() == ("generate", "150/1,000", "50 failed", "20.0/s", "ETA 40s")
    assert tracker.rows[1].cells()[1:] == ("0/950", "0 failed", "0.0/s", "ETA -")


def test_the_run_line_says_what_the_run_waits_for_and_for_how_long() -> None:
    clock = Clock()
    tracker = Tracker("r1", clock=clock)
    tracker.add(RunState.ADDED, {"ADDED": 3})
    clock.now += 42
    tracker.add(RunState.ADDED, {"ADDED": 3})
    assert tracker.run_line() == "run r1  ADDED: waiting for corrections, then the snapshot  (42s)"
    tracker.add(RunState.LAUNCHED, {"ADDED": 3})
    assert tracker.run_line() == "run r1  LAUNCHED: the fine-tuning job is launched"


@pytest.mark.parametrize("state", list(RunState))
def test_every_run_state_has_a_line(state: RunState) -> None:
    tracker = Tracker("r1")
    tracker.add(state, {})
    assert tracker.run_line().startswith(f"run r1  {state.value}: ")


def test_the_display_is_a_line_per_stage_then_the_run() -> None:
    tracker = Tracker("r1", clock=Clock())
    tracker.add(RunState.CREATED, {"GENERATED": 2, "ADDED": 3, "TRACE_FAILED": 1})
    out = io.StringIO()
    Console(file=out, width=100, color_system=None).print(renderable(tracker))
    lines = [" ".join(line.replace("━", "").replace("╸", "").split())
             for line in out.getvalue().splitlines()]
    assert lines == [
        "generate 6/6 0 failed -/s done",
        "judge 4/6 0 failed -/s ETA -",
        "trace 3/6 1 failed -/s ETA -",
        "add 3/5 0 failed -/s ETA -",
        "run r1 CREATED: items in progress (0.0s)",
    ]
