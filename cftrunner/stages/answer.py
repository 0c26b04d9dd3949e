"""Asking the models: an item's answer from the run's model, then the judge's score of it."""

from __future__ import annotations

import functools

import structlog

from cftrunner import crashpoints
from cftrunner.exceptions import JudgeOutputError, ModelNotFound, RejectedError
from cftrunner.judge import Conversation
from cftrunner.payloads import bodies, replies
from cftrunner.records import Item, Run
from cftrunner.stages.context import Context, Stored
from cftrunner.stages.dataset import trace_key, trace_request
from cftrunner.states import ItemStage

log = structlog.get_logger("cftrunner")


def _over_budget(ctx: Context, run: Run, item: Item, before: str) -> Stored | None:
    """Skip the item, not generated or not judged, once the run's token budget is used up."""
    budget = ctx.tokens.exhausted(run)
    if budget is None:
        return None
    with ctx.item_tx(item) as tx:
        return Stored(tx.update_item(item, ItemStage.SKIPPED, error_kind="budget_exceeded",
                                     error=f"the token budget of {budget} ran out before {before}"))


def generate(ctx: Context, run: Run, item: Item, _entered: Stored | None) -> Stored | None:
    if skipped := _over_budget(ctx, run, item, "generating"):
        return skipped
    messages = [{"role": "user", "content": item.prompt}]
    try:
        result = ctx.retrying(f"generation of item {item.position}", lambda: ctx.client.chat(
            run.project_id, run.model_alias, messages))
    except RejectedError as exc:
        if exc.status_code in (401, 403):
            raise
        _refuse_missing_model(ctx, run, exc, "model_alias", run.model_alias)
        with ctx.item_tx(item, durable=False) as tx:
            failed = tx.update_item(item, ItemStage.GEN_FAILED, error_kind=exc.kind,
                                    error=exc.message)
            tx.record_completion(item, "generate", 1, "rejected", error=exc.message)
        log.warning("item_failed", item=item.position, stage="generate", error=exc.kind)
        return Stored(failed)
    crashpoints.reach("generate.after_answer")
    if result.no_content:
        return Stored(_no_answer(ctx, run, item, result))
    # Not synced to disk (see Store.tx): an answer lost with the power is asked for again.
    with ctx.item_tx(item, durable=False) as tx:
        # The item's update first, in each of its steps: it checks the claim (Tx.claim).
        item = tx.update_item(item, ItemStage.GENERATED, answer=result.content)
        tx.record_completion(item, "generate", 1, "ok", result=result)
    ctx.tokens.add(run.id, result.tokens)
    crashpoints.reach("generate.after_store")
    return Stored(item)


def _refuse_missing_model(ctx: Context, run: Run, exc: RejectedError, key: str,
                          model: str) -> None:
    """A 404 on chat says the API has no such model: every item would fail alike, so the run
    stops intact (exit 2) instead of failing them one by one."""
    if exc.status_code != 404:
        return
    raise ModelNotFound(f"the API at {ctx.settings.base_url} has no model {model} ({exc.message}); "
                        f"cancel run {run.id} (`cftrunner cancel {run.id}`) and start again with "
                        f"the right {key}")


def _no_answer(ctx: Context, run: Run, item: Item, result: replies.ChatResult) -> Item:
    """Fail the item whose model answered no content, keeping why the model stopped."""
    reason = f"the model answered no content (finish_reason: {result.finish_reason or 'none'})"
    with ctx.item_tx(item, durable=False) as tx:
        failed = tx.update_item(item, ItemStage.GEN_FAILED, error_kind="no_content", error=reason)
        tx.record_completion(item, "generate", 1, "no_content", result=result, error=reason)
    ctx.tokens.add(run.id, result.tokens)
    log.warning("item_failed", item=item.position, stage="generate", error="no_content",
                finish_reason=result.finish_reason)
    return failed


def judge(ctx: Context, run: Run, item: Item, _entered: Stored | None) -> Stored | None:
    """Ask the judge until its answer validates, within the allowed attempts; never invent a
    score. Every answer, valid or not, is kept with the exact request that asked for it."""
    assert item.answer is not None
    conversation = Conversation(run.judge, run.project_id, run.judge_model, item.prompt,
                                item.answer)
    attempts = item.judge_attempts
    reason = f"no valid judgment in {attempts} attempts"
    while attempts < ctx.settings.judge_attempts:
        if skipped := _over_budget(ctx, run, item, "judging"):
            return skipped
        call = conversation.call(structured=not ctx.memory.structured_refused)
        request = bodies.chat_body(*call)
        try:
            result = ctx.retrying(f"judgment of item {item.position}",
                                functools.partial(ctx.client.chat, *call))
        except RejectedError as exc:
            if exc.status_code in (401, 403):
                raise
            _refuse_missing_model(ctx, run, exc, "judge_model", run.judge_model)
            with ctx.item_tx(item, durable=False) as tx:
                tx.record_completion(item, "judge", attempts + 1, "rejected", request=request,
                                     error=exc.message)
                if call.response_format is not None and exc.status_code in (400, 422):
                    # Perhaps only the structured output is refused: ask again without it.
                    ctx.memory.structured_refused = True
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
            last = attempts >= ctx.settings.judge_attempts
            with ctx.item_tx(item, durable=False) as tx:
                raw = None if result.no_content else result.content
                if last:
                    item = tx.update_item(item, ItemStage.JUDGE_FAILED, judge_attempts=attempts,
                                          judge_raw=raw, error_kind=exc.kind, error=reason)
                else:
                    item = tx.update_item(item, judge_attempts=attempts, judge_raw=raw)
                tx.record_completion(item, "judge", attempts, outcome, result=result,
                                     request=request, error=reason)
            ctx.tokens.add(run.id, result.tokens)
            if last:
                return Stored(item)
            continue
        with crashpoints.storing_intent("trace"), ctx.item_tx(item) as tx:
            item = tx.update_item(item, ItemStage.JUDGED, judge_attempts=attempts,
                                  judge_raw=result.content, feedback=judgment.feedback,
                                  reasoning=judgment.reasoning, score=judgment.score)
            tx.record_completion(item, "judge", attempts, "ok", result=result, request=request)
            intent = tx.prepare_effect(run.id, trace_key(item), "trace", item.id,
                                       trace_request(ctx, run, item), None)
        ctx.tokens.add(run.id, result.tokens)
        crashpoints.reach("judge.after_store")
        return Stored(item, intent)
    with ctx.item_tx(item, durable=False) as tx:
        return Stored(tx.update_item(item, ItemStage.JUDGE_FAILED, error_kind="judge_malformed",
                                     error=reason))
