"""Following the job and promoting its model, against the sandbox's training jobs."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cftrunner.config.run_options import LoopConfig
from cftrunner.exceptions import RunStopped
from cftrunner.records import Run
from cftrunner.sandbox import FaultRule, Sandbox
from cftrunner.states import RunState
from tests.conftest import MODEL, PROMPTS, Harness

HOLDOUT = [f"Classify held-out message {i}: 'can I borrow your ladder?'" for i in range(12)]
FOLLOW = LoopConfig(follow=True)
PROMOTE = LoopConfig(follow=True, promote=True, holdout=tuple(HOLDOUT))


def _job_reads(sandbox: Sandbox) -> int:
    return int(sandbox.counts()["requests"].get("finetune_get", 0))


def _drive_until_settled(harness: Harness, run_id: str, limit: int = 10) -> tuple[Run, int]:
    """Drive as cron's ticks would, once per invocation; the run and the drives it took."""
    for drives in range(1, limit + 1):
        run = harness.runner.drive(run_id)
        if run.finished:
            return run, drives
    raise AssertionError(f"run {run_id} still {run.state.value} after {limit} drives")


def test_a_run_that_does_not_follow_ends_at_launched_and_never_reads_the_job(
        harness: Harness, sandbox: Sandbox) -> None:
    run = harness.runner.drive(harness.start())
    assert run.state is RunState.LAUNCHED and run.finished
    assert _job_reads(sandbox) == 0


def test_following_reads_the_job_once_per_invocation_until_it_trains(
        make_sandbox: Callable[..., Sandbox], make_harness: Callable[..., Harness]) -> None:
    sandbox = make_sandbox(training_polls=2)
    harness = make_harness(sandbox)
    run_id = harness.start(loop=FOLLOW)
    first = harness.runner.drive(run_id)
    assert first.state is RunState.LAUNCHED and not first.finished
    assert first.training is not None and first.training["status"] == "processing"
    assert {e["status"] for e in first.training["experiments"]} == {"pending"}
    assert _job_reads(sandbox) == 1
    run, drives = _drive_until_settled(harness, run_id)
    # pending, running, deploying, then succeeded: one read per invocation.
    assert drives == 3 and _job_reads(sandbox) == 4
    assert run.state is RunState.TRAINED and run.training is not None
    models = [e["model_id"] for e in run.training["experiments"] if e["status"] == "succeeded"]
    assert models and all(models)
    again = harness.runner.drive(run_id)
    assert again.state is RunState.TRAINED and _job_reads(sandbox) == 4


def test_a_bound_per_invocation_lets_one_invocation_wait_for_the_end(
        make_sandbox: Callable[..., Sandbox], make_harness: Callable[..., Harness]) -> None:
    sandbox = make_sandbox(training_polls=3)
    harness = make_harness(sandbox, training_timeout=30.0, training_poll=0.01)
    run = harness.runner.drive(harness.start(loop=FOLLOW))
    assert run.state is RunState.TRAINED and _job_reads(sandbox) == 5


def test_a_followed_job_is_read_again_soon_then_backing_off_to_training_poll(
        make_sandbox: Callable[..., Sandbox], make_harness: Callable[..., Harness]) -> None:
    """At the default waits (the harness records each and sleeps at most 0.05 s of it): the
    recommendations' one wait, then the job's, backing off from 0.1 s towards 60 s."""
    sandbox = make_sandbox(training_polls=3, processing_seconds=0.0)
    harness = make_harness(sandbox, training_timeout=30.0, poll_interval=5.0)
    run = harness.runner.drive(harness.start(loop=FOLLOW))
    assert run.state is RunState.TRAINED and _job_reads(sandbox) == 5
    assert harness.sleeps == [0.1, 0.1, 0.2, 0.4, 0.8]


def test_a_job_with_no_model_ends_train_failed(make_sandbox: Callable[..., Sandbox],
                                               make_harness: Callable[..., Harness]) -> None:
    sandbox = make_sandbox(training_polls=0, training_outcome="failed")
    harness = make_harness(sandbox, training_timeout=30.0, training_poll=0.01)
    run = harness.runner.drive(harness.start(loop=PROMOTE))
    assert run.state is RunState.TRAIN_FAILED and run.finished
    assert run.failure_reason is not None and "no succeeded experiment" in run.failure_reason
    assert harness.store.evaluations(run.id) == []


