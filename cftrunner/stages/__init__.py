"""The stages of a run: what each state does to reach the next, and the table that picks it."""

from __future__ import annotations

from collections.abc import Callable

from cftrunner.records import Run
from cftrunner.stages import follow, items, launch, promote
from cftrunner.stages.context import Context
from cftrunner.states import RunState

Stage = Callable[[Context, Run], None]

# Each unfinished state's stage; a stage stores its progress and may leave the run in the same
# state (to be called again) or move it on. Terminal states have none.
STAGES: dict[RunState, Stage] = {
    RunState.CREATED: items.item_stage,
    RunState.GENERATED: items.item_stage,
    RunState.JUDGED: items.item_stage,
    RunState.TRACED: items.item_stage,
    RunState.ADDED: launch.snapshot,
    RunState.SNAPSHOT: launch.recommendations,
    RunState.RECS_READY: launch.launch,
    RunState.LAUNCHED: follow.follow,
    RunState.TRAINED: promote.promote,
}
