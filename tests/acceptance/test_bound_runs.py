"""A run goes on only against the API it was started on: its traces, dataset and job are there."""

from __future__ import annotations

import signal
from collections.abc import Callable

import pytest

from cftrunner import crashpoints
from cftrunner.sandbox import Sandbox
from tests.acceptance.test_ownership import one_error_line
from tests.conftest import Cli, assert_exactly_once, requests_sent

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
