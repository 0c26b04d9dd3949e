"""Paging through the trace list: when reconciling, page after page, bounded by the list's total
and safe against an API that ignores the page parameter; when checking corrections, pages in
parallel, stopping as soon as what is looked for is found."""

from __future__ import annotations

import dataclasses
import threading
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cftrunner.config.settings import Settings
from cftrunner.driver import Driver
from cftrunner.exceptions import RunStopped
from cftrunner.payloads.replies import RemoteTrace
from cftrunner.reconcile import Reconciler, Retrying
from cftrunner.stages import launch
from cftrunner.store import Store
from tests.conftest import make_run


def trace(n: int) -> RemoteTrace:
    return RemoteTrace(id=f"t{n}", created_at=datetime.now(UTC), model_id="m", project_id="p",
                       input="q", output="a", score=0.5, feedback="f", added_to_dataset=True,
                       processing_status="none")


class PagedTraces:
    """A fake of the client's trace listing: `pages` pages of two traces each."""

    def __init__(self, pages: int, total: int | None, ignore_page: bool = False) -> None:
        self.pages, self.total, self.ignore_page = pages, total, ignore_page
        self.asked: list[int] = []

    def traces(self, project_id: str, model_id: str, page: int) -> tuple[list[RemoteTrace],
                                                                          int | None]:
        self.asked.append(page)
        page = 1 if self.ignore_page else page
        if page > self.pages:
            return [], self.total
        return [trace(2 * page), trace(2 * page + 1)], self.total


def reconciler(db_url: str, client: Any, max_pages: int) -> tuple[Reconciler, Any]:
    store = Store(db_url)
    store.create_run(make_run(), ["q"])
    once: Retrying = lambda _what, call: call()  # noqa: E731 - each page read once, no retry
    return (Reconciler(store, client, Settings(reconcile_max_pages=max_pages), retrying=once),
            store.run("r1"))


def test_a_listing_with_a_total_is_read_past_the_page_cap(db_url: str) -> None:
    client = PagedTraces(pages=6, total=12)
    rec, run = reconciler(db_url, client, max_pages=2)
    since = datetime.now(UTC) - timedelta(hours=1)
    assert len(list(rec.traces_since(run, since))) == 12


def test_a_listing_without_a_total_stops_at_the_cap(db_url: str) -> None:
    client = PagedTraces(pages=6, total=None)
    rec, run = reconciler(db_url, client, max_pages=2)
    with pytest.raises(RunStopped, match="longer than 2 pages"):
        list(rec.traces_since(run, datetime.now(UTC) - timedelta(hours=1)))


def test_a_listing_that_ignores_the_page_is_not_read_forever(db_url: str) -> None:
    client = PagedTraces(pages=6, total=1000, ignore_page=True)
    rec, run = reconciler(db_url, client, max_pages=2)
    with pytest.raises(RunStopped, match="same page again"):
        list(rec.traces_since(run, datetime.now(UTC) - timedelta(hours=1)))
    assert client.asked == [1, 2]


class SlowPagedTraces(PagedTraces):
    """PagedTraces whose pages take a moment, counting how many are read at once."""

    def __init__(self, pages: int, total: int | None, created: dict[int, datetime] | None = None,
                 quick: frozenset[int] = frozenset()) -> None:
        super().__init__(pages, total)
        self.created = created or {}
        self.quick = quick  # pages answered at once
        self.lock = threading.Lock()
        self.in_flight = self.most_in_flight = 0

    def traces(self, project_id: str, model_id: str, page: int) -> tuple[list[RemoteTrace],
                                                                          int | None]:
        with self.lock:
            self.in_flight += 1
            self.most_in_flight = max(self.most_in_flight, self.in_flight)
        time.sleep(0 if page in self.quick else 0.05)
        with self.lock:
            self.in_flight -= 1
        found, total = super().traces(project_id, model_id, page)
        when = self.created.get(page)
        return [dataclasses.replace(t, created_at=when) for t in found] if when else found, total


def corrections_reader(db_url: str, client: Any, concurrency: int) -> tuple[Driver, Any]:
    store = Store(db_url)
    store.create_run(make_run(), ["q"])
    return Driver(store, Settings(concurrency=concurrency), client=client), store.run("r1")


def test_the_corrections_check_reads_pages_in_parallel_and_finds_every_trace(db_url: str
                                                                             ) -> None:
    client = SlowPagedTraces(pages=20, total=40)
    runner, run = corrections_reader(db_url, client, concurrency=4)
    wanted = {"t2", "t17", "t41"}  # pages 1, 8 and 20
    found = launch._read_traces(runner, run, wanted, datetime.now(UTC) - timedelta(hours=1))
    assert set(found) == wanted
    assert sorted(client.asked) == list(range(1, 21))
    assert 1 < client.most_in_flight <= 4


def test_the_corrections_check_stops_once_every_trace_is_found(db_url: str) -> None:
    client = SlowPagedTraces(pages=20, total=40, quick=frozenset({3}))
    runner, run = corrections_reader(db_url, client, concurrency=4)
    found = launch._read_traces(runner, run, {"t2", "t7"},  # pages 1 and 3
                                   datetime.now(UTC) - timedelta(hours=1))
    assert set(found) == {"t2", "t7"}
    # The first page, then up to four pages at once from page 2; page 3, answered before any
    # other, ends the reading: no page is asked for once the last trace is found.
    assert {1, 2, 3} <= set(client.asked) <= {1, 2, 3, 4, 5}


def test_the_corrections_check_stops_at_traces_older_than_the_run(db_url: str) -> None:
    old = datetime.now(UTC) - timedelta(days=2)
    client = SlowPagedTraces(pages=20, total=40, created={n: old for n in range(4, 21)})
    runner, run = corrections_reader(db_url, client, concurrency=2)
    found = launch._read_traces(runner, run, {"t2", "t40"},
                                   datetime.now(UTC) - timedelta(hours=1))
    assert set(found) == {"t2"}  # t40 is older than the run: not looked for past page 4
    assert set(range(1, 5)) <= set(client.asked) <= set(range(1, 6))  # at most one past it


def test_the_corrections_check_without_a_total_reads_page_after_page(db_url: str) -> None:
    client = SlowPagedTraces(pages=6, total=None)
    runner, run = corrections_reader(db_url, client, concurrency=4)
    found = launch._read_traces(runner, run, {"t13"}, datetime.now(UTC) - timedelta(hours=1))
    assert set(found) == {"t13"}
    assert client.most_in_flight == 1
