"""The report's figures from hand-built data: histogram bins, percentiles, shares, trend rows."""

from __future__ import annotations

import statistics
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest

from cftrunner.exceptions import InputError
from cftrunner.records import Run, RunSummary
from cftrunner.states import RunState
from cftrunner.views.report import distribution, histogram, percentile, render_run, run_report
from cftrunner.views.trend import project_of, trend_cells, trend_row, trend_table

T0 = datetime(2026, 11, 21, 22, 30, tzinfo=UTC)


def make_run(run_id: str = "r1", **fields: object) -> Run:
    values: dict[str, object] = dict(
        id=run_id, project_id="p", model_alias="m", judge_model="j", split_percentage=80,
        prompts_source="f", job_name=f"cftrunner-{run_id}", state=RunState.LAUNCHED,
        created_at=T0, updated_at=T0, state_changed_at=T0, job_id="job-1")
    values.update(fields)
    return Run(**values)  # type: ignore[arg-type]


def summary(stages: dict[str, int], **fields: object) -> RunSummary:
    return RunSummary(make_run(**fields), stages, {}, {"CREATED": 1.5, "GENERATED": 0.25})


def test_each_bin_holds_its_lower_edge_and_not_its_upper_edge() -> None:
    assert histogram([0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9]) == (1,) * 10
    assert histogram([0.0999, 0.2999]) == (1, 0, 1, 0, 0, 0, 0, 0, 0, 0)


def test_a_perfect_score_falls_in_the_last_bin() -> None:
    assert histogram([1.0, 0.95]) == (0,) * 9 + (2,)


def test_scores_out_of_range_fall_in_the_nearest_end_bin() -> None:
    assert histogram([-0.5, 1.5]) == (1,) + (0,) * 8 + (1,)


def test_percentiles_interpolate_between_closest_ranks_as_statistics_does() -> None:
    scores = [0.05, 0.2, 0.3, 0.55, 0.6, 0.9, 1.0]
    assert percentile(scores, 0.1) == pytest.approx(
        statistics.quantiles(scores, n=10, method="inclusive")[0])
    assert percentile(scores, 0.5) == statistics.median(scores)
    assert percentile(scores, 0.0) == 0.05 and percentile(scores, 1.0) == 1.0


def test_one_score_is_every_percentile_and_no_score_is_none() -> None:
    assert percentile([0.4], 0.1) == percentile([0.4], 0.5) == 0.4
    assert percentile([], 0.5) is None


def test_the_share_below_counts_scores_strictly_below_the_threshold() -> None:
    d = distribution([0.2, 0.5, 0.5, 0.9], threshold=0.5)
    assert (d.below, d.share_below, d.judged) == (1, 0.25, 4)
    assert d.mean == pytest.approx(0.525) and d.median == 0.5


def test_no_scores_give_no_figures() -> None:
    d = distribution([], threshold=0.5)
    assert (d.judged, d.mean, d.median, d.p10, d.share_below) == (0, None, None, None, None)


def test_the_threshold_comes_from_the_runs_gate_config() -> None:
    report = run_report(summary({"ADDED": 3}, gate_config={"score_threshold": 0.8}),
                        [0.5, 0.7, 0.9], {}, (3, 3))
    assert report.scores.threshold == 0.8 and report.scores.below == 2
    assert run_report(summary({"ADDED": 1}), [0.4], {}, (1, 1)).scores.threshold == 0.5


def test_judge_retries_are_the_requests_beyond_the_first_of_each_item() -> None:
    counts = {("judge", "ok"): (4, 400), ("judge", "malformed"): (3, 90),
              ("judge", "rejected"): (1, 0), ("generate", "ok"): (5, 50)}
    report = run_report(summary({"ADDED": 4, "JUDGE_FAILED": 1}), [0.5] * 4, counts, (8, 5))
    judge = report.judge
    assert (judge.retries, judge.malformed, judge.rejected, judge.failed) == (3, 3, 1, 1)
    assert report.tokens == {"generate": 50, "judge": 490, "total": 540}
    assert report.to_json()["judge"]["retries"] == 3
    assert report.to_json()["completions"]["judge"] == {"malformed": 3, "ok": 4, "rejected": 1}


def test_a_run_without_scores_renders_and_says_so() -> None:
    report = run_report(summary({"PENDING": 6}, state=RunState.CREATED, job_id=None), [], {},
                        (0, 0))
    text = render_run(report)
    assert "no scores yet" in text and "6 (6 pending)" in text
    assert report.to_json()["scores"]["mean"] is None
    assert sum(b["count"] for b in report.to_json()["scores"]["histogram"]) == 0


def test_the_text_shows_the_histogram_and_the_summary_figures() -> None:
    report = run_report(summary({"ADDED": 4}), [0.1, 0.3, 0.8, 1.0], {}, (4, 4))
    text = render_run(report)
    assert "4 judged: mean 0.550, median 0.550, p10 0.160; 2 (50.0%) below 0.5" in text
    assert "0.9-1.0" in text and "time      CREATED 1.5s, GENERATED 0.2s" in text
    assert report.to_json()["scores"]["p10"] == 0.16  # rounded, not 0.16000000000000003


def test_a_trend_row_shares_failures_among_all_items() -> None:
    row = trend_row(summary({"ADDED": 6, "GEN_FAILED": 1, "JUDGE_FAILED": 1, "SKIPPED": 2}),
                    [0.2, 0.4, 0.6, 0.8, 1.0, 1.0])
    assert (row.items, row.judged, row.failure_share, row.share_below) == (10, 6, 0.2, 2 / 6)
    assert row.skip_reason is None


def test_a_skipped_cycle_shows_its_reason_and_no_job() -> None:
    row = trend_row(summary({"ADDED": 1}, state=RunState.SKIPPED, job_id=None,
                            skip_reason="1 traces added, fewer than the 5 required"), [0.3])
    assert trend_cells(row)[-2:] == ("-", "skipped: 1 traces added, fewer than the 5 required")
    assert trend_table([row], width=140).endswith(
        "  -    skipped: 1 traces added, fewer than the 5 required")


def test_the_trend_table_has_one_line_per_cycle_in_order() -> None:
    first = trend_row(summary({"ADDED": 2}), [0.4, 0.6])
    second = replace(first, run_id="r2", created_at=T0 + timedelta(days=1), mean_score=None)
    lines = trend_table([first, second], width=100).splitlines()
    assert lines[0].split()[:4] == ["DATE", "(UTC)", "RUN", "ID"]
    assert [line.split()[2] for line in lines[1:]] == ["r1", "r2"]
    assert lines[1].split()[:2] == ["2026-11-21", "22:30"] and " 0.500 " in lines[1]
    assert " - " in lines[2]


def test_the_project_is_the_only_one_or_must_be_named() -> None:
    runs = [make_run("a"), make_run("b", project_id="q")]
    assert project_of(runs[:1], None) == "p" and project_of(runs, "q") == "q"
    with pytest.raises(InputError, match="several projects \\(p, q\\).*--project"):
        project_of(runs, None)
    with pytest.raises(InputError, match="no runs of project 'x'"):
        project_of(runs, "x")
