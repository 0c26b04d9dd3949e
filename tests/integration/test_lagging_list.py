"""Lost answers against a trace list that shows new traces late: never sent twice on a guess."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

import pytest
from structlog.testing import capture_logs

from cftrunner.effects import Unknown
from cftrunner.exceptions import NeedsDecision, OutcomePending
from cftrunner.reconcile import MARKS_AFTER
from cftrunner.records import EffectStatus, Run
from cftrunner.sandbox import FaultRule, Sandbox
from cftrunner.service import settle
from cftrunner.states import ItemStage, RunState
from tests.conftest import Harness, assert_exactly_once

LAG = 1.5  # seconds: far beyond the settle time the tests use (0.05 s)
PROMPTS = [f"Is message {n} safe? 'my bike chain slipped again'" for n in range(12)]


def drive_until_finished(harness: Harness, run_id: str, lives: int = 20) -> tuple[Run, int]:
    """Resume as cron would until the run finishes; the run and how many invocations stopped
    with the outcome of a lost request not known yet."""
    pending = 0
    for _ in range(lives):
        try:
            return harness.runner.drive(run_id), pending
        except OutcomePending:
            pending += 1
    raise AssertionError(f"run {run_id} did not finish in {lives} invocations")


@pytest.mark.parametrize("uneven", [False, True], ids=["lag", "uneven-lag"])
@pytest.mark.parametrize("route", ["trace_create", "add_to_dataset"])
def test_lost_answers_are_not_sent_again_while_the_trace_list_lags(
        make_harness: Callable[..., Harness], make_sandbox: Callable[..., Sandbox], route: str,
        uneven: bool) -> None:
    sandbox = make_sandbox(list_lag=LAG, list_lag_uneven=uneven)
    sandbox.add_fault(FaultRule(route=route, kind="drop", every=4))
    harness = make_harness(sandbox, concurrency=3, reconcile_wait=6.0)

    with capture_logs() as logs:
        run, _ = drive_until_finished(harness, harness.start(PROMPTS))

    assert run.state is RunState.LAUNCHED
    assert_exactly_once(sandbox, len(PROMPTS))
    assert sandbox.counts()["faults_fired"]["drop"] >= 3
    assert any(e["event"] == "reconcile_unknown" for e in logs)


def test_the_run_finishes_over_several_invocations_once_the_list_catches_up(
        make_harness: Callable[..., Harness], make_sandbox: Callable[..., Sandbox]) -> None:
    """Each invocation looks for a short while only, stops intact, and the next goes on."""
    sandbox = make_sandbox(list_lag=LAG)
    sandbox.add_fault(FaultRule(route="trace_create", kind="drop", every=3))
    harness = make_harness(sandbox, concurrency=2, reconcile_wait=0.2)

    run, pending = drive_until_finished(harness, harness.start(PROMPTS), lives=60)

    assert run.state is RunState.LAUNCHED
    assert pending >= 1
    assert_exactly_once(sandbox, len(PROMPTS))


def test_a_trace_known_to_exist_that_the_list_does_not_show_yet_is_not_visible_not_unadded(
        harness: Harness, sandbox: Sandbox) -> None:
    run_id = harness.start(PROMPTS[:1])
    sandbox.add_fault(FaultRule(route="add_to_dataset", kind="drop", times=1))
    sandbox.set_list_lag(3600)  # traces made from now on stay out of the list
    with pytest.raises(OutcomePending, match="is not in the trace list yet"):
        harness.runner.drive(run_id)

    assert sandbox.counts()["datapoints"] == 1
    add = harness.store.effect(run_id, "add:0")
    assert add is not None and add.status is EffectStatus.PREPARED


def test_the_last_lost_request_waits_for_a_person_and_is_never_sent_again(
        make_harness: Callable[..., Harness], sandbox: Sandbox) -> None:
    """No later write of the run can show that the list caught up: past the give-up bound the
    effect waits for `cftrunner settle`, looked at on every resume, never sent."""
    sandbox.add_fault(FaultRule(route="trace_create", kind="status", status=503, times=1))
    harness = make_harness(sandbox, concurrency=1, reconcile_wait=0.2, reconcile_give_up=2.0,
                           marker_traces=False)
    run_id = harness.start(PROMPTS[:1])
    with pytest.raises(OutcomePending, match="looks again") as first:
        harness.runner.drive(run_id)
    assert not isinstance(first.value, NeedsDecision)
    time.sleep(2.0)

    for _ in range(2):
        with pytest.raises(NeedsDecision, match=f"cftrunner settle {run_id} trace:0"):
            harness.runner.drive(run_id)
    assert sandbox.counts()["requests"]["trace_create"] == 1
    effect = harness.store.effect(run_id, "trace:0")
    assert effect is not None and effect.status is EffectStatus.UNKNOWN
    assert [e.key for e in harness.store.summary(harness.store.run(run_id)).undecided] == ["trace:0"]

    settle(harness.settings, run_id, "0", happened=False, remote_id=None)
    run = harness.runner.drive(run_id)
    assert run.state is RunState.LAUNCHED
    assert_exactly_once(sandbox, 1)


def test_a_person_who_says_it_happened_gives_the_trace_and_nothing_is_sent_again(
        make_harness: Callable[..., Harness], sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="trace_create", kind="drop", times=1))
    harness = make_harness(sandbox, concurrency=1, reconcile_give_up=0.0)
    run_id = harness.start(PROMPTS[:1])
    sandbox.set_list_lag(3600)  # the list shows nothing yet
    with pytest.raises(NeedsDecision):
        harness.runner.drive(run_id)
    [made] = [t for t in sandbox.world.traces() if t["input"] == PROMPTS[0]]
    sandbox.set_list_lag(0)

    settle(harness.settings, run_id, "trace:0", happened=True, remote_id=made["id"])
    run = harness.runner.drive(run_id)

    assert run.state is RunState.LAUNCHED
    assert harness.store.items(run_id)[0].trace_id == made["id"]
    assert sandbox.counts()["requests"]["trace_create"] == 1
    assert_exactly_once(sandbox, 1)


@pytest.mark.parametrize("route", ["trace_create", "add_to_dataset"])
def test_a_marker_trace_shows_the_list_caught_up_past_the_last_lost_request(
        make_harness: Callable[..., Harness], make_sandbox: Callable[..., Sandbox],
        route: str) -> None:
    """Nothing the run writes comes after its last request: it writes marker traces, one after
    another as the list shows each, until the list shows enough to prove it has caught up;
    then deletes them."""
    sandbox = make_sandbox(list_lag=LAG)
    sandbox.add_fault(FaultRule(route=route, kind="status", status=503, times=1))
    harness = make_harness(sandbox, concurrency=1, reconcile_wait=10.0)

    with capture_logs() as logs:
        run = harness.runner.drive(harness.start(PROMPTS[:1]))

    assert run.state is RunState.LAUNCHED
    marks = harness.store.effects(run.id, "marker")
    assert len(marks) >= MARKS_AFTER
    assert all((mark.outcome or {}).get("deleted") for mark in marks)
    # The refused request, then the one sent again; and the markers, traces too.
    assert sandbox.counts()["requests"][route] == 2 + len(marks) * (route == "trace_create")
    assert_exactly_once(sandbox, 1)
    events = [e["event"] for e in logs]
    assert "marker_written" in events and "marker_deleted" in events
    assert [t["input"] for t in sandbox.world.traces()] == [PROMPTS[0]]


def test_a_snapshot_is_taken_as_absent_only_once_the_dataset_shows_known_snapshots(
        harness: Harness, sandbox: Sandbox) -> None:
    run = harness.runner.drive(harness.start(PROMPTS[:2]))
    assert run.snapshot_id is not None
    later = harness.store.run(harness.start(PROMPTS[2:4]))
    effect = harness.store.effect(run.id, "snapshot")
    assert effect is not None
    lost = replace(effect, run_id=later.id)
    later = replace(later, dataset_id=run.dataset_id)

    # The dataset shows the first run's snapshot, and none after the lost request: absent.
    assert harness.runner.reconcile.snapshot(later, lost) is None
    # A dataset view that does not show a snapshot this database knows was made lags.
    sandbox.world._datasets[run.dataset_id or ""].snapshot_ids.clear()
    verdict = harness.runner.reconcile.snapshot(later, lost)
    assert isinstance(verdict, Unknown) and run.snapshot_id in verdict.reason


def test_a_job_is_taken_as_absent_only_once_the_tree_shows_its_snapshot(
        harness: Harness, sandbox: Sandbox) -> None:
    run = harness.runner.drive(harness.start(PROMPTS[:2]))
    effect = harness.store.effect(run.id, "launch")
    assert effect is not None and run.snapshot_id is not None
    elsewhere = replace(effect, request={**effect.request, "snapshot_id": "not-shown"})

    verdict = harness.runner.reconcile.launch(run, elsewhere)

    assert isinstance(verdict, Unknown) and "not-shown" in verdict.reason
    assert harness.runner.reconcile.launch(run, effect) == {"job_id": run.job_id}


def test_corrections_are_not_taken_as_done_before_the_list_shows_the_addition(
        make_harness: Callable[..., Harness], make_sandbox: Callable[..., Sandbox]) -> None:
    """A lagging list shows a trace just added as not added, processing "none": that says
    nothing of its correction, so the snapshot waits until the list shows it done."""
    processing = 1.0
    sandbox = make_sandbox(list_lag=LAG, processing_seconds=processing, add_threshold=1.1)
    # The additions come after the list shows the traces (and before the 2 s read timeout).
    sandbox.add_fault(FaultRule(route="add_to_dataset", kind="latency", delay=LAG + 0.3))
    harness = make_harness(sandbox, concurrency=3)
    run = harness.runner.drive(harness.start(PROMPTS[:3]))

    assert run.state is RunState.LAUNCHED
    added = max(e.updated_at for e in harness.store.effects(run.id) if e.kind == "add")
    snapshot = harness.store.effect(run.id, "snapshot")
    assert snapshot is not None
    assert (snapshot.prepared_at - added).total_seconds() >= processing
    assert {i.stage for i in harness.store.items(run.id)} == {ItemStage.ADDED}
