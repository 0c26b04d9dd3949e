"""What tick decides for a cycle: resume its unfinished run, start a new one when due, or wait.

A new run takes the prompts of the cycle's source that no earlier run of the cycle used
(`prompt_source`), chosen and stored with the run under the cycle's lock; with too few of them the
cycle is recorded SKIPPED instead."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

import structlog

from cftrunner import crashpoints, prompt_source
from cftrunner.clock import utcnow
from cftrunner.config.cycle import Cycle, cycle_name
from cftrunner.driver import Driver, new_run
from cftrunner.exceptions import InputError
from cftrunner.holds import Lease
from cftrunner.ownership import current_owner
from cftrunner.prompt_source import Choice, Scan, holdout_places, scan
from cftrunner.records import Run, RunSpec
from cftrunner.run_ids import new_run_id
from cftrunner.service import preflight
from cftrunner.states import RUN_ORDER, RunState
from cftrunner.store import Store
from cftrunner.store.writes import Tx
from cftrunner.views.live import Display, no_display
from cftrunner.wording import duration

log = structlog.get_logger("cftrunner")


def spec_from(cycle: Cycle, run_id: str | None, command: str) -> RunSpec:
    """The run a cycle starts; a part missing from both command line and file is bad input."""
    missing = [key for key in ("project_id", "model_alias", "prompts") if not getattr(cycle, key)]
    if missing and cycle.origin:
        raise InputError(f"{cycle.origin}: {command} needs {', '.join(missing)} (in the entry or "
                         "at the top level of the file)")
    if missing:
        raise InputError(f"{command} needs {', '.join('--' + key.replace('_', '-') for key in missing)} "
                         "(or the same keys, with underscores, in the config file)")
    assert cycle.project_id and cycle.model_alias and cycle.prompts
    return RunSpec(project_id=cycle.project_id, model_alias=cycle.model_alias,
                   prompts_source=cycle.prompts, judge_model=cycle.judge_model,
                   split_percentage=cycle.split_percentage, run_id=run_id,
                   judge=cycle.judge(), gate=cycle.gate(), loop=cycle.loop())


CYCLE_DONE = frozenset(RunState) - {RunState.FAILED} - set(RUN_ORDER[:-1])


def promoted(last: Run | None, spec: RunSpec) -> RunSpec:
    """With promotion on, the model the cycle's `last` run ended with: the one it promoted, else
    the one it used. The new run answers with it, and its job re-tunes from its experiment."""
    if not spec.loop.promote or last is None:
        return spec
    if last.state is RunState.PROMOTED and last.promotion:
        decision = last.promotion
        parent = {"model_id": decision.get("model_id"),
                  "experiment_id": decision.get("experiment_id"),
                  "base_model_id": decision.get("base_model_id"), "run_id": last.id}
        return replace(spec, model_alias=str(decision["model_id"]),
                       loop=replace(spec.loop, retune_from=parent))
    return replace(spec, model_alias=last.model_alias,
                   loop=replace(spec.loop, retune_from=last.loop.retune_from))


@dataclass(frozen=True)
class Decision:
    action: str  # "resume" | "start" | "skip" (too few new prompts) | "wait"
    run_id: str | None
    reason: str
    prompts: dict[str, Any] | None = None  # for "start" and "skip": where its prompts came from


def _due(tx: Tx, cycle: Cycle, name: str, now: datetime) -> Decision | None:
    """Resume the cycle's unfinished run, or wait, or None when a new cycle is due."""
    latest = tx.latest_run(name)
    if latest is not None and not latest.finished:
        return Decision("resume", latest.id, f"run {latest.id} is unfinished")
    if latest is not None and latest.state is RunState.FAILED:
        due = latest.state_changed_at + timedelta(seconds=cycle.failed_retry_interval)
        if now < due:
            return Decision("wait", latest.id, f"the last cycle {latest.id} FAILED "
                            f"{duration((now - latest.state_changed_at).total_seconds())} ago; "
                            f"next try in {duration((due - now).total_seconds())}")
    # Every end but FAILED makes the cycle done for the interval: a SKIPPED one too (the gate
    # said no, or there were too few new prompts), and one whose job trained, or failed to, or
    # whose model was compared.
    done = tx.latest_run(name, tuple(CYCLE_DONE))
    if done is not None:
        due = done.created_at + timedelta(seconds=cycle.interval)
        if now < due:
            return Decision("wait", done.id, f"the last cycle {done.id} {done.state.value} "
                            f"{duration((now - done.created_at).total_seconds())} ago; "
                            f"next in {duration((due - now).total_seconds())}")
    return None


def source_of(spec: RunSpec) -> Scan:
    """Every prompt of the cycle's source, checked, none of them held out (see `prompt_source`)."""
    return scan(spec.prompts_source, holdout_places(spec.loop.holdout, spec.loop.holdout_source))


def too_few(cycle: Cycle, choice: Choice) -> str | None:
    """Why the cycle is skipped for want of new prompts, or None."""
    if choice.unused >= cycle.min_new_prompts:
        return None
    counted = f"{len(choice.scan.files)} file(s), {len(choice.scan.prompts)} prompt(s)"
    found = "no unused prompt" if not choice.unused else f"only {choice.unused} unused prompt(s)"
    return (f"{found} in {choice.scan.source} ({counted}); min_new_prompts is "
            f"{cycle.min_new_prompts}")


