"""`cftrunner status --state S --cycle C --limit N` as real processes: the table and the JSON list
narrowed alike, newest first, and bad values refused with one line and exit 2."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timedelta

import pytest

from cftrunner.clock import utcnow
from cftrunner.states import RunState
from cftrunner.store import Store
from cftrunner.store.schema import runs
from tests.acceptance.test_ownership import one_error_line
from tests.conftest import Cli, make_run, state_stored

# (run id, cycle, state), oldest first: each a minute newer than the one before.
RUNS = [("a1", "a", RunState.FAILED), ("b1", "b", RunState.FAILED), ("a2", "a", RunState.SKIPPED),
        ("a3", "a", RunState.LAUNCHED), ("b2", "b", RunState.CANCELLED),
        ("a4", "a", RunState.FAILED), ("a5", "a", RunState.CREATED)]


@pytest.fixture
def stored(db_url: str) -> None:
    store = Store(db_url)
    try:
        now = utcnow()
        for n, (run_id, cycle, state) in enumerate(RUNS):
            store.create_run(replace(make_run(run_id), cycle=cycle), ["a prompt"])
            with store.tx() as tx:
                tx.conn.execute(runs.update().where(runs.c.id == run_id).values(
                    state=state.value, created_at=now - timedelta(minutes=len(RUNS) - n)))
    finally:
        store.close()


def _listed(cli: Cli, *args: str) -> list[str]:
    """The run ids `status --json ARGS` lists, in its order."""
    shown = cli.run("status", "--json", *args)
    assert shown.returncode == 0, shown.stderr
    return [run["run_id"] for run in json.loads(shown.stdout)]


def _table(cli: Cli, *args: str) -> list[str]:
    """The run ids of `status ARGS`'s table rows, in its order."""
    shown = cli.run("status", *args, env={"COLUMNS": "160"})
    assert shown.returncode == 0, shown.stderr
    header, *rows = shown.stdout.splitlines()
    assert header.startswith("RUN ID")
    return [row.split()[0] for row in rows]


@pytest.mark.parametrize(("args", "expected"), [
    ((), ["a5", "a4", "b2", "a3", "a2", "b1", "a1"]),
    (("--state", "failed"), ["a4", "b1", "a1"]),
    (("--state", "FAILED", "--state", "Skipped"), ["a4", "a2", "b1", "a1"]),
    (("--cycle", "b"), ["b2", "b1"]),
    (("--limit", "2"), ["a5", "a4"]),
    (("--cycle", "a", "--state", "FAILED", "--limit", "1"), ["a4"]),
    (("--cycle", "a", "--limit", "3"), ["a5", "a4", "a3"]),
])
def test_the_table_and_the_json_list_are_narrowed_alike_newest_first(
        cli: Cli, stored: None, args: tuple[str, ...], expected: list[str]) -> None:
    assert _listed(cli, *args) == expected
    assert _table(cli, *args) == expected


def test_nothing_matching_says_so_and_the_json_list_is_empty(cli: Cli, stored: None) -> None:
    shown = cli.run("status", "--cycle", "c", "--state", "PROMOTED")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines() == ["no runs match --state PROMOTED --cycle c"]
    assert _listed(cli, "--cycle", "c") == []


@pytest.mark.parametrize(("args", "line"), [
    (("--state", "done"), "cftrunner: error: Invalid value for '--state': 'done' is not a run "
     "state; the states are CREATED, GENERATED, JUDGED, TRACED, ADDED, SNAPSHOT, RECS_READY, "
     "LAUNCHED, TRAINED, TRAIN_FAILED, PROMOTED, NOT_PROMOTED, FAILED, SKIPPED, CANCELLED"),
    (("--limit", "0"), "cftrunner: error: Invalid value for '--limit': 0 is not in the range "
                       "x>=1."),
    (("--limit", "some"), "cftrunner: error: Invalid value for '--limit': 'some' is not a valid "
                          "integer range."),
    (("a1", "--cycle", "a"), "cftrunner: error: --state, --cycle and --limit narrow the list: "
                             "not with RUN_ID"),
])
def test_bad_filters_are_one_line_exit_2_and_create_nothing(
        cli: Cli, db_url: str, args: tuple[str, ...], line: str) -> None:
    refused = cli.run("status", *args)
    assert refused.returncode == 2
    assert one_error_line(refused.stderr) == line
    assert not state_stored(db_url)
