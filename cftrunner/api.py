"""The Python API for notebooks and other tools: runs, items, effects and reports as records.

Every function takes the state database as `db`, a database URL or the path of an SQLite file
(default: the one the CLI uses, `state/cftrunner.db` relative to the working folder), opens it for
the call only, and never creates one that is not there. The CLI's `status`, `show` and `report`
read through these functions and only turn the records into text. The commands that change runs
(`start`, `resume`, `cancel`, `settle`, `tick`) are the library calls in `cftrunner.service`;
they take `Settings` (see `settings()`).

    >>> from cftrunner import api
    >>> latest = api.runs("state/cftrunner.db", limit=1)[0]
    >>> weak = [i for i in api.items(latest.run.id, "state/cftrunner.db", below=0.5)]
    >>> api.report(latest.run.id, "state/cftrunner.db").scores.mean
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

from cftrunner.config.resolution import resolve
from cftrunner.config.settings import DEFAULT_DB, Settings
from cftrunner.exceptions import ItemNotFoundError
from cftrunner.records import Completion, Effect, Event, Item, RunSummary
from cftrunner.run_ids import check_run_id
from cftrunner.states import ItemStage, RunState
from cftrunner.store import Store
from cftrunner.views.report import RunReport, read_report
from cftrunner.views.trend import Trend, read_trend

__all__ = ["Completion", "Effect", "Event", "Item", "RunReport", "RunSummary", "Settings", "Trend",
           "effects", "events", "item", "items", "report", "run", "runs", "settings", "trend"]


def _url(db: str | os.PathLike[str]) -> str:
    text = os.fspath(db)
    return text if "://" in text else f"sqlite:///{text}"


@contextmanager
def _store(db: str | os.PathLike[str]) -> Iterator[Store]:
    store = Store.existing(_url(db))
    try:
        yield store
    finally:
        store.close()


def settings(overrides: Mapping[str, Any] | None = None) -> Settings:
    """The settings the CLI would use here: `overrides` (dotted keys, as on the command line:
    {"db": ..., "api.concurrency": 8}), then CFTRUNNER_* variables, the config file, defaults."""
    return resolve(dict(overrides or {})).settings


def runs(db: str | os.PathLike[str] = DEFAULT_DB, *,
         states: Iterable[RunState | str] = (), cycle: str | None = None,
         limit: int | None = None) -> list[RunSummary]:
    """The runs, newest first, with their counts: in one of `states` (any when empty), of
    `cycle` (any when None), at most `limit` of them."""
    wanted = tuple(RunState(str(s).upper()) for s in states)
    with _store(db) as store:
        return [store.summary(r) for r in store.runs(wanted, cycle, limit)]


def run(run_id: str, db: str | os.PathLike[str] = DEFAULT_DB) -> RunSummary:
    """One run with its counts, workers, errors and undecided effects."""
    check_run_id(run_id)
    with _store(db) as store:
        return store.summary(store.run(run_id))


def items(run_id: str, db: str | os.PathLike[str] = DEFAULT_DB, *,
          stages: Iterable[ItemStage | str] | None = None, below: float | None = None,
          above: float | None = None, by_score: bool = False) -> Iterator[Item]:
    """The run's items, read a page at a time (a run of any size): at one of `stages`, scored
    below `below`, at or above `above`; by position, or by score with the unscored last."""
    check_run_id(run_id)
    wanted = None if stages is None else {ItemStage(str(s).upper()) for s in stages}
    with _store(db) as store:
        store.run(run_id)  # a missing run is an error, not an empty list
        for page in store.item_pages(run_id, stages=wanted, below=below, above=above,
                                     by_score=by_score):
            yield from (found for found, _tokens in page)


def item(run_id: str, position: int,
         db: str | os.PathLike[str] = DEFAULT_DB) -> tuple[Item, list[Completion]]:
    """One item and every completion of its steps (the exact judge requests and answers)."""
    check_run_id(run_id)
    with _store(db) as store:
        found = store.item_at(store.run(run_id).id, position)
        if found is None:
            raise ItemNotFoundError(f"run {run_id} has no item {position} (items are numbered "
                                    "from 0, as in the logs)")
        return found, store.completions(found.id)


def effects(run_id: str, db: str | os.PathLike[str] = DEFAULT_DB,
            kind: str | None = None) -> list[Effect]:
    """The run's remote effects (traces, additions, snapshot, recommendations, job), each with
    its stored intent, outcome and status."""
    check_run_id(run_id)
    with _store(db) as store:
        store.run(run_id)
        return store.effects(run_id, kind)


def events(run_id: str, db: str | os.PathLike[str] = DEFAULT_DB) -> list[Event]:
    """The run's events, oldest first: what the logs said, as stored."""
    check_run_id(run_id)
    with _store(db) as store:
        store.run(run_id)
        return store.events(run_id)


def report(run_id: str, db: str | os.PathLike[str] = DEFAULT_DB) -> RunReport:
    """A run's report: counts per stage and failure kind, the score distribution, judge retries,
    tokens and time per state (`.to_json()` for a plain dict)."""
    check_run_id(run_id)
    with _store(db) as store:
        return read_report(store, run_id)


def trend(project_id: str | None = None, db: str | os.PathLike[str] = DEFAULT_DB) -> Trend:
    """A project's cycles, oldest first (the only project in the database when None)."""
    with _store(db) as store:
        return read_trend(store, project_id)
