"""The statements of an item's steps, run without SQLAlchemy's per-execution work: each stores
exactly what `Connection.execute` stores, on the database the suite runs on."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from cftrunner.exceptions import UnusableDatabaseError
from cftrunner.store import Store, statements, writes
from cftrunner.store.schema import completions, effects, events, items
from tests.conftest import make_run

AT = datetime(2026, 3, 1, 12, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2)))


@pytest.fixture
def conn(store: Store) -> Iterator[sa.Connection]:
    """A transaction (rolled back) on a store holding runs r1 and r2 of two items each."""
    for run_id in ("r1", "r2"):
        store.create_run(make_run(run_id), ["a", "b"])
    with store.write_engine.connect() as connection, connection.begin() as trans:
        yield connection
        trans.rollback()


def item_id(conn: sa.Connection, run_id: str, position: int = 0) -> int:
    return conn.execute(sa.select(items.c.id).where(items.c.run_id == run_id,
                                                    items.c.position == position)).scalar_one()


# Of each table, the rows a case writes (or changes): not those the runs were created with.
WRITTEN = {"items": "position = 0", "events": "kind = 'item_transitioned'"}


def stored(conn: sa.Connection, table: sa.Table, run_id: str) -> list[dict[str, Any]]:
    """The rows of `run_id` a case wrote, as the database holds them (no conversion on the way
    out), without the columns that tell the two runs apart."""
    written = WRITTEN.get(table.name, "1 = 1")
    rows = conn.execute(sa.text(f"SELECT * FROM {table.name} "  # noqa: S608
                                f"WHERE run_id = :run_id AND {written} ORDER BY 1"),
                        {"run_id": run_id}).mappings()
    return [{k: v for k, v in row.items() if k not in ("id", "run_id", "item_id", "effect_run")}
            for row in rows]


# Each statement of an item's steps, with the values one step gives it (for run r1 or r2).
CASES: dict[str, tuple[sa.Executable, sa.Table, Callable[[sa.Connection, str], dict[str, Any]]]] = {
    "an item's update": (writes._UPDATE_ITEM, items, lambda c, run: {
        "item_id": item_id(c, run), "from_stage": "PENDING", "stage": "JUDGED", "score": 0.25,
        "feedback": "naïve — “quoted”", "judge_raw": None, "updated_at": AT}),
    "a completion": (writes._INSERT_COMPLETION, completions, lambda c, run: {
        "run_id": run, "item_id": item_id(c, run), "kind": "judge", "attempt": 1,
        "request": {"messages": [{"role": "user", "content": "ü"}], "temperature": 0.0},
        "content": "{}", "finish_reason": "stop", "prompt_tokens": 3, "completion_tokens": None,
        "total_tokens": 3, "outcome": "ok", "error": None, "at": AT}),
    "a completion without a request": (writes._INSERT_COMPLETION, completions, lambda c, run: {
        "run_id": run, "item_id": item_id(c, run), "kind": "generate", "attempt": 2,
        "request": None, "content": None, "finish_reason": None, "prompt_tokens": None,
        "completion_tokens": None, "total_tokens": None, "outcome": "refused", "error": "x",
        "at": AT.astimezone(UTC)}),
    "an intent": (writes._INSERT_EFFECT, effects, lambda c, run: {
        "run_id": run, "key": "trace:0", "kind": "trace", "item_id": item_id(c, run),
        "status": "PREPARED", "request": {"input": "a", "score": 0.5, "tags": []},
        "prepared_at": AT, "attempts": 1, "updated_at": AT}),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_statement_stores_what_sqlalchemy_stores(conn: sa.Connection, case: str) -> None:
    statement, table, values = CASES[case]
    assert statements.execute(conn, statement, values(conn, "r1")) == 1
    conn.execute(statement, values(conn, "r2"))
    assert stored(conn, table, "r1") == stored(conn, table, "r2")
    assert stored(conn, table, "r1")  # something was stored to compare


def test_an_outcome_stores_what_sqlalchemy_stores(conn: sa.Connection) -> None:
    for run in ("r1", "r2"):
        statements.execute(conn, writes._INSERT_EFFECT, CASES["an intent"][2](conn, run))
    outcome = {"effect_key": "trace:0", "from_status": "PREPARED", "from_attempts": 1,
               "status": "DONE", "outcome": {"trace_id": "t-1", "n": 2}, "error": None,
               "updated_at": AT + timedelta(seconds=1)}
    assert statements.execute(conn, writes._UPDATE_EFFECT, {**outcome, "effect_run": "r1"}) == 1
    conn.execute(writes._UPDATE_EFFECT, {**outcome, "effect_run": "r2"})
    assert stored(conn, effects, "r1") == stored(conn, effects, "r2")
    assert stored(conn, effects, "r1")[0]["status"] == "DONE"


@pytest.mark.parametrize("count", [1, 2, statements.MULTI_ROW_INSERT + 1])
def test_events_are_stored_together_as_sqlalchemy_stores_them(conn: sa.Connection,
                                                               count: int) -> None:
    """A few as one INSERT of several rows (on PostgreSQL), more through executemany."""
    def rows(run: str) -> list[dict[str, Any]]:
        return [{"run_id": run, "item_id": item_id(conn, run, n % 2), "at": AT + timedelta(n),
                 "kind": "item_transitioned", "data": {"item": n, "stage": "GENERATED"}}
                for n in range(count)]

    statements.execute_many(conn, writes._INSERT_EVENT, rows("r1"))
    conn.execute(writes._INSERT_EVENT, rows("r2"))
    assert len(stored(conn, events, "r1")) == count
    assert stored(conn, events, "r1") == stored(conn, events, "r2")


def test_an_update_counts_the_rows_it_changed(conn: sa.Connection) -> None:
    update = {"item_id": item_id(conn, "r1"), "stage": "GENERATED", "updated_at": AT}
    assert statements.execute(conn, writes._UPDATE_ITEM, {**update, "from_stage": "JUDGED"}) == 0
    assert statements.execute(conn, writes._UPDATE_ITEM, {**update, "from_stage": "PENDING"}) == 1


def test_a_statement_that_needs_more_than_its_values_goes_through_sqlalchemy(
        conn: sa.Connection) -> None:
    """A default computed in Python (judge_attempts), and a value fixed in the statement."""
    statements.execute(conn, items.insert(), {"run_id": "r1", "position": 9, "prompt": "p",
                                             "stage": "PENDING", "updated_at": AT})
    fixed = (items.update().where(items.c.id == sa.bindparam("item_id"))
             .values(stage="GEN_FAILED"))
    assert statements.execute(conn, fixed, {"item_id": item_id(conn, "r1", 9)}) == 1
    row = conn.execute(sa.select(items.c.judge_attempts, items.c.stage)
                       .where(items.c.run_id == "r1", items.c.position == 9)).one()
    assert tuple(row) == (0, "GEN_FAILED")


def test_a_refused_statement_raises_what_sqlalchemy_raises(conn: sa.Connection) -> None:
    """The store's error translation sees the same exception either way."""
    intent = CASES["an intent"][2](conn, "r1")
    statements.execute(conn, writes._INSERT_EFFECT, intent)
    with pytest.raises(sa.exc.IntegrityError):
        statements.execute(conn, writes._INSERT_EFFECT, intent)


