"""New models brought up for inference before promotion judges them, and the losers let go after.

A model training has just made may not be loaded yet, and a batch of held-out prompts sent to it
would be a batch of cold-start failures. So each new model is looked up in `GET /api/v1/models`,
asked to load (`POST /api/v1/models/up`) and polled (`GET /api/v1/models/running`) until it runs,
within `timeouts.model_load` per invocation: past it the invocation stops intact (ModelsLoading)
and the next resume or tick looks again, as following the job does. A model the API refuses to
load, or still not running `timeouts.model_give_up` after the first look, is left out of the
comparison with its reason; the run goes on with the others.

What became of each model is kept as it comes in the run's `training` object, under "serving":
by model id, `{status, since, asked_at, reason}`. Asking to load is harmless to repeat, so a kill
between the request and its record only makes a resume ask once more."""

from __future__ import annotations

import functools
import time
from typing import Any

import structlog

from cftrunner import crashpoints
from cftrunner.clock import utcnow
from cftrunner.config.values import duration_text
from cftrunner.exceptions import AuthError, ModelsLoading, RejectedError
from cftrunner.payloads.replies import parse_time
from cftrunner.records import Run
from cftrunner.stages.context import Context
from cftrunner.states import RunState

log = structlog.get_logger("cftrunner")

UNLISTED = "unlisted"  # not in the model list yet; looked for again until the give-up time
ASKING = "asking"  # about to be asked to load: whether the request went out is not known
LOADING = "loading"  # asked to load, not running yet
RUNNING = "running"  # runs for inference: compared on the held-out prompts
UNAVAILABLE = "unavailable"  # never came up, or cannot: left out of the comparison
SETTLED = frozenset({RUNNING, UNAVAILABLE})

Serving = dict[str, dict[str, Any]]


def serving_of(run: Run) -> Serving:
    """What the run knows of its new models' loading, by model id."""
    return {m: dict(e) for m, e in ((run.training or {}).get("serving") or {}).items()}


def bring_up(ctx: Context, run: Run, models: list[str], wait: bool = True) -> Serving:
    """Every model of `models` running or unavailable, as stored; ModelsLoading if some are
    neither once `timeouts.model_load` has passed in this call. `wait=False` looks once (asking
    those not asked yet to load) and returns whatever they are."""
    run = ctx.store.run(run.id)
    serving = serving_of(run)
    deadline = time.monotonic() + ctx.settings.model_load_timeout
    delays = ctx.polls(ctx.settings.poll_interval)
    while True:
        pending = [m for m in models if serving.get(m, {}).get("status") not in SETTLED]
        if not pending:
            return serving
        listed = None
        if any(serving.get(m, {}).get("status") in (None, UNLISTED) for m in pending):
            listed = ctx.retrying("listing the models", ctx.client.list_models)
        for model in pending:
            _look(ctx, run, serving, model, listed)
        still = [m for m in models if serving[m]["status"] not in SETTLED]
        if not still or not wait:
            return serving
        if time.monotonic() >= deadline:
            raise ModelsLoading(f"{len(still)} of {len(models)} new models still loading for "
                                f"inference ({', '.join(still)}); the next resume or tick "
                                "looks again")
        ctx.look_again(delays)


def _look(ctx: Context, run: Run, serving: Serving, model: str, listed: list[str] | None) -> None:
    """One step for one model: find it listed, ask it to load, or see whether it runs now."""
    entry = serving.get(model) or {"status": None, "since": utcnow().isoformat()}
    status = entry["status"]
    try:
        if status in (None, UNLISTED) and listed is not None and not is_listed(model, listed):
            _keep(ctx, run, serving, model, _unless_given_up(ctx, entry, UNLISTED, (
                "not listed by GET /api/v1/models")))
            return
        if status in (None, UNLISTED, ASKING):
            if ctx.retrying(f"checking model {model}", lambda: ctx.client.model_running(model)):
                _keep(ctx, run, serving, model, {**entry, "status": RUNNING, "reason": None})
                return
            asked = {**entry, "status": ASKING, "asked_at": utcnow().isoformat()}
            _keep(ctx, run, serving, model, asked)
            ctx.retrying(f"asking model {model} to load", lambda: ctx.client.load_model(model))
            crashpoints.reach("serving.after_ask")
            entry = {**asked, "status": LOADING}
            _keep(ctx, run, serving, model, entry)
        running = ctx.retrying(f"checking model {model}", lambda: ctx.client.model_running(model))
    except RejectedError as exc:
        if isinstance(exc, AuthError):
            raise
        _keep(ctx, run, serving, model, {**entry, "status": UNAVAILABLE, "reason": exc.message})
        return
    if running:
        _keep(ctx, run, serving, model, {**entry, "status": RUNNING, "reason": None})
    else:
        _keep(ctx, run, serving, model, _unless_given_up(ctx, entry, LOADING, (
            "asked to load, not running")))


def is_listed(model: str, listed: list[str]) -> bool:
    """Whether the model list holds `model`, as it is or under a user-specific prefix."""
    return any(i == model or i.endswith("/" + model) for i in listed)


def _unless_given_up(ctx: Context, entry: dict[str, Any], status: str,
                     what: str) -> dict[str, Any]:
    """`entry` with `status`; UNAVAILABLE, saying `what` and for how long, once
    `timeouts.model_give_up` has passed since the model was first looked at."""
    since = parse_time(entry.get("since")) or utcnow()
    give_up = ctx.settings.model_give_up
    if (utcnow() - since).total_seconds() < give_up:
        return {**entry, "status": status}
    return {**entry, "status": UNAVAILABLE,
            "reason": f"{what} {duration_text(give_up)} after it was first looked for "
                      "(timeouts.model_give_up)"}


def _keep(ctx: Context, run: Run, serving: Serving, model: str, entry: dict[str, Any]) -> None:
    """Store `entry` as what became of `model` (in the run's `training`), then log a change."""
    before = serving.get(model, {}).get("status")
    serving[model] = entry
    with ctx.tx() as tx:
        tx.update_run(run.id, RunState.TRAINED, training={**(run.training or {}),
                                                          "serving": serving})
    if entry["status"] != before:
        log.info("model_serving", model=model, status=entry["status"],
                 **({"reason": entry["reason"]} if entry.get("reason") else {}))


def unload_losers(ctx: Context, serving: Serving, winner: str | None) -> list[dict[str, Any]]:
    """Unload every new model but `winner` that runs or was asked to load; what became of each.
    A refusal is recorded, not raised: the decision stands either way."""
    done: list[dict[str, Any]] = []
    for model, entry in serving.items():
        if model == winner or not (entry.get("status") == RUNNING or entry.get("asked_at")):
            continue
        try:
            ctx.retrying(f"unloading model {model}",
                       functools.partial(ctx.client.unload_model, model))
        except RejectedError as exc:
            if isinstance(exc, AuthError):
                raise
            done.append({"model_id": model, "unloaded": False, "reason": exc.message})
            continue
        done.append({"model_id": model, "unloaded": True})
        log.info("model_unloaded", model=model)
    return done
