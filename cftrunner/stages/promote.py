"""Promotion: answer and judge the held-out prompts with the current model and each new one,
keep each result as it comes (a resume redoes none), and promote the best new model if it is no
worse by the margin. What a run does after its launch, LoopConfig, lives with the run's other
stored options."""

from __future__ import annotations

import functools
import statistics
from typing import Any

import structlog

from cftrunner import crashpoints
from cftrunner.config.run_options import LoopConfig, regression_counts
from cftrunner.exceptions import JudgeOutputError, RejectedError
from cftrunner.judge import Conversation
from cftrunner.records import Run
from cftrunner.stages import serving
from cftrunner.stages.context import Context
from cftrunner.stages.follow import candidates
from cftrunner.states import RunState

log = structlog.get_logger("cftrunner")


def promote(ctx: Context, run: Run) -> None:
    """Answer and judge every held-out prompt with the current model and each new one that runs
    for inference (the others are left out, with their reasons); then PROMOTED (the best new one
    is no worse than the current by the margin) or NOT_PROMOTED."""
    config = run.loop
    new = candidates(run)
    ids = [e["model_id"] for e in new]
    # The new models are asked to load first, and load while the current model answers.
    serving.bring_up(ctx, run, ids, wait=False)
    _evaluate_models(ctx, run, [run.model_alias])
    states = serving.bring_up(ctx, run, ids)
    ready = [e for e in new if states[e["model_id"]]["status"] == serving.RUNNING]
    excluded = [{"model_id": m, "reason": states[m].get("reason")} for m in ids
                if states[m]["status"] == serving.UNAVAILABLE]
    models = [run.model_alias, *(e["model_id"] for e in ready)]
    _evaluate_models(ctx, run, models)
    results = ctx.store.evaluations(run.id)
    summaries = {m: _summary([e for e in results if e["model_id"] == m]) for m in models}
    decision = decide(run.model_alias, ready, summaries, config.margin, excluded)
    if decision["promoted"] and config.regression:
        decision["regression"] = recheck(ctx, run, str(decision["model_id"]))
    if config.unload_losers:
        winner = str(decision["model_id"]) if decision["promoted"] else None
        decision["unloaded"] = serving.unload_losers(ctx, states, winner)
    target = RunState.PROMOTED if decision["promoted"] else RunState.NOT_PROMOTED
    with ctx.tx() as tx:
        tx.transition_run(run.id, RunState.TRAINED, target, promotion=decision)
    log.info("promotion", promoted=decision["promoted"], model=decision.get("model_id"),
             reason=decision["reason"])


def _evaluate_models(ctx: Context, run: Run, models: list[str]) -> None:
    """Every held-out answer and judgment of `models` not stored yet, each stored as it comes."""
    config = run.loop
    done = {(e["model_id"], e["position"]) for e in ctx.store.evaluations(run.id)}
    todo = [(m, n) for m in models for n in range(len(config.holdout)) if (m, n) not in done]
    ctx.for_each(todo, lambda pair: _evaluate(ctx, run, config, *pair))


def recheck(ctx: Context, run: Run, model: str) -> dict[str, int]:
    """Ask the promoted `model` the cycle's weak prompts again (the regression set, chosen once
    and kept, each result kept as it comes); how many are now fixed, still weak, or unjudged.
    Nothing of it is traced or added to the dataset."""
    threshold = run.gate.score_threshold
    if not ctx.store.rechecks(run.id):
        with ctx.tx() as tx:
            tx.choose_rechecks(run, model, threshold)
    todo = [c for c in ctx.store.rechecks(run.id) if c["at"] is None]
    ctx.for_each(todo, lambda check: _recheck(ctx, run, check))
    return regression_counts(ctx.store.rechecks(run.id), threshold)


def _recheck(ctx: Context, run: Run, check: dict[str, Any]) -> None:
    ctx.checkpoint()
    position, model = check["position"], check["model_id"]
    asked = _ask(ctx, run, model, check["prompt"], f"regression answer {position} of {model}")
    with ctx.tx() as tx:
        tx.record_recheck(run.id, position, **asked)
    crashpoints.reach("promote.after_recheck")


def _evaluate(ctx: Context, run: Run, config: LoopConfig, model: str, position: int) -> None:
    ctx.checkpoint()
    asked = _ask(ctx, run, model, config.holdout[position], f"held-out answer {position} of {model}")
    with ctx.tx() as tx:
        tx.record_evaluation(run.id, model, position, **asked)
    crashpoints.reach("promote.after_evaluation")


