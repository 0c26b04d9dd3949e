"""Requests in flight: `concurrency` slots shared by a quarter more items, and stops between slots."""

from __future__ import annotations

import signal
import threading
import time
from collections.abc import Callable

import pytest
from structlog.testing import capture_logs

from cftrunner.client import PremClient
from cftrunner.config.settings import Settings
from cftrunner.driver import Driver
from cftrunner.exceptions import Interrupted
from cftrunner.records import EffectStatus
from cftrunner.sandbox import DEFAULT_API_KEY, DEFAULT_PROJECT_ID, FaultRule, Sandbox
from cftrunner.shutdown import Cancelled
from cftrunner.states import RunState
from cftrunner.store import Store
from tests.conftest import Harness, assert_exactly_once, requests_sent


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def send_together(client: PremClient, threads: int) -> None:
    """`threads` threads each read the project once, all at the same time."""
    sent = [threading.Thread(target=client.project, args=(DEFAULT_PROJECT_ID,))
            for _ in range(threads)]
    for thread in sent:
        thread.start()
    for thread in sent:
        thread.join()


def test_the_client_keeps_at_most_in_flight_requests_out_however_many_threads_send(
        make_sandbox: Callable[..., Sandbox]) -> None:
    sandbox = make_sandbox(latency=0.2)
    client = PremClient(sandbox.url, DEFAULT_API_KEY, connections=12, in_flight=3)
    send_together(client, 12)
    client.close()
    assert sandbox.counts()["requests"]["project"] == 12
    assert sandbox.counts()["most_in_flight"] == 3


def test_without_in_flight_the_client_sends_as_many_at_once_as_threads_ask(
        make_sandbox: Callable[..., Sandbox]) -> None:
    """The sandbox's count of requests in flight sees past 3, so the test above can fail."""
    sandbox = make_sandbox(latency=0.2)
    client = PremClient(sandbox.url, DEFAULT_API_KEY, connections=12)
    send_together(client, 12)
    client.close()
    assert sandbox.counts()["most_in_flight"] > 3


def test_a_request_given_its_slot_after_a_stop_is_not_sent(sandbox: Sandbox) -> None:
    """What `before_send` raises once the slot comes stops the request before it goes out, and
    the slot is given back."""
    stopped = threading.Event()

    def before_send() -> None:
        if stopped.is_set():
            raise Interrupted(signal.SIGTERM, "stopped")

    client = PremClient(sandbox.url, DEFAULT_API_KEY, in_flight=1, before_send=before_send)
    sandbox.add_fault(FaultRule(route="project", kind="hold"))
    holding = threading.Thread(target=client.project, args=(DEFAULT_PROJECT_ID,))
    holding.start()
    wait_until(lambda: sandbox.counts()["most_in_flight"] == 1, "the slot taken")
    waiting: list[BaseException] = []

    def snapshot() -> None:
        try:
            client.create_snapshot(sandbox.dataset_id(), 80)
        except Interrupted as exc:
            waiting.append(exc)

    waiter = threading.Thread(target=snapshot)
    waiter.start()
    stopped.set()
    sandbox.release_holds()
    holding.join()
    waiter.join()

    assert len(waiting) == 1
    assert "snapshot_create" not in sandbox.counts()["requests"]
    stopped.clear()
    assert client.project(DEFAULT_PROJECT_ID)  # the slot was given back
    client.close()


def test_a_quarter_more_items_than_requests_in_flight_are_worked_on_at_once(store: Store) -> None:
    runner = Driver(store, Settings(concurrency=8))
    lock = threading.Lock()
    now = most = 0

    def work(_item: int) -> None:
        nonlocal now, most
        with lock:
            now += 1
            most = max(most, now)
        time.sleep(0.02)
        with lock:
            now -= 1

    runner.for_each(range(60), work)
    assert (Settings(concurrency=8).item_workers, most) == (10, 10)
    assert [Settings(concurrency=c).item_workers for c in (1, 2, 4, 16)] == [1, 3, 5, 20]


@pytest.mark.parametrize("concurrency", [1, 4])
def test_a_cycle_never_has_more_than_concurrency_requests_in_flight(
        make_harness: Callable[..., Harness], make_sandbox: Callable[..., Sandbox],
        concurrency: int) -> None:
    sandbox = make_sandbox(latency=0.02)
    harness = make_harness(sandbox, concurrency=concurrency)
    prompts = [f"slot prompt {i}" for i in range(12)]
    run = harness.runner.drive(harness.start(prompts))
    assert run.state is RunState.LAUNCHED
    assert_exactly_once(sandbox, len(prompts))
    assert sandbox.counts()["most_in_flight"] == concurrency


