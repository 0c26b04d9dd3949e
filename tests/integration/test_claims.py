"""Item claims on a real database: disjoint batches, takeover of a lapsed worker's items, and the
fence that keeps a worker that lost its items from writing to them."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from datetime import timedelta

import pytest
import sqlalchemy as sa

from cftrunner import ownership
from cftrunner.clock import utcnow
from cftrunner.exceptions import LeaseLost, StaleStateError
from cftrunner.holds import Lease
from cftrunner.ownership import current_owner
from cftrunner.records import Item, Owner
from cftrunner.states import ItemStage
from cftrunner.store import Store
from cftrunner.store.schema import completions, effects, events, items, workers
from cftrunner.store.writes import Tx
from cftrunner.views import status
from tests.conftest import make_run

PROMPTS = [f"prompt {i}" for i in range(10)]


def other_host(name: str = "elsewhere") -> Owner:
    me = current_owner()
    return Owner(host=name, boot_id=me.boot_id, pid=me.pid, started=me.started)


@pytest.fixture
def run_store(store: Store) -> Store:
    store.create_run(make_run(), PROMPTS)
    return store


def joined(store: Store, owner: Owner | None = None, seconds: float = 60) -> Lease:
    worker = Lease("r1", owner or current_owner(), seconds)
    ownership.register(store, worker)
    return worker


def expire(store: Store, worker: Lease) -> None:
    with store.tx() as tx:
        tx.conn.execute(workers.update().where(workers.c.token == worker.token)
                        .values(expires_at=utcnow() - timedelta(seconds=1)))


def positions(batch: list) -> list[int]:  # type: ignore[type-arg]
    return [i.position for i in batch]


def test_two_workers_claim_disjoint_batches_in_order(run_store: Store) -> None:
    a, b = joined(run_store), joined(run_store, other_host())
    assert positions(ownership.claim(run_store, a, 4)) == [0, 1, 2, 3]
    assert positions(ownership.claim(run_store, b, 4)) == [4, 5, 6, 7]
    assert positions(ownership.claim(run_store, a, 4)) == [8, 9]
    assert ownership.claim(run_store, b, 4) == []
    assert ownership.held_elsewhere(run_store, a) == 4
    assert ownership.held_elsewhere(run_store, b) == 6


def test_concurrent_claims_never_hand_one_item_to_two_workers(run_store: Store) -> None:
    workers_ = [joined(run_store, other_host(f"host-{n}")) for n in range(4)]
    got: dict[str, list[int]] = {}

    def take(worker: Lease) -> None:
        mine: list[int] = []
        while batch := ownership.claim(run_store, worker, 1):
            mine += positions(batch)
        got[worker.token] = mine

    threads = [threading.Thread(target=take, args=(w,)) for w in workers_]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = sorted(p for mine in got.values() for p in mine)
    assert everything == list(range(len(PROMPTS)))


def test_finished_items_are_not_claimed(run_store: Store) -> None:
    worker = joined(run_store)
    with run_store.tx() as tx:
        tx.conn.execute(items.update().where(items.c.position < 8)
                        .values(stage=ItemStage.ADDED.value))
    assert positions(ownership.claim(run_store, worker, 10)) == [8, 9]


def test_a_live_workers_items_wait_for_its_expiry_then_are_taken_over(run_store: Store) -> None:
    gone, taker = joined(run_store, other_host("host-a")), joined(run_store, other_host("host-b"))
    ownership.claim(run_store, gone, 3)
    assert positions(ownership.claim(run_store, taker, 10)) == [3, 4, 5, 6, 7, 8, 9]
    assert ownership.claim(run_store, taker, 10) == []  # host-a is live: its items stay its own
    assert ownership.held_elsewhere(run_store, taker) == 3
    expire(run_store, gone)
    assert positions(ownership.claim(run_store, taker, 10)) == [0, 1, 2]
    with run_store.engine.connect() as conn:
        kinds = [k for k, in conn.execute(sa.select(events.c.kind).order_by(events.c.id))]
        left = conn.execute(sa.select(workers.c.host)).scalars().all()
    assert "worker_lapsed" in kinds and "claims_taken_over" in kinds
    assert left == ["host-b"]
    # The lapsed worker comes back: its renewal is refused, so it stops before any request.
    assert ownership.renew_worker(run_store, gone) is False
    assert gone.lost.is_set()


def test_a_worker_provably_dead_on_this_host_is_taken_over_at_once(run_store: Store) -> None:
    me = current_owner()
    dead = joined(run_store, Owner(me.host, me.boot_id, os.getpid(), "1"))  # start time differs
    ownership.claim(run_store, dead, 5)
    taker = joined(run_store)
    assert positions(ownership.claim(run_store, taker, 10)) == list(range(10))


def test_a_worker_that_renewed_in_time_keeps_its_items(run_store: Store) -> None:
    slow, other = joined(run_store, other_host("host-a")), joined(run_store, other_host("b"))
    ownership.claim(run_store, slow, 2)
    expire(run_store, slow)
    assert ownership.renew_worker(run_store, slow) is True  # back before anyone took its items
    assert positions(ownership.claim(run_store, other, 10)) == list(range(2, 10))


def test_retiring_hands_unfinished_items_back_at_once(run_store: Store) -> None:
    leaving, staying = joined(run_store, other_host("host-a")), joined(run_store)
    ownership.claim(run_store, leaving, 10)
    run_store.retire_worker(leaving)
    assert positions(ownership.claim(run_store, staying, 10)) == list(range(10))


def test_the_fence_refuses_a_write_to_an_item_another_worker_took(run_store: Store) -> None:
    first, second = joined(run_store, other_host("host-a")), joined(run_store, other_host("b"))
    item = ownership.claim(run_store, first, 1)[0]
    with ownership.claimed(run_store, item.id, first) as tx:
        tx.update_item(item, answer="mine")
    expire(run_store, first)
    assert positions(ownership.claim(run_store, second, 1)) == [0]
    with pytest.raises(LeaseLost), ownership.claimed(run_store, item.id, first) as tx:
        tx.update_item(item, answer="too late")
    assert first.lost.is_set()
    assert run_store.item(item.id).answer == "mine"


def _update(tx: Tx, item: Item) -> None:
    tx.update_item(item, answer="too late")


def _completion_then_update(tx: Tx, item: Item) -> None:
    tx.record_completion(item, "generate", 1, "ok")
    tx.update_item(item, answer="too late")


def _intent_only(tx: Tx, item: Item) -> None:
    tx.prepare_effect(item.run_id, f"trace:{item.position}", "trace", item.id, {"x": 1}, None)


def _nothing(tx: Tx, item: Item) -> None:
    pass


@pytest.mark.parametrize("writes", [_update, _completion_then_update, _intent_only, _nothing])
@pytest.mark.parametrize("taken", ["claimed_again", "worker_gone"])
def test_every_unit_on_an_item_checks_the_claim_whatever_it_writes_first(
        run_store: Store, writes: Callable[[Tx, Item], None], taken: str) -> None:
    """The claim is checked by the item's update when that comes first, else before the first
    statement, else at the end: a worker whose item was claimed by another, or which is no
    longer registered, writes nothing and learns it lost its items."""
    first = joined(run_store, other_host("host-a"))
    item = ownership.claim(run_store, first, 1)[0]
    if taken == "claimed_again":
        expire(run_store, first)
        assert positions(ownership.claim(run_store, joined(run_store), 1)) == [0]
    else:
        with run_store.tx() as tx:
            tx.conn.execute(workers.delete().where(workers.c.token == first.token))
    with pytest.raises(LeaseLost), ownership.claimed(run_store, item.id, first) as tx:
        writes(tx, item)
    assert first.lost.is_set()
    assert run_store.item(item.id).answer is None
    with run_store.reading() as tx:
        assert tx.conn.execute(sa.select(sa.func.count()).select_from(completions)).scalar() == 0
        assert tx.conn.execute(sa.select(sa.func.count()).select_from(effects)).scalar() == 0


def test_a_stale_stage_under_a_held_claim_is_stale_not_lost(run_store: Store) -> None:
    worker = joined(run_store)
    item = ownership.claim(run_store, worker, 1)[0]
    with ownership.claimed(run_store, item.id, worker) as tx:
        tx.update_item(item, ItemStage.GENERATED, answer="first")
    with pytest.raises(StaleStateError), ownership.claimed(run_store, item.id, worker) as tx:
        tx.update_item(item, ItemStage.GENERATED, answer="again")  # item as it was: PENDING
    assert not worker.lost.is_set()
    assert run_store.item(item.id).answer == "first"


def test_status_shows_each_worker_and_the_items_it_holds(run_store: Store) -> None:
    a, b = joined(run_store, other_host("host-a")), joined(run_store, other_host("host-b"))
    ownership.claim(run_store, a, 3)
    ownership.claim(run_store, b, 2)
    with run_store.tx() as tx:  # a finished item is no longer held
        tx.conn.execute(items.update().where(items.c.position == 0)
                        .values(stage=ItemStage.ADDED.value))
    summary = run_store.summary(run_store.run("r1"))
    assert [(w.owner.host, w.holding) for w in summary.workers] == [("host-a", 2), ("host-b", 2)]
    shown = status.detail(summary, utcnow())
    assert f"{a.owner.label()} holding 2 until" in shown
    assert [w["holding"] for w in status.to_json(summary)["workers"]] == [2, 2]
