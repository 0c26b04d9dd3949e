"""Database errors a retry may fix stay worth a retry (exit 3), on a real SQLite file; a pooled
PostgreSQL connection the server dropped is replaced before it is used."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import make_url

from cftrunner.cli import exits
from cftrunner.exceptions import UnusableDatabaseError
from cftrunner.store import Store, dialect
from tests.conftest import connected, make_run


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


def _backends(store: Store) -> set[int]:
    """The server processes of the connections the store's pool holds now."""
    pool = store.engine.pool
    held = [pool.connect() for _ in range(pool.checkedin())]
    try:
        return {conn.driver_connection.info.backend_pid for conn in held}  # type: ignore[union-attr]
    finally:
        for conn in held:
            conn.close()


def _drop_pooled(store: Store, db_url: str) -> set[int]:
    """Have the server end every connection the store's pool holds; their server processes."""
    dropped = _backends(store)
    with connected(db_url) as admin:
        for pid in dropped:
            admin.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    return dropped


def _pings(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[object]:
    """The connections pinged from now on, each as it is pinged."""
    pinged: list[object] = []
    ping = store.engine.dialect.do_ping
    monkeypatch.setattr(store.engine.dialect, "do_ping", lambda c: pinged.append(c) or ping(c))
    return pinged


@pytest.mark.postgres_only
def test_a_pooled_connection_the_server_dropped_while_idle_is_replaced_before_use(
        store: Store, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Pinged before use once idle (here at once): the write goes through on a new connection."""
    pinged = _pings(store, monkeypatch)
    store.create_run(make_run(), ["a"])
    dropped = _drop_pooled(store, db_url)
    monkeypatch.setattr(dialect, "PING_AFTER_IDLE_S", 0.0)
    store.create_run(make_run("r2"), ["b"])
    assert store.run("r2").id == "r2" and pinged
    assert not dropped & _backends(store)


@pytest.mark.postgres_only
def test_a_connection_used_just_now_is_not_pinged(store: Store,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    pinged = _pings(store, monkeypatch)
    monkeypatch.setattr(dialect, "PING_AFTER_IDLE_S", 60.0)  # "just now", on a busy host too
    for n in range(5):
        store.create_run(make_run(f"r{n}"), ["a"])
    assert pinged == []
    monkeypatch.setattr(dialect, "PING_AFTER_IDLE_S", 0.0)
    store.create_run(make_run("r9"), ["a"])
    assert len(pinged) == 1


@pytest.mark.postgres_only
def test_a_connection_dropped_in_use_fails_its_transaction_worth_a_retry(
        store: Store, db_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Not pinged (used just now), so the write is what finds it dropped: exit 3, nothing stored."""
    monkeypatch.setattr(dialect, "PING_AFTER_IDLE_S", 60.0)
    store.create_run(make_run(), ["a"])
    _drop_pooled(store, db_url)
    error = error_of(lambda: store.create_run(make_run("r2"), ["b"]))
    message, code = exits._outcome(error)
    assert code == exits.EXIT_STOPPED and message.startswith("state database: "), message
    assert [run.id for run in store.runs()] == ["r1"]  # on a fresh connection


@pytest.mark.sqlite_only
def test_a_write_to_a_file_that_became_unusable_names_it_by_its_absolute_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer connection has an engine of its own (dialect.sqlite_writer): its errors name
    the file as every other message does, however the URL named it."""
    monkeypatch.chdir(tmp_path)
    store = Store("sqlite:///state.db")  # opened, and brought to the schema, by the reads' engine
    try:
        for leftover in tmp_path.glob("state.db*"):
            leftover.unlink()
        (tmp_path / "state.db").mkdir()
        error = error_of(lambda: store.create_run(make_run(), ["a"]))
    finally:
        store.close()
    assert isinstance(error, UnusableDatabaseError)
    assert str(error) == (f"the state database {tmp_path / 'state.db'} cannot be used: "
                          "it is a directory")
