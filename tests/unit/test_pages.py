"""The pages' data from hand-built runs: which cycles get a box, which a marker, which values, axes."""

from __future__ import annotations

import statistics
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from cftrunner.exceptions import InputError
from cftrunner.records import Item
from cftrunner.states import ItemStage, RunState
from cftrunner.views.pages.frame import NEEDS_PLOTLY, PLOTLY_JS, has_plotly, write_pages
from cftrunner.views.pages.run_data import (
    failure_groups,
    gate_verdict,
    lowest_items,
    promotion,
    run_page,
)
from cftrunner.views.pages.trend_data import (
    NO_SCORES,
    count_axis,
    cycle_axis,
    cycles,
    links,
    nice_step,
    percent_axis,
    tick_labels,
)
from cftrunner.views.report import run_report
from cftrunner.views.trend import spread, trend_row
from tests.unit.test_report import make_run, summary

T0 = datetime(2026, 11, 21, 22, 30, tzinfo=UTC)


def row(run_id: str, state: RunState, scores: list[float], **fields: object):  # type: ignore[no-untyped-def]
    return trend_row(summary({"ADDED": len(scores)}, id=run_id, state=state, **fields), scores,
                     {("generate", "ok"): (3, 30), ("judge", "ok"): (3, 300)}, (5, 3))


def item(position: int, score: float | None, stage: ItemStage = ItemStage.ADDED,
         **fields: object) -> Item:
    values: dict[str, object] = {"prompt": f"prompt {position}", **fields}
    return Item(id=position + 1, run_id="r1", position=position, stage=stage, updated_at=T0,
                score=score, **values)  # type: ignore[arg-type]


def test_the_spread_interpolates_quartiles_as_statistics_does() -> None:
    scores = [0.9, 0.1, 0.4, 0.35, 0.8, 0.6, 1.0]
    s = spread(scores)
    assert s is not None
    q1, median, q3 = statistics.quantiles(scores, n=4, method="inclusive")
    assert (s.low, s.high) == (0.1, 1.0)
    assert (s.q1, s.median, s.q3) == pytest.approx((q1, median, q3))
    assert s.mean == pytest.approx(statistics.fmean(scores))
    assert spread([]) is None


def test_a_trend_row_counts_every_completions_tokens_and_the_judges_retries() -> None:
    r = row("r1", RunState.LAUNCHED, [0.2, 0.8])
    assert (r.tokens, r.judge_retries) == (330, 2)
    assert r.to_json()["spread"] == {"low": 0.2, "q1": 0.35, "median": 0.5, "q3": 0.65,
                                     "high": 0.8, "mean": 0.5}


def test_judged_cycles_get_a_box_and_skipped_failed_cancelled_ones_a_marker_in_order() -> None:
    rows = [row("a", RunState.LAUNCHED, [0.2, 0.9]),
            row("b", RunState.SKIPPED, [0.7], skip_reason="1 traces added, fewer than 5"),
            row("c", RunState.FAILED, [], failure_reason="every item failed"),
            row("d", RunState.CANCELLED, [0.5]),
            row("e", RunState.CREATED, []),
            row("f", RunState.PROMOTED, [0.6])]
    made = cycles(rows)
    assert [c.number for c in made] == [1, 2, 3, 4, 5, 6]
    assert [c.x for c in made] == ["#1", "#2", "#3", "#4", "#5", "#6"]
    assert [c.box is not None for c in made] == [True, False, False, False, False, True]
    assert [c.marker for c in made] == [None, "SKIPPED", "FAILED", "CANCELLED", NO_SCORES, None]
    assert [c.why for c in made[1:3]] == ["1 traces added, fewer than 5", "every item failed"]
    assert made[0].page == "cftrunner-report-a.html"


def test_each_cycle_on_the_x_axis_is_a_category_in_order_opening_its_page() -> None:
    rows = [row("z-last-alphabetically", RunState.LAUNCHED, [0.5]),
            row("a-first", RunState.SKIPPED, [0.5])]
    made = cycles(rows)
    settings = cycle_axis(made)
    assert settings["type"] == "category" and settings["categoryarray"] == ["#1", "#2"]
    assert settings["ticktext"] == ["<b>#1</b><br>11-21 22:30", "<b>#2</b><br>11-21 22:30"]
    assert links(made) == {"#1": "cftrunner-report-z-last-alphabetically.html",
                           "#2": "cftrunner-report-a-first.html"}


@pytest.mark.parametrize("top", [0.0, 0.002, 0.01, 0.03, 0.049, 0.07, 0.15, 0.33, 0.5, 0.61, 1.0])
def test_percent_ticks_never_repeat_and_cover_the_values(top: float) -> None:
    settings = percent_axis([top / 2, None, top])
    labels = tick_labels(settings)
    assert len(labels) == len(set(labels)) and 2 <= len(labels) <= 6
    assert settings["tickformat"] == ".0%" and settings["range"][1] >= top
    assert round(settings["dtick"] * 100) == pytest.approx(settings["dtick"] * 100)  # whole %


def test_a_few_percent_reads_0_1_2_3_not_3_2_2_1() -> None:
    assert tick_labels(percent_axis([0.028, 0.021, 0.0])) == ["0%", "1%", "2%", "3%"]


@pytest.mark.parametrize(("top", "step"), [(0, 1), (3, 1), (7, 2), (12_717, 5000), (26, 10)])
def test_count_axes_step_by_whole_numbers(top: int, step: int) -> None:
    settings = count_axis([top])
    assert settings["dtick"] == step == nice_step(top, 1)
    labels = tick_labels(settings)
    assert len(labels) == len(set(labels))


