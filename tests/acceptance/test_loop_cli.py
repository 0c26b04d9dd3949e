"""The loop closed by cron: two cycles where the second uses the model the first promoted, with
kills in between, and a cycle whose promotion is refused."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from cftrunner import crashpoints
from cftrunner.sandbox import DEFAULT_PROJECT_ID, Sandbox
from cftrunner.store import Store
from tests.acceptance import test_tick
from tests.acceptance.test_ownership import FEW_PROMPTS
from tests.acceptance.test_tick import Cron
from tests.conftest import MODEL, traces_made, write_prompts

pytestmark = pytest.mark.slow

make_cron = test_tick.make_cron  # the same fixture: a sandbox and a config file for `tick`
KILLED = -signal.SIGKILL
HOLDOUT = [f"Classify held-out message {i}: 'where do you keep the spare key?'"
           for i in range(10)]
LOOP_KEYS = {"interval": '"1h"', "follow": "true", "promote": "true",
             "holdout_prompts": '"holdout.json"'}
DUE = {"CFTRUNNER_INTERVAL": "1s"}  # as if the hour had passed


def _cron(make_cron: Callable[..., Cron], gain: float) -> Cron:
    cron = make_cron(LOOP_KEYS, training_polls=1, training_gain=gain)
    write_prompts(cron.config.parent / "holdout.json", HOLDOUT)
    return cron


def _tick(cron: Cron, crash_at: str | None = None, env: dict[str, str] | None = None) -> Any:
    result = cron.tick(env={**(env or {}), **({crashpoints.ENV: crash_at} if crash_at else {})})
    expected = KILLED if crash_at else 0
    assert result.returncode == expected, result.stdout + result.stderr
    return result


def _runs(cron: Cron) -> list[dict[str, Any]]:
    """Every run, oldest first."""
    return list(reversed(cron.runs()))


def _tick_until(cron: Cron, state: str, limit: int = 8,
                env: dict[str, str] | None = None) -> dict[str, Any]:
    for _ in range(limit):
        _tick(cron, env=env)
        latest = _runs(cron)[-1]
        if latest["state"] == state:
            return latest
    raise AssertionError(f"not {state} after {limit} ticks: {_runs(cron)[-1]['state']}")


def test_two_cycles_the_second_on_the_promoted_model_with_kills_in_between(
        make_cron: Callable[..., Cron]) -> None:
    cron = _cron(make_cron, gain=0.2)
    sandbox: Sandbox = cron.sandbox

    # Cycle 1: launched, then read once per tick while the job trains; never sleeping.
    first = _tick(cron)
    run_id = first.stdout.splitlines()[0]
    assert f"run {run_id}: LAUNCHED job " in first.stdout and "still training" in first.stdout
    assert "still training (job processing)" in _tick(cron).stdout
    # Killed right after the job's end was stored, then again part way through evaluating.
    _tick(cron, crash_at="follow.after_end")
    assert _runs(cron)[-1]["state"] == "TRAINED"
    _tick(cron, crash_at="promote.after_evaluation:4")
    assert _runs(cron)[-1]["state"] == "TRAINED"
    promoted = _tick_until(cron, "PROMOTED")
    decision = promoted["promotion"]
    assert decision["promoted"] is True and decision["current"]["model_id"] == MODEL
    new_model = decision["model_id"]
    assert sandbox.model_quality(new_model) > sandbox.model_quality(MODEL)
    kept = _evaluations(cron, run_id)
    assert len(kept) == len(set(kept)) == (1 + len(decision["candidates"])) * len(HOLDOUT)

    # Nothing is due until the interval has passed, and nothing is sent meanwhile.
    before = sum(sandbox.counts()["requests"].values())
    waiting = _tick(cron)
    assert waiting.stdout.startswith(f"nothing to do: the last cycle {run_id} PROMOTED")
    assert sum(sandbox.counts()["requests"].values()) == before

    # Cycle 2, killed mid-way, answers with the promoted model and re-tunes from its experiment.
    time.sleep(1)
    _tick(cron, crash_at="judge.after_store:2", env=DUE)
    second = _tick_until(cron, "PROMOTED", env=DUE)
    assert second["run_id"] != run_id and second["model_alias"] == new_model
    traces = sandbox.world.traces()
    assert sorted(t["modelId"] for t in traces) == sorted([MODEL] * len(FEW_PROMPTS)
                                                           + [new_model] * len(FEW_PROMPTS))
    jobs = sandbox.world.jobs()
    assert len(jobs) == 2 and sandbox.counts()["snapshots"] == 2
    second_job = next(j for j in jobs if j["id"] == second["job_id"])
    first_base = {e["base_model_id"] for e in sandbox.world.sent_experiments(promoted["job_id"])}
    for sent in sandbox.world.sent_experiments(second_job["id"]):
        assert sent["refinetune_from_experiment_id"] == decision["experiment_id"]
        assert sent["base_model_id"] in first_base  # the original base model, kept
    assert second["promotion"]["current"]["model_id"] == new_model
    # Every effect of both cycles happened once.
    counts = sandbox.counts()
    assert traces_made(sandbox) == 2 * len(FEW_PROMPTS)
    assert sorted(counts["additions"].values()) == [1] * 2 * len(FEW_PROMPTS)
    assert counts["jobs"] == 2


def test_a_worse_model_is_refused_and_the_next_cycle_keeps_the_current_one(
        make_cron: Callable[..., Cron]) -> None:
    cron = _cron(make_cron, gain=-0.4)
    refused = _tick_until(cron, "NOT_PROMOTED")
    assert refused["promotion"]["promoted"] is False
    assert "by more than the margin" in refused["promotion"]["reason"]
    shown = cron.cli.run("status", refused["run_id"], "--config", str(cron.config))
    assert "promotion  not promoted: the best new model" in shown.stdout
    time.sleep(1)
    following = _tick(cron, env=DUE)
    next_id = following.stdout.splitlines()[0]
    [second] = [r for r in _runs(cron) if r["run_id"] == next_id]
    assert second["model_alias"] == MODEL
    # No promoted experiment to re-tune from: the job gets the recommendations as they are.
    assert all("refinetune_from_experiment_id" not in e
               for e in cron.sandbox.world.sent_experiments(second["job_id"]))


def test_a_job_that_trains_no_model_ends_train_failed_with_exit_1(
        make_cron: Callable[..., Cron]) -> None:
    cron = make_cron({**LOOP_KEYS, "promote": "false"},
                     training_polls=0, training_outcome="failed")
    _tick(cron)  # launched; the job is read once: queued
    ended = cron.tick()
    assert ended.returncode == 1
    assert "TRAIN_FAILED" in ended.stderr and "no succeeded experiment" in ended.stderr
    assert _runs(cron)[-1]["state"] == "TRAIN_FAILED"


def _evaluations(cron: Cron, run_id: str) -> list[tuple[str, int]]:
    store = Store(cron.db_url)
    try:
        return [(e["model_id"], e["position"]) for e in store.evaluations(run_id)]
    finally:
        store.close()


def test_status_json_shows_the_model_each_cycle_used_and_the_decision(
        make_cron: Callable[..., Cron]) -> None:
    cron = _cron(make_cron, gain=0.2)
    run = _tick_until(cron, "PROMOTED")
    assert run["model_alias"] == MODEL and run["follow"] is True and run["promote"] is True
    assert run["training"]["status"] == "completed"
    trend = cron.cli.run("report", "--trend", "--no-html", "--json", "--config", str(cron.config))
    assert trend.returncode == 0, trend.stderr
    [cycle] = json.loads(trend.stdout)["cycles"]
    assert cycle["model_alias"] == MODEL and cycle["state"] == "PROMOTED"
    assert cycle["promotion"].startswith(f"promoted {run['promotion']['model_id']} (")
    # Wide enough for the whole note: a narrower table cuts it to fit (see views/tables.py).
    table = cron.cli.run("report", "--trend", "--no-html", "--config", str(cron.config),
                         env={"COLUMNS": "300"}).stdout
    assert f"promoted {run['promotion']['model_id']} (" in table
    assert json.loads(trend.stdout)["project_id"] == DEFAULT_PROJECT_ID
