"""Database errors a retry may fix stay worth a retry (exit 3), on a real SQLite file."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

import pytest
from sqlalchemy.engine import make_url

from cftrunner.cli import exits
from cftrunner.store import Store, dialect
from tests.conftest import make_run


def error_of(call: Callable[[], object]) -> Exception:
    try:
        call()
    except Exception as exc:  # noqa: BLE001 - which error it is, is what the test looks at
        return exc
    raise AssertionError("no error was raised")


@pytest.mark.sqlite_only
def test_a_database_still_locked_after_the_busy_timeout_is_worth_a_retry(
        db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(dialect, "BUSY_TIMEOUT_MS", 100)  # not the 30 s a process waits
    store = Store(db_url)
    holder = sqlite3.connect(make_url(db_url).database or "", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        error = error_of(lambda: store.create_run(make_run(), ["a"]))
    finally:
        holder.rollback()
        holder.close()
        store.close()
    message, code = exits._outcome(error)
    assert code == exits.EXIT_STOPPED
    assert message == "state database: OperationalError: database is locked"
