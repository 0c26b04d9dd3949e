"""Leases on a real SQLite file: who may take a run, and what a process that lost it can do."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest

from cftrunner import ownership
from cftrunner.exceptions import LeaseLost, RunBusy
from cftrunner.holds import Lease
from cftrunner.limiter import RateLimiter
from cftrunner.ownership import current_owner, process_start, provably_dead
from cftrunner.records import LeaseInfo, Owner
from cftrunner.sandbox import DEFAULT_PROJECT_ID, Sandbox
from cftrunner.states import ItemStage, RunState
from cftrunner.store import Store
from tests.conftest import Harness, make_run, requests_sent


@pytest.fixture
def store(db_url: str) -> Iterator[Store]:
    s = Store(db_url)
    s.create_run(make_run(), ["a", "b"])
    yield s
    s.close()


def never(_held: LeaseInfo) -> bool:
    return False


def exited_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_an_owner_on_another_host_is_never_proven_dead() -> None:
    me = current_owner()
    assert not provably_dead(replace(me, host="elsewhere", pid=exited_pid()), me)


def test_an_owner_from_before_a_reboot_is_dead() -> None:
    me = current_owner()
    assert provably_dead(replace(me, boot_id="an-earlier-boot"), me)


def test_an_exited_owner_on_this_host_is_dead() -> None:
    me = current_owner()
    pid = exited_pid()
    assert process_start(pid) == ""
    assert provably_dead(replace(me, pid=pid, started="12345"), me)


def test_a_reused_pid_does_not_keep_a_dead_owner_alive() -> None:
    me = current_owner()
    assert provably_dead(replace(me, started=str(int(me.started) + 1)), me)


def test_a_live_owner_is_not_dead() -> None:
    me = current_owner()
    assert not provably_dead(me, me)


def test_a_free_run_is_taken(store: Store) -> None:
    lease = Lease("r1", current_owner(), 30)
    run = ownership.acquire(store, lease, never)
    assert run.lease is not None and run.lease.token == lease.token
    assert lease.locally_valid()


def test_a_live_lease_makes_the_run_busy_naming_its_owner(store: Store) -> None:
    first = Lease("r1", Owner("host-a", "boot", 4242, "1"), 30)
    ownership.acquire(store, first, never)
    with pytest.raises(RunBusy, match="host-a pid 4242 until"):
        ownership.acquire(store, Lease("r1", current_owner(), 30), never)


def test_an_expired_lease_is_taken_over(store: Store) -> None:
    ownership.acquire(store, Lease("r1", Owner("host-a", "boot", 1, "1"), 0.2), never)
    time.sleep(0.3)
    taker = Lease("r1", current_owner(), 30)
    run = ownership.acquire(store, taker, never)
    assert run.lease is not None and run.lease.token == taker.token
    assert store.events("r1")[-1].data["taken_from"] == "host-a pid 1"


def test_a_provably_dead_owner_is_taken_over_before_expiry(store: Store) -> None:
    ownership.acquire(store, Lease("r1", Owner("host-a", "boot", 1, "1"), 300), never)
    taker = Lease("r1", current_owner(), 30)
    ownership.acquire(store, taker, lambda held: held.owner.host == "host-a")
    assert store.run("r1").lease.token == taker.token  # type: ignore[union-attr]


def test_a_process_that_lost_its_lease_cannot_write(store: Store) -> None:
    loser = Lease("r1", current_owner(), 0.1)
    ownership.acquire(store, loser, never)
    time.sleep(0.2)
    ownership.acquire(store, Lease("r1", Owner("other", "b", 2, "2"), 30), never)
    item = store.items("r1")[0]
    with pytest.raises(LeaseLost), ownership.fenced(store, loser) as tx:
        tx.update_item(item, ItemStage.GENERATED, answer="late")
    assert store.items("r1")[0].answer is None and loser.lost.is_set()


def test_a_lost_lease_cannot_be_renewed(store: Store) -> None:
    loser = Lease("r1", current_owner(), 0.1)
    ownership.acquire(store, loser, never)
    time.sleep(0.2)
    ownership.acquire(store, Lease("r1", Owner("other", "b", 2, "2"), 30), never)
    assert ownership.renew(store, loser) is False
    assert not loser.locally_valid()


def test_renewal_extends_the_expiry(store: Store) -> None:
    lease = Lease("r1", current_owner(), 30)
    ownership.acquire(store, lease, never)
    before = store.run("r1").lease.expires_at  # type: ignore[union-attr]
    time.sleep(0.05)
    assert ownership.renew(store, lease)
    assert store.run("r1").lease.expires_at > before  # type: ignore[union-attr]


def test_a_released_lease_frees_the_run(store: Store) -> None:
    lease = Lease("r1", current_owner(), 30)
    ownership.acquire(store, lease, never)
    store.release_lease(lease)
    assert store.run("r1").lease is None
    ownership.acquire(store, Lease("r1", Owner("other", "b", 2, "2"), 30), never)


def test_a_fenced_transition_by_the_holder_succeeds(store: Store) -> None:
    lease = Lease("r1", current_owner(), 30)
    ownership.acquire(store, lease, never)
    with ownership.fenced(store, lease) as tx:
        tx.transition_run("r1", RunState.CREATED, RunState.CANCELLED, failure_reason="x")
    assert store.run("r1").state is RunState.CANCELLED


# The check just before a send: a lease that lapses before it, and is taken over, sends nothing.
SHORT_LEASE = 0.5  # seconds; valid locally for 0.4 of them


def taken_over(harness: Harness, run_id: str) -> None:
    """Another process takes the run, once its lease has lapsed."""
    time.sleep(SHORT_LEASE + 0.1)
    ownership.acquire(harness.store, Lease(run_id, Owner("other-host", "b", 2, "2"), 30), never)


def test_a_lease_lost_while_a_request_waits_for_its_turn_stops_it_unsent(
        make_harness: Callable[..., Harness], sandbox: Sandbox) -> None:
    harness = make_harness(sandbox, lease_seconds=SHORT_LEASE)
    run_id = harness.start()

    def paused(_seconds: float) -> None:  # the rate limiter's pause, long enough to lose the run
        taken_over(harness, run_id)

    harness.runner.client.limiter = RateLimiter(sleep=paused)
    harness.runner.client.limiter.pushed_back(0.01)
    with pytest.raises(LeaseLost):
        harness.runner.client.project(DEFAULT_PROJECT_ID)
    assert requests_sent(sandbox) == 0


def test_a_lease_lost_while_the_cancel_check_reads_stops_the_request_unsent(
        make_harness: Callable[..., Harness], sandbox: Sandbox,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The cancel check reads the database just before a send; however long that read takes,
    the lease is checked after it."""
    harness = make_harness(sandbox, lease_seconds=SHORT_LEASE)
    run_id = harness.start()
    read = harness.store.cancel_requested

    def slow_read(of: str) -> bool:  # a read that waits, as for a pooled connection
        taken_over(harness, run_id)
        return read(of)

    monkeypatch.setattr(harness.store, "cancel_requested", slow_read)
    with pytest.raises(LeaseLost):
        harness.runner.client.project(DEFAULT_PROJECT_ID)
    assert requests_sent(sandbox) == 0
