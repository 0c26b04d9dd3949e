"""`cftrunner report` on real runs against the sandbox: its figures checked against the store."""

from __future__ import annotations

import json
import re
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

from cftrunner.cli import main
from cftrunner.config.run_options import GateConfig
from cftrunner.sandbox import FaultRule, Sandbox
from cftrunner.states import ItemStage, RunState
from cftrunner.views.pages.frame import PLOTLY_JS
from cftrunner.views.pages.trend_page import COSTS_TITLE, SCORES_TITLE, SHARES_TITLE
from tests.conftest import PROMPTS, Harness

ERROR = re.compile(r"^cftrunner: error: ", re.MULTILINE)


@pytest.fixture(autouse=True)
def in_tmp_path(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The CLI reads the test's database and writes into the test's folder; logging, which the
    CLI configures, is put back afterwards."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CFTRUNNER_DB", db_url)
    monkeypatch.delenv("CFTRUNNER_CONFIG", raising=False)
    saved = structlog.get_config()
    yield
    structlog.configure(**saved)


def report(capsys: pytest.CaptureFixture[str], *args: str, code: int = 0) -> str:
    """What `cftrunner report ARGS` prints: stdout, or the one error line when it fails."""
    capsys.readouterr()  # the runs' logs
    assert main(["report", *args]) == code
    out, err = capsys.readouterr()
    assert (len(ERROR.findall(err)) == 1) is (code != 0), err
    return out if code == 0 else err


