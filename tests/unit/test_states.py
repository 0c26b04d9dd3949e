"""The state machines as data: order, allowed moves, terminal states."""

from __future__ import annotations

import pytest

from cftrunner.exceptions import StaleStateError
from cftrunner.states import (
    ITEM_FAILED,
    ITEM_TRANSITIONS,
    RUN_ORDER,
    STAGE_FOR_RUN_STATE,
    TERMINAL,
    ItemStage,
    RunState,
    check_item_transition,
    check_run_transition,
    next_run_state,
)


def test_runs_go_through_the_checkpoints_in_order() -> None:
    assert [s.value for s in RUN_ORDER] == ["CREATED", "GENERATED", "JUDGED", "TRACED", "ADDED",
                                            "SNAPSHOT", "RECS_READY", "LAUNCHED"]


@pytest.mark.parametrize("state", RUN_ORDER[:-1])
def test_each_live_state_moves_to_the_next_or_to_failed_or_cancelled(state: RunState) -> None:
    check_run_transition(state, next_run_state(state))
    check_run_transition(state, RunState.FAILED)
    check_run_transition(state, RunState.CANCELLED)


@pytest.mark.parametrize("state", RUN_ORDER[:-2])
def test_no_state_can_be_skipped(state: RunState) -> None:
    skip = RUN_ORDER[RUN_ORDER.index(state) + 2]
    with pytest.raises(StaleStateError):
        check_run_transition(state, skip)


@pytest.mark.parametrize("state", sorted(TERMINAL))
def test_terminal_states_move_nowhere(state: RunState) -> None:
    for target in RunState:
        with pytest.raises(StaleStateError):
            check_run_transition(state, target)
    with pytest.raises(StaleStateError):
        next_run_state(state)


def test_no_run_state_moves_backwards() -> None:
    for i, state in enumerate(RUN_ORDER):
        for earlier in RUN_ORDER[: i + 1]:
            with pytest.raises(StaleStateError):
                check_run_transition(state, earlier)


def test_failed_item_stages_are_final() -> None:
    for stage in ITEM_FAILED:
        assert ITEM_TRANSITIONS[stage] == frozenset()


def test_an_item_cannot_skip_a_stage() -> None:
    with pytest.raises(StaleStateError):
        check_item_transition(ItemStage.GENERATED, ItemStage.TRACED)
    with pytest.raises(StaleStateError):
        check_item_transition(ItemStage.PENDING, ItemStage.JUDGE_FAILED)


def test_an_added_item_can_still_fail_its_correction() -> None:
    check_item_transition(ItemStage.ADDED, ItemStage.ADD_FAILED)


def test_item_level_run_states_map_to_item_stages() -> None:
    assert {s.value: t.value for s, t in STAGE_FOR_RUN_STATE.items()} == {
        "GENERATED": "GENERATED", "JUDGED": "JUDGED", "TRACED": "TRACED", "ADDED": "ADDED"}
