"""After the launch: follow the job to its models, then promote the best on held-out prompts.

Following reads `GET /api/v1/public/finetuning/{job}` within a bound per invocation, so cron's next
tick looks again rather than one process sleeping for hours. Promoting brings the new models up for
inference (`serving`), answers and judges the held-out prompts with every new model that runs and
with the current one, keeps each result as it comes (a resume redoes none), and promotes the best
new model if it is no worse by the margin.

What a run does after its launch, LoopConfig, lives in `run_config` with the run's other stored
settings."""

from __future__ import annotations

import functools
import statistics
import time
from typing import TYPE_CHECKING, Any

import structlog

from cftrunner import crashpoints, serving
from cftrunner.exceptions import JudgeOutputError, RejectedError, StillTraining
from cftrunner.judge import Conversation
from cftrunner.payloads import RemoteJob
from cftrunner.records import Run
from cftrunner.run_config import LoopConfig, regression_counts
from cftrunner.states import RunState

if TYPE_CHECKING:
    from cftrunner.runner import Runner

log = structlog.get_logger("cftrunner")


def follow(r: Runner, run: Run) -> None:
    """Read the job until it ends, within `timeouts.training` (0: once); TRAINED with the
    models of its succeeded experiments, or TRAIN_FAILED when it has none."""
    assert run.job_id is not None
    job_id = run.job_id
    deadline = time.monotonic() + r.settings.training_timeout
    delays = r.polls(r.settings.training_poll)
    while True:
        job = r.retrying("reading the fine-tuning job", lambda: r.client.finetuning_job(job_id))
        training = _training(job)
        if not job.ended:
            with r.tx() as tx:
                tx.update_run(run.id, RunState.LAUNCHED, training=training)
            running = sum(1 for e in job.experiments if e.status not in ("succeeded", "failed"))
            message = (f"job {job_id} is {job.status or 'unknown'}, {running} of "
                       f"{len(job.experiments)} experiments still going")
            if time.monotonic() >= deadline:
                raise StillTraining(message)
            log.info("training", job_id=job_id, status=job.status, running=running)
            r.pause(next(delays))
            continue
        models = [e for e in job.experiments if e.succeeded]
        with r.tx() as tx:
            if models:
                tx.transition_run(run.id, RunState.LAUNCHED, RunState.TRAINED, training=training)
            else:
                ended = f"ended {job.status}" if job.status else "ended"
                tx.transition_run(run.id, RunState.LAUNCHED, RunState.TRAIN_FAILED,
                                  training=training, failure_reason=f"job {job_id} {ended} with "
                                                                    "no succeeded experiment")
        crashpoints.reach("follow.after_end")
        return


def _training(job: RemoteJob) -> dict[str, Any]:
    return {"status": job.status, "experiments": [e.to_json() for e in job.experiments]}


def candidates(run: Run) -> list[dict[str, Any]]:
    """The succeeded experiments of the run's job, as last read."""
    experiments = (run.training or {}).get("experiments") or []
    return [e for e in experiments if e.get("status") == "succeeded" and e.get("model_id")]


def promote(r: Runner, run: Run) -> None:
    """Answer and judge every held-out prompt with the current model and each new one that runs
    for inference (the others are left out, with their reasons); then PROMOTED (the best new one
    is no worse than the current by the margin) or NOT_PROMOTED."""
    config = run.loop
    new = candidates(run)
    ids = [e["model_id"] for e in new]
    # The new models are asked to load first, and load while the current model answers.
    serving.bring_up(r, run, ids, wait=False)
    _evaluate_models(r, run, [run.model_alias])
    states = serving.bring_up(r, run, ids)
    ready = [e for e in new if states[e["model_id"]]["status"] == serving.RUNNING]
    excluded = [{"model_id": m, "reason": states[m].get("reason")} for m in ids
                if states[m]["status"] == serving.UNAVAILABLE]
    models = [run.model_alias, *(e["model_id"] for e in ready)]
    _evaluate_models(r, run, models)
    results = r.store.evaluations(run.id)
    summaries = {m: _summary([e for e in results if e["model_id"] == m]) for m in models}
    decision = decide(run.model_alias, ready, summaries, config.margin, excluded)
    if decision["promoted"] and config.regression:
        decision["regression"] = recheck(r, run, str(decision["model_id"]))
    if config.unload_losers:
        winner = str(decision["model_id"]) if decision["promoted"] else None
        decision["unloaded"] = serving.unload_losers(r, states, winner)
    target = RunState.PROMOTED if decision["promoted"] else RunState.NOT_PROMOTED
    with r.tx() as tx:
        tx.transition_run(run.id, RunState.TRAINED, target, promotion=decision)
    log.info("promotion", promoted=decision["promoted"], model=decision.get("model_id"),
             reason=decision["reason"])


