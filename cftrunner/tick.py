"""The cron entry: resume the cycle's unfinished run, start a new one when due, or do nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import structlog

from cftrunner.config import Cycle
from cftrunner.display import Display, no_display
from cftrunner.exceptions import InputError
from cftrunner.lease import Lease, current_owner
from cftrunner.models import Run
from cftrunner.prompts import check_prompts, iter_prompts
from cftrunner.render import duration
from cftrunner.runner import Runner, RunSpec, new_run_id
from cftrunner.schema import utcnow
from cftrunner.states import TERMINAL, RunState
from cftrunner.store import Store

log = structlog.get_logger("cftrunner")


def cycle_name(project_id: str, model_alias: str) -> str:
    return f"{project_id}/{model_alias}"


def spec_from(cycle: Cycle, run_id: str | None, command: str) -> RunSpec:
    """The run a cycle starts; a part missing from both command line and file is bad input."""
    missing = [f"--{key.replace('_', '-')}" for key in ("project_id", "model_alias", "prompts")
               if not getattr(cycle, key)]
    if missing:
        raise InputError(f"{command} needs {', '.join(missing)} (or the same keys, with "
                         "underscores, in the config file)")
    assert cycle.project_id and cycle.model_alias and cycle.prompts
    return RunSpec(project_id=cycle.project_id, model_alias=cycle.model_alias,
                   prompts_source=cycle.prompts, judge_model=cycle.judge_model,
                   split_percentage=cycle.split_percentage, run_id=run_id)


@dataclass(frozen=True)
class Decision:
    action: str  # "resume" | "start" | "wait"
    run_id: str | None
    reason: str


def decide_and_claim(runner: Runner, cycle: Cycle, prompts: Iterable[str]) -> Decision:
    """In one transaction under the cycle's lock: pick what to do, and when a new cycle is due,
    create its run already leased to this process, so a concurrent tick finds it owned."""
    spec = spec_from(cycle, new_run_id(), "tick")
    name = cycle_name(spec.project_id, spec.model_alias)
    store: Store = runner.store
    with store.tx() as tx:
        tx.lock_cycle(name)
        now = utcnow()  # once the cycle is locked, so the new lease's expiry is not early
        latest = tx.latest_run(name)
        if latest is not None and latest.state not in TERMINAL:
            return Decision("resume", latest.id, f"run {latest.id} is unfinished")
        if latest is not None and latest.state is RunState.FAILED:
            due = latest.state_changed_at + timedelta(seconds=cycle.failed_retry_interval)
            if now < due:
                return Decision("wait", latest.id, f"the last cycle {latest.id} FAILED "
                                f"{duration((now - latest.state_changed_at).total_seconds())} ago; "
                                f"next try in {duration((due - now).total_seconds())}")
        done = tx.latest_run(name, (RunState.LAUNCHED, RunState.CANCELLED))
        if done is not None:
            due = done.created_at + timedelta(seconds=cycle.interval)
            if now < due:
                return Decision("wait", done.id, f"the last cycle {done.id} {done.state.value} "
                                f"{duration((now - done.created_at).total_seconds())} ago; "
                                f"next in {duration((due - now).total_seconds())}")
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
    decision = decide_and_claim(runner, cycle, iter_prompts(Path(spec.prompts_source)))
    log.info("tick", action=decision.action, run_id=decision.run_id, reason=decision.reason)
    if decision.action == "wait" or decision.run_id is None:
        return decision, None
    if decision.action == "start":
        on_created(decision.run_id)
    with display(runner.store, decision.run_id):
        return decision, runner.drive(decision.run_id)
