"""Webhook notifications from real `python -m cftrunner` processes to a real HTTP receiver: each end of a
run once, failures retried by the next invocation, a kill between a run's end and its notification,
a refused key, one webhook per cycle, and never the API key."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from typing import Any

import pytest

from cftrunner import crashpoints
from cftrunner.sandbox import DEFAULT_API_KEY
from cftrunner.store import Store
from tests import receiver as receivers
from tests.acceptance import test_loop_cli as loop
from tests.acceptance import test_tick
from tests.acceptance.test_many_cycles import DOOMED_FAULT, entries
from tests.acceptance.test_tick import KILLED, Cron
from tests.receiver import HANG, Receiver

pytestmark = pytest.mark.slow

make_cron = test_tick.make_cron  # a sandbox, and a config file naming it and a state database
receiver = receivers.receiver
make_receiver = receivers.make_receiver
RESUMABLE = {"interval": '"1h"', "reuse_after": '"never"'}


def notify_section(receiver: Receiver, **keys: str) -> str:
    values = {"webhook_url": f'"{receiver.url}"', "retry_delay": '"0s"', "timeout": "0.5", **keys}
    return "[notify]\n" + "".join(f"{key} = {value}\n" for key, value in values.items())


def run(cron: Cron, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return cron.cli.run(*args, "--config", str(cron.config), env=env)


def notifications(cron: Cron) -> list[Any]:
    store = Store(cron.db_url)
    try:
        return store.notifications()
    finally:
        store.close()


def warnings(stderr: str, event: str) -> list[dict[str, Any]]:
    """The JSON log lines of `event` (stderr is not a terminal: JSON lines)."""
    found = []
    for line in stderr.splitlines():
        try:
            fields = json.loads(line)
        except ValueError:
            continue
        if isinstance(fields, dict) and fields.get("event") == event:
            found.append(fields)
    return found


def test_a_launched_run_is_notified_once_with_its_figures_and_never_the_key(
        make_cron: Callable[..., Cron], receiver: Receiver) -> None:
    cron = make_cron(RESUMABLE, notify_section(receiver))

    ticked = cron.tick()

    assert ticked.returncode == 0, ticked.stderr
    [shown] = cron.runs()
    [sent] = receiver.requests
    body = sent.json
    assert {key: body[key] for key in ("event", "run_id", "cycle", "state", "job_id")} == {
        "event": "LAUNCHED", "run_id": shown["run_id"], "cycle": shown["cycle"],
        "state": "LAUNCHED", "job_id": shown["job_id"]}
    assert body["items"] == shown["items"]
    assert body["mean_score"] == shown["gate"]["mean_score"]
    assert body["text"].startswith(f"cftrunner: cycle {shown['cycle']}: run {shown['run_id']} "
                                   f"LAUNCHED, job {shown['job_id']}; 3 of 3 items added")
    assert sent.path == "/services/T000/B000/s3cr3t-path"
    assert sent.headers["Content-Type"] == "application/json"
    assert DEFAULT_API_KEY not in sent.body.decode() + json.dumps(sent.headers)
    assert "s3cr3t-path" not in ticked.stderr  # the log names the webhook's host, not its path
    assert warnings(ticked.stderr, "notification_delivered")[0]["webhook"] == (
        f"http://127.0.0.1:{receiver.port}")
    # A resume of the finished run, and the next tick, send nothing again.
    assert run(cron, "resume", shown["run_id"]).returncode == 0
    assert cron.tick().returncode == 0
    assert len(receiver.requests) == 1
    assert DEFAULT_API_KEY not in json.dumps([d.payload for d in notifications(cron)])


def test_a_refused_delivery_is_sent_again_by_each_next_invocation_until_it_arrives(
        make_cron: Callable[..., Cron], receiver: Receiver) -> None:
    cron = make_cron(RESUMABLE, notify_section(receiver))
    receiver.answers = [500]

    first = cron.tick()  # the receiver fails: the run is not the worse for it
    [shown] = cron.runs()
    resume = ("resume", shown["run_id"])
    receiver.stop()
    refused = run(cron, *resume)  # nothing listens: the connection is refused
    receiver.start()
    receiver.answers = [HANG]
    hung = run(cron, *resume)  # no answer within notify.timeout
    arrived = run(cron, *resume)
    after = run(cron, *resume)

    for result in (first, refused, hung, arrived, after):
        assert result.returncode == 0, result.stderr
    assert shown["state"] == "LAUNCHED"
    said = [warnings(r.stderr, "notification_failed") for r in (first, refused, hung)]
    assert [[w["error"] for w in one] for one in said] == [
        ["HTTP 500"], ["could not connect"], ["no answer within 0.5 s"]]
    assert [w["attempt"] for one in said for w in one] == [1, 2, 3]
    assert [r.status for r in receiver.requests] == [500, None, 200]
    assert [b["run_id"] for b in receiver.delivered] == [shown["run_id"]]
    [delivery] = notifications(cron)
    assert (delivery.status, delivery.attempts) == ("delivered", 4)


def test_a_failed_delivery_waits_out_its_backoff(make_cron: Callable[..., Cron],
                                                 receiver: Receiver) -> None:
    cron = make_cron(RESUMABLE, notify_section(receiver, retry_delay='"1h"'))
    receiver.answers = [503]

    assert cron.tick().returncode == 0
    assert cron.tick().returncode == 0  # before the hour is up: not sent again

    assert [r.status for r in receiver.requests] == [503]
    [delivery] = notifications(cron)
    assert (delivery.status, delivery.attempts, delivery.last_error) == ("pending", 1, "HTTP 503")
    assert (delivery.next_at - delivery.created_at).total_seconds() > 3500


@pytest.mark.parametrize(("status", "give_up"), [(404, '"24h"'), (503, '"0s"')],
                         ids=["refused-for-good", "past-the-bound"])
def test_a_delivery_is_given_up_on_a_final_refusal_or_past_its_bound(
        make_cron: Callable[..., Cron], receiver: Receiver, status: int, give_up: str) -> None:
    cron = make_cron(RESUMABLE, notify_section(receiver, give_up=give_up))
    receiver.answers = [status]

    first = cron.tick()
    again = cron.tick()

    assert (first.returncode, again.returncode) == (0, 0)
    [given_up] = warnings(first.stderr, "notification_given_up")
    assert given_up["error"] == f"HTTP {status}"
    assert [r.status for r in receiver.requests] == [status]
    assert [d.status for d in notifications(cron)] == ["given_up"]


@pytest.mark.parametrize("point", crashpoints.NOTIFY_POINTS)
def test_killed_between_the_run_s_end_and_its_notification_the_next_invocation_sends_it_once(
        make_cron: Callable[..., Cron], receiver: Receiver, point: str) -> None:
    cron = make_cron(RESUMABLE, notify_section(receiver))

    killed = cron.tick(env={crashpoints.ENV: point})

    assert killed.returncode == KILLED, killed.stderr
    [shown] = cron.runs()
    assert shown["state"] == "LAUNCHED"
    assert receiver.requests == []
    assert cron.tick().returncode == 0  # nothing to do for the cycle: the notification goes
    assert cron.tick().returncode == 0
    assert [(b["event"], b["run_id"]) for b in receiver.delivered] == [("LAUNCHED", shown["run_id"])]
    assert len(receiver.requests) == 1
    assert cron.sandbox.counts()["jobs"] == 1


def test_a_cancelled_and_a_skipped_cycle_are_each_notified_once_with_their_reasons(
        make_cron: Callable[..., Cron], receiver: Receiver) -> None:
    cron = make_cron({**RESUMABLE, "interval": '"0.01s"'}, notify_section(receiver))
    assert cron.tick(env={crashpoints.ENV: "generate.after_store"}).returncode == KILLED
    [unfinished] = cron.runs()

    cancelled = run(cron, "cancel", unfinished["run_id"])
    skipped = cron.tick()  # every prompt was taken by the cancelled run

    assert cancelled.returncode == 0, cancelled.stderr
    assert skipped.returncode == 0, skipped.stderr
    [second, first] = cron.runs()
    assert [(b["event"], b["run_id"], b["reason"]) for b in receiver.delivered] == [
        ("CANCELLED", first["run_id"], "cancelled on request"),
        ("SKIPPED", second["run_id"], second["skip_reason"])]
    assert receiver.delivered[1]["text"] == (
        f"cftrunner: cycle {second['cycle']}: run {second['run_id']} SKIPPED: "
        f"{second['skip_reason']}")


def test_a_failed_run_is_notified_with_its_reason_and_its_exit_status_is_kept(
        make_cron: Callable[..., Cron], receiver: Receiver) -> None:
    cron = make_cron({**RESUMABLE, "model_alias": '"doomed-model"'}, notify_section(receiver))
    cron.sandbox.add_fault(DOOMED_FAULT)

    result = run(cron, "start")

    assert result.returncode == 1, result.stderr
    [shown] = cron.runs()
    [body] = receiver.delivered
    assert (body["event"], body["state"], body["reason"]) == (
        "FAILED", "FAILED", shown["failure_reason"])
    assert body["items"]["GEN_FAILED"] == 3 and body["mean_score"] is None


def test_a_refused_key_is_notified_once_before_a_run_and_once_for_a_run(
        make_cron: Callable[..., Cron], receiver: Receiver) -> None:
    cron = make_cron(RESUMABLE, notify_section(receiver))
    wrong = {"API_KEY": "sk-wrong-key-0123456789"}

    before = [cron.tick(env=wrong) for _ in range(2)]  # every tick of the interval is refused
    assert cron.tick(env={crashpoints.ENV: "generate.after_store"}).returncode == KILLED
    [unfinished] = cron.runs()
    during = [cron.tick(env=wrong) for _ in range(2)]
    fixed = cron.tick()

    assert [r.returncode for r in (*before, *during, fixed)] == [77, 77, 77, 77, 0]
    bodies = receiver.delivered
    assert [(b["event"], b["run_id"], b["state"]) for b in bodies] == [
        ("KEY_REJECTED", None, None),
        ("KEY_REJECTED", unfinished["run_id"], "CREATED"),
        ("LAUNCHED", unfinished["run_id"], "LAUNCHED")]
    assert "refused the key" in bodies[0]["reason"] and "no run was created" in bodies[0]["reason"]
    assert bodies[1]["text"].startswith(f"cftrunner: cycle {unfinished['cycle']}: the API refused "
                                        f"the key while run {unfinished['run_id']} was CREATED:")
    sent = "".join(r.body.decode() + json.dumps(r.headers) for r in receiver.requests)
    assert "sk-wrong-key-0123456789" not in sent and DEFAULT_API_KEY not in sent


def test_each_cycle_notifies_its_own_webhook(make_cron: Callable[..., Cron],
                                             make_receiver: Callable[[], Receiver]) -> None:
    shared, own = make_receiver(), make_receiver()
    cron = make_cron({"interval": '"1h"'}, notify_section(shared) + entries(
        {"name": '"first"'}, {"name": '"second"', "notify.webhook_url": f'"{own.url}"'}))

    result = cron.tick()

    assert result.returncode == 0, result.stderr
    assert [(b["cycle"], b["event"]) for b in shared.delivered] == [("first", "LAUNCHED")]
    assert [(b["cycle"], b["event"]) for b in own.delivered] == [("second", "LAUNCHED")]


def test_a_followed_run_notifies_each_state_it_reaches_once_in_order(
        make_cron: Callable[..., Cron], receiver: Receiver) -> None:
    cron = loop._cron(make_cron, 0.2)
    cron.config.write_text(cron.config.read_text() + notify_section(receiver))

    promoted = loop._tick_until(cron, "PROMOTED")
    loop._tick(cron)

    assert [(b["event"], b["run_id"]) for b in receiver.delivered] == [
        (state, promoted["run_id"]) for state in ("LAUNCHED", "TRAINED", "PROMOTED")]
    assert receiver.delivered[-1]["reason"] == promoted["promotion"]["reason"]
    assert len(receiver.requests) == 3


def test_a_webhook_that_never_answers_costs_one_timeout_per_invocation(
        make_cron: Callable[..., Cron], receiver: Receiver) -> None:
    """After the runs' end, one POST times out; the other notification for the same webhook
    waits for the next invocation, which sends both."""
    cron = make_cron({"interval": '"1h"'}, notify_section(receiver) + entries(
        {"name": '"first"'}, {"name": '"second"'}))
    receiver.answers = [HANG]

    hung = cron.tick()
    later = cron.tick()

    assert (hung.returncode, later.returncode) == (0, 0), hung.stderr
    assert [run["state"] for run in cron.runs()] == ["LAUNCHED", "LAUNCHED"]
    assert [r.status for r in receiver.requests] == [None, 200, 200]
    assert [b["cycle"] for b in receiver.delivered] == ["first", "second"]


def test_in_a_tick_of_several_cycles_each_refused_cycle_is_notified_once(
        make_cron: Callable[..., Cron], receiver: Receiver) -> None:
    cron = make_cron({"interval": '"1h"'}, notify_section(receiver) + entries(
        {"name": '"first"'}, {"name": '"second"'}))
    wrong = {"API_KEY": "sk-wrong-key-0123456789"}

    refused = [cron.tick(env=wrong) for _ in range(2)]

    assert [r.returncode for r in refused] == [77, 77]
    assert [(b["event"], b["cycle"], b["run_id"]) for b in receiver.delivered] == [
        ("KEY_REJECTED", "first", None), ("KEY_REJECTED", "second", None)]


def test_in_a_tick_of_several_cycles_a_refusal_names_the_run_its_cycle_was_driving(
        make_cron: Callable[..., Cron], receiver: Receiver) -> None:
    cron = make_cron({"interval": '"1h"'}, notify_section(receiver) + entries(
        {"name": '"first"'}, {"name": '"second"'}))
    assert cron.tick(env={crashpoints.ENV: "generate.after_store"}).returncode == KILLED
    [unfinished] = cron.runs()  # the first cycle's; the kill came before the second's turn

    refused = cron.tick(env={"API_KEY": "sk-wrong-key-0123456789"})

    assert refused.returncode == 77
    assert [(b["event"], b["cycle"], b["run_id"]) for b in receiver.delivered] == [
        ("KEY_REJECTED", "first", unfinished["run_id"]), ("KEY_REJECTED", "second", None)]
