"""The report commands: a run's report and a project's trend, as text, JSON and HTML pages."""

from __future__ import annotations

from pathlib import Path

from cftrunner import api
from cftrunner.config.settings import Settings
from cftrunner.exceptions import InputError
from cftrunner.run_ids import check_run_id
from cftrunner.store import Store
from cftrunner.views.pages.frame import NEEDS_PLOTLY, has_plotly
from cftrunner.views.pages.run_data import read_run_page
from cftrunner.views.pages.run_page import write_run
from cftrunner.views.pages.trend_page import write_trend
from cftrunner.views.report import report_output
from cftrunner.views.trend import read_trend, trend_output

NO_PAGE = f"no HTML page: {NEEDS_PLOTLY}"


def report_text(settings: Settings, run_id: str, as_json: bool,
                html_path: Path | None = None) -> str:
    """`cftrunner report RUN_ID`: the report of a run in the state database; with `html_path`,
    its page is written there (InputError, before anything is read, without plotly)."""
    check_run_id(run_id)
    if html_path is not None and not has_plotly():
        raise InputError(NEEDS_PLOTLY)
    if html_path is None:
        return report_output(api.report(run_id, settings.db_url), as_json, None)
    store = Store.existing(settings.db_url)
    try:
        page = read_run_page(store, run_id)
    finally:
        store.close()
    write_run(page, html_path)
    return report_output(page.report, as_json, html_path)


def trend_text(settings: Settings, project_id: str | None, html_path: Path | None,
               as_json: bool, html_asked: bool = False) -> tuple[str, str | None]:
    """`cftrunner report --trend`: the trend of a project in the state database, and a note
    for the user. With `html_path`, the page is written there and each cycle's run page beside
    it; without plotly, no page and the note says how to get one (InputError instead when the
    page was asked for by name, `html_asked`)."""
    note = None
    if html_path is not None and not has_plotly():
        if html_asked:
            raise InputError(NEEDS_PLOTLY)
        html_path, note = None, NO_PAGE
    store = Store.existing(settings.db_url)
    try:
        found = read_trend(store, project_id)
        pages = ([read_run_page(store, row.run_id) for row in found.rows]
                 if html_path is not None else [])
    finally:
        store.close()
    if html_path is not None:
        write_trend(found.rows, pages, html_path, found.project_id)
    return trend_output(found, html_path, as_json), note