def _promoting(make_sandbox: Callable[..., Sandbox], make_harness: Callable[..., Harness],
               gain: float, margin: float = 0.0) -> tuple[Sandbox, Harness, Run]:
    sandbox = make_sandbox(training_polls=0, training_gain=gain)
    harness = make_harness(sandbox, training_timeout=30.0, training_poll=0.01)
    loop = LoopConfig(follow=True, promote=True, holdout=tuple(HOLDOUT), margin=margin)
    return sandbox, harness, harness.runner.drive(harness.start(loop=loop))


def test_a_better_model_is_promoted_on_the_held_out_prompts(
        make_sandbox: Callable[..., Sandbox], make_harness: Callable[..., Harness]) -> None:
    sandbox, harness, run = _promoting(make_sandbox, make_harness, gain=0.3)
    assert run.state is RunState.PROMOTED and run.promotion is not None
    decision = run.promotion
    assert decision["promoted"] is True
    best = max(decision["candidates"], key=lambda c: c["mean"])
    assert decision["model_id"] == best["model_id"] and decision["experiment_id"]
    assert decision["current"]["model_id"] == MODEL
    assert best["mean"] >= decision["current"]["mean"]
    assert sandbox.model_quality(decision["model_id"]) > sandbox.model_quality(MODEL)
    results = harness.store.evaluations(run.id)
    assert len(results) == (1 + len(decision["candidates"])) * len(HOLDOUT)
    assert all(r["score"] is not None for r in results)
    # The held-out prompts are only ever answered and judged: never traced, never trained on.
    inputs = {t["input"] for t in sandbox.world.traces()}
    assert inputs == set(PROMPTS) and not inputs & set(HOLDOUT)


def test_a_worse_model_is_not_promoted_and_the_reason_says_why(
        make_sandbox: Callable[..., Sandbox], make_harness: Callable[..., Harness]) -> None:
    _, _, run = _promoting(make_sandbox, make_harness, gain=-0.4)
    assert run.state is RunState.NOT_PROMOTED and run.promotion is not None
    assert run.promotion["promoted"] is False
    assert "by more than the margin 0" in run.promotion["reason"]
    assert run.failure_reason is None


def test_a_large_enough_margin_promotes_a_slightly_worse_model(
        make_sandbox: Callable[..., Sandbox], make_harness: Callable[..., Harness]) -> None:
    _, _, run = _promoting(make_sandbox, make_harness, gain=-0.1, margin=1.0)
    assert run.state is RunState.PROMOTED


def test_evaluation_stopped_half_way_resumes_without_asking_again(
        make_sandbox: Callable[..., Sandbox], make_harness: Callable[..., Harness]) -> None:
    sandbox = make_sandbox(training_polls=0, training_gain=0.2)
    harness = make_harness(sandbox, training_timeout=30.0, training_poll=0.01, concurrency=1)
    # The API fails for good on one held-out prompt part way through the evaluation.
    run_id = harness.start(loop=PROMOTE)
    sandbox.add_fault(FaultRule(route="chat", status=503, every=1, match="held-out message 5"))
    with pytest.raises(RunStopped):
        harness.runner.drive(run_id)
    stopped = harness.store.run(run_id)
    assert stopped.state is RunState.TRAINED
    kept = len(harness.store.evaluations(run_id))
    assert 0 < kept < 3 * len(HOLDOUT)
    sandbox.clear_faults()
    before = sandbox.counts()["chat"]
    finished = harness.runner.drive(run_id)
    assert finished.state in (RunState.PROMOTED, RunState.NOT_PROMOTED)
    after = sandbox.counts()["chat"]
    # Only the evaluations not yet kept were asked for: one answer and one judgment each.
    missing = len(harness.store.evaluations(run_id)) - kept
    assert after["generate"] - before["generate"] == missing
    assert after["judge"] - before["judge"] == missing


def test_a_held_out_answer_with_no_content_is_kept_as_an_error_without_a_score(
        make_sandbox: Callable[..., Sandbox], make_harness: Callable[..., Harness]) -> None:
    sandbox = make_sandbox(training_polls=0, training_gain=0.3)
    harness = make_harness(sandbox, training_timeout=30.0, training_poll=0.01)
    run_id = harness.start(loop=PROMOTE)
    sandbox.add_fault(FaultRule(route="chat", kind="no_content", match="held-out message 3",
                                judge=False))
    run = harness.runner.drive(run_id)
    assert run.state is RunState.PROMOTED and run.promotion is not None
    empty = [e for e in harness.store.evaluations(run_id) if e["position"] == 3]
    assert empty and all(e["score"] is None and e["answer"] is None for e in empty)
    assert all(e["error"] == "the model answered no content (finish_reason: content_filter)"
               for e in empty)
    # Not judged as an empty answer: the judge never saw it.
    assert run.promotion["current"]["judged"] == len(HOLDOUT) - 1