def _look(tx: Tx | None, cycle: Cycle, spec: RunSpec, scanned: Scan,
          now: datetime) -> tuple[Decision, RunSpec, Choice | None]:
    """What tick would do for the cycle now, as far as `tx` shows its history (None: it has
    none): resume, wait, skip for too few new prompts, or start. For a skip or a start, the spec of
    the run (with the model the cycle promoted last) and the prompts it takes."""
    name = cycle_name(spec.project_id, spec.model_alias, cycle.name)
    if tx is not None and (decided := _due(tx, cycle, name, now)) is not None:
        return decided, spec, None
    rules = cycle.rules()
    choice = prompt_source.choose(
        scanned, tx.used_prompts(name) if tx is not None else {}, now, rules,
        tag_means=tx.tag_means(name) if tx is not None and rules.prioritise == "weak" else None)
    if tx is not None:
        spec = promoted(tx.latest_run(name), spec)
    skipped = too_few(cycle, choice)
    if skipped is not None:
        return Decision("skip", None, skipped, choice.summary()), spec, choice
    return Decision("start", None, "a new cycle is due", choice.summary()), spec, choice


def decide_and_claim(driver: Driver, cycle: Cycle, spec: RunSpec, scanned: Scan,
                     dataset_id: str | None = None) -> Decision:
    """In one transaction under the cycle's lock: pick what to do, and when a new cycle is due,
    choose its prompts and create its run (of `spec`, under a new id) already leased to this
    process, so a concurrent tick finds it owned. With too few new prompts, the run is created
    SKIPPED, without items; the prompts are then left unused."""
    run_id = new_run_id()
    name = cycle_name(spec.project_id, spec.model_alias, cycle.name)
    store: Store = driver.store
    started = time.monotonic()
    with store.tx() as tx:
        tx.lock_cycle(name)
        now = utcnow()  # once the cycle is locked, so the new lease's expiry is not early
        decided, spec, choice = _look(tx, cycle, replace(spec, run_id=run_id), scanned, now)
        if choice is None:
            return decided
        crashpoints.reach("tick.after_choosing")
        run = replace(new_run(run_id, spec, name, driver.settings.base_url),
                      prompt_source=decided.prompts, dataset_id=dataset_id)
        if decided.action == "skip":
            store.insert_run(tx, replace(run, state=RunState.SKIPPED,
                                         skip_reason=decided.reason), (), None, now)
            return replace(decided, run_id=run_id)
        lease = Lease(run_id, current_owner(), driver.settings.lease_seconds)
        store.insert_run(tx, run, choice.stream(), lease, now)
    crashpoints.reach("tick.after_create")
    driver.ownership.adopt(lease, started)
    return replace(decided, run_id=run_id)


def _upcoming(store: Store, cycle: Cycle, spec: RunSpec, scanned: Scan) -> RunSpec | None:
    """The run tick would start now (with the model the cycle promoted last), or None when it
    would resume, wait or skip; read without locking, as `decide_and_claim` decides again under
    the lock."""
    with store.reading() as tx:
        decided, spec, _ = _look(tx, cycle, spec, scanned, utcnow())
    return spec if decided.action == "start" else None


def preview(store: Store | None, cycle: Cycle) -> Decision:
    """What tick would do for the cycle now, with the prompts a new run would take; nothing is
    stored. Without a state database (`store` None) the cycle has no history yet."""
    spec = spec_from(cycle, None, "tick")
    scanned = source_of(spec)
    if store is None:
        return _look(None, cycle, spec, scanned, utcnow())[0]
    with store.reading() as tx:
        return _look(tx, cycle, spec, scanned, utcnow())[0]


def tick(driver: Driver, cycle: Cycle, on_created: Callable[[str], None],
         display: Display = no_display, scanned: Scan | None = None) -> tuple[Decision, Run | None]:
    """Resume the cycle's unfinished run, start one when due, or decide to wait. `scanned`: the
    cycle's source already read (`source_of`), as the caller does before opening the database."""
    spec = spec_from(cycle, None, "tick")
    # Every prompt of the source is checked before anything else, even when the run to drive
    # already exists; the chosen ones are read again as the new run's items are stored, so the
    # prompts are never all held at once.
    scanned = scanned or source_of(spec)
    dataset_id = None
    upcoming = _upcoming(driver.store, cycle, spec, scanned)
    if upcoming is not None:  # a new run is due: the key, project and models are checked first
        checked = preflight.check(driver, upcoming)
        preflight.warn(checked)
        dataset_id = checked.dataset_id
    decision = decide_and_claim(driver, cycle, spec, scanned, dataset_id)
    log.info("tick", action=decision.action, run_id=decision.run_id, reason=decision.reason)
    if decision.action == "wait" or decision.run_id is None:
        return decision, None
    if decision.action == "skip":
        return decision, driver.store.run(decision.run_id)
    if decision.action == "start":
        on_created(decision.run_id)
    with display(driver.store, decision.run_id):
        return decision, driver.drive(decision.run_id)
