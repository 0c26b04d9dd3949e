"""A run goes on only against the API it was started on: its traces, dataset and job are there."""

from __future__ import annotations

import json
import signal
from collections.abc import Callable

import pytest

from cftrunner import crashpoints
from cftrunner.sandbox import FaultRule, Sandbox
from tests.acceptance.test_ownership import one_error_line
from tests.conftest import (
    JUDGE,
    MODEL,
    Cli,
    assert_exactly_once,
    on_postgres,
    requests_sent,
    state_stored,
)

pytestmark = pytest.mark.slow

KILLED = -signal.SIGKILL


@pytest.fixture
def half_done(cli: Cli, sandbox: Sandbox) -> Cli:
    """A run killed part way through its judging, started on `sandbox`; one request at a time,
    so that none is still on its way to the sandbox once the process is dead."""
    killed = cli.run(*cli.start_args("bound"), env={crashpoints.ENV: "judge.after_store:2",
                                                    "CFTRUNNER_CONCURRENCY": "1"})
    assert killed.returncode == KILLED, killed.stderr
    return cli


@pytest.mark.parametrize("command", ["resume", "resume --worker", "tick"])
def test_a_run_resumed_against_another_api_is_refused_naming_both_and_sends_nothing(
        half_done: Cli, sandbox: Sandbox, make_sandbox: Callable[..., Sandbox],
        command: str) -> None:
    other = make_sandbox()
    if command == "tick":  # the cycle's unfinished run is this one
        args = half_done.start_args("bound")[:-2]
        args[0] = "tick"
    else:
        args = [*command.split(), "bound"]
    before = requests_sent(sandbox)
    refused = half_done.run(*args, env={"CFTRUNNER_BASE_URL": other.url})
    assert refused.returncode == 2, refused.stderr
    assert one_error_line(refused.stderr) == (
        f"cftrunner: error: run bound was started on {sandbox.url}, not on {other.url} "
        "(base_url, --base-url or CFTRUNNER_BASE_URL): nothing was sent")
    assert requests_sent(other) == 0 and requests_sent(sandbox) == before
    # On its own API it goes on, each effect once.
    resumed = half_done.run("resume", "bound")
    assert resumed.returncode == 0, resumed.stderr
    assert_exactly_once(sandbox, 6)


def test_status_shows_the_api_a_run_was_started_on(half_done: Cli, sandbox: Sandbox) -> None:
    shown = half_done.run("status", "--json", "bound")
    assert '"base_url": "' + sandbox.url + '"' in shown.stdout


# -- checks before a run exists ------------------------------------------------------------------


def test_a_project_that_is_not_there_is_exit_2_and_no_run(cli: Cli, sandbox: Sandbox) -> None:
    args = cli.start_args("ghost")
    args[args.index("--project-id") + 1] = "0badc0de-0000-4000-8000-000000000000"
    refused = cli.run(*args)
    assert refused.returncode == 2, refused.stderr
    assert one_error_line(refused.stderr) == (
        "cftrunner: error: project 0badc0de-0000-4000-8000-000000000000 not found at "
        f"{sandbox.url}; no run was created")
    assert not state_stored(cli.env["CFTRUNNER_DB"]) or not cli.run("status", "ghost").stdout
    assert set(sandbox.counts()["requests"]) == {"project"}


def test_a_key_the_api_refuses_is_exit_77_before_and_during_a_run(
        cli: Cli, sandbox: Sandbox) -> None:
    refused = cli.run(*cli.start_args("keyless"), env={"API_KEY": "sk-wrong"})
    assert refused.returncode == 77, refused.stderr
    assert "refused the key" in one_error_line(refused.stderr)
    assert "sk-wrong" not in refused.stderr
    # A run whose key is revoked part way stops with 77 on every resume, not "retry later".
    killed = cli.run(*cli.start_args("revoked"), env={crashpoints.ENV: "judge.after_store:2",
                                                      "CFTRUNNER_CONCURRENCY": "1"})
    assert killed.returncode == KILLED
    for _ in range(2):
        again = cli.run("resume", "revoked", env={"API_KEY": "sk-wrong"})
        assert again.returncode == 77, again.stderr
        assert one_error_line(again.stderr).startswith("cftrunner: error: stopped: ")


def test_a_model_the_list_does_not_show_is_a_warning_not_a_refusal(cli: Cli,
                                                                   sandbox: Sandbox) -> None:
    started = cli.run(*cli.start_args("unlisted"))
    assert started.returncode == 0, started.stderr
    warnings = [json.loads(line) for line in started.stderr.splitlines()
                if '"preflight"' in line]
    assert [w["level"] for w in warnings] == ["warning"]
    assert warnings[0]["reason"].startswith(f"model {MODEL} is not among the ")


def test_start_dry_run_checks_and_prints_the_plan_sending_no_post(cli: Cli,
                                                                   sandbox: Sandbox) -> None:
    planned = cli.run(*cli.start_args("planned"), "--dry-run")
    assert planned.returncode == 0, planned.stderr
    lines = planned.stdout.splitlines()
    assert lines[0] == f"would start a run of 6 prompts from {cli.prompts}"
    assert lines[2] == "items: 6"
    assert lines[3].startswith("requests: chat completions 6 generations and 6 to 18 judgments;")
    assert lines[4] == "tokens: no earlier run of this cycle to go by"
    assert lines[5].startswith(f"warning: model {MODEL} is not among the ")
    assert set(sandbox.counts()["requests"]) == {"project", "models"}
    if not on_postgres():  # a PostgreSQL schema is there already; an SQLite file is not made
        assert not state_stored(cli.env["CFTRUNNER_DB"])
    # After one run of the cycle, the plan says what it used per item.
    assert cli.run(*cli.start_args("first")).returncode == 0
    again = cli.run(*cli.start_args("second"), "--dry-run")
    tokens = again.stdout.splitlines()[4]
    assert tokens.startswith("tokens: the cycle's last run first used ")
    assert " per item; 6 items at that rate: about " in tokens


@pytest.mark.parametrize("role", ["model", "judge"])
def test_a_model_the_api_does_not_have_stops_the_run_intact_with_exit_2(
        cli: Cli, sandbox: Sandbox, role: str) -> None:
    missing = MODEL if role == "model" else JUDGE
    sandbox.add_fault(FaultRule(route="chat", status=404, judge=role == "judge"))
    for _ in range(2):  # every invocation says so, and no item is failed for it
        stopped = cli.run(*cli.start_args("nomodel")) if _ == 0 else cli.run("resume", "nomodel")
        assert stopped.returncode == 2, stopped.stderr
        assert one_error_line(stopped.stderr).startswith(
            f"cftrunner: error: the API at {sandbox.url} has no model {missing} (")
    shown = json.loads(cli.run("status", "--json", "nomodel").stdout)
    assert shown["state"] in ("CREATED", "GENERATED")
    assert not shown["failures"] and "cftrunner cancel nomodel" in shown["last_error"]
    assert sandbox.counts()["traces"] == 0
