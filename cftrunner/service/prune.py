"""The prune command: delete the finished runs that ended long enough ago, one run at a time.

Never a run that is not finished, nor the runs a cycle's next run reads (`store.prune.needed`:
its latest finished run, whose model it answers with, and the latest run that counts as the
cycle's interval); the record of the prompts a cycle used (`prompt_uses`) is never deleted."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from dataclasses import dataclass, field
from datetime import timedelta

import structlog

from cftrunner import crashpoints
from cftrunner.clock import utcnow
from cftrunner.config.settings import Settings
from cftrunner.exceptions import InputError
from cftrunner.records import Run
from cftrunner.service.schedule import CYCLE_DONE
from cftrunner.states import ENDS_UNLESS_LOOPING, TERMINAL, RunState
from cftrunner.store import Store
from cftrunner.wording import age

log = structlog.get_logger("cftrunner")

# The states a finished run can be in: the others are never pruned.
PRUNABLE_STATES: tuple[RunState, ...] = tuple(s for s in RunState
                                              if s in TERMINAL | ENDS_UNLESS_LOOPING)
KEPT = ("the latest finished run of each cycle (and its latest that did not fail), which its "
        "next run reads to choose its model and when it is due")


@dataclass(frozen=True)
class Pruned:
    """A run deleted (or, on a dry run, that would be), with its items."""

    run: Run
    items: int


@dataclass
class Outcome:
    """What a prune did, as it goes: the runs deleted so far, and those kept though old enough."""

    dry_run: bool
    older_than: str  # as the command line said it
    states: tuple[RunState, ...] = ()
    pruned: list[Pruned] = field(default_factory=list)
    kept: list[Run] = field(default_factory=list)


def checked_states(names: Collection[str]) -> tuple[RunState, ...]:
    """The states named (any case), each one a finished run can be in; InputError otherwise."""
    found: list[RunState] = []
    for name in names:
        state = RunState.__members__.get(name.strip().upper())
        if state is None:
            raise InputError(f"--state {name!r} is not a run state: one of "
                             f"{', '.join(s.value for s in PRUNABLE_STATES)}")
        if state not in PRUNABLE_STATES:
            raise InputError(f"--state {state.value}: a {state.value} run is not finished, and "
                             f"only finished runs are pruned: one of "
                             f"{', '.join(s.value for s in PRUNABLE_STATES)}")
        found.append(state)
    return tuple(dict.fromkeys(found))


def prune(settings: Settings, older_than: float, states: Collection[RunState] = (),
          dry_run: bool = False, outcome: Outcome | None = None) -> Iterator[Pruned]:
    """Delete the finished runs whose state last changed more than `older_than` seconds ago (in
    `states`, any when empty), each with every row that belongs to it, in a transaction of its
    own, oldest first; yield each once deleted (on a dry run, each that would be, deleting
    nothing). `outcome`, when given, gathers the runs deleted and those kept."""
    if older_than < 0:
        raise InputError("--older-than must be a duration >= 0")
    if not set(states) <= set(PRUNABLE_STATES):
        raise InputError(f"only finished runs are pruned: states "
                         f"{', '.join(s.value for s in PRUNABLE_STATES)}")
    before = utcnow() - timedelta(seconds=older_than)
    store = Store.existing(settings.db_url)
    try:
        doomed, kept = store.prune_candidates(before, states, CYCLE_DONE)
        if outcome is not None:
            outcome.kept.extend(kept)
        counts = store.item_counts([r.id for r in doomed])
        for run in doomed:
            if not dry_run:
                deleted = store.delete_run(run.id, before, states, CYCLE_DONE)
                if deleted is None:  # changed or deleted by another process since it was read
                    continue
                log.info("run_pruned", run_id=run.id, state=run.state.value, rows=deleted)
                crashpoints.reach("prune.after_run")
            pruned = Pruned(run, counts.get(run.id, 0))
            if outcome is not None:
                outcome.pruned.append(pruned)
            yield pruned
    finally:
        store.close()


def pruned_line(pruned: Pruned, dry_run: bool) -> str:
    """One run deleted, or that would be."""
    run = pruned.run
    cycle = f", cycle {run.cycle}" if run.cycle else ""
    return (f"{'would prune' if dry_run else 'pruned'} {run.id}: {run.state.value}, ended "
            f"{age(run.state_changed_at, utcnow())} ago, {pruned.items} item(s){cycle}")


def total_line(outcome: Outcome) -> str:
    """The last line: how many runs went (or would), and how many old enough were kept."""
    old = f"older than {outcome.older_than}"
    if not outcome.pruned:
        if outcome.kept:
            return f"nothing to prune: the only finished run(s) {old} are kept: {KEPT}"
        which = " or ".join(s.value for s in outcome.states) or "finished"
        return f"nothing to prune: no {which} run ended more than {outcome.older_than} ago"
    kept = f"; kept {len(outcome.kept)} finished run(s) {old}: {KEPT}" if outcome.kept else ""
    items = sum(p.items for p in outcome.pruned)
    if outcome.dry_run:
        return (f"would prune {len(outcome.pruned)} run(s), {items} item(s); nothing deleted "
                f"(--dry-run){kept}")
    return f"pruned {len(outcome.pruned)} run(s), {items} item(s){kept}"
