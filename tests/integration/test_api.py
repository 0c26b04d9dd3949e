"""The Python API on a real state database after a real cycle against the sandbox: records, not
text, agreeing with what the CLI's JSON says."""

from __future__ import annotations

from pathlib import Path

import pytest

from cftrunner import api
from cftrunner.exceptions import InputError, ItemNotFoundError, RunNotFoundError
from cftrunner.records import EffectStatus
from cftrunner.sandbox import Sandbox
from cftrunner.states import ItemStage, RunState
from cftrunner.views.report import RunReport
from tests.conftest import PROMPTS, Harness, shown_status


@pytest.fixture
def launched(harness: Harness, sandbox: Sandbox) -> str:
    run = harness.runner.drive(harness.start())
    assert run.state is RunState.LAUNCHED
    return run.id


def test_runs_are_summaries_with_the_counts_status_shows(harness: Harness, launched: str,
                                                          db_url: str) -> None:
    [summary] = api.runs(db_url)
    shown = shown_status(db_url, launched)
    assert summary.run.id == launched and summary.run.state is RunState.LAUNCHED
    assert summary.total_items == len(PROMPTS) == shown["items"]["total"]
    assert api.run(launched, db_url).run.job_id == shown["job_id"]
    assert api.runs(db_url, states=["launched"]) and not api.runs(db_url, states=["FAILED"])
    assert api.runs(db_url, limit=0) == []


def test_items_come_as_records_filtered_as_asked(harness: Harness, launched: str,
                                                 db_url: str) -> None:
    every = list(api.items(launched, db_url))
    assert [i.position for i in every] == list(range(len(PROMPTS)))
    assert all(i.stage is ItemStage.ADDED and i.trace_id for i in every)
    low = list(api.items(launched, db_url, below=0.5))
    assert {i.position for i in low} == {i.position for i in every
                                         if i.score is not None and i.score < 0.5}
    ordered = [i.score for i in api.items(launched, db_url, by_score=True)]
    assert ordered == sorted(ordered)  # type: ignore[type-var]
    assert list(api.items(launched, db_url, stages=["GEN_FAILED"])) == []
    found, completions = api.item(launched, 2, db_url)
    assert found.position == 2 and [c.kind for c in completions] == ["generate", "judge"]


def test_effects_events_and_the_report_are_the_runs_own(harness: Harness, launched: str,
                                                         db_url: str) -> None:
    effects = api.effects(launched, db_url)
    assert {e.status for e in effects} == {EffectStatus.DONE}
    assert len(api.effects(launched, db_url, kind="trace")) == len(PROMPTS)
    assert any(e.kind == "run_transitioned" for e in api.events(launched, db_url))
    report = api.report(launched, db_url)
    assert isinstance(report, RunReport) and report.scores.judged == len(PROMPTS)
    assert report.to_json()["run_id"] == launched
    assert [row.run_id for row in api.trend(db=db_url).rows] == [launched]


def test_a_path_names_an_sqlite_file_and_nothing_is_created_where_there_is_none(
        tmp_path: Path) -> None:
    missing = tmp_path / "nothing.db"
    with pytest.raises(InputError, match="no state database"):
        api.runs(missing)
    assert not missing.exists()


def test_a_missing_run_or_item_is_an_error_not_an_empty_answer(harness: Harness, launched: str,
                                                               db_url: str) -> None:
    with pytest.raises(RunNotFoundError):
        list(api.items("no-such-run", db_url))
    with pytest.raises(RunNotFoundError):
        api.effects("no-such-run", db_url)
    with pytest.raises(ItemNotFoundError):
        api.item(launched, 99, db_url)
