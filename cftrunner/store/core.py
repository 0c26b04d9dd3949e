"""Opening the state database and its transactions: the write lock, durability, read-only reads."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Self

import sqlalchemy as sa
import structlog

from cftrunner import logs
from cftrunner.exceptions import InputError
from cftrunner.records import Holder
from cftrunner.store import dialect, migrations
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
            # SQLite lets one transaction write at a time. Threads of this process queue for it
            # here, waking as soon as it is free, rather than in SQLite's busy handler, which
            # sleeps in steps of up to 100 ms; other processes still queue on the busy timeout.
            # Queued this way, they can share one connection for writing, kept open rather than
            # taken from the pool and given back for every transaction.
            self._write_lock = threading.Lock() if self.engine.dialect.name == "sqlite" else None
            self._writer: sa.Connection | None = None
            self._writer_durable = True  # its synchronous level: FULL, as every connection starts
            try:
                migrations.upgrade(self.engine)
            except BaseException:
                self.engine.dispose()
                raise

    @property
    def where(self) -> str:
        """The state database as messages name it: its URL, without a password."""
        return self.engine.url.render_as_string(hide_password=True)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self.engine.dispose()

    @contextmanager
    def _writing(self, durable: bool = True) -> Iterator[sa.Connection]:
        """A connection in a write transaction, committed at the end, rolled back on error."""
        if self._write_lock is None:
            with self.engine.begin() as conn:
                yield conn
            return
        with self._write_lock:
            if self._writer is None or self._writer.invalidated:
                self._writer = self.engine.connect()
                self._writer_durable = True
            if durable != self._writer_durable:
                # Outside any transaction (SQLite refuses it inside one), on the driver's
                # connection, which pysqlite leaves in autocommit (see dialect.py).
                self._writer.connection.driver_connection.execute(  # type: ignore[union-attr]
                    f"PRAGMA synchronous = {'FULL' if durable else 'NORMAL'}")
                self._writer_durable = durable
            with self._writer.begin():
                yield self._writer

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
        with translated(), self._writing(durable) as conn:
            tx = Tx(conn)
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
