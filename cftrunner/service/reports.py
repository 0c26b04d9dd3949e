"""The report commands: a run's report and a project's trend, read from the state database."""

from __future__ import annotations

from pathlib import Path

from cftrunner.config.settings import Settings
from cftrunner.run_ids import check_run_id
from cftrunner.store import Store
from cftrunner.views.report import read_report, report_output
from cftrunner.views.trend import read_trend, trend_output


def report_text(settings: Settings, run_id: str, as_json: bool) -> str:
    """`cftrunner report RUN_ID`: the report of a run in the state database."""
    check_run_id(run_id)
    store = Store.existing(settings.db_url)
    try:
        report = read_report(store, run_id)
    finally:
        store.close()
    return report_output(report, as_json)


def trend_text(settings: Settings, project_id: str | None, html_path: Path | None,
               as_json: bool) -> str:
    """`cftrunner report --trend`: the trend of a project in the state database; with
    `html_path`, its page is written there."""
    store = Store.existing(settings.db_url)
    try:
        found = read_trend(store, project_id)
    finally:
        store.close()
    if html_path is not None:
        from cftrunner.views.report_html import write_trend_html  # the optional plotly part

        write_trend_html(found.rows, found.latest_scores, html_path, found.project_id)
    return trend_output(found, html_path, as_json)
