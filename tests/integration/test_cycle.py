"""A whole cycle against the sandbox over real HTTP with a real SQLite file, fault by fault."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import pytest
import sqlalchemy as sa
from structlog.testing import capture_logs

from cftrunner.config.settings import Settings
from cftrunner.driver import Driver
from cftrunner.effects import Effect
from cftrunner.exceptions import RunStopped
from cftrunner.records import EffectStatus
from cftrunner.retry import RetryPolicy
from cftrunner.sandbox import DEFAULT_API_KEY, FaultRule, Sandbox
from cftrunner.stages import launch
from cftrunner.states import ItemStage, RunState
from cftrunner.store import dialect
from tests.conftest import PROMPTS, Harness, assert_exactly_once

EFFECT_ROUTES = ["trace_create", "add_to_dataset", "snapshot_create", "recs_generate",
                 "finetune_create"]


def test_a_cycle_reaches_launched_with_every_effect_once(harness: Harness, sandbox: Sandbox) -> None:
    run = harness.runner.drive(harness.start())
    assert run.state is RunState.LAUNCHED
    assert run.job_id is not None and run.snapshot_id is not None
    assert_exactly_once(sandbox, len(PROMPTS))
    assert {i.stage for i in harness.store.items(run.id)} == {ItemStage.ADDED}


@pytest.mark.sqlite_only
def test_every_intent_is_on_disk_before_its_request_and_outcomes_need_not_be(
        harness: Harness, sandbox: Sandbox) -> None:
    """On SQLite, a transaction that stores an intent commits synced to disk; the ones that store
    only what can be found again (answers, outcomes) do not wait for the disk."""
    levels: dict[str, set[int]] = {"intent": set(), "answer": set(), "addition": set()}

    def before(conn: sa.Connection, _cursor: object, statement: str, params: object,
               _context: object, _many: bool) -> None:
        kind = ("intent" if statement.startswith("INSERT INTO effects")
                else "answer" if statement.startswith("INSERT INTO completions")
                else "addition" if statement.startswith("UPDATE items SET stage=?, add_status")
                else None)
        if kind is not None:
            driver = conn.connection.driver_connection
            levels[kind].add(driver.execute("PRAGMA synchronous").fetchone()[0])  # type: ignore[union-attr]

    sa.event.listen(harness.store.write_engine, "before_cursor_execute", before)
    run = harness.runner.drive(harness.start())

    assert run.state is RunState.LAUNCHED
    assert levels == {"intent": {2}, "answer": {1, 2}, "addition": {1}}


def test_the_job_gets_the_recommended_experiments_minus_the_advisory_keys(
        harness: Harness, sandbox: Sandbox) -> None:
    run = harness.runner.drive(harness.start())
    assert run.job_id is not None
    sent = sandbox.world.sent_experiments(run.job_id)
    recommended = [e for e in sandbox.world.recommendations(run.snapshot_id or "")
                   ["recommended_experiments"] if e["recommended"]]
    assert sent == [{k: v for k, v in e.items()
                     if k not in ("recommended", "reason_for_recommendation")} for e in recommended]


def test_older_recommendations_launch_with_a_training_type_and_the_run_records_it(
        harness: Harness, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="recs_get", kind="lora_flag"))
    run = harness.runner.drive(harness.start())
    assert run.state is RunState.LAUNCHED and run.job_id is not None
    recommended = [e for e in sandbox.world.recommendations(run.snapshot_id or "")
                   ["recommended_experiments"] if e["recommended"]]
    sent = sandbox.world.sent_experiments(run.job_id)
    assert [(e["base_model_id"], e["training_type"]) for e in sent] == [
        (e["base_model_id"], "full" if e["training_type"] == "full" else "lora")
        for e in recommended]
    assert not any("lora" in e for e in sent)
    [converted] = [e for e in harness.store.events(run.id) if e.kind == "experiments_converted"]
    assert converted.data["experiments"] == [
        {"base_model_id": e["base_model_id"], "lora": e["training_type"] != "full",
         "training_type": "full" if e["training_type"] == "full" else "lora"}
        for e in recommended]


def test_recommendations_with_a_training_type_record_no_conversion(harness: Harness) -> None:
    run = harness.runner.drive(harness.start())
    assert run.state is RunState.LAUNCHED
    assert not [e for e in harness.store.events(run.id) if e.kind == "experiments_converted"]


def test_the_job_name_is_unique_to_the_run(harness: Harness, sandbox: Sandbox) -> None:
    first = harness.runner.drive(harness.start(run_id="nightly"))
    jobs = sandbox.world.jobs()
    assert [j["name"] for j in jobs] == [first.job_name]
    assert "nightly" in first.job_name and first.job_name != "cftrunner-nightly"


def test_a_resumed_launched_run_sends_nothing(harness: Harness, sandbox: Sandbox) -> None:
    run_id = harness.start()
    harness.runner.drive(run_id)
    before = sandbox.counts()["requests"]
    assert harness.runner.drive(run_id).state is RunState.LAUNCHED
    assert sandbox.counts()["requests"] == before


def test_a_rejected_generation_fails_only_that_item(harness: Harness, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="chat", status=400, match="message 2", judge=False))
    run = harness.runner.drive(harness.start())
    assert run.state is RunState.LAUNCHED
    failed = harness.store.items(run.id, ItemStage.GEN_FAILED)
    assert [i.position for i in failed] == [2] and failed[0].error_kind == "http_400"
    assert sandbox.counts()["traces"] == len(PROMPTS) - 1


def test_a_run_whose_every_generation_is_rejected_ends_failed(
        harness: Harness, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="chat", status=422, judge=False))
    run = harness.runner.drive(harness.start())
    assert run.state is RunState.FAILED
    assert run.failure_reason and "every item failed" in run.failure_reason
    assert sandbox.counts()["traces"] == 0


def test_a_generation_with_no_content_fails_only_that_item_with_its_finish_reason(
        harness: Harness, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="chat", kind="no_content", match="message 2", judge=False))
    run = harness.runner.drive(harness.start())
    assert run.state is RunState.LAUNCHED
    [failed] = harness.store.items(run.id, ItemStage.GEN_FAILED)
    assert failed.position == 2 and failed.error_kind == "no_content"
    assert failed.error == "the model answered no content (finish_reason: content_filter)"
    assert failed.answer is None
    [completion] = harness.store.completions(failed.id)
    assert (completion.outcome, completion.finish_reason) == ("no_content", "content_filter")
    assert sandbox.counts()["chat"]["generate"] == len(PROMPTS)  # asked once, not retried
    assert sandbox.counts()["traces"] == len(PROMPTS) - 1


def test_a_judge_answer_with_no_content_counts_against_the_attempts(
        harness: Harness, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="chat", kind="no_content", match="message 3", judge=True,
                                times=1))
    run = harness.runner.drive(harness.start())
    assert run.state is RunState.LAUNCHED
    item = harness.store.items(run.id)[3]
    assert item.stage is ItemStage.ADDED and item.judge_attempts == 2
    first, second = [c for c in harness.store.completions(item.id) if c.kind == "judge"]
    assert (first.outcome, first.finish_reason, first.content) == (
        "malformed", "content_filter", None)
    assert first.error == "the judge answered no content (finish_reason: content_filter)"
    assert second.request == first.request  # nothing to show the judge: asked as the first time
    assert second.outcome == "ok"


def test_a_judge_that_never_answers_content_fails_the_item_not_the_run(
        harness: Harness, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="chat", kind="no_content", match="message 4", judge=True))
    run = harness.runner.drive(harness.start())
    assert run.state is RunState.LAUNCHED
    [failed] = harness.store.items(run.id, ItemStage.JUDGE_FAILED)
    assert failed.position == 4 and failed.judge_attempts == 3
    assert failed.error_kind == "judge_malformed" and failed.judge_raw is None
    assert "no content" in (failed.error or "")


def test_a_malformed_judgment_is_retried_with_a_reminder(harness: Harness, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="chat", kind="malformed", judge=True, times=2))
    run = harness.runner.drive(harness.start())
    assert run.state is RunState.LAUNCHED
    attempts = sorted(i.judge_attempts for i in harness.store.items(run.id))
    assert attempts == [1] * (len(PROMPTS) - 1) + [3] or attempts == [1] * (len(PROMPTS) - 2) + [2, 2]


def test_an_item_whose_judgment_never_validates_gets_no_trace_and_no_score(
        harness: Harness, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="chat", kind="malformed", judge=True, match="message 4"))
    run = harness.runner.drive(harness.start())
    assert run.state is RunState.LAUNCHED
    [failed] = harness.store.items(run.id, ItemStage.JUDGE_FAILED)
    assert failed.position == 4 and failed.score is None and failed.trace_id is None
    assert failed.judge_attempts == 3 and failed.error_kind == "judge_malformed"
    assert sandbox.counts()["traces"] == len(PROMPTS) - 1
    assert all(t["input"] != PROMPTS[4] for t in sandbox.world.traces())


def test_judge_attempts_survive_a_restart(harness: Harness, sandbox: Sandbox,
                                          make_harness: Callable[..., Harness]) -> None:
    """Attempts already spent are counted after a resume, so a bad item cannot loop forever."""
    sandbox.add_fault(FaultRule(route="chat", kind="malformed", judge=True, match="message 1"))
    run_id = harness.start()
    with harness.store.tx() as tx:
        item = harness.store.items(run_id)[1]
        tx.update_item(item, judge_attempts=2)
    harness.runner.drive(run_id)
    judge_calls = [i for i in harness.store.items(run_id) if i.position == 1][0]
    assert judge_calls.stage is ItemStage.JUDGE_FAILED and judge_calls.judge_attempts == 3


@pytest.mark.parametrize("route", EFFECT_ROUTES)
@pytest.mark.parametrize("kind", ["drop", "late", "status_after_action"])
def test_a_lost_answer_is_reconciled_not_repeated(make_harness: Callable[..., Harness],
                                                  sandbox: Sandbox, route: str, kind: str) -> None:
    harness = make_harness(sandbox, read_timeout=0.5)
    rule = (FaultRule(route=route, kind="status", status=503, after_action=True, every=2)
            if kind == "status_after_action"
            else FaultRule(route=route, kind=kind, delay=1.5, every=2))
    sandbox.add_fault(rule)
    with capture_logs() as logs:
        run = harness.runner.drive(harness.start())
    assert run.state is RunState.LAUNCHED
    assert_exactly_once(sandbox, len(PROMPTS))
    verdicts = [e["verdict"] for e in logs if e["event"] == "reconciled"]
    assert "happened" in verdicts


@pytest.mark.parametrize("route", EFFECT_ROUTES)
def test_a_request_refused_before_acting_is_sent_again(make_harness: Callable[..., Harness],
                                                       sandbox: Sandbox, route: str) -> None:
    """A 503 may come after acting, so it is reconciled; the traces and additions of the items
    after the refused ones are what shows that the trace list has caught up past them."""
    sandbox.add_fault(FaultRule(route=route, kind="status", status=503, times=2))
    prompts = [f"question {n}" for n in range(12)]
    harness = make_harness(sandbox, concurrency=2)
    run = harness.runner.drive(harness.start(prompts))
    assert run.state is RunState.LAUNCHED
    assert_exactly_once(sandbox, len(prompts))


def test_retry_after_is_honoured(harness: Harness, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="trace_create", status=429, retry_after=0.4, times=1))
    harness.runner.drive(harness.start())
    assert max(harness.sleeps) >= 0.4


def test_an_unreachable_api_stops_the_run_intact_and_resume_finishes_it(
        make_harness: Callable[..., Harness], sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="snapshot_create", status=503))
    harness = make_harness(sandbox, retry=RetryPolicy(max_attempts=3, base_delay=0.01))
    run_id = harness.start()
    with pytest.raises(RunStopped, match="gave up after 3 attempts"):
        harness.runner.drive(run_id)
    stopped = harness.store.run(run_id)
    assert stopped.state is RunState.ADDED and "HTTP 503" in (stopped.last_error or "")
    sandbox.clear_faults()
    assert harness.runner.drive(run_id).state is RunState.LAUNCHED
    assert harness.store.run(run_id).last_error is None
    assert_exactly_once(sandbox, len(PROMPTS))


def test_a_connection_refused_effect_is_recorded_unsent_and_not_reconciled(
        harness: Harness) -> None:
    """A request that never left is marked UNSENT, so the next attempt sends without looking."""
    run = harness.store.run(harness.start())
    dead = Driver(harness.store, replace(harness.settings, base_url="http://127.0.0.1:9",
                                         retry=RetryPolicy(max_attempts=1)))
    looked: list[object] = []

    def attempt() -> None:
        dead.perform(Effect(run, "probe", "trace", {"n": 1},
                            send=lambda req: {"trace_id": dead.client.create_trace(req)},
                            reconcile=lambda eff: looked.append(eff),  # type: ignore[func-returns-value]
                            record=lambda tx, out: None, rejected=lambda tx, exc: None))

    with pytest.raises(RunStopped, match="could not connect"):
        attempt()
    effect = harness.store.effect(run.id, "probe")
    assert effect is not None and effect.status is EffectStatus.UNSENT
    with pytest.raises(RunStopped):
        attempt()
    assert looked == []
    dead.client.close()


def test_a_trace_rejected_for_good_fails_its_item(harness: Harness, sandbox: Sandbox) -> None:
    sandbox.add_fault(FaultRule(route="trace_create", status=400, match="message 3"))
    run = harness.runner.drive(harness.start())
    assert run.state is RunState.LAUNCHED
    [failed] = harness.store.items(run.id, ItemStage.TRACE_FAILED)
    assert failed.position == 3
    assert harness.store.effect(run.id, "trace:3").status is EffectStatus.FAILED  # type: ignore[union-attr]


@pytest.mark.parametrize(("looks", "waits"), [
    (3, [0.1, 0.2]),
    (8, [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 5.0]),
])
def test_recommendations_are_looked_at_soon_then_backing_off_to_the_poll_interval(
        make_sandbox: Callable[..., Sandbox], make_harness: Callable[..., Harness],
        looks: int, waits: list[float]) -> None:
    """At the default waits (the harness records each and sleeps at most 0.05 s of it)."""
    sandbox = make_sandbox(recs_polls=looks - 1, processing_seconds=0.0)
    defaults = Settings()
    harness = make_harness(sandbox, poll_interval=defaults.poll_interval)
    run = harness.runner.drive(harness.start())
    assert run.state is RunState.LAUNCHED
    assert sandbox.world.dump()["recommendations"][0]["polls"] == looks
    assert harness.sleeps == waits


def test_a_poll_answered_with_a_retry_after_is_made_again_no_sooner_than_it_asks(
        make_sandbox: Callable[..., Sandbox], make_harness: Callable[..., Harness]) -> None:
    """The recommendations are not ready at the first two looks, whose answers (200) carry
    Retry-After: 3; the backoff alone would look again after 0.25 s and 0.5 s."""
    sandbox = make_sandbox(recs_polls=2, processing_seconds=0.0)
    sandbox.add_fault(FaultRule(route="recs_get", kind="advise", retry_after=3, times=2))
    harness = make_harness(sandbox, poll_interval=Settings().poll_interval)
    run = harness.runner.drive(harness.start())
    assert run.state is RunState.LAUNCHED
    assert sandbox.world.dump()["recommendations"][0]["polls"] == 3
    assert harness.sleeps == [3.0, 3.0]


def test_corrections_are_awaited_before_the_snapshot(make_sandbox: Callable[..., Sandbox],
                                                     make_harness: Callable[..., Harness]) -> None:
    sandbox = make_sandbox(processing_seconds=0.6, add_threshold=1.01)
    harness = make_harness(sandbox)
    run = harness.runner.drive(harness.start())
    assert run.state is RunState.LAUNCHED
    items = harness.store.items(run.id)
    assert {i.add_status for i in items} == {"queued"}
    assert {i.processing_status for i in items} == {"none"}
    snapshot = sandbox.world.snapshots()[0]
    assert all(t["processingStatus"] != "processing" for t in sandbox.world.traces())
    assert snapshot["id"] == run.snapshot_id


def test_a_correction_the_platform_fails_sets_its_item_aside(
        make_sandbox: Callable[..., Sandbox], make_harness: Callable[..., Harness],
        monkeypatch: pytest.MonkeyPatch) -> None:
    """Settled additions are recorded several to a transaction: here 4, to cover a partial one."""
    monkeypatch.setattr(launch, "SETTLED_PER_TRANSACTION", 4)
    sandbox = make_sandbox(processing_seconds=0.3, add_threshold=1.01,
                           correction_failing="message 2")
    harness = make_harness(sandbox)
    run = harness.runner.drive(harness.start())
    assert run.state is RunState.LAUNCHED
    failed = harness.store.items(run.id, ItemStage.ADD_FAILED)
    assert [i.position for i in failed] == [2]
    assert (failed[0].error_kind, failed[0].processing_status) == ("correction_failed", "failed")
    added = harness.store.items(run.id, ItemStage.ADDED)
    assert len(added) == len(PROMPTS) - 1 and {i.processing_status for i in added} == {"none"}
    assert [t["processingStatus"] for t in sandbox.world.traces()].count("failed") == 1


def test_waiting_for_corrections_is_bounded_and_resumable(
        make_sandbox: Callable[..., Sandbox], make_harness: Callable[..., Harness]) -> None:
    sandbox = make_sandbox(processing_seconds=1.0, add_threshold=1.01)
    harness = make_harness(sandbox, processing_timeout=0.2)
    run_id = harness.start()
    with pytest.raises(RunStopped, match="not finished"):
        harness.runner.drive(run_id)
    assert harness.store.run(run_id).state is RunState.ADDED
    assert sandbox.counts()["snapshots"] == 0
    relaxed = make_harness(sandbox, processing_timeout=10)
    assert relaxed.runner.drive(run_id).state is RunState.LAUNCHED


@pytest.mark.parametrize(("outcome", "reason"), [
    ("failed", "failed to generate recommendations"),
    ("none_recommended", "no recommended experiment"),
])
def test_unusable_recommendations_end_the_run_failed(
        make_sandbox: Callable[..., Sandbox], make_harness: Callable[..., Harness],
        outcome: str, reason: str) -> None:
    sandbox = make_sandbox(recs_outcome=outcome)
    harness = make_harness(sandbox)
    run = harness.runner.drive(harness.start())
    assert run.state is RunState.FAILED and reason in (run.failure_reason or "")
    assert sandbox.counts()["jobs"] == 0


def test_an_unknown_project_ends_the_run_failed_before_any_generation(
        harness: Harness, sandbox: Sandbox) -> None:
    run = harness.runner.drive(harness.start(project_id="no-such-project"))
    assert run.state is RunState.FAILED and "not found" in (run.failure_reason or "")
    assert sandbox.counts()["chat"]["generate"] == 0


def test_a_rejected_key_stops_the_run_without_failing_items(
        make_harness: Callable[..., Harness], make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox(api_key="the-right-key")
    harness = make_harness(sandbox, api_key="a-wrong-key")
    run_id = harness.start()
    with pytest.raises(RunStopped, match="401"):
        harness.runner.drive(run_id)
    assert harness.store.run(run_id).state is RunState.CREATED
    assert not any(i.failed for i in harness.store.items(run_id))


def test_the_batch_trace_shape_is_parsed(make_harness: Callable[..., Harness],
                                         sandbox: Sandbox) -> None:
    harness = make_harness(sandbox, trace_shape="batch")
    assert harness.runner.drive(harness.start()).state is RunState.LAUNCHED
    assert_exactly_once(sandbox, len(PROMPTS))


def test_long_feedback_is_cut_to_the_api_limit(harness: Harness, sandbox: Sandbox) -> None:
    run_id = harness.start(prompts=["x" * 50])
    harness.runner.drive(run_id)
    [trace] = sandbox.world.traces()
    assert "\n\nReasoning: " in trace["feedback"] and len(trace["feedback"]) <= 2048


def test_the_api_key_never_reaches_the_database_or_the_logs(
        harness: Harness, sandbox: Sandbox, db_url: str, tmp_path: Path) -> None:
    sandbox.add_fault(FaultRule(route="trace_create", status=503, times=1))
    with capture_logs() as logs:
        harness.runner.drive(harness.start())
    assert DEFAULT_API_KEY not in repr(logs)
    raw = b"".join(p.read_bytes() for p in tmp_path.glob("state.db*"))  # none on PostgreSQL
    assert DEFAULT_API_KEY.encode() not in raw
    engine = dialect.create_engine(db_url)
    with engine.connect() as conn:
        for table in ("runs", "items", "effects", "events"):
            assert DEFAULT_API_KEY not in repr(conn.execute(sa.text(f"select * from {table}")).all())
    engine.dispose()


def test_a_trace_list_longer_than_the_page_cap_is_read_to_its_end_when_it_has_a_total(
        make_sandbox: Callable[..., Sandbox], make_harness: Callable[..., Harness]) -> None:
    """Corrections of a large run need more pages than reconcile_max_pages; the total bounds them."""
    sandbox = make_sandbox(page_size=2, add_threshold=1.01, processing_seconds=0.1)
    harness = make_harness(sandbox, reconcile_max_pages=1)
    run = harness.runner.drive(harness.start())
    assert run.state is RunState.LAUNCHED
    assert sandbox.counts()["requests"]["trace_list"] >= 3


def test_max_rps_is_a_ceiling_on_the_whole_run(make_harness: Callable[..., Harness],
                                               sandbox: Sandbox) -> None:
    """With a ceiling, the run's requests cannot go faster than it, across every item."""
    harness = make_harness(sandbox, max_rps=40.0, concurrency=8)
    started = time.monotonic()
    assert harness.runner.drive(harness.start()).state is RunState.LAUNCHED
    elapsed = time.monotonic() - started
    sent = sum(sandbox.counts()["requests"].values())
    assert elapsed >= (sent - 1) / 40.0
    assert_exactly_once(sandbox, len(PROMPTS))


@pytest.mark.parametrize("max_rate_limited", [4, 3])
def test_refusals_with_429_have_their_own_budget_apart_from_failures(
        max_rate_limited: int, make_sandbox: Callable[..., Sandbox],
        make_harness: Callable[..., Harness]) -> None:
    """The first trace is refused with 429 three times in a row while a request may fail only
    twice: 429s are the API pacing the run, so they count against `max_rate_limited`."""
    sandbox = make_sandbox()
    sandbox.add_fault(FaultRule(route="trace_create", status=429, retry_after=0.0, times=3))
    h = make_harness(sandbox, concurrency=1, retry=RetryPolicy(
        max_attempts=2, max_rate_limited=max_rate_limited, base_delay=0.001, max_delay=0.002))
    run_id = h.start(PROMPTS[:3])
    if max_rate_limited == 3:
        with pytest.raises(RunStopped, match="gave up after 3 refusals"):
            h.runner.drive(run_id)
        return
    assert h.runner.drive(run_id).state is RunState.LAUNCHED
    assert sandbox.counts()["faults_fired"]["status"] == 3
    assert_exactly_once(sandbox, 3)
