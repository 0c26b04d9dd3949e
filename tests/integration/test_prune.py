"""Pruning on a real state database: which finished runs go, with every row of theirs, and which
stay (unfinished ones, the runs a cycle's next run reads), and that the prompts stay used."""

from __future__ import annotations

from collections import Counter
from dataclasses import replace
from datetime import datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from cftrunner.clock import utcnow
from cftrunner.config.cycle import Cycle
from cftrunner.config.run_options import LoopConfig
from cftrunner.config.settings import Settings
from cftrunner.exceptions import InputError
from cftrunner.records import RunSpec
from cftrunner.sandbox import DEFAULT_PROJECT_ID
from cftrunner.service import schedule
from cftrunner.service.prune import Outcome, checked_states, prune
from cftrunner.states import RunState
from cftrunner.store import Store
from cftrunner.store.schema import metadata, prompt_uses, runs
from tests.conftest import JUDGE, MODEL, Harness, make_run, on_postgres

DAY = 86400.0


def drive(harness: Harness, cycle: str | None, prompts: list[str]) -> str:
    """A run of the cycle created and driven to its end (LAUNCHED: it does not follow its job)."""
    spec = RunSpec(project_id=DEFAULT_PROJECT_ID, model_alias=MODEL, judge_model=JUDGE,
                   prompts_source="test")
    run = harness.runner.create(spec, prompts, cycle=cycle)
    assert harness.runner.drive(run.id).state is RunState.LAUNCHED
    return run.id


def age(db_url: str, run_id: str, ended: float, created: float | None = None) -> None:
    """As if the run had been created `created` days ago and ended `ended` days ago."""
    store = Store(db_url)
    try:
        with store.tx() as tx:
            now = utcnow()
            tx.conn.execute(runs.update().where(runs.c.id == run_id).values(
                state_changed_at=now - timedelta(days=ended),
                created_at=now - timedelta(days=created if created is not None else ended)))
    finally:
        store.close()


def rows_by_run(db_url: str) -> dict[str, Counter[str]]:
    """Every table's rows that name a run in their run_id column, counted by table and run;
    and the runs table's own rows."""
    engine = sa.create_engine(db_url)
    found: dict[str, Counter[str]] = {}
    try:
        with engine.connect() as conn:
            for table in metadata.sorted_tables:
                column = table.c.id if table is runs else table.c.get("run_id")
                if column is None:
                    continue
                found[table.name] = Counter({str(r): int(n) for r, n in conn.execute(
                    sa.select(column, sa.func.count()).group_by(column))})
    finally:
        engine.dispose()
    return found


# Tables that name runs without a foreign key: their rows outlive the runs (what a cycle used;
# what was notified of a run), and prune leaves them as they are.
OUTLIVING = frozenset(t.name for t in metadata.sorted_tables if "run_id" in t.c
                      and not any(key.column is runs.c.id for key in t.foreign_keys))


def without(before: dict[str, Counter[str]], gone: list[str]) -> dict[str, Counter[str]]:
    """`rows_by_run` once the runs `gone` are deleted with their rows, and nothing else is."""
    return {table: counts if table in OUTLIVING else
            Counter({r: n for r, n in counts.items() if r not in gone})
            for table, counts in before.items()}


def every_row(db_url: str, table: sa.Table) -> list[tuple[Any, ...]]:
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            return sorted(tuple(r) for r in conn.execute(sa.select(table)))
    finally:
        engine.dispose()


def broken_keys(db_url: str) -> list[tuple[Any, ...]]:
    """Rows whose foreign key names a row that is not there (SQLite checks them on request;
    PostgreSQL refuses such a delete outright)."""
    if on_postgres():
        return []
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            return [tuple(r) for r in conn.exec_driver_sql("PRAGMA foreign_key_check")]
    finally:
        engine.dispose()


def pruned(db_url: str, days: float, states: tuple[RunState, ...] = (),
           dry_run: bool = False) -> tuple[list[str], Outcome]:
    outcome = Outcome(dry_run=dry_run, older_than=f"{days}d")
    ids = [p.run.id for p in prune(Settings(db_url=db_url), days * DAY, states, dry_run, outcome)]
    return ids, outcome


