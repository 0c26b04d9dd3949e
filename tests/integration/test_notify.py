"""Notifications in-process, on a real state database and a real HTTP receiver: what is recorded, what
is sent, the key taken out, one sender per delivery, and the runs that were there before revision 0006."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta

import pytest
import sqlalchemy as sa
from alembic import command

from cftrunner.clock import utcnow
from cftrunner.config.cycle import Cycle
from cftrunner.config.settings import Settings
from cftrunner.service import notify
from cftrunner.states import RunState
from cftrunner.store import Store, migrations
from cftrunner.store.deliveries import BEFORE, DELIVERED, NO_WEBHOOK, PENDING
from tests import receiver as receivers
from tests.conftest import connected, make_run
from tests.receiver import Receiver

receiver = receivers.receiver
KEY = "sk-live-0123456789abcdef"
CYCLE = "p/m"


def settings(db_url: str, **overrides: object) -> Settings:
    return replace(Settings(db_url=db_url, api_key=KEY, notify_retry_delay=0.0), **overrides)


def ended(store: Store, run_id: str, *path: RunState, **fields: object) -> None:
    """Store a run of CYCLE and take it through `path`, the last step with `fields`."""
    store.create_run(replace(make_run(run_id), cycle=CYCLE), ["a prompt"])
    current = RunState.CREATED
    for i, target in enumerate(path):
        with store.tx() as tx:
            tx.transition_run(run_id, current, target, **(fields if i == len(path) - 1 else {}))
        current = target


def cycles(url: str | None) -> tuple[Cycle, ...]:
    return (Cycle(project_id="p", model_alias="m", notify_webhook_url=url),)


def test_the_key_and_any_bearer_token_are_taken_out_before_anything_is_stored_or_sent(
        store: Store, receiver: Receiver, db_url: str) -> None:
    ended(store, "r1", RunState.FAILED,
          failure_reason=f"the API said: key {KEY} refused; Authorization: Bearer other-token-9")

    notify.record(store, settings(db_url), cycles(receiver.url))
    notify.deliver(store, settings(db_url))

    [sent] = receiver.requests
    assert KEY not in sent.body.decode() and "other-token-9" not in sent.body.decode()
    assert KEY not in json.dumps(sent.headers)
    assert sent.json["reason"] == ("the API said: key [redacted] refused; Authorization: Bearer "
                                   "[redacted]")
    assert "[redacted]" in sent.json["text"]
    stored = json.dumps([d.payload for d in store.notifications()])
    assert KEY not in stored and "other-token-9" not in stored


def test_every_state_a_run_passed_through_is_recorded_once_in_order(
        store: Store, receiver: Receiver, db_url: str) -> None:
    ended(store, "r1", RunState.GENERATED, RunState.JUDGED, RunState.TRACED, RunState.ADDED,
          RunState.SNAPSHOT, RunState.RECS_READY, RunState.LAUNCHED, RunState.TRAINED)

    assert notify.record(store, settings(db_url), cycles(receiver.url)) == 2
    assert notify.record(store, settings(db_url), cycles(receiver.url)) == 0
    notify.deliver(store, settings(db_url))
    notify.deliver(store, settings(db_url))

    assert [body["event"] for body in receiver.delivered] == ["LAUNCHED", "TRAINED"]
    assert [d.status for d in store.notifications("r1")] == [DELIVERED, DELIVERED]


def test_a_run_of_a_cycle_without_a_webhook_is_recorded_and_never_sent(
        store: Store, receiver: Receiver, db_url: str) -> None:
    ended(store, "r1", RunState.CANCELLED, failure_reason="cancelled on request")

    notify.record(store, settings(db_url), cycles(None))
    # A webhook set later does not announce what ended before it.
    notify.record(store, settings(db_url), cycles(receiver.url))
    notify.deliver(store, settings(db_url))

    assert [(d.event, d.status) for d in store.notifications("r1")] == [("CANCELLED", NO_WEBHOOK)]
    assert receiver.requests == []


def test_of_two_senders_of_one_delivery_only_one_sends_it(
        store: Store, receiver: Receiver, db_url: str) -> None:
    ended(store, "r1", RunState.CANCELLED)
    notify.record(store, settings(db_url), cycles(receiver.url))
    [due] = store.due_deliveries(utcnow())
    later = utcnow() + timedelta(hours=1)

    won = []
    barrier = threading.Barrier(4)

    def claim() -> None:
        barrier.wait()
        won.append(store.claim_delivery(due, later))

    threads = [threading.Thread(target=claim) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert sorted(won) == [False, False, False, True]
    [after] = store.notifications("r1")
    assert (after.status, after.attempts) == (PENDING, 1)
    assert store.due_deliveries(utcnow()) == []  # not due again before its retry time


def test_a_rejection_before_any_run_is_recorded_once_per_run_of_the_cycle(
        store: Store, receiver: Receiver, db_url: str) -> None:
    refused = notify.Rejection(f"the API refused the key {KEY}; no run was created", cycle=CYCLE)

    notify.record(store, settings(db_url), cycles(receiver.url), [refused])
    notify.record(store, settings(db_url), cycles(receiver.url), [refused])  # the next tick
    ended(store, "r1", RunState.CANCELLED)  # the key was fixed: a run was made
    notify.record(store, settings(db_url), cycles(receiver.url), [refused])  # refused again
    notify.deliver(store, settings(db_url))

    bodies = receiver.delivered
    assert [(b["event"], b["run_id"], b["cycle"]) for b in bodies] == [
        ("KEY_REJECTED", None, CYCLE), ("CANCELLED", "r1", CYCLE), ("KEY_REJECTED", None, CYCLE)]
    assert KEY not in json.dumps(bodies)


def test_upgrading_to_0006_marks_what_runs_reached_before_so_nothing_old_is_announced(
        make_db_url: Callable[..., str], receiver: Receiver) -> None:
    db_url = make_db_url("old")
    with connected(db_url) as conn:
        command.upgrade(migrations.alembic_config(conn), "0005")
    now = utcnow().replace(tzinfo=None)
    runs = sa.table("runs", *(sa.column(c) for c in (
        "id", "project_id", "model_alias", "judge_model", "split_percentage", "prompts_source",
        "job_name", "state", "created_at", "updated_at", "state_changed_at", "cycle",
        "cancel_requested")))
    events = sa.table("events", sa.column("run_id"), sa.column("at"), sa.column("kind"),
                      sa.column("data", sa.JSON))
    with connected(db_url) as conn:
        for run_id, state in (("old", "TRAINED"), ("busy", "JUDGED")):
            conn.execute(runs.insert().values(
                id=run_id, project_id="p", model_alias="m", judge_model="j", split_percentage=80,
                prompts_source="f", job_name=f"job-{run_id}", state=state, created_at=now,
                updated_at=now, state_changed_at=now, cycle=CYCLE, cancel_requested=False))
        conn.execute(events.insert(), [
            {"run_id": "old", "at": now, "kind": "run_transitioned",
             "data": {"state": "LAUNCHED", "from_state": "RECS_READY"}},
            {"run_id": "old", "at": now, "kind": "run_transitioned",
             "data": {"state": "TRAINED", "from_state": "LAUNCHED"}}])
    with connected(db_url) as conn:
        command.upgrade(migrations.alembic_config(conn), "0006")

    store = Store(db_url)
    try:
        assert [(d.run_id, d.event, d.status) for d in store.notifications()] == [
            ("old", "LAUNCHED", BEFORE), ("old", "TRAINED", BEFORE)]
        notify.record(store, settings(db_url), cycles(receiver.url))
        notify.deliver(store, settings(db_url))
        assert receiver.requests == []
        with store.tx() as tx:  # the run that was under way ends after the upgrade
            tx.transition_run("busy", RunState.JUDGED, RunState.FAILED, failure_reason="x")
        notify.record(store, settings(db_url), cycles(receiver.url))
        notify.deliver(store, settings(db_url))
    finally:
        store.close()
    assert [(b["run_id"], b["event"]) for b in receiver.delivered] == [("busy", "FAILED")]


@pytest.mark.parametrize(("name", "expected"), [
    ("p/m", "http://a/"), ("p/gone", None), (None, None)])
def test_a_run_goes_to_its_cycle_s_webhook_or_to_the_one_every_cycle_shares(
        name: str | None, expected: str | None) -> None:
    two = (Cycle(project_id="p", model_alias="m", notify_webhook_url="http://a/"),
           Cycle(project_id="p", model_alias="n", notify_webhook_url="http://b/"))
    assert notify.webhook_for(two, name) == expected
    shared = tuple(replace(cycle, notify_webhook_url="http://s/") for cycle in two)
    assert notify.webhook_for(shared, name) == "http://s/"
