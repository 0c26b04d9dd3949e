"""The cron entry: resume the cycle's unfinished run, start a new one when due, or do nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path

import structlog

from cftrunner.config import Cycle, cycle_name
from cftrunner.display import Display, no_display
from cftrunner.exceptions import InputError
from cftrunner.lease import Lease, current_owner
from cftrunner.models import Run
from cftrunner.prompts import check_prompts, iter_prompts
from cftrunner.render import duration
from cftrunner.runner import Runner, RunSpec, new_run_id
from cftrunner.schema import utcnow
from cftrunner.states import RUN_ORDER, RunState
from cftrunner.store import Store

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
    action: str  # "resume" | "start" | "wait"
    run_id: str | None
    reason: str


def decide_and_claim(runner: Runner, cycle: Cycle, spec: RunSpec,
                     prompts: Iterable[str]) -> Decision:
    """In one transaction under the cycle's lock: pick what to do, and when a new cycle is due,
    create its run (of `spec`, under a new id) already leased to this process, so a concurrent
    tick finds it owned."""
    spec = replace(spec, run_id=new_run_id())
    name = cycle_name(spec.project_id, spec.model_alias, cycle.name)
    store: Store = runner.store
    with store.tx() as tx:
        tx.lock_cycle(name)
        now = utcnow()  # once the cycle is locked, so the new lease's expiry is not early
        latest = tx.latest_run(name)
        if latest is not None and not latest.finished:
            return Decision("resume", latest.id, f"run {latest.id} is unfinished")
        if latest is not None and latest.state is RunState.FAILED:
            due = latest.state_changed_at + timedelta(seconds=cycle.failed_retry_interval)
            if now < due:
                return Decision("wait", latest.id, f"the last cycle {latest.id} FAILED "
                                f"{duration((now - latest.state_changed_at).total_seconds())} ago; "
                                f"next try in {duration((due - now).total_seconds())}")
        # Every end but FAILED makes the cycle done for the interval: a SKIPPED one too (the
        # gate said no), and one whose job trained, or failed to, or whose model was compared.
        done = tx.latest_run(name, tuple(CYCLE_DONE))
        if done is not None:
            due = done.created_at + timedelta(seconds=cycle.interval)
            if now < due:
                return Decision("wait", done.id, f"the last cycle {done.id} {done.state.value} "
                                f"{duration((now - done.created_at).total_seconds())} ago; "
                                f"next in {duration((due - now).total_seconds())}")
        spec = promoted(latest, spec)
        assert spec.run_id is not None
        lease = Lease(spec.run_id, current_owner(), runner.settings.lease_seconds)
        store.insert_run(tx, Runner.new_run(spec.run_id, spec, name), prompts, lease, now)
    runner.lease = lease
    return Decision("start", spec.run_id, "a new cycle is due")


def tick(runner: Runner, cycle: Cycle, on_created: Callable[[str], None],
         display: Display = no_display) -> tuple[Decision, Run | None]:
    spec = spec_from(cycle, None, "tick")
    # Checked in full before anything else, even when the run to drive already exists; then read
    # again as the new run's items are stored, so the prompts are never all held at once.
    check_prompts(Path(spec.prompts_source))
    decision = decide_and_claim(runner, cycle, spec, iter_prompts(Path(spec.prompts_source)))
    log.info("tick", action=decision.action, run_id=decision.run_id, reason=decision.reason)
    if decision.action == "wait" or decision.run_id is None:
        return decision, None
    if decision.action == "start":
        on_created(decision.run_id)
    with display(runner.store, decision.run_id):
        return decision, runner.drive(decision.run_id)
