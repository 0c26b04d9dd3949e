"""Group commit on a real SQLite file: the writes of threads that meet share one commit, each in
its own savepoint, and every thread goes on only once its writes are on disk."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from cftrunner.exceptions import LeaseLost
from cftrunner.holds import Lease
from cftrunner.ownership import acquire, current_owner
from cftrunner.records import LeaseInfo, Owner
from cftrunner.store import Store, dialect
from tests.conftest import make_run

pytestmark = pytest.mark.sqlite_only


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    made = Store(f"sqlite:///{tmp_path}/group.db")
    made.create_run(make_run("r1"), ["p0", "p1"])
    yield made
    made.close()


def commits(store: Store) -> list[int]:
    """A list that counts the commits of write transactions from now on (reads commit too)."""
    seen: list[int] = []

    def commit(conn: sa.Connection) -> None:
        if not conn.get_execution_options().get(dialect.READ_ONLY, False):
            seen.append(1)

    sa.event.listen(store.write_engine, "commit", commit)
    return seen


def events(store: Store, kind: str) -> list[str]:
    return [e.data["who"] for e in store.events("r1") if e.kind == kind]


def together(*works: Callable[[], None], first_holds: float = 0.3) -> list[BaseException]:
    """Run `works` in threads: the first starts and, while its writes are under way, the others
    start. The errors they raised."""
    errors: list[BaseException] = []

    def run(work: Callable[[], None]) -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001 - collected for the test to look at
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(w,)) for w in works]
    threads[0].start()
    time.sleep(first_holds / 3)
    for thread in threads[1:]:
        thread.start()
    for thread in threads:
        thread.join(30)
    return errors


def writer(store: Store, who: str, hold: float = 0.0, fail: bool = False,
           durable: bool = True, seen_after: list[str] | None = None) -> Callable[[], None]:
    def work() -> None:
        with store.tx(durable=durable) as tx:
            tx.event("r1", "wrote", who=who)
            time.sleep(hold)
            if fail:
                raise RuntimeError(f"{who} failed")
        if seen_after is not None:  # read on another connection: committed by now
            seen_after.extend(w for w in events(store, "wrote") if w == who)
    return work


def test_the_writes_of_threads_that_meet_share_one_commit(store: Store) -> None:
    counted = commits(store)
    seen: list[str] = []
    errors = together(writer(store, "a", hold=0.3, seen_after=seen),
                      *(writer(store, w, seen_after=seen) for w in "bcdefg"))
    assert errors == []
    assert sorted(events(store, "wrote")) == list("abcdefg")
    assert len(counted) == 1
    assert sorted(seen) == list("abcdefg"), "a thread went on before its writes were committed"


def test_a_thread_whose_writes_fail_loses_only_its_own(store: Store) -> None:
    counted = commits(store)
    errors = together(writer(store, "a", hold=0.3), writer(store, "b", fail=True),
                      writer(store, "c"))
    assert [str(e) for e in errors] == ["b failed"]
    assert sorted(events(store, "wrote")) == ["a", "c"]
    assert len(counted) == 1


def test_a_lost_fence_in_a_batch_refuses_only_that_write(store: Store) -> None:
    def never(_held: LeaseInfo) -> bool:
        return False

    loser = Lease("r1", current_owner(), 0.1)
    acquire(store, loser, never)
    time.sleep(0.2)
    acquire(store, Lease("r1", Owner("other", "b", 2, "2"), 30), never)

    def fenced() -> None:
        with store.tx(fence=loser) as tx:
            tx.event("r1", "wrote", who="loser")

    errors = together(writer(store, "a", hold=0.3), fenced, writer(store, "c"))
    assert [type(e) for e in errors] == [LeaseLost]
    assert sorted(events(store, "wrote")) == ["a", "c"]


def test_writes_that_need_not_be_durable_never_wait_in_a_durable_commit(store: Store) -> None:
    levels: list[int] = []

    def before(conn: sa.Connection, _cursor: object, statement: str, parameters: Any,
               _context: object, many: bool) -> None:
        if statement.startswith("INSERT INTO events"):  # the events of a batch, together
            driver = conn.connection.driver_connection
            level = driver.execute("PRAGMA synchronous").fetchone()[0]  # type: ignore[union-attr]
            levels.extend([level] * (len(parameters) if many else 1))

    sa.event.listen(store.write_engine, "before_cursor_execute", before)
    counted = commits(store)
    errors = together(writer(store, "a", hold=0.3), writer(store, "b", durable=False),
                      writer(store, "c"))
    assert errors == []
    assert sorted(events(store, "wrote")) == ["a", "b", "c"]
    assert sorted(levels) == [1, 2, 2]  # b at NORMAL, a and c at FULL
    assert len(counted) == 2


def test_with_a_commit_window_a_write_waits_for_one_that_comes_soon_after(store: Store) -> None:
    counted = commits(store)
    store.commit_window = 3.0
    errors = together(writer(store, "a"), writer(store, "b"), first_holds=0.6)
    assert errors == []
    assert len(counted) == 1
    store.commit_window = 0.0
    errors = together(writer(store, "c"), writer(store, "d"), first_holds=0.6)
    assert errors == []
    assert len(counted) == 3  # without a window each went alone


def test_a_write_transaction_holds_the_write_lock_before_it_writes(store: Store) -> None:
    """Begun IMMEDIATE, as its own engine begins it (dialect.begin_immediate): another process
    queues for the lock from the start, and the transaction never has to upgrade a read lock,
    which SQLite may refuse without waiting."""
    other = sqlite3.connect(store.engine.url.database or "", timeout=0, isolation_level=None)
    try:
        with store.tx(), pytest.raises(sqlite3.OperationalError, match="database is locked"):
            other.execute("BEGIN IMMEDIATE")
        other.execute("BEGIN IMMEDIATE")  # once it committed
        other.execute("ROLLBACK")
    finally:
        other.close()
