"""The judge measured: the run's calibration set judged after its items, each score kept as it comes
(a resume judges only the triples not kept yet), then what they came to kept on the run, where the
gate reads the judge's mean absolute error."""

from __future__ import annotations

import functools
from typing import Any

import structlog

from cftrunner import calibration, crashpoints
from cftrunner.exceptions import AuthError, JudgeOutputError, RejectedError
from cftrunner.judge import Conversation
from cftrunner.records import Run
from cftrunner.stages.context import Context
from cftrunner.store.calibrations import record_calibration

log = structlog.get_logger("cftrunner")


def calibrate(ctx: Context, run: Run) -> None:
    """Judge every triple of the run's calibration set not judged yet, several at a time, then
    keep on the run what the scores came to; a run that has kept it already is left alone."""
    triples = run.judge.calibration
    if not triples or run.calibration is not None:
        return
    kept = {row["position"] for row in ctx.store.calibrations(run.id)}
    todo = [n for n in range(len(triples)) if n not in kept]
    ctx.for_each(todo, lambda position: _judge_triple(ctx, run, position))
    found = calibration.summary(triples, ctx.store.calibrations(run.id))
    with ctx.tx() as tx:
        tx.update_run(run.id, run.state, calibration=found)
    log.info("judge_calibrated", **{k: v for k, v in found.items() if k != "tokens"})


def _judge_triple(ctx: Context, run: Run, position: int) -> None:
    ctx.checkpoint()
    triple = run.judge.calibration[position]
    judged = _judged(ctx, run, position, triple)
    with ctx.tx() as tx:
        record_calibration(tx, run.id, position, expected=triple["expected"], **judged)
    ctx.tokens.add(run.id, judged["tokens"])
    crashpoints.reach("calibration.after_store")


def _judged(ctx: Context, run: Run, position: int, triple: dict[str, Any]) -> dict[str, Any]:
    """The run's judge on one triple, asked as an item's answer is, with the same attempts: its
    score, its last answer, why there is no score, the answers asked for, and their tokens."""
    conversation = Conversation(run.judge, run.project_id, run.judge_model, triple["prompt"],
                                triple["answer"])
    raw: str | None = None
    error, attempts, tokens = "no judge answer", 0, 0

    def unscored(reason: str) -> dict[str, Any]:
        return {"score": None, "judge_raw": raw, "error": reason, "attempts": attempts,
                "tokens": tokens}

    while attempts < ctx.settings.judge_attempts:
        if (budget := ctx.tokens.exhausted(run)) is not None:
            return unscored(f"the token budget of {budget} ran out before judging")
        call = conversation.call(structured=not ctx.memory.structured_refused)
        try:
            result = ctx.retrying(f"judgment of calibration triple {position}",
                                  functools.partial(ctx.client.chat, *call))
        except RejectedError as exc:
            if isinstance(exc, AuthError):
                raise
            if call.response_format is not None and exc.status_code in (400, 422):
                ctx.memory.structured_refused = True  # asked again without it
                continue
            return unscored(exc.message)
        attempts += 1
        crashpoints.reach("calibration.after_answer")
        raw = None if result.no_content else result.content
        tokens += result.tokens or 0
        try:
            score = conversation.read(raw, result.finish_reason).score
        except JudgeOutputError as exc:
            error = exc.message
            log.warning("calibration_judge_" + ("truncated" if exc.kind == "judge_truncated"
                                                else "malformed"),
                        triple=position, attempt=attempts, reason=error)
            continue
        return {"score": score, "judge_raw": raw, "error": None, "attempts": attempts,
                "tokens": tokens}
    return unscored(error)
