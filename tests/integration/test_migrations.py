"""Schema migrations: the revisions make schema.py's tables, older databases are upgraded on open,
newer ones are refused, and opening an up-to-date database stays one query."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from structlog.testing import capture_logs

from cftrunner.clock import utcnow
from cftrunner.exceptions import InputError
from cftrunner.prompts import prompt_digest
from cftrunner.sandbox import DEFAULT_PROJECT_ID, Sandbox
from cftrunner.states import RunState
from cftrunner.store import Store, migrations
from cftrunner.store.schema import metadata
from tests import legacy_schema
from tests.conftest import (
    JUDGE,
    MODEL,
    PROMPTS,
    Cli,
    Harness,
    assert_exactly_once,
    connected,
    make_run,
)

LONG = "x" * 600  # longer than any VARCHAR length in the schema


def differences(db_url: str, wanted: sa.MetaData) -> list[object]:
    with connected(db_url) as conn:
        return list(compare_metadata(MigrationContext.configure(conn), wanted))


def revision(db_url: str) -> str | None:
    with connected(db_url) as conn:
        return MigrationContext.configure(conn).get_current_revision()


def make_legacy_database(db_url: str, prompts: list[str]) -> None:
    """A state database as the code before migrations left it, holding a run that is not done."""
    now = utcnow()
    with connected(db_url) as conn:
        legacy_schema.metadata.create_all(conn)
        conn.execute(legacy_schema.runs.insert().values(
            id="old", project_id=DEFAULT_PROJECT_ID, model_alias=MODEL, judge_model=JUDGE,
            split_percentage=80,
            prompts_source="test", job_name="cftrunner-old-0000", state="CREATED", created_at=now,
            updated_at=now, state_changed_at=now, cancel_requested=False))
        conn.execute(legacy_schema.items.insert(), [
            {"run_id": "old", "position": i, "prompt": p, "stage": "PENDING", "judge_attempts": 0,
             "updated_at": now} for i, p in enumerate(prompts)])
        conn.execute(legacy_schema.events.insert().values(
            run_id="old", at=now, kind="run_created", data={"items": len(prompts)}))


def test_the_migrations_make_exactly_the_tables_schema_py_describes(db_url: str) -> None:
    with connected(db_url) as conn:  # every revision in turn, from an empty database
        command.upgrade(migrations.alembic_config(conn), "head")
    assert differences(db_url, metadata) == []
    assert revision(db_url) == migrations.HEAD


def version_table(db_url: str) -> tuple[object, ...]:
    with connected(db_url) as conn:
        inspector = sa.inspect(conn)
        columns = [(c["name"], str(c["type"]), c["nullable"])
                   for c in inspector.get_columns("alembic_version")]
        key = inspector.get_pk_constraint("alembic_version")
        rows = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
    return columns, key["name"], key["constrained_columns"], [tuple(r) for r in rows]


def test_an_empty_database_gets_schema_py_tables_at_head_without_running_each_revision(
        make_db_url: Callable[..., str], monkeypatch: pytest.MonkeyPatch) -> None:
    by_revisions, db_url = make_db_url("by_revisions"), make_db_url("new")
    with connected(by_revisions) as conn:
        command.upgrade(migrations.alembic_config(conn), "head")

    def refused(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("an empty database was upgraded revision by revision")

    monkeypatch.setattr(command, "upgrade", refused)
    Store(db_url).close()

    assert differences(db_url, metadata) == []
    assert revision(db_url) == migrations.HEAD  # as Alembic reads it
    assert version_table(db_url) == version_table(by_revisions)


def test_head_names_the_one_newest_revision() -> None:
    assert ScriptDirectory(str(migrations.FOLDER)).get_heads() == [migrations.HEAD]


def test_the_first_revision_is_the_schema_of_the_code_before_migrations(db_url: str) -> None:
    with connected(db_url) as conn:
        command.upgrade(migrations.alembic_config(conn), migrations.BASELINE)
    assert differences(db_url, legacy_schema.metadata) == []


def test_a_database_made_before_migrations_is_upgraded_and_its_run_resumes(
        db_url: str, make_harness: Callable[..., Harness], sandbox: Sandbox) -> None:
    make_legacy_database(db_url, PROMPTS)

    harness = make_harness(sandbox)

    assert revision(db_url) == migrations.HEAD
    assert differences(db_url, metadata) == []
    assert [i.prompt for i in harness.store.items("old")] == PROMPTS
    assert harness.runner.drive("old").state is RunState.LAUNCHED
    assert_exactly_once(sandbox, len(PROMPTS))


def test_a_database_from_an_early_development_version_is_refused_not_misread(db_url: str) -> None:
    make_legacy_database(db_url, ["a"])
    with connected(db_url) as conn:
        conn.execute(sa.text("ALTER TABLE runs DROP COLUMN lease_token"))

    with pytest.raises(InputError, match="cannot be upgraded: it lacks runs.lease_token"):
        Store(db_url)
    assert revision(db_url) is None


def test_a_database_newer_than_this_code_is_refused_in_one_line_exit_2(store: Store,
                                                                        cli: Cli) -> None:
    with connected(store.url) as conn:
        conn.execute(sa.text("UPDATE alembic_version SET version_num = '9999'"))

    with pytest.raises(InputError, match="schema revision 9999, newer than this cftrunner knows"):
        Store(store.url)
    refused = cli.run("status")
    assert refused.returncode == 2
    assert refused.stderr.splitlines() == [
        "cftrunner: error: the state database has schema revision 9999, newer than this "
        f"cftrunner knows ({migrations.HEAD}): upgrade cftrunner to use it"]


@pytest.mark.parametrize("made_before_migrations", [False, True], ids=["empty", "pre-migrations"])
def test_stores_opened_at_once_migrate_the_database_once(db_url: str,
                                                        made_before_migrations: bool) -> None:
    """Eight openers race for a database to migrate: one migrates it, the others wait for it."""
    if made_before_migrations:
        make_legacy_database(db_url, ["a"])
    start = threading.Barrier(8)
    errors: list[BaseException] = []

    def open_store() -> None:
        start.wait()
        try:
            Store(db_url).close()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    with capture_logs() as logs:
        threads = [threading.Thread(target=open_store) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()

    assert errors == []
    upgrades = [e for e in logs if e["event"] == "schema_upgraded"]
    assert len(upgrades) == (1 if made_before_migrations else 0)
    assert revision(db_url) == migrations.HEAD


@pytest.mark.sqlite_only
def test_a_file_another_connection_is_writing_is_put_in_wal_mode_once_it_is_free(
        db_url: str, tmp_path: Path) -> None:
    """SQLite refuses a switch to WAL at once, busy timeout or not, while another connection
    holds the write lock of a file still in rollback-journal mode: opening waits it out."""
    path = tmp_path / "state.db"
    assert db_url == f"sqlite:///{path}"
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("CREATE TABLE other (x)")
    other.execute("BEGIN IMMEDIATE")
    threading.Timer(0.3, other.execute, ["ROLLBACK"]).start()
    try:
        Store(db_url).close()
    finally:
        time.sleep(0.3)  # the timer's ROLLBACK, before the connection closes
        other.close()
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    assert revision(db_url) == migrations.HEAD


@pytest.mark.parametrize("state", ["up to date", "new"])
def test_opening_an_up_to_date_or_a_new_database_does_not_load_alembic(
        db_url: str, state: str) -> None:
    """The CLI opens the store once per command: at HEAD, that is one SELECT, no migration code;
    a new database gets its tables and its stamp without Alembic either."""
    if state == "up to date":
        Store(db_url).close()
    code = ("import sys; from cftrunner.store import Store; Store(sys.argv[1]).close(); "
            "print('alembic' in sys.modules)")
    result = subprocess.run([sys.executable, "-c", code, db_url], capture_output=True,
                            text=True, timeout=60)
    assert result.stdout.strip() == "False", result.stderr
    assert revision(db_url) == migrations.HEAD


def test_values_longer_than_the_declared_lengths_are_kept_on_either_database(store: Store) -> None:
    """SQLite never enforced VARCHAR lengths; PostgreSQL must not either (revision 0002)."""
    store.create_run(replace(make_run(LONG[:300]), model_alias=LONG, project_id=LONG), [LONG])
    stored = store.run(LONG[:300])
    assert (stored.model_alias, stored.project_id) == (LONG, LONG)


def test_upgrading_to_0005_notes_every_prompt_the_cycles_runs_used(db_url: str) -> None:
    """A database of runs made before prompt sources: their prompts count as used by their cycle,
    each pointing at the latest run that took it, so the next tick does not take them again."""
    with connected(db_url) as conn:
        command.upgrade(migrations.alembic_config(conn), "0004")
    earlier = utcnow()
    later = earlier + timedelta(seconds=5)
    runs = sa.table("runs", *(sa.column(c) for c in (
        "id", "project_id", "model_alias", "judge_model", "split_percentage", "prompts_source",
        "job_name", "state", "created_at", "updated_at", "state_changed_at", "cycle",
        "cancel_requested")))
    items = sa.table("items", *(sa.column(c) for c in (
        "run_id", "position", "prompt", "stage", "judge_attempts", "updated_at")))
    with connected(db_url) as conn:
        for run_id, cycle, created, prompts in (("r1", "c", earlier, PROMPTS[:3]),
                                                ("r2", "c", later, PROMPTS[2:4]),
                                                ("r3", None, later, PROMPTS[4:5])):
            conn.execute(runs.insert().values(
                id=run_id, project_id=DEFAULT_PROJECT_ID, model_alias=MODEL, judge_model=JUDGE,
                split_percentage=80, prompts_source="p.json", job_name=f"job-{run_id}",
                state="LAUNCHED", created_at=created.replace(tzinfo=None),
                updated_at=created.replace(tzinfo=None),
                state_changed_at=created.replace(tzinfo=None), cycle=cycle,
                cancel_requested=False))
            conn.execute(items.insert(), [
                {"run_id": run_id, "position": i, "prompt": p, "stage": "ADDED",
                 "judge_attempts": 1, "updated_at": created.replace(tzinfo=None)}
                for i, p in enumerate(prompts)])
    store = Store(db_url)
    try:
        with store.reading() as tx:
            used = tx.used_prompts("c")
        with connected(db_url) as conn:
            rows = conn.execute(sa.text(
                "SELECT digest, run_id, position FROM prompt_uses ORDER BY run_id, position"))
            where = {digest: (run_id, position) for digest, run_id, position in rows}
    finally:
        store.close()
    assert revision(db_url) == migrations.HEAD
    assert set(used) == {prompt_digest(p) for p in PROMPTS[:4]}
    assert where == {prompt_digest(PROMPTS[0]): ("r1", 0), prompt_digest(PROMPTS[1]): ("r1", 1),
                     prompt_digest(PROMPTS[2]): ("r2", 0), prompt_digest(PROMPTS[3]): ("r2", 1)}
    assert abs((used[prompt_digest(PROMPTS[3])] - later).total_seconds()) < 1
