"""The item stages: every unfinished item through generate, judge, trace and add, several at a
time and beside other workers; then the run advanced through the states that now hold."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import structlog

from cftrunner import crashpoints
from cftrunner.exceptions import NeedsDecision, OutcomePending, RejectedError, RunBusy
from cftrunner.payloads import finetuning
from cftrunner.records import Item, Run
from cftrunner.stages.answer import generate, judge
from cftrunner.stages.calibrate import calibrate
from cftrunner.stages.context import Context, Stored
from cftrunner.stages.dataset import add, trace
from cftrunner.states import STAGE_FOR_RUN_STATE, ItemStage, RunState, next_run_state

log = structlog.get_logger("cftrunner")

# Each step returns what it stored, or None when another path stored it (an effect found
# already done), for the caller to read the item again. Its last argument is what the previous
# step stored when the item entered its stage in this process, just before: then no effect of
# the step is stored yet but the intent it carries.
Step = Callable[[Context, Run, Item, Stored | None], Stored | None]

ITEM_STEPS: dict[ItemStage, Step] = {
    ItemStage.PENDING: generate,
    ItemStage.GENERATED: judge,
    ItemStage.JUDGED: trace,
    ItemStage.TRACED: add,
}


def item_stage(ctx: Context, run: Run) -> None:
    """Take every unfinished item through generate, judge, trace and add, each item on its own and
    up to `concurrency` at once, beside any other workers; then advance the run through the
    states that now hold."""
    if run.state is RunState.CREATED and run.dataset_id is None and not find_dataset(ctx, run):
        return
    work_items(ctx, run)
    calibrate(ctx, run)  # the judge measured on its calibration set, for the gate
    state = run.state
    while (target := next_run_state(state)) in STAGE_FOR_RUN_STATE:
        crashpoints.reach(f"transition.{target.value}")
        with ctx.tx() as tx:
            tx.advance_items_state(run.id, state, target, STAGE_FOR_RUN_STATE[target])
        state = ctx.store.run(run.id).state
        if state is not target:
            return


def work_items(ctx: Context, run: Run) -> None:
    """Claim unfinished items a few at a time and finish them, until none is left: waiting
    while other workers hold some, and taking over those of a worker that lapses."""
    ownership = ctx.ownership
    pending: list[tuple[Item, OutcomePending]] = []

    def finish(item: Item) -> None:
        if (exc := _finish_item(ctx, run, item)) is not None:
            pending.append((item, exc))

    while True:
        claimed = 0
        pending.clear()

        def claiming() -> Iterator[Item]:
            nonlocal claimed
            while batch := ownership.claim(ctx.settings.concurrency):
                claimed += len(batch)
                yield from batch

        ctx.patient = False  # an item whose effect's outcome is unknown is set aside at once ...
        try:
            ctx.for_each(claiming(), finish)
        finally:
            ctx.patient = True
        if claimed and not pending:
            continue
        if pending:
            # ... and looked at again once the others are done: what they wrote meanwhile is
            # what shows that the remote view has caught up.
            parked = [ctx.store.item(item.id) for item, _ in pending]
            pending.clear()
            ctx.for_each(parked, finish)
            if pending:
                raise _all_pending([exc for _, exc in pending])
            continue
        if not ownership.held_elsewhere():
            return
        ctx.pause(ctx.settings.poll_interval)


def _finish_item(ctx: Context, run: Run, item: Item) -> OutcomePending | None:
    """Take the item as far as it goes now; what keeps it from going on, if the outcome of one
    of its effects is not known yet."""
    entered: Stored | None = None  # the item comes as stored, by this process or an earlier one
    try:
        while item.stage in ITEM_STEPS:
            if entered is None or entered.intent is None:
                # Else the effect of that intent checks first thing, and a stop stores it as
                # unsent.
                ctx.checkpoint()
            entered = ITEM_STEPS[item.stage](ctx, run, item, entered)
            item = entered.item if entered is not None else ctx.store.item(item.id)
    except OutcomePending as exc:
        # The other items go on meanwhile (see work_items).
        log.info("item_outcome_pending", item=item.position, reason=exc.message)
        return exc
    return None


def _all_pending(pending: list[OutcomePending]) -> OutcomePending:
    """One error for the items whose effects' outcomes are unknown: the first one's, counting
    the others; a person's decision is needed if any needs one."""
    first = next((p for p in pending if isinstance(p, NeedsDecision)), pending[0])
    if len(pending) == 1:
        return first
    return type(first)(f"{first.message} (and {len(pending) - 1} more item(s) like it; "
                       "`cftrunner status RUN_ID` lists them)")


def find_dataset(ctx: Context, run: Run) -> bool:
    """Store the project's dataset id; end the run FAILED when there is none to add to."""
    try:
        project = ctx.retrying("reading the project", lambda: ctx.client.project(run.project_id))
    except RejectedError as exc:
        if exc.status_code != 404:
            raise
        project = None
    dataset_id = finetuning.find_dataset_id(project) if project is not None else None
    with ctx.tx() as tx:
        if dataset_id is None:
            reason = (f"project {run.project_id} not found" if project is None
                      else f"project {run.project_id} has no dataset")
            tx.transition_run(run.id, run.state, RunState.FAILED, failure_reason=reason)
            log.error("run_failed", reason=reason)
            return False
        tx.update_run(run.id, run.state, dataset_id=dataset_id)
    return True


def find_dataset_if_free(ctx: Context, run: Run) -> None:
    """Check the project has a dataset before spending on items, unless another process holds
    the run (it does that check itself)."""
    try:
        ctx.ownership.take(run.id)
    except RunBusy:
        return
    try:
        find_dataset(ctx, run)
    finally:
        ctx.ownership.release()
