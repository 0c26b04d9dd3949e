"""The run-level steps after every item is added: corrections, snapshot, recommendations, launch."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

import structlog

from cftrunner import crashpoints, gate, markers, payloads
from cftrunner.exceptions import ApiError, RunStopped
from cftrunner.payloads import RemoteTrace
from cftrunner.records import Item, Run
from cftrunner.run_config import LoopConfig
from cftrunner.states import ItemStage, RunState
from cftrunner.transaction import Tx

if TYPE_CHECKING:
    from cftrunner.runner import Runner

log = structlog.get_logger("cftrunner")

SETTLED_PER_TRANSACTION = 500


def _wait(r: Runner, what: str, bound: float, done: Callable[[], bool]) -> None:
    """Poll `done` until it holds; past the bound, stop the run intact for a later resume."""
    deadline = time.monotonic() + bound
    delays = r.polls(r.settings.poll_interval)
    while not done():
        if time.monotonic() >= deadline:
            raise RunStopped(f"{what}: not finished after {bound:g} s; `cftrunner resume` "
                             "goes on waiting")
        r.pause(next(delays))


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
    remote = _read_traces(r, run, {i.trace_id for i in pending if i.trace_id}, since)
    settled: list[tuple[Item, str | None]] = []
    for item in pending:
        seen = remote.get(item.trace_id or "")
        # Shown, but not yet as added, by a list that lags: what it says of processing is older.
        if seen is not None and seen.added_to_dataset and seen.processing_status != "processing":
            settled.append((item, seen.processing_status))
    # Many to a transaction: one each made 330 write transactions for 1,000 items, queued
    # behind any other writer.
    for start in range(0, len(settled), SETTLED_PER_TRANSACTION):
        with r.tx() as tx:
            for item, status in settled[start:start + SETTLED_PER_TRANSACTION]:
                if status == "failed":
                    tx.update_item(item, ItemStage.ADD_FAILED, processing_status="failed",
                                   error_kind="correction_failed",
                                   error="the platform failed to write the corrected datapoint")
                else:
                    tx.update_item(item, processing_status="none")
    still = len(pending) - len(settled)
    log.info("additions_processing", remaining=still)
    return still == 0


def _read_traces(r: Runner, run: Run, wanted: set[str], since: datetime) -> dict[str, RemoteTrace]:
    """The traces in `wanted` as the trace list shows them, its pages read `concurrency` at a
    time until all are found or the list is older than `since`.

    Pages read in parallel can miss a trace the list shifts across meanwhile; here that only
    reads as "still processing" until the next poll. Reconciliation, where absence means
    sending again, reads page after page instead (`Reconciler.traces_since`)."""
    found: dict[str, RemoteTrace] = {}

    def page(n: int) -> tuple[list[RemoteTrace], int | None]:
        return r.retrying("checking additions",
                          lambda: r.client.traces(run.project_id, run.model_alias, n))

    def collect(traces: list[RemoteTrace]) -> bool:
        """Keep the wanted ones; True while older pages may still hold some."""
        found.update((t.id, t) for t in traces if t.id in wanted)
        oldest = traces[-1].created_at if traces else None
        return bool(traces) and len(found) < len(wanted) and (oldest is None or oldest >= since)

    first, total = page(1)
    if not collect(first):
        return found
    if total is None:
        # No total to divide into pages: read on, page after page, as reconciliation does.
        return r.retrying("checking additions",
                          lambda: r.reconcile.find_traces(run, wanted, since))
    last = -(-total // len(first))
    lock = threading.Lock()
    end = last  # the page past which no wanted trace can be, once one shows it

    def read(n: int) -> None:
        nonlocal end
        traces, _ = page(n)
        with lock:
            if not collect(traces):
                end = min(end, n)

    # A thread takes the next page as soon as it has read one, so that no page waits for a batch
    # to finish. Pages past the end are read only if begun while the page showing it was read.
    r.for_each(itertools.takewhile(lambda n: n <= end, range(2, last + 1)), read,
               workers=r.settings.concurrency)
    return found


def _gate_passes(r: Runner, run: Run) -> bool:
    """Check the run's gate; end it SKIPPED, with the reason, if the gate says no.

    Once the snapshot's intent is stored the gate has already said yes: not asked again."""
    if r.store.effect(run.id, "snapshot") is not None:
        return True
    verdict = gate.evaluate(run.gate, r.store.gate_facts(run.id, run.gate.score_threshold))
    with r.tx() as tx:
        if verdict.passed:
            tx.update_run(run.id, run.state, gate_result=verdict.to_json())
        else:
            tx.transition_run(run.id, run.state, RunState.SKIPPED, skip_reason=verdict.reason,
                              gate_result=verdict.to_json())
    log.info("gate", passed=verdict.passed, reason=verdict.reason or None,
             traces_added=verdict.facts.traces_added, mean_score=verdict.facts.mean_score,
             tokens_used=verdict.facts.tokens_used)
    return verdict.passed