def test_the_lowest_items_are_the_lowest_scores_ties_by_index_unscored_left_out() -> None:
    items = [item(0, 0.9), item(1, 0.2), item(2, None, ItemStage.GEN_FAILED), item(3, 0.2),
             item(4, 0.05), item(5, 0.7)]
    assert [(i.position, i.score) for i in lowest_items(items, 3)] == [(4, 0.05), (1, 0.2),
                                                                       (3, 0.2)]
    assert len(lowest_items(items)) == 5


def test_failures_are_grouped_by_stage_and_kind_largest_first() -> None:
    items = [item(k, None, ItemStage.GEN_FAILED, error_kind="http_400", error=f"refused {k}")
             for k in (9, 3, 4)]
    items += [item(7, None, ItemStage.JUDGE_FAILED, error_kind="judge_malformed", error="bad"),
              item(8, 0.5)]
    groups = failure_groups(items)
    assert [(g.kind, g.count, g.positions) for g in groups] == [
        ("gen_failed:http_400", 3, (3, 4, 9)), ("judge_failed:judge_malformed", 1, (7,))]
    assert groups[0].example == "refused 9"  # the error of the first one read


def test_the_promotion_shows_both_sides_and_which_was_chosen() -> None:
    decision = {"promoted": True, "model_id": "new-2", "margin": 0.0, "reason": "new-2 won",
                "current": {"model_id": "cur", "mean": 0.58, "judged": 18, "prompts": 18},
                "candidates": [{"model_id": "new-1", "mean": 0.7, "judged": 18, "prompts": 18},
                               {"model_id": "new-2", "mean": 0.75, "judged": 17, "prompts": 18}]}
    found = promotion(make_run(promotion=decision))
    assert found is not None and found.promoted and found.reason == "new-2 won"
    assert [(m.role, m.model_id, m.mean, m.chosen) for m in found.models] == [
        ("current", "cur", 0.58, False), ("new", "new-1", 0.7, False),
        ("new", "new-2", 0.75, True)]
    assert promotion(make_run()) is None


def test_the_gate_verdict_carries_its_reasons_and_facts() -> None:
    verdict = gate_verdict(make_run(gate_result={
        "passed": False, "reasons": ["3 traces added, fewer than the 5 required"],
        "traces_added": 3, "below_threshold": 1, "mean_score": 0.61234, "tokens_used": 12345,
        "items_over_budget": 0}))
    assert verdict is not None and not verdict.passed
    assert verdict.reasons == ("3 traces added, fewer than the 5 required",)
    assert dict(verdict.facts)["mean score"] == "0.612"
    assert dict(verdict.facts)["tokens used"] == "12,345"
    assert gate_verdict(make_run()) is None


def test_text_put_in_the_pages_is_escaped() -> None:
    pytest.importorskip("plotly")
    from cftrunner.views.pages.run_page import run_html
    from cftrunner.views.pages.trend_page import trend_html

    evil = "<i>evil</i>"
    trend = trend_html([replace(row("r1", RunState.LAUNCHED, [0.5]), model_alias=evil)], "p&q")
    assert "&lt;i&gt;evil&lt;/i&gt;" in trend and evil not in trend
    assert "<title>cftrunner trend of project p&amp;q</title>" in trend
    report = run_report(summary({"ADDED": 1}, model_alias=evil), [0.1], {}, (1, 1))
    page = run_html(run_page(report, [item(0, 0.1, prompt=evil)], []))
    assert evil not in page and page.count("&lt;i&gt;evil&lt;/i&gt;") == 2
    assert "cftrunner show r1 N" in page


def test_the_pages_load_plotly_from_the_file_beside_them_and_nothing_else() -> None:
    pytest.importorskip("plotly")
    from cftrunner.views.pages.trend_page import trend_html

    page = trend_html([row("r1", RunState.LAUNCHED, [0.5])], "p")
    assert page.count("<script src=") == 1 and f'<script src="{PLOTLY_JS}"></script>' in page
    assert "https://" not in page.split("<body>")[1].split("Plotly.newPlot")[0]


def test_plotly_js_is_written_once_per_folder_and_rewritten_only_when_it_differs(
        tmp_path: Path) -> None:
    pytest.importorskip("plotly")
    write_pages({tmp_path / "a.html": "a", tmp_path / "b.html": "b"})
    beside = tmp_path / PLOTLY_JS
    first = beside.stat()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.html", "b.html", PLOTLY_JS]
    write_pages({tmp_path / "a.html": "again"})
    assert beside.stat().st_ino == first.st_ino and beside.stat().st_mtime_ns == first.st_mtime_ns
    beside.write_text("an older plotly.js")
    write_pages({tmp_path / "a.html": "again"})
    assert beside.stat().st_size == first.st_size


def test_a_page_into_a_missing_folder_is_an_input_error_and_writes_nothing(
        tmp_path: Path) -> None:
    pytest.importorskip("plotly")
    with pytest.raises(InputError, match="cannot write .*no/t.html: no folder"):
        write_pages({tmp_path / "no" / "t.html": "x"})
    assert list(tmp_path.iterdir()) == []


def test_without_plotly_the_pages_ask_for_the_extra(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for module in ("plotly", "plotly.graph_objects", "plotly.io", "plotly.offline"):
        monkeypatch.setitem(sys.modules, module, None)
    assert not has_plotly()
    with pytest.raises(InputError) as raised:
        write_pages({tmp_path / "t.html": "x"})
    assert raised.value.message == NEEDS_PLOTLY and list(tmp_path.iterdir()) == []
