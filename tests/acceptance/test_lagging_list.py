"""Whole processes, killed at random, against a trace list that shows traces late: never twice."""

from __future__ import annotations

import random
from collections.abc import Callable
from pathlib import Path

import pytest

from cftrunner.sandbox import FaultRule, Sandbox
from tests.acceptance.test_crash import KILLED, RUN_ID, after_requests, run_until, stored_state, tail
from tests.conftest import Cli, assert_exactly_once, shown_status, write_prompts

pytestmark = pytest.mark.slow

LAG = 1.0  # seconds; twenty times the settle time the processes are given
PROMPTS = [f"Is message {n} safe? 'the chain slipped off my bike again'" for n in range(10)]
EXIT_STOPPED = 3
EXIT_DECIDE = 5
MAX_LIVES = 30
# Long enough for one process to measure the list's delays and wait LAG_MARGIN times them.
PATIENT = {"CFTRUNNER_RECONCILE_WAIT": "10"}


def lagging(make_sandbox: Callable[..., Sandbox], uneven: bool) -> Sandbox:
    """A sandbox whose trace list lags, losing some answers to traces and additions after
    acting on them."""
    sandbox = make_sandbox(list_lag=LAG, list_lag_uneven=uneven, latency=0.01)
    sandbox.add_fault(FaultRule(route="trace_create", kind="drop", every=3))
    sandbox.add_fault(FaultRule(route="add_to_dataset", kind="drop", every=4))
    return sandbox


@pytest.mark.parametrize("uneven", [False, True], ids=["lag", "uneven-lag"])
def test_lost_answers_against_a_lagging_list_are_never_sent_twice(
        make_sandbox: Callable[..., Sandbox], db_url: str, tmp_path: Path, uneven: bool) -> None:
    sandbox = lagging(make_sandbox, uneven)
    cli = Cli(sandbox, db_url, tmp_path)
    write_prompts(cli.prompts, PROMPTS)

    ended = cli.run(*cli.start_args(RUN_ID), env=PATIENT)

    assert ended.returncode == 0, tail(ended.stderr)
    assert sandbox.counts()["faults_fired"]["drop"] >= 3
    assert_launched_once(cli, sandbox, len(PROMPTS))


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("uneven", [False, True], ids=["lag", "uneven-lag"])
def test_random_kills_and_lost_answers_against_a_lagging_list_never_duplicate(
        make_sandbox: Callable[..., Sandbox], db_url: str, tmp_path: Path, uneven: bool,
        seed: int) -> None:
    """`start`, then `resume` as cron would, each killed after a random number of requests, or
    stopping by itself while the list has not caught up, until one finishes."""
    sandbox = lagging(make_sandbox, uneven)
    cli = Cli(sandbox, db_url, tmp_path)
    write_prompts(cli.prompts, PROMPTS)
    rand = random.Random(seed)
    endings: list[int] = []
    for _ in range(MAX_LIVES):
        args = cli.start_args(RUN_ID) if stored_state(db_url) is None else ["resume", RUN_ID]
        killing = len([e for e in endings if e == KILLED]) < 3
        ended = run_until(cli, args, after_requests(sandbox, rand.randint(3, 40)) if killing
                          else (lambda: False), env=PATIENT)
        if ended.returncode == 0:
            break
        assert ended.returncode in (KILLED, EXIT_STOPPED), tail(ended.stderr)
        endings.append(ended.returncode)
    else:
        pytest.fail(f"not launched after {MAX_LIVES} processes: {endings}; the last one's "
                    f"stderr ends: {tail(ended.stderr)}")

    assert KILLED in endings
    assert_launched_once(cli, sandbox, len(PROMPTS))


def test_an_outcome_never_told_is_exit_5_until_a_person_settles_it(
        sandbox: Sandbox, cli: Cli) -> None:
    """The very last request is lost and the list never shows it: no later write can prove
    anything. Past the give-up bound every invocation says what to run, and sends nothing."""
    write_prompts(cli.prompts, PROMPTS[:1])
    sandbox.add_fault(FaultRule(route="trace_create", kind="drop", times=1))
    sandbox.set_list_lag(3600)
    give_up = {"CFTRUNNER_RECONCILE_GIVE_UP": "0", "CFTRUNNER_MARKER_TRACES": "false"}

    first = cli.run(*cli.start_args(RUN_ID), env=give_up)
    again = cli.run("resume", RUN_ID, env=give_up)
    shown = shown_status(cli.env["CFTRUNNER_DB"], RUN_ID)

    for ended in (first, again):
        assert ended.returncode == EXIT_DECIDE, tail(ended.stderr)
        assert f"cftrunner settle {RUN_ID} trace:0 --happened --id ID" in ended.stderr
    assert [u["key"] for u in shown["undecided"]] == ["trace:0"]
    assert sandbox.counts()["requests"]["trace_create"] == 1

    [made] = sandbox.world.traces()
    sandbox.set_list_lag(0)
    settled = cli.run("settle", RUN_ID, "0", "--happened", "--id", made["id"])
    repeated = cli.run("settle", RUN_ID, "0", "--happened", "--id", made["id"])
    resumed = cli.run("resume", RUN_ID)

    assert settled.returncode == 0, tail(settled.stderr)
    assert repeated.returncode == 0, tail(repeated.stderr)
    assert resumed.returncode == 0, tail(resumed.stderr)
    assert "nothing to settle" in cli.run("settle", RUN_ID, "trace:0", "--not-happened").stdout
    assert sandbox.counts()["requests"]["trace_create"] == 1
    assert_launched_once(cli, sandbox, 1)


@pytest.mark.parametrize(("args", "message"), [
    (["settle", RUN_ID, "0"], "say --happened or --not-happened"),
    (["settle", RUN_ID, "9", "--not-happened"], "has no effect '9'"),
    (["settle", RUN_ID, "trace:0", "--happened"], "give its id with --id"),
    (["settle", RUN_ID, "0", "--not-happened", "--id", "x"], "--id goes with --happened"),
    (["settle", "no-such-run", "0", "--not-happened"], "no-such-run"),
])
def test_a_settle_that_cannot_be_taken_is_one_line_exit_2_and_changes_nothing(
        sandbox: Sandbox, cli: Cli, args: list[str], message: str) -> None:
    write_prompts(cli.prompts, PROMPTS[:1])
    sandbox.add_fault(FaultRule(route="trace_create", kind="drop", times=1))
    sandbox.set_list_lag(3600)
    stopped = cli.run(*cli.start_args(RUN_ID), env={"CFTRUNNER_RECONCILE_GIVE_UP": "0",
                                                  "CFTRUNNER_MARKER_TRACES": "false"})
    assert stopped.returncode == EXIT_DECIDE, tail(stopped.stderr)

    refused = cli.run(*args)

    assert refused.returncode == 2, tail(refused.stderr)
    assert message in refused.stderr and len(refused.stderr.strip().splitlines()) == 1
    shown = shown_status(cli.env["CFTRUNNER_DB"], RUN_ID)
    assert [u["key"] for u in shown["undecided"]] == ["trace:0"]


def assert_launched_once(cli: Cli, sandbox: Sandbox, prompts: int) -> None:
    shown = shown_status(cli.env["CFTRUNNER_DB"], RUN_ID)
    assert shown["state"] == "LAUNCHED", shown
    assert_exactly_once(sandbox, prompts)
