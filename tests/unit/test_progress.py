"""The progress display's figures: stage counts, rate and time left from samples, and its lines."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from cftrunner.states import RunState
from cftrunner.views.live import renderable
from cftrunner.views.progress import (
    LogTally,
    Speed,
    StageCounts,
    StageRow,
    Tracker,
    eta,
    stage_counts,
    step,
    summary_lines,
)


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
    assert tracker.run_line() == (
        "run r1  waiting for corrections, then the gate and the snapshot  (42s)")
    tracker.add(RunState.LAUNCHED, {"ADDED": 3})
    assert tracker.run_line() == "run r1  following the job  (0.0s)"
    tracker.add(RunState.LAUNCHED, {"ADDED": 3}, ended=True)
    assert tracker.run_line() == "run r1  LAUNCHED: the fine-tuning job is launched"


@pytest.mark.parametrize("state", list(RunState))
def test_every_run_state_has_a_line_once_the_run_is_no_longer_driven(state: RunState) -> None:
    tracker = Tracker("r1")
    tracker.add(state, {}, ended=True)
    assert tracker.run_line().startswith(f"run r1  {state.value}: ")


@pytest.mark.parametrize(("state", "counts", "expected"), [
    (RunState.CREATED, {"PENDING": 3, "GENERATED": 2, "JUDGED": 4, "GEN_FAILED": 1},
     ("generating and judging", "5/10")),
    (RunState.CREATED, {"JUDGED": 2, "TRACED": 1, "ADDED": 6, "JUDGE_FAILED": 1},
     ("adding to the dataset", "7/10")),
    (RunState.TRACED, {"ADDED": 9, "SKIPPED": 4}, ("adding to the dataset", "9/9")),
    (RunState.ADDED, {"ADDED": 9}, ("waiting for corrections, then the gate and the snapshot", "")),
    (RunState.SNAPSHOT, {"ADDED": 9}, ("waiting for recommendations", "")),
    (RunState.RECS_READY, {"ADDED": 9}, ("launching the fine-tuning job", "")),
    (RunState.LAUNCHED, {"ADDED": 9}, ("following the job", "")),
])
def test_a_driven_run_is_named_by_its_step_not_its_state(
        state: RunState, counts: dict[str, int], expected: tuple[str, str]) -> None:
    assert step(state, counts) == expected


def test_the_time_in_a_step_runs_on_while_its_items_move_the_state() -> None:
    clock = Clock()
    tracker = Tracker("r1", clock=clock)
    tracker.add(RunState.CREATED, {"PENDING": 2})
    clock.now += 30
    tracker.add(RunState.GENERATED, {"PENDING": 1, "JUDGED": 1})
    assert tracker.run_line() == "run r1  generating and judging 1/2  (30s)"
    tracker.add(RunState.JUDGED, {"JUDGED": 2})
    clock.now += 5
    tracker.add(RunState.JUDGED, {"TRACED": 1, "ADDED": 1})
    assert tracker.run_line() == "run r1  adding to the dataset 1/2  (5.0s)"


def test_the_tally_counts_the_lines_kept_off_the_terminal_and_the_retries() -> None:
    tally = LogTally()
    assert tally.line() is None
    tally.add({"event": "run_transitioned", "state": "JUDGED"}, shown=True)
    assert tally.line() is None
    for n in range(3):
        tally.add({"event": "effect_done", "key": f"add:{n}", "run_id": "r1"}, shown=False)
    tally.add({"event": "request_retry", "what": "trace", "status_code": 503}, shown=True)
    assert tally.line() == ("log: 3 lines not shown (--log-file FILE keeps them), last: "
                            "effect_done key=add:2; retries 1, last: what=trace status_code=503")


def test_with_a_log_file_the_tally_says_where_the_lines_are() -> None:
    tally = LogTally("/var/log/run.log")
    tally.add({"event": "effect_done", "key": "trace:4"}, shown=False)
    tally.add({"event": "preflight", "reason": "x"}, shown=True)
    assert tally.line() == "log: 2 lines in /var/log/run.log, last: effect_done key=trace:4"


STATUS = {"run_id": "r1", "state": "LAUNCHED", "job_id": "job-9",
          "items": {"total": 10, "PENDING": 0, "ADDED": 7, "JUDGE_FAILED": 2, "ADD_FAILED": 1,
                    "SKIPPED": 0},
          "failures": {"judge_failed:malformed": 2, "add_failed:rejected": 1},
          "gate": {"passed": True, "traces_added": 7, "below_threshold": 3, "mean_score": 0.61234,
                   "config": {"score_threshold": 0.5}}}


def test_the_summary_says_items_failures_scores_job_and_the_report_command() -> None:
    assert summary_lines(STATUS, "cftrunner report r1") == [
        "  items       10: 7 added, 3 failed",
        "  failures    judge_failed:malformed 2, add_failed:rejected 1",
        "  mean score  0.612 over 7 added, 3 below 0.5",
        "  job         job-9",
        "  report      cftrunner report r1",
    ]


def test_the_summary_of_a_run_the_gate_never_saw_has_no_mean_score_and_no_job() -> None:
    status = {**STATUS, "job_id": None, "gate": None, "failures": {},
              "items": {"total": 4, "ADDED": 2, "PENDING": 2}}
    lines = summary_lines(status, "cftrunner report r1")
    assert lines[1] == "  mean score  - (the gate has not looked at the scores)"
    assert not any(line.lstrip().startswith(("job", "failures")) for line in lines)


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
        "run r1 generating and judging 4/6 (0.0s)",
    ]


def test_the_display_ends_with_what_became_of_the_log_lines() -> None:
    tracker, tally = Tracker("r1", clock=Clock()), LogTally()
    tracker.add(RunState.CREATED, {"PENDING": 1})
    tally.add({"event": "effect_done", "key": "trace:0"}, shown=False)
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(renderable(tracker, tally))
    assert out.getvalue().splitlines()[-1] == (
        "log: 1 lines not shown (--log-file FILE keeps them), last: effect_done key=trace:0")
