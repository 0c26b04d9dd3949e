"""The run and item state machines as data: states, allowed transitions, and a pure check."""

from __future__ import annotations

import enum

from cftrunner.exceptions import StaleStateError


class RunState(enum.StrEnum):
    CREATED = "CREATED"  # the run and its items are stored; nothing has been asked of the API
    GENERATED = "GENERATED"  # every item has an answer or a recorded permanent failure
    JUDGED = "JUDGED"  # every answered item has a valid judgment or is judge-failed
    TRACED = "TRACED"  # every judged item has its trace id or a recorded trace failure
    ADDED = "ADDED"  # every traced item was added to the dataset or has a recorded add failure
    SNAPSHOT = "SNAPSHOT"  # no addition is processing any more, and the snapshot id is stored
    RECS_READY = "RECS_READY"  # recommendations completed; the experiments to launch are stored
    LAUNCHED = "LAUNCHED"  # the fine-tuning job exists and its id is stored
    # Following the job (loop.follow), after LAUNCHED:
    TRAINED = "TRAINED"  # the job ended with at least one experiment's model; the models stored
    TRAIN_FAILED = "TRAIN_FAILED"  # the job ended with no model
    # Promoting (loop.promote), after TRAINED, on held-out prompts:
    PROMOTED = "PROMOTED"  # the best new model is no worse than the current one: the next uses it
    NOT_PROMOTED = "NOT_PROMOTED"  # no new model was good enough; the decision and scores stored
    FAILED = "FAILED"  # the run cannot reach LAUNCHED; the reason is stored
    SKIPPED = "SKIPPED"  # the gate found the cycle not worth training on; no snapshot, no job
    CANCELLED = "CANCELLED"  # stopped at a checkpoint on request; nothing more will be sent


RUN_ORDER: tuple[RunState, ...] = (
    RunState.CREATED,
    RunState.GENERATED,
    RunState.JUDGED,
    RunState.TRACED,
    RunState.ADDED,
    RunState.SNAPSHOT,
    RunState.RECS_READY,
    RunState.LAUNCHED,
)

# States nothing follows. LAUNCHED and TRAINED end a run too unless it follows its job or
# promotes its model (`Run.finished`).
TERMINAL: frozenset[RunState] = frozenset({
    RunState.FAILED, RunState.CANCELLED, RunState.SKIPPED, RunState.TRAIN_FAILED,
    RunState.PROMOTED, RunState.NOT_PROMOTED})
ENDS_UNLESS_LOOPING: frozenset[RunState] = frozenset({RunState.LAUNCHED, RunState.TRAINED})

RUN_TRANSITIONS: dict[RunState, frozenset[RunState]] = {
    state: frozenset({nxt, RunState.FAILED, RunState.CANCELLED})
    for state, nxt in zip(RUN_ORDER, RUN_ORDER[1:], strict=False)
}
# The gate stands between the additions and the snapshot.
RUN_TRANSITIONS[RunState.ADDED] |= {RunState.SKIPPED}
RUN_TRANSITIONS[RunState.LAUNCHED] = frozenset({RunState.TRAINED, RunState.TRAIN_FAILED,
                                               RunState.FAILED, RunState.CANCELLED})
RUN_TRANSITIONS[RunState.TRAINED] = frozenset({RunState.PROMOTED, RunState.NOT_PROMOTED,
                                              RunState.FAILED, RunState.CANCELLED})
RUN_TRANSITIONS.update(dict.fromkeys(TERMINAL, frozenset()))


class ItemStage(enum.StrEnum):
    PENDING = "PENDING"  # the prompt is stored; no answer yet
    GENERATED = "GENERATED"  # the answer is stored
    JUDGED = "JUDGED"  # a valid judgment is stored
    TRACED = "TRACED"  # the trace exists and its id is stored
    ADDED = "ADDED"  # addToDataset accepted the trace (added, or queued for correction)
    GEN_FAILED = "GEN_FAILED"  # generation was rejected for good
    JUDGE_FAILED = "JUDGE_FAILED"  # no valid judgment within the allowed attempts; gets no trace
    TRACE_FAILED = "TRACE_FAILED"  # the API rejected the trace
    ADD_FAILED = "ADD_FAILED"  # the addition was rejected, failed, or its correction failed
    # Not generated or not judged because the run's token budget ran out; not a failure, and,
    # being last, never a stage the run waits for.
    SKIPPED = "SKIPPED"


ITEM_FAILED: frozenset[ItemStage] = frozenset(
    {ItemStage.GEN_FAILED, ItemStage.JUDGE_FAILED, ItemStage.TRACE_FAILED, ItemStage.ADD_FAILED}
)
# The stages an item is still worked on from; the others are finished (added, or failed).
UNFINISHED_STAGES: tuple[ItemStage, ...] = (
    ItemStage.PENDING, ItemStage.GENERATED, ItemStage.JUDGED, ItemStage.TRACED)

ITEM_TRANSITIONS: dict[ItemStage, frozenset[ItemStage]] = {
    ItemStage.PENDING: frozenset({ItemStage.GENERATED, ItemStage.GEN_FAILED, ItemStage.SKIPPED}),
    ItemStage.GENERATED: frozenset({ItemStage.JUDGED, ItemStage.JUDGE_FAILED, ItemStage.SKIPPED}),
    ItemStage.JUDGED: frozenset({ItemStage.TRACED, ItemStage.TRACE_FAILED}),
    ItemStage.TRACED: frozenset({ItemStage.ADDED, ItemStage.ADD_FAILED}),
    # A correction the platform fails after accepting the addition turns ADDED into ADD_FAILED.
    ItemStage.ADDED: frozenset({ItemStage.ADD_FAILED}),
    ItemStage.GEN_FAILED: frozenset(),
    ItemStage.JUDGE_FAILED: frozenset(),
    ItemStage.TRACE_FAILED: frozenset(),
    ItemStage.ADD_FAILED: frozenset(),
    ItemStage.SKIPPED: frozenset(),
}

# The item stage each item-level run state requires: the run reaches the state when every item
# is at that stage or failed.
STAGE_FOR_RUN_STATE: dict[RunState, ItemStage] = {
    RunState.GENERATED: ItemStage.GENERATED,
    RunState.JUDGED: ItemStage.JUDGED,
    RunState.TRACED: ItemStage.TRACED,
    RunState.ADDED: ItemStage.ADDED,
}


def check_run_transition(current: RunState, target: RunState) -> None:
    """Raise StaleStateError unless the run may move from `current` to `target`."""
    if target not in RUN_TRANSITIONS[current]:
        raise StaleStateError(f"a run cannot move from {current.value} to {target.value}")


def check_item_transition(current: ItemStage, target: ItemStage) -> None:
    """Raise StaleStateError unless an item may move from `current` to `target`."""
    if target not in ITEM_TRANSITIONS[current]:
        raise StaleStateError(f"an item cannot move from {current.value} to {target.value}")


def next_run_state(current: RunState) -> RunState:
    """The state after `current` on the way to LAUNCHED."""
    if current in TERMINAL or current not in RUN_ORDER[:-1]:
        raise StaleStateError(f"{current.value} is terminal")
    return RUN_ORDER[RUN_ORDER.index(current) + 1]