def test_old_finished_runs_go_with_every_row_of_theirs_and_nothing_else_does(
        harness: Harness, db_url: str) -> None:
    prompts = [f"Is parcel {i} late? It said Tuesday." for i in range(12)]
    first = drive(harness, "c", prompts[0:3])
    second = drive(harness, "c", prompts[3:6])
    latest = drive(harness, "c", prompts[6:9])  # the cycle's latest finished run: kept
    other = drive(harness, "d", prompts[9:11])  # the only run of cycle d: kept
    loose = drive(harness, None, prompts[11:12])  # a run of no cycle: nothing needs it
    unfinished = harness.runner.create(RunSpec(
        project_id=DEFAULT_PROJECT_ID, model_alias=MODEL, judge_model=JUDGE,
        prompts_source="test"), ["never driven"], cycle="c").id
    for run_id in (first, second, latest, other, loose, unfinished):
        age(db_url, run_id, ended=40)
    age(db_url, unfinished, ended=40, created=0)  # the newest run of c, and not finished
    before = rows_by_run(db_url)
    uses = every_row(db_url, prompt_uses)
    assert before["items"][first] == 3 and before["completions"][first] >= 6
    assert before["effects"][first] and before["events"][first]

    planned, dry = pruned(db_url, 30, dry_run=True)
    assert planned == [first, second, loose] and [r.id for r in dry.kept] == [latest, other]
    assert rows_by_run(db_url) == before  # a dry run deletes nothing

    deleted, outcome = pruned(db_url, 30)
    assert deleted == [first, second, loose]
    assert [p.items for p in outcome.pruned] == [3, 3, 1]
    after = rows_by_run(db_url)
    assert after == without(before, deleted)
    assert before["prompt_uses"][first] == 3
    assert every_row(db_url, prompt_uses) == uses  # what the cycles used stays used, and where
    assert broken_keys(db_url) == []

    again, outcome = pruned(db_url, 30)
    assert again == [] and not outcome.pruned  # repeating it is a no-op
    assert rows_by_run(db_url) == after


def test_the_age_is_since_the_run_ended_and_states_narrow_the_runs(
        harness: Harness, db_url: str) -> None:
    ended_late = drive(harness, None, ["a"])
    failed = drive(harness, None, ["b"])
    skipped = drive(harness, None, ["c"])
    age(db_url, ended_late, ended=10, created=90)  # created long ago, ended ten days ago
    store = Store(db_url)
    try:
        with store.tx() as tx:
            for run_id, state in ((failed, RunState.FAILED), (skipped, RunState.SKIPPED)):
                tx.conn.execute(runs.update().where(runs.c.id == run_id).values(state=state.value))
    finally:
        store.close()
    age(db_url, failed, ended=40)
    age(db_url, skipped, ended=40)

    assert pruned(db_url, 30, (RunState.FAILED,), dry_run=True)[0] == [failed]
    assert pruned(db_url, 30, (RunState.SKIPPED, RunState.FAILED))[0] == [failed, skipped]
    assert pruned(db_url, 30)[0] == []  # ended ten days ago: not older than 30 days
    assert pruned(db_url, 5)[0] == [ended_late]


def _cycle_run(store: Store, run_id: str, state: RunState, days: float, model: str,
               promoted_to: str | None = None) -> None:
    """A run of cycle P/m, created and ended `days` ago, in `state`; a promotion to
    `promoted_to` stored when given."""
    run = replace(make_run(run_id), project_id="P", model_alias=model, cycle="P/m",
                  loop_config=LoopConfig(follow=True, promote=True, holdout=("h",)).to_json())
    store.create_run(run, ["x"])
    promotion = None if promoted_to is None else {
        "promoted": True, "model_id": promoted_to, "experiment_id": f"exp-{promoted_to}",
        "base_model_id": "base", "reason": "better"}
    then = utcnow() - timedelta(days=days)
    with store.tx() as tx:
        tx.conn.execute(runs.update().where(runs.c.id == run_id).values(
            state=state.value, created_at=then, state_changed_at=then, promotion=promotion))