def test_a_cycle_reuses_one_pooled_connection_per_request_in_flight(
        make_harness: Callable[..., Harness], make_sandbox: Callable[..., Sandbox]) -> None:
    """At concurrency 16, past the pool's floor of 10, no connection is opened twice over: with
    a pool of 10, the connections past it are dropped once answered and opened again (about 20
    here, against over 200 requests)."""
    sandbox = make_sandbox(latency=0.02)
    harness = make_harness(sandbox, concurrency=16)
    prompts = [f"pooled prompt {i}" for i in range(64)]
    run = harness.runner.drive(harness.start(prompts))
    assert run.state is RunState.LAUNCHED
    assert requests_sent(sandbox) > 4 * len(prompts)
    assert sandbox.counts()["connections"] <= 16


def test_a_stop_leaves_every_intent_not_yet_sent_unsent_and_resume_sends_it_without_reconciling(
        make_harness: Callable[..., Harness], sandbox: Sandbox) -> None:
    """Traces held at the sandbox when the stop comes finish; the additions whose intents their
    outcomes stored, and any request still waiting for a slot, are never sent."""
    harness = make_harness(sandbox, concurrency=4, reconcile_settle=30.0)
    prompts = [f"stopped prompt {i}" for i in range(6)]
    run_id = harness.start(prompts)
    sandbox.add_fault(FaultRule(route="trace_create", kind="hold"))
    failures: list[BaseException] = []

    def drive() -> None:
        try:
            harness.runner.drive(run_id)
        except BaseException as exc:  # noqa: BLE001 - checked in the test's thread
            failures.append(exc)

    driver = threading.Thread(target=drive)
    driver.start()
    wait_until(lambda: sandbox.counts()["requests"].get("trace_create", 0) == 4,
               "every slot held by a trace")
    harness.runner.stop.request(signal.SIGTERM)
    sent = requests_sent(sandbox)
    sandbox.release_holds()
    driver.join(30)

    assert len(failures) == 1 and isinstance(failures[0], Interrupted)
    assert requests_sent(sandbox) == sent, "a request went out after the stop"
    effects = harness.store.effects(run_id)
    assert [e.status for e in effects if e.kind == "trace"].count(EffectStatus.DONE) == 4
    adds = [e for e in effects if e.kind == "add"]
    assert len(adds) == 4
    assert all(e.status is EffectStatus.UNSENT and e.error == "stopped before sending"
               for e in adds)
    assert all(e.status is not EffectStatus.PREPARED for e in effects)

    with capture_logs() as logs:
        run = Driver(harness.store, harness.settings).drive(run_id)
    assert run.state is RunState.LAUNCHED
    assert_exactly_once(sandbox, len(prompts))
    assert not [e for e in logs if e["event"] == "reconciled"]


def test_a_cancel_noticed_before_a_carried_intent_is_sent_leaves_it_unsent_not_in_doubt(
        make_harness: Callable[..., Harness], sandbox: Sandbox) -> None:
    """The trace's outcome stores the addition's intent; a cancel noticed before that addition
    goes out ends the run with the intent unsent, not in doubt."""
    harness = make_harness(sandbox, concurrency=1)
    harness.runner.cancel_check = 0.0  # read at every checkpoint: no once-a-second look to wait out
    run_id = harness.start(["cancelled prompt 0", "cancelled prompt 1"])
    sandbox.add_fault(FaultRule(route="trace_create", kind="hold"))
    finished: list[object] = []
    driver = threading.Thread(target=lambda: finished.append(harness.runner.drive(run_id)))
    driver.start()
    wait_until(lambda: sandbox.counts()["requests"].get("trace_create", 0) == 1,
               "the first trace held")
    assert harness.store.request_cancel(run_id)
    sandbox.release_holds()
    driver.join(30)

    assert len(finished) == 1
    assert harness.store.run(run_id).state is RunState.CANCELLED
    effects = harness.store.effects(run_id)
    assert [(e.kind, e.status) for e in effects] == [
        ("trace", EffectStatus.DONE), ("add", EffectStatus.UNSENT)]
    assert effects[1].error == "stopped before sending"
    assert "add_to_dataset" not in sandbox.counts()["requests"]


def test_once_one_thread_sees_a_cancel_every_checkpoint_of_the_run_stops_not_only_its_own(
        harness: Harness) -> None:
    """The cancel is read from the database at most once a second; a thread whose checkpoint
    falls inside that second, after another thread saw the cancel, stops too instead of sending."""
    run_id = harness.start()
    driver = harness.runner
    driver.ownership.take(run_id)
    driver.cancel_check = 3600.0  # only the first checkpoint reads the database
    assert harness.store.request_cancel(run_id)
    seen: list[str] = []
    for _ in range(2):  # the first reads the cancel; the second, inside the hour, must stop too
        try:
            driver.checkpoint()
        except Cancelled:
            seen.append("cancelled")
    driver.ownership.release()
    assert seen == ["cancelled", "cancelled"]