def _ask(ctx: Context, run: Run, model: str, prompt: str, what: str) -> dict[str, Any]:
    """`model`'s answer to `prompt` and the run's judgment of it, as stored: answer, score,
    judge_raw, error and tokens. A refusal other than of the key, or an answer with no content,
    is stored as the error, without a score."""
    answer: str | None = None
    score: float | None = None
    raw: str | None = None
    error: str | None = None
    tokens = 0
    try:
        generated = ctx.retrying(what, lambda: ctx.client.chat(
            run.project_id, model, [{"role": "user", "content": prompt}]))
        tokens = generated.tokens or 0
        if generated.no_content:  # nobody's answer: nothing to judge, no score for the model
            error = (f"the model answered no content (finish_reason: "
                     f"{generated.finish_reason or 'none'})")
        else:
            answer = generated.content
            score, raw, error, used = _judge(ctx, run, prompt, answer)
            tokens += used
    except RejectedError as exc:
        if exc.status_code in (401, 403):
            raise
        error = exc.message
    return {"answer": answer, "score": score, "judge_raw": raw, "error": error, "tokens": tokens}


def _judge(ctx: Context, run: Run, prompt: str, answer: str) -> tuple[float | None, str | None,
                                                                    str | None, int]:
    """The run's judge on one held-out or regression answer: (score, last answer, error,
    tokens)."""
    conversation = Conversation(run.judge, run.project_id, run.judge_model, prompt, answer)
    raw, error, tokens = None, "no judge answer", 0
    for _ in range(ctx.settings.judge_attempts):
        call = conversation.call(structured=not ctx.memory.structured_refused)
        try:
            result = ctx.retrying("judging a held-out answer",
                                functools.partial(ctx.client.chat, *call))
        except RejectedError as exc:
            if call.response_format is not None and exc.status_code in (400, 422):
                ctx.memory.structured_refused = True
                continue
            raise
        raw, tokens = result.content, tokens + (result.tokens or 0)
        try:
            return conversation.read(result.content, result.finish_reason).score, raw, None, tokens
        except JudgeOutputError as exc:
            error = exc.message
    return None, raw, error, tokens


def _summary(results: list[dict[str, Any]]) -> dict[str, Any]:
    scores = [e["score"] for e in results if e["score"] is not None]
    return {"prompts": len(results), "judged": len(scores),
            "mean": round(statistics.fmean(scores), 6) if scores else None,
            "median": round(statistics.median(scores), 6) if scores else None}


def decide(current: str, new: list[dict[str, Any]], summaries: dict[str, dict[str, Any]],
           margin: float, excluded: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The promotion decision, with both sides' scores and the reason (pure). `new` are the
    new models compared; `excluded` those left out, each with its reason."""
    base = summaries[current]
    scored = [e for e in new if summaries[e["model_id"]]["mean"] is not None]
    decision: dict[str, Any] = {"current": {"model_id": current, **base}, "margin": margin,
                                "candidates": [{"model_id": e["model_id"],
                                                "experiment_id": e.get("id"),
                                                "base_model_id": e.get("base_model_id"),
                                                **summaries[e["model_id"]]} for e in new],
                                "excluded": list(excluded or [])}
    if not new and excluded:
        left_out = "; ".join(f"{e['model_id']}: {e['reason']}" for e in excluded)
        return {**decision, "promoted": False,
                "reason": f"no new model came up for inference ({left_out})"}
    if not scored:
        return {**decision, "promoted": False,
                "reason": "no new model got a valid judgment on the held-out prompts"}
    best = max(scored, key=lambda e: summaries[e["model_id"]]["mean"])
    best_mean = summaries[best["model_id"]]["mean"]
    decision.update(model_id=best["model_id"], experiment_id=best.get("id"),
                    base_model_id=best.get("base_model_id"))
    if base["mean"] is None:
        return {**decision, "promoted": True,
                "reason": f"{best['model_id']} scored {best_mean:.3f}; the current model got no "
                          "valid judgment"}
    if best_mean >= base["mean"] - margin:
        return {**decision, "promoted": True,
                "reason": f"{best['model_id']} scored {best_mean:.3f} against {base['mean']:.3f} "
                          f"for {current} (margin {margin:g})"}
    return {**decision, "promoted": False,
            "reason": f"the best new model {best['model_id']} scored {best_mean:.3f}, below "
                      f"{base['mean']:.3f} for {current} by more than the margin {margin:g}"}