def _evaluate_models(r: Runner, run: Run, models: list[str]) -> None:
    """Every held-out answer and judgment of `models` not stored yet, each stored as it comes."""
    config = run.loop
    done = {(e["model_id"], e["position"]) for e in r.store.evaluations(run.id)}
    todo = [(m, n) for m in models for n in range(len(config.holdout)) if (m, n) not in done]
    r.for_each(todo, lambda pair: _evaluate(r, run, config, *pair))


def recheck(r: Runner, run: Run, model: str) -> dict[str, int]:
    """Ask the promoted `model` the cycle's weak prompts again (the regression set, chosen once
    and kept, each result kept as it comes); how many are now fixed, still weak, or unjudged.
    Nothing of it is traced or added to the dataset."""
    threshold = run.gate.score_threshold
    if not r.store.rechecks(run.id):
        with r.tx() as tx:
            tx.choose_rechecks(run, model, threshold)
    todo = [c for c in r.store.rechecks(run.id) if c["at"] is None]
    r.for_each(todo, lambda check: _recheck(r, run, check))
    return regression_counts(r.store.rechecks(run.id), threshold)


def _recheck(r: Runner, run: Run, check: dict[str, Any]) -> None:
    r.checkpoint()
    position, model = check["position"], check["model_id"]
    asked = _ask(r, run, model, check["prompt"], f"regression answer {position} of {model}")
    with r.tx() as tx:
        tx.record_recheck(run.id, position, **asked)
    crashpoints.reach("promote.after_recheck")


def _evaluate(r: Runner, run: Run, config: LoopConfig, model: str, position: int) -> None:
    r.checkpoint()
    asked = _ask(r, run, model, config.holdout[position], f"held-out answer {position} of {model}")
    with r.tx() as tx:
        tx.record_evaluation(run.id, model, position, **asked)
    crashpoints.reach("promote.after_evaluation")


def _ask(r: Runner, run: Run, model: str, prompt: str, what: str) -> dict[str, Any]:
    """`model`'s answer to `prompt` and the run's judgment of it, as stored: answer, score,
    judge_raw, error and tokens. A refusal other than of the key, or an answer with no content,
    is stored as the error, without a score."""
    answer: str | None = None
    score: float | None = None
    raw: str | None = None
    error: str | None = None
    tokens = 0
    try:
        generated = r.retrying(what, lambda: r.client.chat(
            run.project_id, model, [{"role": "user", "content": prompt}]))
        tokens = generated.tokens or 0
        if generated.no_content:  # nobody's answer: nothing to judge, no score for the model
            error = (f"the model answered no content (finish_reason: "
                     f"{generated.finish_reason or 'none'})")
        else:
            answer = generated.content
            score, raw, error, used = _judge(r, run, prompt, answer)
            tokens += used
    except RejectedError as exc:
        if exc.status_code in (401, 403):
            raise
        error = exc.message
    return {"answer": answer, "score": score, "judge_raw": raw, "error": error, "tokens": tokens}


def _judge(r: Runner, run: Run, prompt: str, answer: str) -> tuple[float | None, str | None,
                                                                    str | None, int]:
    """The run's judge on one held-out or regression answer: (score, last answer, error,
    tokens)."""
    conversation = Conversation(run.judge, run.project_id, run.judge_model, prompt, answer)
    raw, error, tokens = None, "no judge answer", 0
    for _ in range(r.settings.judge_attempts):
        call = conversation.call(structured=not r.structured_refused)
        try:
            result = r.retrying("judging a held-out answer",
                                functools.partial(r.client.chat, *call))
        except RejectedError as exc:
            if call.response_format is not None and exc.status_code in (400, 422):
                r.structured_refused = True
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