def test_a_statement_runs_on_databases_of_both_kinds_in_one_process(
        conn: sa.Connection, tmp_path: Path) -> None:
    """Compiled for each engine's own dialect: SQL compiled for one kind never reaches the other."""
    other = Store(f"sqlite:///{tmp_path}/other.db")
    try:
        other.create_run(make_run("r1"), ["a"])
        update = {"stage": "GENERATED", "updated_at": AT, "from_stage": "PENDING"}
        with other.write_engine.connect() as sqlite, sqlite.begin():
            assert statements.execute(sqlite, writes._UPDATE_ITEM,
                                      {**update, "item_id": item_id(sqlite, "r1")}) == 1
        assert statements.execute(conn, writes._UPDATE_ITEM,
                                  {**update, "item_id": item_id(conn, "r1")}) == 1
        assert [i.stage.value for i in other.items("r1")] == ["GENERATED"]
    finally:
        other.close()


@pytest.mark.sqlite_only
def test_a_statement_the_file_refuses_names_the_file(conn: sa.Connection, store: Store) -> None:
    """Its errors go through the engine's error hook as `Connection.execute`'s do: SQLite's
    READONLY becomes UnusableDatabaseError, naming the state file."""
    conn.connection.driver_connection.execute("PRAGMA query_only = ON")  # type: ignore[union-attr]
    update = {"item_id": item_id(conn, "r1"), "from_stage": "PENDING", "stage": "GENERATED",
              "updated_at": AT}
    path = os.path.abspath(store.engine.url.database or "")
    with pytest.raises(UnusableDatabaseError, match=re.escape(f"the state database {path} cannot")):
        statements.execute(conn, writes._UPDATE_ITEM, update)
