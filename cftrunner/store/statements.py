"""The statements of an item's steps, compiled once and sent with their values converted as
SQLAlchemy converts them, without its per-execution work."""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from cftrunner.store.dialect import rows_in_one_insert

Values = Mapping[str, Any]
# How a statement is compiled: for one row, for executemany, or (a positive number) as one
# INSERT of that many rows, which it is for at most MULTI_ROW_INSERT rows.
ONE, MANY = 0, -1
MULTI_ROW_INSERT = 32


@dataclass(frozen=True)
class _Compiled:
    """A statement as one database runs it with one set of value names: its SQL, and for each
    placeholder, the name of its value and the conversion of its type (None: as it is)."""

    sql: str
    names: tuple[str, ...]
    placeholders: tuple[str, ...]
    convert: tuple[Callable[[Any], Any] | None, ...]
    positional: bool

    def values(self, given: Values) -> tuple[Any, ...] | dict[str, Any]:
        converted = [given[name] if fn is None else fn(given[name])
                     for name, fn in zip(self.names, self.convert)]  # noqa: B905 - the same length
        if self.positional:
            return tuple(converted)
        return dict(zip(self.placeholders, converted))  # noqa: B905 - the same length


# By dialect (an engine's own: its driver and server version shape the SQL), then by statement,
# names and shape; kept while the engine is.
_Key = tuple[sa.Executable, frozenset[str], int]
_cache: weakref.WeakKeyDictionary[sa.Dialect, dict[_Key, _Compiled | None]] = (
    weakref.WeakKeyDictionary())
_cache_lock = threading.Lock()


def execute(conn: sa.Connection, statement: sa.Executable, values: Values) -> int:
    """Run `statement` with `values` (an UPDATE's columns are the keys that name one, as with
    `Connection.execute`); the number of rows it changed.

    The same statement through `Connection.execute` cost six times the database's own work, each
    time: its cache key computed, an execution context and a result built around it. Here the
    statement is compiled once, by SQLAlchemy, for each database and set of names, and each run
    converts the values with its types' own bind processors and goes through `exec_driver_sql`,
    which keeps SQLAlchemy's error handling. A statement it cannot run that way (defaults computed
    in Python, expanding parameters, execution options) goes through `Connection.execute`."""
    compiled = _compiled(conn, statement, values, ONE)
    if compiled is None:
        return conn.execute(statement, dict(values)).rowcount
    return conn.exec_driver_sql(compiled.sql, compiled.values(values)).rowcount


def execute_many(conn: sa.Connection, statement: sa.Executable, rows: Sequence[Values]) -> None:
    """Run `statement` once for each of `rows`, which all have the same keys, in one call.

    A few rows to insert are one INSERT of several rows where that is the faster way
    (`dialect.rows_in_one_insert`), else the driver's executemany."""
    if not rows:
        return
    if (len(rows) <= MULTI_ROW_INSERT and isinstance(statement, sa.Insert)
            and rows_in_one_insert(conn.dialect)):
        compiled = _compiled(conn, statement, rows[0], len(rows))
        if compiled is not None:
            flat = {f"{name}_m{n}": value for n, row in enumerate(rows)
                    for name, value in row.items()}
            conn.exec_driver_sql(compiled.sql, compiled.values(flat))
            return
    compiled = _compiled(conn, statement, rows[0], MANY)
    if compiled is None:
        conn.execute(statement, [dict(row) for row in rows])
        return
    conn.exec_driver_sql(compiled.sql, [compiled.values(row) for row in rows])


def _compiled(conn: sa.Connection, statement: sa.Executable, values: Values,
              shape: int) -> _Compiled | None:
    dialect = conn.dialect
    key = (statement, frozenset(values), shape)
    try:
        return _cache[dialect][key]
    except KeyError:
        pass
    compiled = _compile(statement, dialect, key[1], shape)
    with _cache_lock:
        return _cache.setdefault(dialect, {}).setdefault(key, compiled)


def _compile(statement: sa.Executable, dialect: sa.Dialect, names: frozenset[str],
             shape: int) -> _Compiled | None:
    """As `Connection.execute` compiles it for `names` (ONE, MANY, or an INSERT of `shape`
    rows, its values named NAME_mN); None when a run needs more than values."""
    if shape > 0:
        assert isinstance(statement, sa.Insert)
        table = statement.table
        statement = statement.values([
            {name: sa.bindparam(f"{name}_m{n}", type_=table.c[name].type) for name in names}
            for n in range(shape)])
        names = frozenset(f"{name}_m{n}" for name in names for n in range(shape))
    # An INSERT of one row compiled as for several: as one, PostgreSQL's would return its key.
    compiled = statement.compile(dialect=dialect,  # type: ignore[attr-defined]
                                 column_keys=None if shape > 0 else sorted(names),
                                 for_executemany=shape == MANY or (
                                     shape == ONE and isinstance(statement, sa.Insert)))
    if (compiled.insert_prefetch or compiled.update_prefetch or compiled.literal_execute_params
            or compiled.post_compile_params or compiled.escaped_bind_names
            or statement.get_execution_options()):
        return None
    positional = bool(dialect.positional)
    placeholders = tuple(compiled.positiontup if positional else compiled.binds)
    keys = []
    convert = []
    for placeholder in placeholders:
        bind = compiled.binds[placeholder]
        if bind.key not in names:  # a value fixed in the statement, or one not given
            return None
        keys.append(bind.key)
        convert.append(bind.type.dialect_impl(dialect).bind_processor(dialect))
    return _Compiled(compiled.string, tuple(keys), placeholders, tuple(convert), positional)
