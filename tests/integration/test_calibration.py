"""The judge's calibration set in whole runs against the sandbox: each triple judged and stored once,
the error stored on the run and reported, a resume judging only what is not stored, and the gate
stopping a run whose judge drifted."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from alembic import command

from cftrunner import service
from cftrunner.calibration import summary
from cftrunner.clock import utcnow
from cftrunner.config.run_options import GateConfig, JudgeConfig
from cftrunner.config.settings import Settings
from cftrunner.sandbox import DEFAULT_PROJECT_ID, FaultRule, Sandbox, llm
from cftrunner.service.reports import report_text
from cftrunner.states import RunState
from cftrunner.store import Store, migrations
from cftrunner.store.calibrations import record_calibration
from cftrunner.store.schema import metadata as schema_metadata
from cftrunner.views.trend import trend
from tests.conftest import JUDGE, MODEL, PROMPTS, Harness, make_run
from tests.integration.test_migrations import connected, differences, revision

CALIBRATION_PROMPTS = [f"Calibration message {i}: 'can I return these shoes?'" for i in range(5)]


def triples(prompts: list[str] = CALIBRATION_PROMPTS) -> tuple[dict[str, Any], ...]:
    """Right and wrong answers, each expected to get the score the sandbox's judge gives it."""
    made = []
    for n, prompt in enumerate(prompts):
        answer = llm.correct_answer(prompt) if n % 2 else llm.wrong_answer(prompt)
        made.append({"prompt": prompt, "answer": answer,
                     "expected": llm.expected_score(prompt, answer)})
    return tuple(made)


def drifted_error(drift: float) -> float:
    """The mean absolute error of the sandbox judge drifted by `drift` on `triples()`."""
    found = [abs(llm.drifted(float(t["expected"]), drift) - t["expected"]) for t in triples()]
    return round(float(sum(found)) / len(found), 6)


def start(harness: Harness, tolerance: float | None = 0.15) -> str:
    return harness.start(judge=JudgeConfig(calibration=triples(), calibration_source="c.jsonl"),
                         gate=GateConfig(max_judge_error=tolerance))


def test_each_triple_is_judged_once_and_the_error_is_stored_and_gated(
        harness: Harness, sandbox: Sandbox) -> None:
    run = harness.runner.drive(start(harness))
    assert run.state is RunState.LAUNCHED
    rows = harness.store.calibrations(run.id)
    assert [r["position"] for r in rows] == list(range(len(CALIBRATION_PROMPTS)))
    assert [r["score"] for r in rows] == [t["expected"] for t in triples()]
    assert {r["attempts"] for r in rows} == {1} and all(r["tokens"] for r in rows)
    assert sandbox.counts()["chat"]["judge"] == len(PROMPTS) + len(CALIBRATION_PROMPTS)
    assert run.calibration == summary(triples(), rows)
    assert run.calibration["mean_absolute_error"] == 0.0
    assert run.gate_result is not None and run.gate_result["judge_error"] == 0.0
    assert run.gate_result["calibration_judged"] == len(CALIBRATION_PROMPTS)
    # The calibration's tokens are the run's too: a token budget counts them.
    completions = [c for i in harness.store.items(run.id) for c in harness.store.completions(i.id)]
    assert harness.store.tokens_used(run.id) == (sum(c.total_tokens or 0 for c in completions)
                                                 + run.calibration["tokens"])


def test_a_judge_that_drifted_is_caught_by_the_gate_before_the_snapshot(
        harness: Harness, sandbox: Sandbox) -> None:
    sandbox.set_judge_drift(0.3)
    run = harness.runner.drive(start(harness))
    assert run.state is RunState.SKIPPED
    error = drifted_error(0.3)
    assert error > 0.15
    assert run.skip_reason == (f"the judge's mean absolute error on the calibration set is "
                               f"{round(error, 3):g}, above 0.15")
    assert run.calibration is not None and run.calibration["mean_absolute_error"] == error
    assert run.calibration["bias"] == error  # every score too high
    counts = sandbox.counts()
    assert (counts["snapshots"], counts["jobs"]) == (0, 0)


def test_without_a_tolerance_the_error_is_measured_but_lets_the_cycle_through(
        harness: Harness, sandbox: Sandbox) -> None:
    sandbox.set_judge_drift(-0.3)
    run = harness.runner.drive(start(harness, tolerance=None))
    assert run.state is RunState.LAUNCHED
    assert run.calibration is not None and run.calibration["bias"] == -drifted_error(-0.3)


def test_a_resume_judges_only_the_triples_not_stored(harness: Harness, sandbox: Sandbox) -> None:
    run_id = start(harness)
    kept = {0: 0.42, 3: 0.9}  # as if an earlier process had judged these two, then died
    with harness.store.tx() as tx:
        for position, score in kept.items():
            record_calibration(tx, run_id, position, expected=triples()[position]["expected"],
                               score=score, judge_raw=None, error=None, attempts=1, tokens=7)
    run = harness.runner.drive(run_id)
    assert sandbox.counts()["chat"]["judge"] == (len(PROMPTS) + len(CALIBRATION_PROMPTS)
                                                 - len(kept))
    rows = {r["position"]: r for r in harness.store.calibrations(run_id)}
    assert {p: rows[p]["score"] for p in kept} == kept and len(rows) == len(CALIBRATION_PROMPTS)
    assert run.calibration == summary(triples(), list(rows.values()))
    before = sandbox.counts()["chat"]["judge"]
    harness.runner.drive(run_id)  # finished: nothing is judged again
    assert sandbox.counts()["chat"]["judge"] == before


