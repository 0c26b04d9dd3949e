"""Opening the state database and its transactions: the write lock, durability, read-only reads."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Self

import sqlalchemy as sa
import structlog

from cftrunner import logs
from cftrunner.exceptions import InputError
from cftrunner.records import Holder
from cftrunner.store import dialect, migrations
from cftrunner.store.batches import Batches
from cftrunner.store.errors import translated
from cftrunner.store.writes import Tx

log = structlog.get_logger("cftrunner")
_LOG_LEVELS = {"item_transitioned": logging.DEBUG, "effect_prepared": logging.DEBUG,
               "run_error": logging.WARNING, "effect_unknown": logging.WARNING,
               "effect_unsent": logging.WARNING, "effect_failed": logging.WARNING}


def missing_sqlite_file(url: str) -> str | None:
    """The path of the SQLite file `url` names when there is no such file yet; None when there
    is, or for any other database."""
    with translated():
        parsed = sa.engine.make_url(url)
    if not parsed.drivername.startswith("sqlite") or parsed.database in (None, "", ":memory:") \
            or parsed.database.startswith("file:"):
        return None
    return None if os.path.exists(parsed.database) else os.path.abspath(parsed.database)


def without_password(url: str) -> str:
    """A database URL as messages show it: its password hidden."""
    with translated():
        return sa.engine.make_url(url).render_as_string(hide_password=True)


class Core:
    """The engine of one state database, brought to the current schema, and its transactions."""

    @classmethod
    def existing(cls, url: str) -> Self:
        """The store at `url`, which must be there already: a command that only reads (or works
        on a run that must exist) never creates a state database."""
        missing = missing_sqlite_file(url)
        if missing is not None:
            raise InputError(f"no state database at {missing}: nothing has run with this database "
                             "yet (see --db, CFTRUNNER_DB or db in the config file)")
        return cls(url)

    def __init__(self, url: str) -> None:
        self.url = url
        with translated():
            self.engine = dialect.create_engine(url)
            # SQLite lets one transaction write at a time: the threads of this process share one
            # connection for writing, kept open, and their writes share commits (batches.py);
            # other processes queue on the busy timeout.
            sqlite = self.engine.dialect.name == "sqlite"
            self._batches = Batches(self._writer_at) if sqlite else None
            # What writes go through: on SQLite an engine of its own (see dialect.sqlite_writer).
            self.write_engine = dialect.sqlite_writer(self.engine) if sqlite else self.engine
            self._writer: sa.Connection | None = None
            self._writer_durable = True  # its synchronous level: FULL, as every connection starts
            try:
                migrations.upgrade(self.engine)
            except BaseException:
                self.close()
                raise

    @property
    def where(self) -> str:
        """The state database as messages name it: its URL, without a password."""
        return self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self.write_engine is not self.engine:
            self.write_engine.dispose()
        self.engine.dispose()

    @property
    def commit_window(self) -> float:
        """Seconds a write waits for others to share its commit once nobody else is waiting
        (SQLite; 0 by default: only writes already waiting share it)."""
        return self._batches.window if self._batches is not None else 0.0

    @commit_window.setter
    def commit_window(self, seconds: float) -> None:
        if self._batches is not None:
            self._batches.window = seconds

    def _writer_at(self, durable: bool) -> sa.Connection:
        """The writer connection, outside any transaction, at the synchronous level asked for."""
        if self._writer is None or self._writer.invalidated:
            self._writer = self.write_engine.connect()
            self._writer_durable = True
        if durable != self._writer_durable:
            # Outside any transaction (SQLite refuses it inside one), on the driver's
            # connection, which pysqlite leaves in autocommit (see dialect.py).
            self._writer.connection.driver_connection.execute(  # type: ignore[union-attr]
                f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
            self._writer_durable = durable
        return self._writer

    @contextmanager
    def _writing(self, durable: bool) -> Iterator[Tx]:
        """A write transaction's Tx: a savepoint of a shared batch on SQLite, a transaction of
        its own on PostgreSQL (whose server groups commits itself)."""
        if self._batches is not None:
            with self._batches.unit(durable) as tx:
                yield tx
            return
        with self.engine.begin() as conn:
            tx = Tx(conn)
            yield tx
            tx.flush()

    def sent(self, run_id: str, key: str) -> None:
        """The request of an intent was sent: for the crash points inside a batch."""
        if self._batches is not None:
            self._batches.sent(run_id, key)

    @contextmanager
    def tx(self, fence: Holder | None = None, durable: bool = True) -> Iterator[Tx]:
        """One write transaction; with `fence`, only while that holder holds the run's lease
        (else LeaseLost, before anything is written).

        On SQLite a transaction is durable when it commits (synced to disk), unless `durable` is
        False: then it survives a crash of the process but may be lost with the host's power,
        along with every later one that is not durable either; a durable commit makes all
        earlier ones durable too. That is for what can be found again after such a loss, by
        asking again or by reconciling: never for an intent, which must be on disk before its
        request is sent. (On PostgreSQL every transaction is durable.)"""
        with translated(), self._writing(durable) as tx:
            if fence is not None:
                tx.fence(fence)
            yield tx
        for kind, fields in tx.logged:
            level = _LOG_LEVELS.get(kind, logging.INFO)
            if logs.enabled(level):
                log.log(level, kind, **fields)

    @contextmanager
    def reading(self) -> Iterator[Tx]:
        """A read-only transaction, for the reads a Tx offers; it writes nothing."""
        with self._read() as conn:
            yield Tx(conn)

    @contextmanager
    def _read(self) -> Iterator[sa.Connection]:
        with translated(), self.engine.connect() as conn:
            conn = conn.execution_options(**{dialect.READ_ONLY: True})
            with conn.begin():
                yield conn
