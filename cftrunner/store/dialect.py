"""Engine creation, with every database quirk fenced in here: SQLite's WAL, busy timeout and
BEGIN IMMEDIATE, and which of its errors mean the file cannot be used; PostgreSQL's driver,
isolation level, pool and connect timeout."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sqlite3
import time
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

from cftrunner.exceptions import InputError, UnusableDatabaseError

BUSY_TIMEOUT_MS = 30_000
CONNECT_TIMEOUT_S = 10
READ_ONLY = "cftrunner_read_only"
MIGRATION_LOCK_ID = int.from_bytes(b"cftrunnr", "big")  # a PostgreSQL advisory lock, cftrunner's own
# Concurrent items each borrow a connection for a short transaction. SQLite connections are
# cheap, so that pool may grow rather than make a worker wait; a PostgreSQL connection is a server
# process, so that pool is bounded and a worker past it waits (transactions last milliseconds).
SQLITE_POOL = {"pool_size": 8, "max_overflow": 256}
POSTGRES_POOL = {"pool_size": 10, "max_overflow": 22, "pool_timeout": 60}
# A pooled PostgreSQL connection idle this long is pinged before use, and replaced (with every
# older one) if the server dropped it. Pinging every checkout, as pool_pre_ping does, was a
# round trip in each write transaction: one in six of an item's.
PING_AFTER_IDLE_S = 1.0
# SQLite's primary result codes for a file that no retry will make usable: READONLY, CORRUPT,
# CANTOPEN (a directory, say) and NOTADB. BUSY (locked) and FULL may pass, so they are not here.
_UNUSABLE_SQLITE = frozenset({8, 11, 14, 26})


def create_engine(url: str) -> sa.Engine:
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError as exc:
        raise InputError(f"not a database URL: {url!r}") from exc
    backend = parsed.get_backend_name()
    if backend == "postgresql":
        return _postgres_engine(parsed)
    if backend != "sqlite":
        raise InputError("the state database must be an SQLite file or PostgreSQL, not "
                         f"{parsed.render_as_string(hide_password=True)!r}")
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        raise InputError(f"the state database must be an SQLite file or PostgreSQL, not {url!r}")
    parent = Path(database).expanduser().resolve().parent
    if not parent.is_dir():
        raise InputError(f"the state database folder {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise InputError(f"the state database folder {parent} is not writable")
    path = _file_of(parsed)
    _create_private(path)
    engine = _sqlite_engine(parsed, poolclass=sa.pool.QueuePool, **SQLITE_POOL)

    @sa.event.listens_for(engine, "begin")
    def on_begin(connection: sa.Connection) -> None:
        read_only = connection.get_execution_options().get(READ_ONLY, False)
        _begin(connection, "BEGIN" if read_only else "BEGIN IMMEDIATE")

    return engine


def _file_of(url: URL) -> Path:
    """The SQLite file `url` names, as every message names it: an absolute path."""
    return Path(os.path.abspath(Path(url.database or "").expanduser()))


def _create_private(database: Path) -> None:
    """Create the state file, which holds prompts and answers, readable by its owner only; SQLite
    gives its -wal, -shm and -journal files the same permissions. A file that exists already,
    made by whomever, is left as it is."""
    # Not a umask around SQLite's own creation: the umask is the whole process's, threads included.
    with contextlib.suppress(OSError):  # it exists, or SQLite fails to create it too and says why
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def _postgres_engine(url: URL) -> sa.Engine:
    # A bare postgresql:// means psycopg 3, the one driver the `postgres` extra installs
    # (SQLAlchemy 2.0 would otherwise pick psycopg2).
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")
    if url.get_driver_name() == "psycopg" and importlib.util.find_spec("psycopg") is None:
        raise InputError("a PostgreSQL state database needs psycopg 3: "
                         "pip install 'cftrunner[postgres]'")
    connect_args: dict[str, Any] = {"application_name": "cftrunner"}
    if "connect_timeout" not in url.query:
        connect_args["connect_timeout"] = CONNECT_TIMEOUT_S
    # READ COMMITTED plus row locks is the design: every fenced write transaction first locks its
    # run's row (FOR UPDATE), tick locks its cycle's row, and each later statement then sees what
    # the previous holder committed. Every other change is a compare-and-set on the row itself.
    engine = sa.create_engine(url, isolation_level="READ COMMITTED", connect_args=connect_args,
                              **POSTGRES_POOL)
    _ping_when_idle(engine)
    return engine


def _ping_when_idle(engine: sa.Engine) -> None:
    """Ping a pooled connection before use once it has been idle PING_AFTER_IDLE_S; one the
    server dropped is replaced, with every older one (as pool_pre_ping does at each checkout)."""

    @sa.event.listens_for(engine, "checkin")
    def on_checkin(_dbapi_connection: Any, record: Any) -> None:
        record.info["idle_since"] = time.monotonic()

    @sa.event.listens_for(engine, "checkout")
    def on_checkout(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        since = record.info.pop("idle_since", None)
        if since is None or time.monotonic() - since < PING_AFTER_IDLE_S:
            return  # a new connection, or one just used
        dialect = engine.dialect
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as exc:
            if dialect.is_disconnect(exc, dbapi_connection, None):
                raise sa.exc.InvalidatePoolError(f"pooled connection dropped: {exc}") from exc
            raise


def _unusable(error: BaseException, database: Path) -> UnusableDatabaseError | None:
    """The error as UnusableDatabaseError, naming the file, when it says the SQLite file cannot be
    used as it is; None for any other error."""
    code = getattr(error, "sqlite_errorcode", None)
    if not isinstance(code, int) or code & 0xFF not in _UNUSABLE_SQLITE:
        return None
    reason = "it is a directory" if database.is_dir() else str(error)
    return UnusableDatabaseError(f"the state database {database} cannot be used: {reason}")


def sqlite_writer(engine: sa.Engine) -> sa.Engine:
    """An engine on `engine`'s SQLite file for the one connection a process writes through
    (core.py), its transactions begun by `begin_immediate`. It has no `begin` listener: a
    listener of any of SQLAlchemy's connection events turns them all on, for every statement of
    the engine's connections, and they were some 3% of an item's CPU."""
    return _sqlite_engine(engine.url, poolclass=sa.pool.NullPool)


def begin_immediate(conn: sa.Connection) -> sa.RootTransaction:
    """A write transaction on a connection of `sqlite_writer`, holding the write lock (or
    queued for it on the busy timeout) from its start."""
    trans = conn.begin()
    try:
        _begin(conn, "BEGIN IMMEDIATE")
    except BaseException:
        trans.rollback()
        raise
    return trans


def _begin(conn: sa.Connection, statement: str) -> None:
    # On the driver's connection: through SQLAlchemy's execution machinery, each BEGIN cost as
    # much CPU as a statement, for every transaction.
    try:
        conn.connection.driver_connection.execute(statement)  # type: ignore[union-attr]
    except sqlite3.Error as exc:
        # Raised outside SQLAlchemy's execution, it escapes its wrapping and the error hook: a
        # database still locked after the busy timeout would pass for a bug.
        raise _unusable(exc, _file_of(conn.engine.url)) or sa.exc.DBAPIError.instance(
            statement, None, exc, sqlite3.Error) from exc


def _sqlite_engine(url: URL, **pool: Any) -> sa.Engine:
    """An engine on the SQLite file of `url`: WAL, the busy timeout, foreign keys, transactions
    left to cftrunner, and the errors that say the file cannot be used translated."""
    engine = sa.create_engine(url, connect_args={"timeout": BUSY_TIMEOUT_MS / 1000}, **pool)
    database = _file_of(url)

    @sa.event.listens_for(engine, "handle_error")
    def on_error(context: sa.engine.ExceptionContext) -> BaseException | None:
        # Every error of the engine's connections, first connection included, comes through here.
        return _unusable(context.original_exception, database)

    @sa.event.listens_for(engine, "connect")
    def on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from pysqlite so that writes can BEGIN IMMEDIATE: two writers
        # then queue on the busy timeout instead of one failing with "database is locked" on upgrade.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        _use_wal(cursor)
        cursor.execute("PRAGMA synchronous = FULL")
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.close()

    return engine


def _use_wal(cursor: sqlite3.Cursor) -> None:
    """Put the file in WAL mode, which it keeps. Connections racing to switch a new file may be
    refused at once ("database is locked": SQLite does not wait on the busy timeout there, 2 of
    200 races of 8 openers), so a refusal is tried again until the busy timeout has passed."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while True:
        try:
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as exc:
            if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def rows_in_one_insert(dialect: sa.Dialect) -> bool:
    """Whether a few rows go in faster as one INSERT of several rows than through the driver's
    executemany: not on SQLite, whose executemany is a loop in C; on PostgreSQL, where psycopg's
    goes through its pipeline mode, a transaction inserting two rows took 235-255 µs of CPU
    that way against 370-410 µs."""
    return dialect.name != "sqlite" and dialect.supports_multivalues_insert


def lock_for_migration(conn: sa.Connection) -> None:
    """Hold, until the transaction ends, the lock that serializes schema upgrades between processes.

    On SQLite the write transaction's BEGIN IMMEDIATE already holds the database's write lock."""
    if conn.dialect.name == "postgresql":
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(MIGRATION_LOCK_ID)))


def insert_ignoring_duplicates(conn: sa.Connection, table: sa.Table,
                               key: tuple[str, ...] | None = None, **values: Any) -> bool:
    """INSERT that leaves an existing row with the same `key` (default: the primary key) alone,
    on either database; True when the row was inserted. A clash on another unique column still
    raises."""
    if conn.dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    statement = (insert(table).values(**values)
                 .on_conflict_do_nothing(index_elements=list(key) if key is not None
                                         else list(table.primary_key.columns))
                 # An INSERT's row count is kept only when asked for (psycopg loses it otherwise).
                 .execution_options(preserve_rowcount=True))
    return conn.execute(statement).rowcount == 1
