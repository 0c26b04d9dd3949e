"""Following the launched job: read it until it ends, within a bound per invocation, so cron's
next tick looks again rather than one process sleeping for hours."""

from __future__ import annotations

import time
from typing import Any

import structlog

from cftrunner import crashpoints
from cftrunner.exceptions import StillTraining
from cftrunner.payloads.finetuning import RemoteJob
from cftrunner.records import Run
from cftrunner.stages.context import Context
from cftrunner.states import RunState

log = structlog.get_logger("cftrunner")


def follow(ctx: Context, run: Run) -> None:
    """Read the job until it ends, within `timeouts.training` (0: once); TRAINED with the
    models of its succeeded experiments, or TRAIN_FAILED when it has none."""
    assert run.job_id is not None
    job_id = run.job_id
    deadline = time.monotonic() + ctx.settings.training_timeout
    delays = ctx.polls(ctx.settings.training_poll)
    while True:
        job = ctx.retrying("reading the fine-tuning job", lambda: ctx.client.finetuning_job(job_id))
        training = _training(job)
        if not job.ended:
            with ctx.tx() as tx:
                tx.update_run(run.id, RunState.LAUNCHED, training=training)
            running = sum(1 for e in job.experiments if e.status not in ("succeeded", "failed"))
            message = (f"job {job_id} is {job.status or 'unknown'}, {running} of "
                       f"{len(job.experiments)} experiments still going")
            if time.monotonic() >= deadline:
                raise StillTraining(message)
            log.info("training", job_id=job_id, status=job.status, running=running)
            ctx.look_again(delays)
            continue
        models = [e for e in job.experiments if e.succeeded]
        with ctx.tx() as tx:
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
