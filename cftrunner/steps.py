"""What each run state does to reach the next one, item by item and then for the whole run."""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import TYPE_CHECKING, Any, NamedTuple

import structlog

from cftrunner import claims, crashpoints, payloads
from cftrunner.exceptions import (
    ApiError,
    JudgeOutputError,
    ModelNotFound,
    NeedsDecision,
    OutcomePending,
    RejectedError,
)
from cftrunner.judge import Conversation, Judgment, trace_feedback
from cftrunner.records import Effect, Item, Run
from cftrunner.states import STAGE_FOR_RUN_STATE, ItemStage, RunState, next_run_state
from cftrunner.transaction import Tx

if TYPE_CHECKING:
    from cftrunner.runner import Runner

log = structlog.get_logger("cftrunner")


def _item_failed(stage: ItemStage) -> Callable[[Tx, Item, ApiError], Item]:
    def fail(tx: Tx, item: Item, exc: ApiError) -> Item:
        return tx.update_item(item, stage, error_kind=exc.kind, error=exc.message)
    return fail


class Stored(NamedTuple):
    """What a step stored: the item, and the intent of the next step's effect when the same
    transaction stored it. Nothing happens between the outcome of one step and the intent of
    the next, so one transaction holds both: two write transactions fewer per item."""
    item: Item
    intent: Effect | None = None


# Each step returns what it stored, or None when another path stored it (an effect found
# already done), for the caller to read the item again. Its last argument is what the previous
# step stored when the item entered its stage in this process, just before: then no effect of
# the step is stored yet but the intent it carries.
Step = Callable[["Runner", Run, Item, Stored | None], Stored | None]


def _over_budget(r: Runner, run: Run, item: Item, before: str) -> Stored | None:
    """Skip the item, not generated or not judged, once the run's token budget is used up."""
    budget = r.tokens.exhausted(run)
    if budget is None:
        return None
    with r.item_tx(item) as tx:
        return Stored(tx.update_item(item, ItemStage.SKIPPED, error_kind="budget_exceeded",
                                     error=f"the token budget of {budget} ran out before {before}"))


def generate(r: Runner, run: Run, item: Item, _entered: Stored | None) -> Stored | None:
    if skipped := _over_budget(r, run, item, "generating"):
        return skipped
    messages = [{"role": "user", "content": item.prompt}]
    try:
        result = r.retrying(f"generation of item {item.position}", lambda: r.client.chat(
            run.project_id, run.model_alias, messages))
    except RejectedError as exc:
        if exc.status_code in (401, 403):
            raise
        _refuse_missing_model(r, run, exc, "model_alias", run.model_alias)
        with r.item_tx(item, durable=False) as tx:
            tx.record_completion(item, "generate", 1, "rejected", error=exc.message)
            failed = _item_failed(ItemStage.GEN_FAILED)(tx, item, exc)
        log.warning("item_failed", item=item.position, stage="generate", error=exc.kind)
        return Stored(failed)
    crashpoints.reach("generate.after_answer")
    if result.no_content:
        return Stored(_no_answer(r, run, item, result))
    # Not synced to disk (see Store.tx): an answer lost with the power is asked for again.
    with r.item_tx(item, durable=False) as tx:
        tx.record_completion(item, "generate", 1, "ok", result=result)
        item = tx.update_item(item, ItemStage.GENERATED, answer=result.content)
    r.tokens.add(run.id, result.tokens)
    crashpoints.reach("generate.after_store")
    return Stored(item)


def _refuse_missing_model(r: Runner, run: Run, exc: RejectedError, key: str, model: str) -> None:
    """A 404 on chat says the API has no such model: every item would fail alike, so the run
    stops intact (exit 2) instead of failing them one by one."""
    if exc.status_code != 404:
        return
    raise ModelNotFound(f"the API at {r.settings.base_url} has no model {model} ({exc.message}); "
                        f"cancel run {run.id} (`cftrunner cancel {run.id}`) and start again with "
                        f"the right {key}")


def _no_answer(r: Runner, run: Run, item: Item, result: payloads.ChatResult) -> Item:
    """Fail the item whose model answered no content, keeping why the model stopped."""
    reason = f"the model answered no content (finish_reason: {result.finish_reason or 'none'})"
    with r.item_tx(item, durable=False) as tx:
        tx.record_completion(item, "generate", 1, "no_content", result=result, error=reason)
        failed = tx.update_item(item, ItemStage.GEN_FAILED, error_kind="no_content", error=reason)
    r.tokens.add(run.id, result.tokens)
    log.warning("item_failed", item=item.position, stage="generate", error="no_content",
                finish_reason=result.finish_reason)
    return failed


