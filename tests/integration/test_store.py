"""The state store on a real database: atomic creation, checked transitions, effects, events."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from cftrunner.exceptions import InputError, RunExistsError, RunNotFoundError, StaleStateError
from cftrunner.records import EffectStatus
from cftrunner.states import ItemStage, RunState
from cftrunner.store import Store
from tests.conftest import make_run


def test_a_run_is_stored_with_its_items_in_order(store: Store) -> None:
    store.create_run(make_run(), ["a", "b", "c"])
    assert [(i.position, i.prompt, i.stage) for i in store.items("r1")] == [
        (0, "a", ItemStage.PENDING), (1, "b", ItemStage.PENDING), (2, "c", ItemStage.PENDING)]
    assert store.run("r1").created_at.tzinfo is not None


def test_an_existing_run_id_is_refused_and_nothing_changes(store: Store) -> None:
    store.create_run(make_run(), ["a"])
    with pytest.raises(RunExistsError, match="cftrunner resume r1"):
        store.create_run(make_run(), ["x", "y"])
    assert [i.prompt for i in store.items("r1")] == ["a"]


def test_an_unknown_run_is_reported(store: Store) -> None:
    with pytest.raises(RunNotFoundError):
        store.run("ghost")


def test_a_transition_checks_the_state_it_moves_from(store: Store) -> None:
    store.create_run(make_run(), ["a"])
    with store.tx() as tx:
        tx.transition_run("r1", RunState.CREATED, RunState.FAILED, failure_reason="x")
    with pytest.raises(StaleStateError), store.tx() as tx:
        tx.transition_run("r1", RunState.CREATED, RunState.GENERATED)
    assert store.run("r1").state is RunState.FAILED


def test_a_failed_transition_rolls_back_everything_in_its_transaction(store: Store) -> None:
    store.create_run(make_run(), ["a"])
    item = store.items("r1")[0]
    with pytest.raises(StaleStateError), store.tx() as tx:
        tx.update_item(item, ItemStage.GENERATED, answer="kept?")
        tx.transition_run("r1", RunState.JUDGED, RunState.TRACED)
    assert store.items("r1")[0].answer is None


def test_an_item_update_checks_its_stage(store: Store) -> None:
    store.create_run(make_run(), ["a"])
    item = store.items("r1")[0]
    with store.tx() as tx:
        tx.update_item(item, ItemStage.GENERATED, answer="x")
    with pytest.raises(StaleStateError), store.tx() as tx:
        tx.update_item(item, ItemStage.GEN_FAILED)


def test_the_run_advances_only_when_every_item_is_there(store: Store) -> None:
    store.create_run(make_run(), ["a", "b"])
    first, second = store.items("r1")
    with store.tx() as tx:
        tx.update_item(first, ItemStage.GENERATED, answer="x")
    with pytest.raises(StaleStateError), store.tx() as tx:
        tx.advance_items_state("r1", RunState.CREATED, RunState.GENERATED, ItemStage.GENERATED)
    with store.tx() as tx:
        tx.update_item(second, ItemStage.GEN_FAILED, error_kind="http_400")
        tx.advance_items_state("r1", RunState.CREATED, RunState.GENERATED, ItemStage.GENERATED)
    assert store.run("r1").state is RunState.GENERATED


def test_a_run_whose_items_all_failed_ends_failed(store: Store) -> None:
    store.create_run(make_run(), ["a"])
    with store.tx() as tx:
        tx.update_item(store.items("r1")[0], ItemStage.GEN_FAILED, error_kind="http_400")
        tx.advance_items_state("r1", RunState.CREATED, RunState.GENERATED, ItemStage.GENERATED)
    run = store.run("r1")
    assert run.state is RunState.FAILED and run.failure_reason == "every item failed (1 gen_failed)"


def test_an_effect_keeps_its_first_intent_time_across_attempts(store: Store) -> None:
    store.create_run(make_run(), ["a"])
    with store.tx() as tx:
        tx.prepare_effect("r1", "snapshot", "snapshot", None, {"n": 1}, None)
    first = store.effect("r1", "snapshot")
    assert first is not None and first.status is EffectStatus.PREPARED and first.attempts == 1
    with store.tx() as tx:
        tx.prepare_effect("r1", "snapshot", "snapshot", None, {"n": 2}, first)
    second = store.effect("r1", "snapshot")
    assert second is not None and second.attempts == 2 and second.prepared_at == first.prepared_at
    with pytest.raises(StaleStateError), store.tx() as tx:
        tx.finish_effect(first, EffectStatus.DONE, {})  # a stale copy cannot overwrite


def test_every_change_leaves_an_event(store: Store) -> None:
    store.create_run(make_run(), ["a"])
    with store.tx() as tx:
        tx.update_item(store.items("r1")[0], ItemStage.GENERATED, answer="x")
        tx.transition_run("r1", RunState.CREATED, RunState.GENERATED)
    kinds = [e.kind for e in store.events("r1")]
    assert kinds == ["run_created", "item_transitioned", "run_transitioned"]


def test_an_effects_outcome_is_stored_after_what_it_makes_true_and_read_before_it(
        store: Store) -> None:
    """finish_effect_with runs `record` first (an item's update checks its claim) and keeps the
    events, and the log lines, in the order they happened: the effect's, then the item's."""
    store.create_run(make_run(), ["a"])
    item = store.items("r1")[0]
    with store.tx() as tx:
        prepared = tx.prepare_effect("r1", "trace:0", "trace", item.id, {}, None)
    with store.tx() as tx:
        seen: list[list[str]] = []  # what the transaction had written when `record` ran

        def record() -> int:
            seen.append([kind for kind, _ in tx.logged])
            return tx.update_item(item, ItemStage.GENERATED, answer="x").id

        assert tx.finish_effect_with(prepared, EffectStatus.DONE, record, {"trace_id": "t"}) \
            == item.id
        logged = [kind for kind, _ in tx.logged]
    assert seen == [[]]
    assert [e.kind for e in store.events("r1")][-3:] == [
        "effect_prepared", "effect_done", "item_transitioned"]
    assert logged == ["effect_done", "item_transitioned"]
    assert store.effect("r1", "trace:0").status is EffectStatus.DONE


def test_a_trace_id_belongs_to_one_item_only(store: Store) -> None:
    store.create_run(make_run(), ["a", "b"])
    first, second = store.items("r1")
    with store.tx() as tx:
        for item in (first, second):
            tx.update_item(item, ItemStage.GENERATED, answer="x")
    first, second = store.items("r1")
    with store.tx() as tx:
        tx.update_item(first, ItemStage.JUDGED, score=0.5)
    assert not store.trace_claimed("t-1")
    first = store.items("r1")[0]
    with store.tx() as tx:
        tx.update_item(first, ItemStage.TRACED, trace_id="t-1")
    assert store.trace_claimed("t-1")


def test_concurrent_writers_queue_instead_of_failing(db_url: str) -> None:
    """Immediate transactions and a busy timeout: no "database is locked" between writers."""
    Store(db_url).create_run(make_run(), [str(i) for i in range(40)])
    errors: list[BaseException] = []

    def write(parity: int) -> None:
        store = Store(db_url)
        try:
            for item in store.items("r1"):
                if item.position % 2 == parity:
                    with store.tx() as tx:
                        tx.update_item(item, ItemStage.GENERATED, answer="x")
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=write, args=(p,)) for p in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert {i.stage for i in Store(db_url).items("r1")} == {ItemStage.GENERATED}


@pytest.mark.sqlite_only
def test_a_database_in_a_missing_folder_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="does not exist"):
        Store(f"sqlite:///{tmp_path}/nope/state.db")


@pytest.mark.sqlite_only
def test_the_database_runs_in_wal_mode(store: Store) -> None:
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"


SYNC_NORMAL, SYNC_FULL = 1, 2  # PRAGMA synchronous


@pytest.mark.sqlite_only
def test_a_transaction_is_synced_to_disk_unless_it_says_it_need_not_be(store: Store) -> None:
    def level(durable: bool) -> int:
        with store.tx(durable=durable) as tx:
            return int(tx.conn.exec_driver_sql("PRAGMA synchronous").scalar() or 0)

    assert level(True) == SYNC_FULL
    assert level(False) == SYNC_NORMAL
    assert level(False) == SYNC_NORMAL
    assert level(True) == SYNC_FULL
    # A reader's connection is not the writer's: it keeps what every connection starts with.
    with store.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA synchronous").scalar() == SYNC_FULL


def test_the_additions_still_processing_are_those_added_whose_status_is_not_settled(
        store: Store) -> None:
    """What each look at the platform's corrections reads: only ids and trace ids, of the added
    items whose processing is unknown (None) or under way, never of settled or unadded ones."""
    store.create_run(make_run(), ["a", "b", "c", "d", "e"])
    statuses = [None, "processing", "none", "failed", None]
    for item, status in zip(store.items("r1"), statuses, strict=True):
        with store.tx() as tx:
            for target in (ItemStage.GENERATED, ItemStage.JUDGED, ItemStage.TRACED):
                item = tx.update_item(item, target, **({"trace_id": f"t{item.position}"}
                                                       if target is ItemStage.TRACED else {}))
            if item.position < 4:
                tx.update_item(item, ItemStage.ADDED, processing_status=status)
    ids = {i.position: i.id for i in store.items("r1")}
    assert store.processing("r1") == [(ids[0], "t0"), (ids[1], "t1")]
    assert [i.position for i in store.items_by_id([ids[3], ids[1]])] == [1, 3]


def test_corrections_done_settles_only_that_runs_items_still_added(
        store: Store) -> None:
    """The finished corrections a look saw: those items' processing is done, with nothing else
    changed; an item set aside meanwhile (no longer ADDED) and another run's items stay as
    they are."""
    store.create_run(make_run(), ["a", "b", "c"])
    store.create_run(make_run("r2"), ["a"])
    for item in [*store.items("r1"), *store.items("r2")]:
        with store.tx() as tx:
            for target in (ItemStage.GENERATED, ItemStage.JUDGED, ItemStage.TRACED):
                item = tx.update_item(item, target)
            item = tx.update_item(item, ItemStage.ADDED, processing_status="processing")
            if item.position == 2:
                tx.update_item(item, ItemStage.ADD_FAILED, processing_status="failed")
    other = store.items("r2")[0]
    ids = [i.id for i in store.items("r1")]
    with store.tx() as tx:
        tx.corrections_done("r1", [*ids, other.id])
    assert [(i.stage, i.processing_status) for i in store.items("r1")] == [
        (ItemStage.ADDED, "none"), (ItemStage.ADDED, "none"), (ItemStage.ADD_FAILED, "failed")]
    assert store.items("r2")[0].processing_status == "processing"
    assert store.processing("r1") == []
