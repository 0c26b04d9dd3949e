"""The gate before the snapshot, and the token budget, against the sandbox."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from cftrunner.config.run_options import GateConfig
from cftrunner.sandbox import Sandbox, llm
from cftrunner.states import ItemStage, RunState
from tests.conftest import PROMPTS, Harness

MORE_PROMPTS = [f"Classify message {i}: 'is this chat safe?'" for i in range(24)]


def _no_snapshot_no_job(sandbox: Sandbox) -> None:
    counts = sandbox.counts()
    assert (counts["snapshots"], counts["jobs"]) == (0, 0)
    assert counts["recommendations_generated"] == {}


def test_a_gate_that_passes_is_recorded_and_the_run_launches(harness: Harness,
                                                             sandbox: Sandbox) -> None:
    gate = GateConfig(min_traces=len(PROMPTS), min_below_threshold=0, max_mean_score=1.0)
    run = harness.runner.drive(harness.start(gate=gate))
    assert run.state is RunState.LAUNCHED
    assert run.gate_result is not None and run.gate_result["passed"] is True
    assert run.gate_result["traces_added"] == len(PROMPTS)


def test_too_few_traces_end_the_run_skipped_with_no_snapshot_and_no_job(
        harness: Harness, sandbox: Sandbox) -> None:
    run = harness.runner.drive(harness.start(gate=GateConfig(min_traces=len(PROMPTS) + 1)))
    assert run.state is RunState.SKIPPED
    assert run.skip_reason == f"{len(PROMPTS)} traces added, fewer than the {len(PROMPTS) + 1} required"
    assert run.snapshot_id is None and run.job_id is None and run.failure_reason is None
    assert sandbox.counts()["traces"] == len(PROMPTS)  # the traces are kept; only training waits
    _no_snapshot_no_job(sandbox)
    assert run.gate_result is not None and run.gate_result["passed"] is False


def test_a_model_already_above_the_target_mean_is_not_trained_again(
        harness: Harness, sandbox: Sandbox) -> None:
    scores = [llm.judge_score(p) for p in MORE_PROMPTS]  # the sandbox judge's scores are fixed
    run_id = harness.start(MORE_PROMPTS, gate=GateConfig(max_mean_score=0.1))
    run = harness.runner.drive(run_id)
    assert run.state is RunState.SKIPPED
    stored = [i.score for i in harness.store.items(run_id)]
    assert all(s is not None for s in stored)
    mean = sum(s or 0 for s in stored) / len(stored)
    assert run.skip_reason == f"the mean score {mean:.3f} is already above the target 0.1"
    assert len(scores) == len(stored)
    _no_snapshot_no_job(sandbox)


def test_too_few_low_scores_end_the_run_skipped(harness: Harness, sandbox: Sandbox) -> None:
    run = harness.runner.drive(harness.start(MORE_PROMPTS, gate=GateConfig(
        min_below_threshold=len(MORE_PROMPTS), score_threshold=0.5)))
    assert run.state is RunState.SKIPPED
    below = sum(1 for i in harness.store.items(run.id) if (i.score or 0) < 0.5)
    assert run.skip_reason == (f"{below} scored below 0.5, fewer than the "
                               f"{len(MORE_PROMPTS)} required")
    _no_snapshot_no_job(sandbox)


def test_every_unmet_condition_is_named(harness: Harness, sandbox: Sandbox) -> None:
    run = harness.runner.drive(harness.start(gate=GateConfig(
        min_traces=100, min_below_threshold=100, max_mean_score=0.0)))
    assert run.state is RunState.SKIPPED and run.gate_result is not None
    assert len(run.gate_result["reasons"]) == 3
    assert run.skip_reason == "; ".join(run.gate_result["reasons"])


def test_a_skipped_run_resumed_sends_nothing(harness: Harness, sandbox: Sandbox) -> None:
    run_id = harness.start(gate=GateConfig(min_traces=100))
    assert harness.runner.drive(run_id).state is RunState.SKIPPED
    before = sandbox.counts()["requests"]
    assert harness.runner.drive(run_id).state is RunState.SKIPPED
    assert sandbox.counts()["requests"] == before


@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_token_budget_stops_generating_and_judging_and_skips_the_cycle(
        make_harness: Callable[..., Harness], sandbox: Sandbox, concurrency: int) -> None:
    harness = make_harness(sandbox, concurrency=concurrency)
    budget = 1500
    run = harness.runner.drive(harness.start(MORE_PROMPTS, gate=GateConfig(token_budget=budget)))
    assert run.state is RunState.SKIPPED
    items = harness.store.items(run.id)
    skipped = [i for i in items if i.stage is ItemStage.SKIPPED]
    assert skipped and all(i.error_kind == "budget_exceeded" for i in skipped)
    assert all(i.trace_id is None for i in skipped)
    used = harness.store.tokens_used(run.id)
    assert used >= budget
    # Every request the API answered was counted, and none was sent for a skipped step.
    chats = sandbox.counts()["chat"]
    completions = [c for i in items for c in harness.store.completions(i.id)]
    assert chats["generate"] == sum(1 for c in completions if c.kind == "generate")
    assert chats["judge"] == sum(1 for c in completions if c.kind == "judge")
    assert chats["generate"] < len(MORE_PROMPTS) or chats["judge"] < len(MORE_PROMPTS)
    # Past the budget, only requests already under way (at most one per item worked on) ran.
    largest = max(c.total_tokens or 0 for c in completions)
    assert used < budget + harness.settings.item_workers * largest
    assert run.skip_reason is not None and f"token budget of {budget} ran out" in run.skip_reason
    # Items judged before the budget ran out still became traces: they cost nothing more.
    assert sandbox.counts()["traces"] == sum(1 for i in items if i.trace_id)
    _no_snapshot_no_job(sandbox)


def test_a_budget_the_cycle_stays_within_lets_it_launch(harness: Harness,
                                                        sandbox: Sandbox) -> None:
    run = harness.runner.drive(harness.start(gate=GateConfig(token_budget=10_000_000)))
    assert run.state is RunState.LAUNCHED
    assert run.gate_result is not None and run.gate_result["tokens_used"] > 0
