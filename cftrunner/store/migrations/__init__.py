"""The state database's schema history (Alembic revisions in `versions/`), applied on opening a store."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import sqlalchemy as sa
import structlog

from cftrunner.exceptions import InputError
from cftrunner.store import dialect

if TYPE_CHECKING:  # alembic is imported only when there is something to migrate: it takes ~0.1 s
    from alembic.config import Config

log = structlog.get_logger("cftrunner")
HEAD = "0008"  # the newest revision in versions/; a test checks it
BASELINE = "0001"  # the schema of the code before migrations, which made no alembic_version table
FOLDER = Path(__file__).resolve().parent
# Alembic's version table, as Alembic itself creates it (alembic.runtime.migration): one row, the
# database's revision.
VERSIONS = sa.Table("alembic_version", sa.MetaData(),
                    sa.Column("version_num", sa.String(32), nullable=False),
                    sa.PrimaryKeyConstraint("version_num", name="alembic_version_pkc"))


def upgrade(engine: sa.Engine) -> None:
    """Bring the database to HEAD: create an empty one, stamp one made before migrations as
    BASELINE, upgrade an older one, and refuse one that a newer cftrunner has upgraded past HEAD.

    One SELECT when the database is at HEAD already, so opening it stays cheap; otherwise under a
    lock held until commit, so that processes starting at once migrate one after the other."""
    if _current_fast(engine) == HEAD:
        return
    with engine.begin() as conn:  # on SQLite, BEGIN IMMEDIATE: the write lock
        dialect.lock_for_migration(conn)
        upgraded_from = _upgrade_locked(conn)
    if upgraded_from not in (None, HEAD):  # an empty database getting its tables is no news
        log.info("schema_upgraded", from_revision=upgraded_from, to_revision=HEAD)


def _current_fast(engine: sa.Engine) -> str | None:
    """The stored revision, or None when there is none (or no alembic_version table) yet."""
    with engine.connect() as conn:  # a database that cannot be reached fails here
        conn = conn.execution_options(**{dialect.READ_ONLY: True})
        try:
            with conn.begin():
                revision = conn.execute(sa.select(VERSIONS.c.version_num)).scalar()
        except sa.exc.DBAPIError:
            return None
    return None if revision is None else str(revision)


def _upgrade_locked(conn: sa.Connection) -> str | None:
    """The revision the database had (None: it was empty), having brought it to HEAD."""
    inspector = sa.inspect(conn)
    current: str | None = None
    if inspector.has_table(VERSIONS.name):
        current = conn.execute(sa.select(VERSIONS.c.version_num)).scalar_one_or_none()
    if current == HEAD:
        return current  # another process did it while this one waited for the lock
    if current is None and not inspector.has_table("runs"):
        _create_at_head(conn)
        return None
    from alembic import command
    from alembic.script import ScriptDirectory

    config = alembic_config(conn)
    script = ScriptDirectory.from_config(config)
    if current is None:
        baseline = script.get_revision(BASELINE)
        assert baseline is not None
        _check_baseline(conn, baseline.module.metadata)
        command.stamp(config, BASELINE)
        current = BASELINE
    if current not in {s.revision for s in script.walk_revisions()}:
        raise InputError(f"the state database has schema revision {current}, newer than this "
                         f"cftrunner knows ({HEAD}): upgrade cftrunner to use it")
    command.upgrade(config, "head")
    return current


def _create_at_head(conn: sa.Connection) -> None:
    """Make an empty database's tables as schema.py describes them, stamped HEAD, the way
    Alembic's cookbook builds a database from scratch (create_all, then stamp) rather than
    running every revision in turn. The stamp is one row in Alembic's version table, written
    without loading Alembic, which costs a new database's first process a fifth of a
    CPU-second. Tests hold the revisions to the same schema, and Alembic to the stamp."""
    from cftrunner.store.schema import metadata

    metadata.create_all(conn)
    VERSIONS.create(conn, checkfirst=True)
    conn.execute(VERSIONS.insert().values(version_num=HEAD))


def _check_baseline(conn: sa.Connection, baseline: sa.MetaData) -> None:
    """Refuse a database without migrations whose tables are not BASELINE's, rather than misread it."""
    inspector = sa.inspect(conn)
    missing: list[str] = []
    for table in baseline.sorted_tables:
        if not inspector.has_table(table.name):
            missing.append(f"table {table.name}")
            continue
        present = {c["name"] for c in inspector.get_columns(table.name)}
        missing += [f"{table.name}.{c.name}" for c in table.columns if c.name not in present]
    if missing:
        raise InputError("the state database was made by an early development version of "
                         f"cftrunner and cannot be upgraded: it lacks {', '.join(missing)}")


def alembic_config(conn: sa.Connection) -> Config:
    """Alembic's configuration, built in code: these migrations, run on `conn`."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(FOLDER))
    config.attributes["connection"] = conn
    return config
