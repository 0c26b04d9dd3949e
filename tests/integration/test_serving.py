"""New models brought up for inference before promotion judges them, against the sandbox."""

from __future__ import annotations

import itertools
import time
from collections.abc import Callable
from typing import Any

import pytest

from cftrunner.config.run_options import LoopConfig
from cftrunner.config.settings import Settings
from cftrunner.polling import Backoff
from cftrunner.records import Run
from cftrunner.sandbox import FaultRule, Sandbox
from cftrunner.states import RunState
from tests.conftest import MODEL, Harness
from tests.integration.test_loop import HOLDOUT

PROMOTE = LoopConfig(follow=True, promote=True, holdout=tuple(HOLDOUT))


def _promoting(make_sandbox: Callable[..., Sandbox], make_harness: Callable[..., Harness],
               sandbox_options: dict[str, Any] | None = None, loop: LoopConfig = PROMOTE,
               **settings: Any) -> tuple[Sandbox, Harness, str]:
    sandbox = make_sandbox(training_polls=0, training_gain=0.3, **(sandbox_options or {}))
    settings = {"training_timeout": 30.0, "training_poll": 0.01, **settings}
    harness = make_harness(sandbox, **settings)
    return sandbox, harness, harness.start(loop=loop)


def _new_models(run: Run) -> list[str]:
    assert run.training is not None
    return [e["model_id"] for e in run.training["experiments"] if e["status"] == "succeeded"]


def _evaluated(harness: Harness, run_id: str) -> set[str]:
    return {e["model_id"] for e in harness.store.evaluations(run_id)}


def _no_chat_refused(sandbox: Sandbox) -> bool:
    """Every chat request the sandbox received was answered: none was sent to a cold model."""
    counts = sandbox.counts()
    return bool(counts["requests"]["chat"] == sum(counts["chat"].values()))


def test_cold_models_are_asked_up_and_judged_only_once_they_run(
        make_sandbox: Callable[..., Sandbox], make_harness: Callable[..., Harness]) -> None:
    sandbox, harness, run_id = _promoting(make_sandbox, make_harness, {"model_load_delay": 0.3})
    run = harness.runner.drive(run_id)
    assert run.state is RunState.PROMOTED
    new = _new_models(run)
    assert len(new) == 3 and sorted(sandbox.serving()["asked_up"]) == sorted(new)
    assert run.training is not None
    assert {m: e["status"] for m, e in run.training["serving"].items()} == dict.fromkeys(
        new, "running")
    assert _evaluated(harness, run_id) == {MODEL, *new}
    assert _no_chat_refused(sandbox)
    assert run.promotion is not None and run.promotion["excluded"] == []


def test_models_loading_are_looked_at_soon_then_backing_off_to_the_poll_interval(
        make_sandbox: Callable[..., Sandbox], make_harness: Callable[..., Harness]) -> None:
    """At the default waits (the harness records each and sleeps at most 0.05 s of it). The
    training wait, capped at training_poll (0.01 s here), is the last one before the models'.
    The models load in 2 s: three short waits and their looks end well before, on a busy host too."""
    sandbox, harness, run_id = _promoting(
        make_sandbox, make_harness, {"model_load_delay": 2.0, "processing_seconds": 0.0},
        poll_interval=5.0)
    run = harness.runner.drive(run_id)
    assert run.state is RunState.PROMOTED
    loading = harness.sleeps[harness.sleeps.index(0.01) + 1:]
    assert len(loading) >= 3
    assert loading == list(itertools.islice(Backoff(Settings().poll_first, 2.0, 5.0).delays(), len(loading)))


def test_past_the_bound_an_invocation_stops_intact_and_the_next_one_looks_again(
        make_sandbox: Callable[..., Sandbox], make_harness: Callable[..., Harness]) -> None:
    sandbox, harness, run_id = _promoting(make_sandbox, make_harness, {"model_load_delay": 1.0},
                                          model_load_timeout=0.0)
    waiting = harness.runner.drive(run_id)
    assert waiting.state is RunState.TRAINED and not waiting.finished
    assert waiting.training is not None
    assert {e["status"] for e in waiting.training["serving"].values()} == {"loading"}
    # Meanwhile the current model answered every held-out prompt; no new model was asked one.
    assert _evaluated(harness, run_id) == {MODEL}
    time.sleep(1.0)
    run = harness.runner.drive(run_id)
    assert run.state is RunState.PROMOTED
    # Each model was asked up once: the second invocation only looked whether it runs.
    assert sorted(sandbox.serving()["asked_up"]) == sorted(_new_models(run))
    assert _no_chat_refused(sandbox)