def snapshot(r: Runner, run: Run) -> None:
    markers.clean(r, run)
    _wait(r, "waiting for the platform's corrections", r.settings.processing_timeout,
          lambda: _corrections_settled(r, run))
    if not _gate_passes(r, run):
        return
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
    launchable = payloads.experiments_to_launch(recs.experiments)
    if recs.status == "failed":
        _fail_run(r, run, "the platform failed to generate recommendations")
    elif not launchable.experiments:
        _fail_run(r, run, "the recommendations hold no recommended experiment")
    elif launchable.untyped:
        _fail_run(r, run, _untyped_reason(launchable))
    else:
        with r.tx() as tx:
            _record_conversion(tx, run, launchable)
            tx.transition_run(run.id, RunState.SNAPSHOT, RunState.RECS_READY,
                              experiments=launchable.experiments)
        crashpoints.reach("recs.after_ready")


def _untyped_reason(launchable: payloads.Launchable) -> str:
    models = ", ".join(str(e.get("base_model_id")) for e in launchable.untyped)
    return f"recommended experiments with neither training_type nor lora, cannot launch: {models}"


def _record_conversion(tx: Tx, run: Run, launchable: payloads.Launchable) -> None:
    """An event for the older recommendations given a training type, in the transaction that
    stores them."""
    if launchable.converted:
        tx.event(run.id, "experiments_converted", experiments=launchable.converted)


def retuned(experiments: list[dict[str, Any]], loop: LoopConfig) -> list[dict[str, Any]]:
    """The experiments to launch: when the run's model came from a promoted experiment, each
    re-tunes from it, on the original base model (prem-api.md)."""
    parent = loop.retune_from
    if not parent or not parent.get("experiment_id"):
        return experiments
    base = {"base_model_id": parent["base_model_id"]} if parent.get("base_model_id") else {}
    return [{**e, **base, "refinetune_from_experiment_id": parent["experiment_id"]}
            for e in experiments]


def launch(r: Runner, run: Run) -> None:
    assert run.snapshot_id is not None and run.experiments
    # A run that stored its recommendations before they were converted is converted here.
    launchable = payloads.with_training_type(run.experiments)
    if r.store.effect(run.id, "launch") is None:
        if launchable.untyped:
            _fail_run(r, run, _untyped_reason(launchable))
            return
        if launchable.converted:
            with r.tx() as tx:
                _record_conversion(tx, run, launchable)
    # Re-tuned from one experiment, two recommendations can become the same experiment.
    experiments = payloads.without_twins(retuned(launchable.experiments, run.loop))
    if len(experiments) < len(launchable.experiments):
        log.info("twin_experiments_left_out", experiments=len(launchable.experiments),
                 launched=len(experiments))
    r.effect(
        run, "launch", "launch", None,
        {"snapshot_id": run.snapshot_id, "name": run.job_name, "experiments": experiments},
        send=lambda req: {"job_id": r.client.create_finetuning_job(
            req["snapshot_id"], req["name"], req["experiments"])},
        reconcile=lambda eff: r.reconcile.launch(run, eff),
        on_done=lambda tx, out: tx.transition_run(run.id, RunState.RECS_READY,
                                                  RunState.LAUNCHED, job_id=out["job_id"]),
        on_rejected=lambda tx, exc: _fail_in(tx, run, "launching the fine-tuning job", exc))