def judge(r: Runner, run: Run, item: Item, _entered: Stored | None) -> Stored | None:
    """Ask the judge until its answer validates, within the allowed attempts; never invent a
    score. Every answer, valid or not, is kept with the exact request that asked for it."""
    assert item.answer is not None
    conversation = Conversation(run.judge, run.project_id, run.judge_model, item.prompt,
                                item.answer)
    attempts = item.judge_attempts
    reason = f"no valid judgment in {attempts} attempts"
    while attempts < r.settings.judge_attempts:
        if skipped := _over_budget(r, run, item, "judging"):
            return skipped
        call = conversation.call(structured=not r.structured_refused)
        request = payloads.chat_body(*call)
        try:
            result = r.retrying(f"judgment of item {item.position}",
                                functools.partial(r.client.chat, *call))
        except RejectedError as exc:
            if exc.status_code in (401, 403):
                raise
            _refuse_missing_model(r, run, exc, "judge_model", run.judge_model)
            with r.item_tx(item, durable=False) as tx:
                tx.record_completion(item, "judge", attempts + 1, "rejected", request=request,
                                     error=exc.message)
                if call.response_format is not None and exc.status_code in (400, 422):
                    # Perhaps only the structured output is refused: ask again without it.
                    r.structured_refused = True
                    log.warning("judge_structured_output_refused", item=item.position,
                                error=exc.message)
                    continue
                return Stored(tx.update_item(item, ItemStage.JUDGE_FAILED,
                                             judge_attempts=attempts, error_kind=exc.kind,
                                             error=exc.message))
        attempts += 1
        crashpoints.reach("judge.after_answer")
        try:
            judgment = conversation.read(None if result.no_content else result.content,
                                         result.finish_reason)
        except JudgeOutputError as exc:
            reason = exc.message
            outcome = "truncated" if exc.kind == "judge_truncated" else "malformed"
            log.warning("judge_" + outcome, item=item.position, attempt=attempts, reason=reason)
            last = attempts >= r.settings.judge_attempts
            with r.item_tx(item, durable=False) as tx:
                tx.record_completion(item, "judge", attempts, outcome, result=result,
                                     request=request, error=reason)
                raw = None if result.no_content else result.content
                if last:
                    item = tx.update_item(item, ItemStage.JUDGE_FAILED, judge_attempts=attempts,
                                          judge_raw=raw, error_kind=exc.kind, error=reason)
                else:
                    item = tx.update_item(item, judge_attempts=attempts, judge_raw=raw)
            r.tokens.add(run.id, result.tokens)
            if last:
                return Stored(item)
            continue
        with crashpoints.storing_intent("trace"), r.item_tx(item) as tx:
            tx.record_completion(item, "judge", attempts, "ok", result=result, request=request)
            item = tx.update_item(item, ItemStage.JUDGED, judge_attempts=attempts,
                                  judge_raw=result.content, feedback=judgment.feedback,
                                  reasoning=judgment.reasoning, score=judgment.score)
            intent = tx.prepare_effect(run.id, _trace_key(item), "trace", item.id,
                                       _trace_request(r, run, item), None)
        r.tokens.add(run.id, result.tokens)
        crashpoints.reach("judge.after_store")
        return Stored(item, intent)
    with r.item_tx(item, durable=False) as tx:
        return Stored(tx.update_item(item, ItemStage.JUDGE_FAILED, error_kind="judge_malformed",
                                     error=reason))


def _trace_key(item: Item) -> str:
    return f"trace:{item.position}"


def _trace_request(r: Runner, run: Run, item: Item) -> dict[str, Any]:
    assert item.answer is not None and item.score is not None
    feedback = trace_feedback(Judgment(item.feedback or "", item.reasoning or "", item.score))
    return {"shape": r.settings.trace_shape, "project_id": run.project_id,
            "model_id": run.model_alias, "input": item.prompt, "output": item.answer,
            "score": item.score, "feedback": feedback}


def trace(r: Runner, run: Run, item: Item, entered: Stored | None) -> Stored | None:
    fail = _item_failed(ItemStage.TRACE_FAILED)
    stored: list[Stored] = []

    def done(tx: Tx, out: dict[str, Any]) -> None:
        traced = tx.update_item(item, ItemStage.TRACED, trace_id=out["trace_id"])
        stored.append(Stored(traced, tx.prepare_effect(
            run.id, _add_key(traced), "add", item.id, _add_request(traced), None)))

    r.effect(
        run, _trace_key(item), "trace", item, _trace_request(r, run, item),
        send=lambda req: {"trace_id": r.client.create_trace(payloads.trace_body(**req))},
        reconcile=lambda eff: r.reconcile.trace(run, eff),
        on_done=done, on_rejected=lambda tx, exc: stored.append(Stored(fail(tx, item, exc))),
        new=entered is not None, intent=entered.intent if entered else None, then="add")
    return stored[-1] if stored else None


def _add_key(item: Item) -> str:
    return f"add:{item.position}"


def _add_request(item: Item) -> dict[str, Any]:
    assert item.trace_id is not None
    return {"trace_id": item.trace_id}


def _record_addition(tx: Tx, item: Item, outcome: dict[str, Any]) -> Item:
    status = str(outcome.get("status") or "")
    if not outcome.get("success") or status == "failed":
        return tx.update_item(item, ItemStage.ADD_FAILED, add_status=status or None,
                              error_kind="add_failed",
                              error=f"addToDataset answered {status or 'failure'}")
    return tx.update_item(item, ItemStage.ADDED, add_status=status or None,
                          datapoint_id=outcome.get("datapoint_id"),
                          processing_status="none" if status == "added" else "processing")