def _next(store: Store, cycle: Cycle, spec: RunSpec, now: datetime) -> tuple[Any, RunSpec]:
    """What tick decides for the cycle now, and the model its next run would answer with."""
    with store.reading() as tx:
        return schedule._due(tx, cycle, "P/m", now), schedule.promoted(tx.latest_run("P/m"), spec)


def test_the_runs_a_cycle_s_next_run_reads_are_kept(store: Store, db_url: str) -> None:
    _cycle_run(store, "old", RunState.PROMOTED, 60, "m", promoted_to="m1")
    _cycle_run(store, "done", RunState.PROMOTED, 50, "m1", promoted_to="m2")
    # The latest run FAILED, on the model "done" promoted: the next run answers with that model,
    # and the cycle's interval runs from "done", the latest run that did not fail.
    _cycle_run(store, "failed", RunState.FAILED, 40, "m2")
    cycle = Cycle(name="P/m", project_id="P", model_alias="m", prompts="p", interval=365 * DAY,
                  failed_retry_interval=0)
    spec = RunSpec(project_id="P", model_alias="m", judge_model="j", prompts_source="p",
                   loop=LoopConfig(follow=True, promote=True, holdout=("h",)))
    now = utcnow()
    before = _next(store, cycle, spec, now)
    assert before[0].action == "wait" and before[0].run_id == "done"
    assert before[1].model_alias == "m2" and before[1].loop.retune_from is None  # from "failed"

    deleted, outcome = pruned(db_url, 30)
    assert deleted == ["old"] and sorted(r.id for r in outcome.kept) == ["done", "failed"]
    assert _next(store, cycle, spec, now) == before


def test_a_state_a_finished_run_is_never_in_is_refused(db_url: str) -> None:
    assert checked_states(["failed", "Promoted", "FAILED"]) == (RunState.FAILED,
                                                               RunState.PROMOTED)
    with pytest.raises(InputError, match="'nope' is not a run state"):
        checked_states(["nope"])
    with pytest.raises(InputError, match="a JUDGED run is not finished"):
        checked_states(["judged"])
    with pytest.raises(InputError, match="only finished runs are pruned"):
        pruned(db_url, 30, (RunState.CREATED,))


def test_two_prunes_at_once_delete_each_run_once(harness: Harness, db_url: str) -> None:
    ids = [drive(harness, None, [f"prompt {n}"]) for n in range(3)]
    for run_id in ids:
        age(db_url, run_id, ended=40)
    settings = Settings(db_url=db_url)
    one = prune(settings, 30 * DAY)
    assert next(one).run.id == ids[0]  # the first has listed all three, and deleted one
    assert [p.run.id for p in prune(settings, 30 * DAY)] == ids[1:]  # the second, the rest
    assert list(one) == []  # gone already: not deleted, nor reported, again
    assert rows_by_run(db_url)["runs"] == Counter()


def test_every_foreign_key_a_prune_checks_is_the_first_column_of_an_index(
        store: Store, db_url: str) -> None:
    """Deleting a run's rows checks, for each row deleted, the rows whose foreign keys name it:
    with an index on each such column that is one lookup, not a scan of the table per row."""
    engine = sa.create_engine(db_url)
    try:
        with engine.connect() as conn:
            found = sa.inspect(conn)
            unindexed = []
            for table in metadata.sorted_tables:
                leading = {index["column_names"][0] for index in found.get_indexes(table.name)}
                leading |= {c["column_names"][0] for c in found.get_unique_constraints(table.name)}
                leading.add(found.get_pk_constraint(table.name)["constrained_columns"][0])
                unindexed += [f"{table.name}.{key['constrained_columns'][0]}"
                              for key in found.get_foreign_keys(table.name)
                              if key["constrained_columns"][0] not in leading]
    finally:
        engine.dispose()
    assert unindexed == []