def report_json(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(report(capsys, "--json", *args))
    return data


def test_the_figures_match_the_items_in_the_store(
        harness: Harness, sandbox: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    sandbox.add_fault(FaultRule(route="chat", status=400, match="message 2", judge=False))
    run = harness.runner.drive(harness.start())
    scores = sorted(i.score for i in harness.store.items(run.id) if i.score is not None)
    data = report_json(capsys, run.id)
    assert data["run_id"] == run.id and data["state"] == "LAUNCHED" and data["job_id"] == run.job_id
    assert data["items"]["total"] == len(PROMPTS) and data["items"]["GEN_FAILED"] == 1
    assert data["failures"] == {"gen_failed:http_400": 1}
    figures = data["scores"]
    assert sum(b["count"] for b in figures["histogram"]) == figures["judged"] == len(scores)
    assert figures["mean"] == pytest.approx(statistics.fmean(scores))
    assert figures["median"] == pytest.approx(statistics.median(scores))
    assert figures["below_threshold"] == sum(1 for s in scores if s < 0.5)
    assert data["tokens"]["total"] == harness.store.tokens_used(run.id) > 0
    assert data["completions"]["generate"] == {"ok": len(PROMPTS) - 1, "rejected": 1}
    assert set(data["state_seconds"]) >= {"CREATED", "ADDED", "RECS_READY"}
    assert data["gate"]["passed"] is True


def test_malformed_judge_answers_count_as_retries(
        harness: Harness, sandbox: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    sandbox.add_fault(FaultRule(kind="malformed", route="chat", judge=True, times=2))
    run = harness.runner.drive(harness.start())
    judge = report_json(capsys, run.id)["judge"]
    assert judge == {"requests": len(PROMPTS) + 2, "items": len(PROMPTS), "retries": 2,
                     "malformed": 2, "truncated": 0, "rejected": 0, "failed": 0}
    assert sum(i.judge_attempts for i in harness.store.items(run.id)) == judge["requests"]
    assert "2 retries; 2 malformed" in report(capsys, run.id)


def test_an_item_whose_judgment_never_validates_is_a_judge_failure(
        harness: Harness, sandbox: Sandbox, capsys: pytest.CaptureFixture[str]) -> None:
    sandbox.add_fault(FaultRule(kind="malformed", route="chat", judge=True, match="message 4"))
    run = harness.runner.drive(harness.start())
    data = report_json(capsys, run.id)
    assert data["judge"]["failed"] == 1 and data["judge"]["retries"] == 2
    assert data["scores"]["judged"] == len(PROMPTS) - 1
    assert data["failures"] == {"judge_failed:judge_malformed": 1}


def test_a_run_not_yet_driven_reports_no_scores(
        harness: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    run_id = harness.start()
    text = report(capsys, run_id)
    assert "no scores yet" in text and f"run       {run_id} (CREATED, job -)" in text
    assert report_json(capsys, run_id)["scores"]["mean"] is None


def test_an_unknown_run_is_an_input_error(harness: Harness,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert "no run 'ghost' in the state database " in report(capsys, "ghost", code=2)


@pytest.mark.parametrize("args", [(), ("some-run", "--trend"), ("some-run", "--no-html")])
def test_a_run_id_and_trend_go_one_without_the_other(
        args: tuple[str, ...], capsys: pytest.CaptureFixture[str]) -> None:
    report(capsys, *args, code=2)


def two_cycles(harness: Harness) -> list[str]:
    return [harness.runner.drive(harness.start()).id for _ in range(2)]


def test_the_trend_shows_one_line_per_cycle_and_writes_the_pages(
        harness: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first, second = two_cycles(harness)
    lines = report(capsys, "--trend").splitlines()
    assert lines[-1] == "wrote cftrunner-trend.html" and len(lines) == 4
    assert first in lines[1] and second in lines[2]
    page = (tmp_path / "cftrunner-trend.html").read_text()
    for title in (SCORES_TITLE, SHARES_TITLE, COSTS_TITLE):
        assert title in page
    assert page.count("Plotly.newPlot(") == 3 and page.count('"type":"box"') == 2
    assert f'<script src="{PLOTLY_JS}"></script>' in page
    assert not re.search(r"<script src=[\"']https?:", page), "no CDN: the page works offline"
    assert re.search(r"plotly\.js v\d", (tmp_path / PLOTLY_JS).read_text()[:200])
    # Each cycle's page is written beside the trend page, which links to it.
    for run_id in (first, second):
        assert f'href="cftrunner-report-{run_id}.html"' in page
        assert run_id in (tmp_path / f"cftrunner-report-{run_id}.html").read_text()
    assert sorted(p.name for p in tmp_path.glob("*.js")) == [PLOTLY_JS]


def test_the_trend_as_json_names_the_page_it_wrote(
        harness: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    first, second = two_cycles(harness)
    (tmp_path / "charts").mkdir()
    data = report_json(capsys, "--trend", "--html", "charts/trend.html")
    assert [c["run_id"] for c in data["cycles"]] == [first, second]
    assert data["html"] == "charts/trend.html" and (tmp_path / "charts" / "trend.html").exists()
    assert [c["items"] for c in data["cycles"]] == [len(PROMPTS)] * 2


def test_an_unwritable_page_is_an_input_error(
        harness: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    two_cycles(harness)
    assert "cannot write no/such/folder/t.html" in report(
        capsys, "--trend", "--html", "no/such/folder/t.html", code=2)


def test_no_html_writes_no_page(harness: Harness, tmp_path: Path,
                                capsys: pytest.CaptureFixture[str]) -> None:
    two_cycles(harness)
    assert "wrote" not in report(capsys, "--trend", "--no-html")
    assert list(tmp_path.glob("*.html")) == []


def test_a_skipped_cycle_shows_its_reason_in_the_trend(
        harness: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    run = harness.runner.drive(harness.start(gate=GateConfig(min_traces=100)))
    assert run.state is RunState.SKIPPED
    [cycle] = report_json(capsys, "--trend", "--no-html")["cycles"]
    assert cycle["state"] == "SKIPPED" and cycle["job_id"] is None
    assert cycle["skip_reason"] == run.skip_reason
    with pytest.MonkeyPatch.context() as wide:  # the table fits the terminal: one wide enough
        wide.setenv("COLUMNS", "200")
        assert f"skipped: {run.skip_reason}" in report(capsys, "--trend", "--no-html")


def test_runs_of_several_projects_need_one_named(
        harness: Harness, capsys: pytest.CaptureFixture[str]) -> None:
    harness.start(project_id="other")
    harness.start()
    assert "several projects" in report(capsys, "--trend", code=2)
    [cycle] = report_json(capsys, "--trend", "--project", "other", "--no-html")["cycles"]
    assert cycle["items"] == len(PROMPTS) and cycle["mean_score"] is None
    assert {i.stage for i in harness.store.items(cycle["run_id"])} == {ItemStage.PENDING}
