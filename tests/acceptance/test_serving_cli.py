"""New models loaded before promotion judges them, driven by cron's ticks: cold models over several
ticks, a model that never comes up left out with its reason, the losers unloaded, and kills while
models load."""

from __future__ import annotations

import signal
import time
from collections.abc import Callable
from typing import Any

import pytest

from cftrunner.sandbox import Sandbox
from cftrunner.store import Store
from tests.acceptance import test_tick
from tests.acceptance.test_loop_cli import (
    HOLDOUT,
    KILLED,
    LOOP_KEYS,
    _evaluations,
    _runs,
    _tick,
    _tick_until,
)
from tests.acceptance.test_tick import Cron
from tests.conftest import write_prompts

pytestmark = pytest.mark.slow

make_cron = test_tick.make_cron


def _cron(make_cron: Callable[..., Cron], keys: dict[str, str] | None = None, timeouts: str = "",
          **sandbox: Any) -> Cron:
    cron = make_cron({**LOOP_KEYS, **(keys or {})}, f"[timeouts]\n{timeouts}",
                     training_polls=0, training_gain=0.2, **sandbox)
    write_prompts(cron.config.parent / "holdout.json", HOLDOUT)
    return cron


def _new_models(run: dict[str, Any]) -> list[str]:
    return sorted(e["model_id"] for e in run["training"]["experiments"]
                  if e["status"] == "succeeded")


def _serving(cron: Cron, run_id: str) -> dict[str, Any]:
    store = Store(cron.db_url)
    try:
        return dict((store.run(run_id).training or {}).get("serving") or {})
    finally:
        store.close()


def test_cold_models_are_promoted_over_several_ticks_never_sleeping_in_one(
        make_cron: Callable[..., Cron]) -> None:
    cron = _cron(make_cron, timeouts='model_load = "0s"\n', model_load_delay=3.0)
    sandbox: Sandbox = cron.sandbox
    run_id = _tick(cron).stdout.splitlines()[0]  # launched; the job read once
    loading = _tick(cron)
    assert f"run {run_id}: TRAINED job " in loading.stdout
    assert "models loading for inference (0 of 3 running); the next resume or tick looks again" \
        in loading.stdout
    shown = cron.cli.run("status", run_id, "--config", str(cron.config)).stdout
    assert "serving" in shown and shown.count(" loading") == 3
    for _ in range(20):
        time.sleep(0.5)
        if _tick(cron).stdout.startswith(f"run {run_id}: PROMOTED"):
            break
    promoted = _runs(cron)[-1]
    assert promoted["state"] == "PROMOTED" and promoted["promotion"]["excluded"] == []
    # Asked up once each; no held-out prompt went to a model that was not running yet.
    assert sorted(sandbox.serving()["asked_up"]) == _new_models(promoted)
    counts = sandbox.counts()
    assert counts["requests"]["chat"] == sum(counts["chat"].values())


def test_a_model_that_never_comes_up_is_left_out_and_status_says_why(
        make_cron: Callable[..., Cron]) -> None:
    cron = _cron(make_cron, timeouts='model_give_up = "1s"\n', never_loads="-exp2")
    run = _tick_until(cron, "PROMOTED")
    [cold] = [m for m in _new_models(run) if m.endswith("-exp2")]
    [excluded] = run["promotion"]["excluded"]
    assert excluded["model_id"] == cold and "not running 1s after" in excluded["reason"]
    assert cold not in {c["model_id"] for c in run["promotion"]["candidates"]}
    assert cold not in {m for m, _ in _evaluations(cron, run["run_id"])}
    shown = cron.cli.run("status", run["run_id"], "--config", str(cron.config))
    assert shown.returncode == 0
    assert f"left out   {cold}: asked to load, not running 1s after" in shown.stdout


def test_unload_losers_unloads_exactly_the_new_models_that_lost(
        make_cron: Callable[..., Cron]) -> None:
    cron = _cron(make_cron, {"unload_losers": "true"})
    run = _tick_until(cron, "PROMOTED")
    losers = sorted(set(_new_models(run)) - {run["promotion"]["model_id"]})
    assert len(losers) == 2 and sorted(cron.sandbox.serving()["asked_down"]) == losers
    assert all(u["unloaded"] for u in run["promotion"]["unloaded"])


def test_kills_while_models_load_resume_without_losing_track(
        make_cron: Callable[..., Cron]) -> None:
    cron = _cron(make_cron, model_load_delay=4.0)
    sandbox: Sandbox = cron.sandbox
    run_id = _tick(cron).stdout.splitlines()[0]
    # Killed after the second model was asked up, before that was stored.
    _tick(cron, crash_at="serving.after_ask:2")
    asking = {m.rpartition("-")[2]: e["status"] for m, e in _serving(cron, run_id).items()}
    assert asking == {"exp1": "loading", "exp2": "asking"}
    # Then killed while it waits for the third to run.
    driver = cron.cli.spawn(*cron.args)
    for _ in range(400):
        if any(m.endswith("-exp3") and e["status"] == "loading"
               for m, e in _serving(cron, run_id).items()):
            break
        time.sleep(0.05)
    else:
        raise AssertionError(f"not loading: {_serving(cron, run_id)}")
    driver.send_signal(signal.SIGKILL)
    assert driver.wait(timeout=30) == KILLED
    run = _tick_until(cron, "PROMOTED")
    new = _new_models(run)
    asked = sandbox.serving()["asked_up"]
    # Each model asked up once, recorded as loading, and not asked again after the kills; the one
    # whose request was not known to have gone out was asked again only if it was not running.
    assert {m: asked.count(m) for m in new if not m.endswith("-exp2")} == {
        m: 1 for m in new if not m.endswith("-exp2")}
    assert [asked.count(m) for m in new if m.endswith("-exp2")] in ([1], [2])
    kept = _evaluations(cron, run_id)
    assert len(kept) == len(set(kept)) == 4 * len(HOLDOUT)
