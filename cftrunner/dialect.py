"""Engine creation, with every SQLite quirk fenced in here: WAL, busy timeout, BEGIN IMMEDIATE."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from cftrunner.exceptions import InputError

BUSY_TIMEOUT_MS = 30_000
READ_ONLY = "cftrunner_read_only"


def create_engine(url: str) -> sa.Engine:
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError as exc:
        raise InputError(f"not a database URL: {url!r}") from exc
    if parsed.get_backend_name() != "sqlite":
        return sa.create_engine(url, pool_pre_ping=True)
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        raise InputError(f"the state database must be an SQLite file or PostgreSQL, not {url!r}")
    parent = Path(database).expanduser().resolve().parent
    if not parent.is_dir():
        raise InputError(f"the state database folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"the state database folder {parent} is not writable")
    # Concurrent items each borrow a connection for a short transaction; SQLite connections
    # are cheap, so the pool may grow rather than make a worker wait for one.
    engine = sa.create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000},
                              poolclass=sa.pool.QueuePool, pool_size=8, max_overflow=256)
    _fence_sqlite(engine)
    return engine


def _fence_sqlite(engine: sa.Engine) -> None:
    @sa.event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from pysqlite so that writes can BEGIN IMMEDIATE: two writers
        # then queue on the busy timeout instead of one failing with "database is locked" on upgrade.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode = WAL")
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def on_begin(connection: sa.Connection) -> None:
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        connection.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def insert_ignoring_duplicates(conn: sa.Connection, table: sa.Table, **values: Any) -> None:
    """INSERT that leaves an existing row with the same key alone, on either database."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert as pg_insert
        conn.execute(pg_insert(table).values(**values).on_conflict_do_nothing())
    else:
        from sqlalchemy.dialects.sqlite import insert as sqlite_insert
        conn.execute(sqlite_insert(table).values(**values).on_conflict_do_nothing())
