"""Paging through the trace list when reconciling: bounded by the list's total, and safe against
an API that ignores the page parameter."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from cftrunner.exceptions import RunStopped
from cftrunner.payloads import RemoteTrace
from cftrunner.reconcile import Reconciler
from cftrunner.settings import Settings
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
    return Reconciler(store, client, Settings(reconcile_max_pages=max_pages)), store.run("r1")


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
