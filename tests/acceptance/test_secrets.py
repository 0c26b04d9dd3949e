"""An API that echoes the request's Authorization header in its error bodies: the key is stored
and printed nowhere, by real processes against a real HTTP server."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from cftrunner.sandbox import DEFAULT_PROJECT_ID
from cftrunner.store import Store
from tests.conftest import MODEL, Cli, databases
from tests.servers import EchoingServer

SECRET = "sk-live-0123456789abcdef"


@dataclass(frozen=True)
class Stopped:
    """A run that `cftrunner start` stopped on an error body echoing the key."""

    cli: Cli
    db_url: str
    started: subprocess.CompletedProcess[str]
    status: int  # what the server answered every request after the checks


# One real start per status, shared by the tests that each look at one place it may have left
# the key.
@pytest.fixture(scope="module", params=[400, 401, 403, 500])
def stopped(request: pytest.FixtureRequest,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stopped]:
    folder = tmp_path_factory.mktemp(f"echo{request.param}")
    db_url = databases().new(folder)
    with EchoingServer(request.param, checks_pass=True) as server:
        cli = Cli(server, db_url, folder)  # type: ignore[arg-type]  # Cli needs only its url
        cli.env |= {"API_KEY": SECRET, "CFTRUNNER_MAX_ATTEMPTS": "2"}
        started = cli.run("start", "--project-id", DEFAULT_PROJECT_ID, "--model-alias", MODEL,
                          "--prompts", str(cli.prompts), "--run-id", "echoed")
        yield Stopped(cli, db_url, started, request.param)
    databases().drop(db_url)


# A refused answer fails the item (400); a refused key stops the run for a person (401, 403);
# a server error, retried, stops it to be resumed (500).
EXITS = {400: 1, 401: 77, 403: 77, 500: 3}


def test_the_run_ends_as_the_refusal_says(stopped: Stopped) -> None:
    assert stopped.started.returncode == EXITS[stopped.status], stopped.started.stderr


def test_the_final_error_line_carries_the_refusal_without_the_key(stopped: Stopped) -> None:
    last = stopped.started.stderr.splitlines()[-1]
    assert last.startswith("cftrunner: error:") and SECRET not in last
    if stopped.status != 400:
        assert last.startswith("cftrunner: error: stopped:")
        assert "got Authorization: Bearer [redacted]" in last


def test_the_errors_stored_with_the_run_have_no_key(stopped: Stopped) -> None:
    store = Store(stopped.db_url)
    try:
        run = store.run("echoed")
        errors = [run.last_error, run.failure_reason, *(i.error for i in store.items("echoed"))]
    finally:
        store.close()
    stored = [error for error in errors if error]
    assert any("Bearer [redacted]" in error for error in stored)
    assert all(SECRET not in error for error in stored)


def test_no_event_row_holds_the_key(stopped: Stopped) -> None:
    store = Store(stopped.db_url)
    try:
        events = store.events("echoed")
    finally:
        store.close()
    assert events
    assert all(SECRET not in json.dumps(event.data) for event in events)


def test_status_json_shows_the_error_without_the_key(stopped: Stopped) -> None:
    shown = stopped.cli.run("status", "--json", "echoed")
    assert shown.returncode == 0, shown.stderr
    if stopped.status != 400:
        assert "Bearer [redacted]" in json.loads(shown.stdout)["last_error"]
    assert SECRET not in shown.stdout + shown.stderr
    item = stopped.cli.run("show", "echoed", "0")
    assert SECRET not in item.stdout + item.stderr
