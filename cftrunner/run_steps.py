"""The run-level steps after every item is added: corrections, snapshot, recommendations, launch."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import structlog

from cftrunner import crashpoints, payloads
from cftrunner.exceptions import ApiError, RunStopped
from cftrunner.models import Run
from cftrunner.states import ItemStage, RunState
from cftrunner.transaction import Tx

if TYPE_CHECKING:
    from cftrunner.runner import Runner

log = structlog.get_logger("cftrunner")


def _wait(r: Runner, what: str, bound: float, done: Callable[[], bool]) -> None:
    """Poll `done` until it holds; past the bound, stop the run intact for a later resume."""
    deadline = time.monotonic() + bound
    while not done():
        if time.monotonic() >= deadline:
            raise RunStopped(f"{what}: not finished after {bound:g} s; `cftrunner resume` "
                             "goes on waiting")
        r.pause(r.settings.poll_interval)


def _fail_run(r: Runner, run: Run, reason: str) -> None:
    with r.tx() as tx:
        tx.transition_run(run.id, run.state, RunState.FAILED, failure_reason=reason)
    log.error("run_failed", reason=reason)


def _corrections_settled(r: Runner, run: Run) -> bool:
    """Record what the platform says of every addition still processing; True when none is."""
    pending = [i for i in r.store.items(run.id, ItemStage.ADDED)
               if i.processing_status not in ("none", "failed")]
    if not pending:
        return True
    since = run.created_at - timedelta(seconds=r.settings.reconcile_skew)
    remote = r.retrying("checking additions", lambda: r.reconcile.find_traces(
        run, {i.trace_id for i in pending if i.trace_id}, since))
    still = 0
    for item in pending:
        seen = remote.get(item.trace_id or "")
        status = seen.processing_status if seen else None
        if seen is None or status == "processing":
            still += 1
            continue
        with r.tx() as tx:
            if status == "failed":
                tx.update_item(item, ItemStage.ADD_FAILED, processing_status="failed",
                               error_kind="correction_failed",
                               error="the platform failed to write the corrected datapoint")
            else:
                tx.update_item(item, processing_status="none")
    log.info("additions_processing", remaining=still)
    return still == 0


def snapshot(r: Runner, run: Run) -> None:
    _wait(r, "waiting for the platform's corrections", r.settings.processing_timeout,
          lambda: _corrections_settled(r, run))
    if not r.store.items(run.id, ItemStage.ADDED):
        _fail_run(r, run, "no item was added to the dataset")
        return
    assert run.dataset_id is not None

    def on_done(tx: Tx, out: dict[str, Any]) -> None:
        tx.transition_run(run.id, RunState.ADDED, RunState.SNAPSHOT,
                          snapshot_id=out["snapshot_id"])

    r.effect(
        run, "snapshot", "snapshot", None,
        {"dataset_id": run.dataset_id, "split_percentage": run.split_percentage},
        send=lambda req: {"snapshot_id": r.client.create_snapshot(
            req["dataset_id"], req["split_percentage"])},
        reconcile=lambda eff: r.reconcile.snapshot(run, eff),
        on_done=on_done, on_rejected=lambda tx, exc: _fail_in(tx, run, "snapshot", exc))


def _fail_in(tx: Tx, run: Run, what: str, exc: ApiError) -> None:
    tx.transition_run(run.id, run.state, RunState.FAILED,
                      failure_reason=f"{what} rejected: {exc.message}")


def recommendations(r: Runner, run: Run) -> None:
    assert run.snapshot_id is not None
    snapshot_id = run.snapshot_id

    def send(req: dict[str, Any]) -> dict[str, Any]:
        r.client.generate_recommendations(req["snapshot_id"])
        return {}

    r.effect(
        run, "recs", "recs", None, {"snapshot_id": snapshot_id}, send=send,
        reconcile=lambda eff: r.reconcile.recommendations(run, eff),
        on_done=lambda tx, out: None,
        on_rejected=lambda tx, exc: _fail_in(tx, run, "generating recommendations", exc))
    if r.store.run(run.id).state is not RunState.SNAPSHOT:
        return
    answer: list[payloads.Recommendations] = []

    def ready() -> bool:
        recs = r.retrying("polling recommendations", lambda: r.client.recommendations(snapshot_id))
        answer[:] = [recs]
        return recs.status in ("completed", "failed")

    _wait(r, "waiting for recommendations", r.settings.recs_timeout, ready)
    recs = answer[0]
    experiments = payloads.experiments_to_launch(recs.experiments)
    if recs.status == "failed":
        _fail_run(r, run, "the platform failed to generate recommendations")
    elif not experiments:
        _fail_run(r, run, "the recommendations hold no recommended experiment")
    else:
        with r.tx() as tx:
            tx.transition_run(run.id, RunState.SNAPSHOT, RunState.RECS_READY,
                              experiments=experiments)
        crashpoints.reach("recs.after_ready")


def launch(r: Runner, run: Run) -> None:
    assert run.snapshot_id is not None and run.experiments
    r.effect(
        run, "launch", "launch", None,
        {"snapshot_id": run.snapshot_id, "name": run.job_name, "experiments": run.experiments},
        send=lambda req: {"job_id": r.client.create_finetuning_job(
            req["snapshot_id"], req["name"], req["experiments"])},
        reconcile=lambda eff: r.reconcile.launch(run, eff),
        on_done=lambda tx, out: tx.transition_run(run.id, RunState.RECS_READY,
                                                  RunState.LAUNCHED, job_id=out["job_id"]),
        on_rejected=lambda tx, exc: _fail_in(tx, run, "launching the fine-tuning job", exc))