def test_new_models_load_while_the_current_one_answers(
        make_sandbox: Callable[..., Sandbox], make_harness: Callable[..., Harness]) -> None:
    """They are asked up before the current model's held-out answers, so a load shorter than
    those answers costs no invocation of its own."""
    sandbox, harness, run_id = _promoting(make_sandbox, make_harness, {"model_load_delay": 0.4},
                                          model_load_timeout=0.0)
    sandbox.add_fault(FaultRule(route="chat", kind="latency", delay=0.3, match=MODEL))
    assert harness.runner.drive(run_id).state is RunState.PROMOTED


def test_a_model_that_never_comes_up_is_left_out_with_its_reason(
        make_sandbox: Callable[..., Sandbox], make_harness: Callable[..., Harness]) -> None:
    sandbox, harness, run_id = _promoting(make_sandbox, make_harness, {"never_loads": "-exp2"},
                                          model_give_up=0.5, model_load_timeout=5.0)
    run = harness.runner.drive(run_id)
    assert run.state in (RunState.PROMOTED, RunState.NOT_PROMOTED) and run.failure_reason is None
    [cold] = [m for m in _new_models(run) if m.endswith("-exp2")]
    assert run.promotion is not None
    [excluded] = run.promotion["excluded"]
    assert excluded["model_id"] == cold
    assert "not running 0.5s after it was first looked for" in excluded["reason"]
    assert cold not in {c["model_id"] for c in run.promotion["candidates"]}
    assert cold not in _evaluated(harness, run_id) and len(run.promotion["candidates"]) == 2
    assert _no_chat_refused(sandbox)


def test_a_model_the_api_refuses_to_load_is_left_out_at_once(
        make_sandbox: Callable[..., Sandbox], make_harness: Callable[..., Harness]) -> None:
    _, harness, run_id = _promoting(make_sandbox, make_harness, {"load_refused": "-exp1"})
    run = harness.runner.drive(run_id)
    assert run.promotion is not None and run.failure_reason is None
    [excluded] = run.promotion["excluded"]
    assert excluded["model_id"].endswith("-exp1")
    assert "HTTP 400" in excluded["reason"] and "cannot be loaded" in excluded["reason"]


def test_when_no_new_model_comes_up_the_run_is_not_promoted_and_says_why(
        make_sandbox: Callable[..., Sandbox], make_harness: Callable[..., Harness]) -> None:
    _, harness, run_id = _promoting(make_sandbox, make_harness, {"never_loads": "-exp"},
                                    model_give_up=0.2, model_load_timeout=5.0)
    run = harness.runner.drive(run_id)
    assert run.state is RunState.NOT_PROMOTED and run.promotion is not None
    assert run.promotion["reason"].startswith("no new model came up for inference (")
    assert len(run.promotion["excluded"]) == 3 and run.promotion["candidates"] == []
    assert _evaluated(harness, run_id) == {MODEL}


def test_a_transient_failure_while_loading_is_retried(
        make_sandbox: Callable[..., Sandbox], make_harness: Callable[..., Harness]) -> None:
    sandbox, harness, run_id = _promoting(make_sandbox, make_harness)
    sandbox.add_fault(FaultRule(route="models_up", status=503, times=2))
    sandbox.add_fault(FaultRule(route="models_running", status=502, times=2))
    run = harness.runner.drive(run_id)
    assert run.state is RunState.PROMOTED and run.promotion is not None
    assert run.promotion["excluded"] == []


@pytest.mark.parametrize("unload", [True, False])
def test_unload_losers_unloads_exactly_the_new_models_that_lost(
        make_sandbox: Callable[..., Sandbox], make_harness: Callable[..., Harness],
        unload: bool) -> None:
    loop = LoopConfig(follow=True, promote=True, holdout=tuple(HOLDOUT), unload_losers=unload)
    sandbox, harness, run_id = _promoting(make_sandbox, make_harness, loop=loop)
    run = harness.runner.drive(run_id)
    assert run.state is RunState.PROMOTED and run.promotion is not None
    winner = run.promotion["model_id"]
    losers = sorted(set(_new_models(run)) - {winner})
    assert len(losers) == 2
    if not unload:
        assert sandbox.serving()["asked_down"] == [] and "unloaded" not in run.promotion
        return
    assert sorted(sandbox.serving()["asked_down"]) == losers
    assert sorted(u["model_id"] for u in run.promotion["unloaded"]) == losers
    assert all(u["unloaded"] for u in run.promotion["unloaded"])
    # The winner and the current model still answer.
    assert sandbox.world.model_running(winner) and sandbox.world.model_running(MODEL)