def add(r: Runner, run: Run, item: Item, entered: Stored | None) -> Stored | None:
    trace_since = run.created_at - timedelta(seconds=r.settings.reconcile_skew)

    def send(req: dict[str, Any]) -> dict[str, Any]:
        result = r.client.add_to_dataset(req["trace_id"])
        return {"status": result.status, "success": result.success,
                "datapoint_id": result.datapoint_id}

    fail = _item_failed(ItemStage.ADD_FAILED)
    stored: list[Stored] = []
    r.effect(
        run, _add_key(item), "add", item, _add_request(item),
        send=send,
        reconcile=lambda eff: r.reconcile.addition(run, eff, trace_since),
        on_done=lambda tx, out: stored.append(Stored(_record_addition(tx, item, out))),
        on_rejected=lambda tx, exc: stored.append(Stored(fail(tx, item, exc))),
        new=entered is not None, intent=entered.intent if entered else None)
    return stored[-1] if stored else None


ITEM_STEPS: dict[ItemStage, Step] = {
    ItemStage.PENDING: generate,
    ItemStage.GENERATED: judge,
    ItemStage.JUDGED: trace,
    ItemStage.TRACED: add,
}


def item_stage(r: Runner, run: Run) -> None:
    """Take every unfinished item through generate, judge, trace and add, each item on its own and
    up to `concurrency` at once, beside any other workers; then advance the run through the
    states that now hold."""
    if run.state is RunState.CREATED and run.dataset_id is None and not find_dataset(r, run):
        return
    work_items(r, run)
    state = run.state
    while (target := next_run_state(state)) in STAGE_FOR_RUN_STATE:
        crashpoints.reach(f"transition.{target.value}")
        with r.tx() as tx:
            tx.advance_items_state(run.id, state, target, STAGE_FOR_RUN_STATE[target])
        state = r.store.run(run.id).state
        if state is not target:
            return


def work_items(r: Runner, run: Run) -> None:
    """Claim unfinished items a few at a time and finish them, until none is left: waiting
    while other workers hold some, and taking over those of a worker that lapses."""
    assert r.worker is not None
    worker = r.worker
    while True:
        claimed = 0

        def claiming() -> Iterator[Item]:
            nonlocal claimed
            while batch := claims.claim(r.store, worker, r.settings.concurrency):
                claimed += len(batch)
                r.held(run.id, (item.id for item in batch))
                yield from batch

        r.pending.clear()
        r.patient = False  # an item whose effect's outcome is unknown is set aside at once ...
        try:
            r.for_each(claiming(), lambda item: _finish_item(r, run, item))
        finally:
            r.patient = True
        if claimed and not r.pending:
            continue
        if r.pending:
            # ... and looked at again once the others are done: what they wrote meanwhile is
            # what shows that the remote view has caught up.
            parked = [r.store.item(item.id) for item, _ in r.pending]
            r.pending.clear()
            r.for_each(parked, lambda item: _finish_item(r, run, item))
            if r.pending:
                raise _all_pending([exc for _, exc in r.pending])
            continue
        if not claims.held_elsewhere(r.store, worker):
            return
        r.pause(r.settings.poll_interval)


def _finish_item(r: Runner, run: Run, item: Item) -> None:
    entered: Stored | None = None  # the item comes as stored, by this process or an earlier one
    try:
        while item.stage in ITEM_STEPS:
            if entered is None or entered.intent is None:
                # Else the effect of that intent checks first thing, and a stop stores it as
                # unsent.
                r.checkpoint()
            entered = ITEM_STEPS[item.stage](r, run, item, entered)
            item = entered.item if entered is not None else r.store.item(item.id)
    except OutcomePending as exc:
        # The other items go on meanwhile (see work_items).
        log.info("item_outcome_pending", item=item.position, reason=exc.message)
        r.pending.append((item, exc))


def _all_pending(pending: list[OutcomePending]) -> OutcomePending:
    """One error for the items whose effects' outcomes are unknown: the first one's, counting
    the others; a person's decision is needed if any needs one."""
    first = next((p for p in pending if isinstance(p, NeedsDecision)), pending[0])
    if len(pending) == 1:
        return first
    return type(first)(f"{first.message} (and {len(pending) - 1} more item(s) like it; "
                       "`cftrunner status RUN_ID` lists them)")


def find_dataset(r: Runner, run: Run) -> bool:
    """Store the project's dataset id; end the run FAILED when there is none to add to."""
    try:
        project = r.retrying("reading the project", lambda: r.client.project(run.project_id))
    except RejectedError as exc:
        if exc.status_code != 404:
            raise
        project = None
    dataset_id = payloads.find_dataset_id(project) if project is not None else None
    with r.tx() as tx:
        if dataset_id is None:
            reason = (f"project {run.project_id} not found" if project is None
                      else f"project {run.project_id} has no dataset")
            tx.transition_run(run.id, run.state, RunState.FAILED, failure_reason=reason)
            log.error("run_failed", reason=reason)
            return False
        tx.update_run(run.id, run.state, dataset_id=dataset_id)
    return True