def test_a_malformed_answer_is_asked_again_and_a_triple_never_scored_keeps_why(
        harness: Harness, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="chat", kind="malformed", judge=True,
                                match="Calibration message 1", times=1))
    sandbox.add_fault(FaultRule(route="chat", kind="malformed", judge=True,
                                match="Calibration message 2"))
    run = harness.runner.drive(start(harness, tolerance=None))
    rows = harness.store.calibrations(run.id)
    assert (rows[1]["attempts"], rows[1]["score"]) == (2, triples()[1]["expected"])
    attempts = harness.settings.judge_attempts
    assert (rows[2]["attempts"], rows[2]["score"]) == (attempts, None)
    assert rows[2]["error"] and rows[2]["judge_raw"]
    assert run.calibration is not None
    assert (run.calibration["judged"], run.calibration["triples"]) == (4, 5)


def test_a_triple_is_stored_once_whoever_stores_it_again(store: Store) -> None:
    store.create_run(make_run("r1"), ["p"])
    values = {"expected": 0.5, "judge_raw": "{}", "error": None, "attempts": 1, "tokens": 3}
    with store.tx() as tx:
        assert record_calibration(tx, "r1", 0, score=0.25, **values)
    with store.tx() as tx:
        assert not record_calibration(tx, "r1", 0, score=0.75, **values)
    [row] = store.calibrations("r1")
    assert (row["score"], row["tokens"], row["at"].tzinfo is not None) == (0.25, 3, True)
    assert store.tokens_used("r1") == 3


def test_status_report_and_trend_show_the_error_of_each_cycle(
        harness: Harness, sandbox: Sandbox) -> None:
    honest = harness.runner.drive(start(harness, tolerance=None))
    sandbox.set_judge_drift(0.3)
    drifted = harness.runner.drive(start(harness, tolerance=None))
    settings = Settings(db_url=harness.settings.db_url)
    shown = json.loads(service.status_text(settings, drifted.id, as_json=True))
    assert shown["calibration"]["mean_absolute_error"] == drifted_error(0.3)
    assert shown["calibration"]["source"] == "c.jsonl" and shown["calibration"]["measured"]
    text = service.status_text(settings, drifted.id, as_json=False)
    assert f"judge err  {drifted_error(0.3):.3f} mean absolute error on 5 of 5" in text
    report = json.loads(report_text(settings, drifted.id, as_json=True))
    assert report["calibration"] == shown["calibration"]
    assert "judge err " in report_text(settings, honest.id, as_json=False)
    rows = trend(harness.store, honest.project_id)
    assert [(r.run_id, r.judge_error) for r in rows] == [(honest.id, 0.0),
                                                         (drifted.id, drifted_error(0.3))]
    assert rows[1].to_json()["judge_error"] == drifted_error(0.3)


def test_0007_upgrades_a_database_whose_runs_go_on_without_a_calibration_set(
        db_url: str, make_harness: Callable[..., Harness], sandbox: Sandbox) -> None:
    with connected(db_url) as conn:
        command.upgrade(migrations.alembic_config(conn), "0006")
    now = utcnow().replace(tzinfo=None)
    runs = sa.table("runs", *(sa.column(c) for c in (
        "id", "project_id", "model_alias", "judge_model", "split_percentage", "prompts_source",
        "job_name", "state", "created_at", "updated_at", "state_changed_at",
        "cancel_requested")))
    items = sa.table("items", *(sa.column(c) for c in (
        "run_id", "position", "prompt", "stage", "judge_attempts", "updated_at")))
    with connected(db_url) as conn:
        conn.execute(runs.insert().values(
            id="old", project_id=DEFAULT_PROJECT_ID, model_alias=MODEL, judge_model=JUDGE,
            split_percentage=80, prompts_source="p.json", job_name="job-old", state="CREATED",
            created_at=now, updated_at=now, state_changed_at=now, cancel_requested=False))
        conn.execute(items.insert(), [{"run_id": "old", "position": n, "prompt": p,
                                       "stage": "PENDING", "judge_attempts": 0, "updated_at": now}
                                      for n, p in enumerate(PROMPTS)])
    harness = make_harness(sandbox)  # opening the store upgrades it
    assert revision(db_url) == migrations.HEAD
    assert differences(db_url, schema_metadata) == []
    run = harness.runner.drive("old")
    assert run.state is RunState.LAUNCHED and run.calibration is None
    assert harness.store.calibrations("old") == []
    assert sandbox.counts()["chat"]["judge"] == len(PROMPTS)


def test_0007_downgrades_and_upgrades_again(db_url: str) -> None:
    with connected(db_url) as conn:
        command.upgrade(migrations.alembic_config(conn), "head")
        command.downgrade(migrations.alembic_config(conn), "0006")
        assert "calibrations" not in sa.inspect(conn).get_table_names()
        command.upgrade(migrations.alembic_config(conn), "head")
    assert differences(db_url, schema_metadata) == []
