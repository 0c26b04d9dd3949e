"""The commands that look at runs and settings: status, show, report and config."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cftrunner.cli.options import (
    checked_run_id,
    connection_options,
    cycle_options,
    resolve_with_cycle,
    settings_of,
    throughput_options,
)
from cftrunner.config.describe import describe, describe_cycles
from cftrunner.states import RunState

RUN_STATES = [state.value for state in RunState]


def run_states(_ctx: click.Context, _param: click.Parameter,
               values: tuple[str, ...]) -> tuple[RunState, ...]:
    """The --state values as run states, in any case; a usage error names the valid ones."""
    bad = [v for v in values if v.strip().upper() not in RUN_STATES]
    if bad:
        raise click.BadParameter(f"{bad[0]!r} is not a run state; the states are "
                                 f"{', '.join(RUN_STATES)}")
    return tuple(dict.fromkeys(RunState(v.strip().upper()) for v in values))


@click.command("config")
@cycle_options
@throughput_options
@connection_options
def show_config(**options: Any) -> int:
    """Print every effective setting and where it came from; the API key is redacted.

    Example: cftrunner config --config cftrunner.toml
    """
    resolved = resolve_with_cycle(options)
    rows = describe(resolved)
    width = max(len(key) for key, _, _ in rows)
    value_width = min(50, max(len(value) for _, value, _ in rows))
    if resolved.config_path:
        click.echo(f"# config file: {resolved.config_path}")
    for key, value, source in rows:
        click.echo(f"{key:<{width}}  {value:<{value_width}}  ({source})")
    if lines := describe_cycles(resolved):
        click.echo(f"# {len(lines)} [[cycles]]: the per-cycle keys above are the first one's; "
                   "each sets these itself and inherits the others")
        for line in lines:
            click.echo(line)
    return 0


@click.command()
@click.argument("run_id", required=False, callback=checked_run_id)
@click.option("--json", "as_json", is_flag=True, help="One JSON object (a list without RUN_ID).")
@click.option("--state", "states", multiple=True, metavar="STATE", callback=run_states,
              help=f"Only runs in this state (any case; again for several): "
                   f"{', '.join(RUN_STATES)}.")
@click.option("--cycle", metavar="NAME", help="Only the runs of this cycle (its name, or "
                                              "project_id/model_alias).")
@click.option("--limit", type=click.IntRange(1), metavar="N", help="Only the N newest runs.")
@connection_options
def status(run_id: str | None, as_json: bool, states: tuple[RunState, ...], cycle: str | None,
           limit: int | None, **options: Any) -> int:
    """Show every run as a table, newest first, or one run in detail; --state, --cycle and
    --limit narrow the list (and the JSON list).

    \b
    Example: cftrunner status --json 20261121-223000-a1b2c3
    Example: cftrunner status --state FAILED --cycle P/m --limit 5
    """
    from cftrunner.service.looks import RunFilter, status_text

    if run_id is not None and (states or cycle is not None or limit is not None):
        raise click.UsageError("--state, --cycle and --limit narrow the list: not with RUN_ID")
    click.echo(status_text(settings_of(options), run_id, as_json,
                           RunFilter(states, cycle, limit)))
    return 0


@click.command()
@click.argument("run_id", required=False, callback=checked_run_id)
@click.option("--trend", is_flag=True, help="One line per cycle of a project, and an HTML page "
                                            "of charts.")
@click.option("--project", "project_id", metavar="PROJECT_ID",
              help="With --trend: the project [default: the only one in the state database].")
@click.option("--html", "html_file", metavar="FILE", is_flag=False, flag_value="",
              type=click.Path(dir_okay=False),
              help="Write the HTML page (give FILE after RUN_ID, or as --html=FILE): a run's "
                   "[default cftrunner-report-RUN_ID.html]; with --trend, the trend page, written "
                   "anyway [default cftrunner-trend.html], each cycle's run page beside it.")
@click.option("--no-html", is_flag=True, help="With --trend: write no HTML page.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@connection_options
def report(run_id: str | None, trend: bool, project_id: str | None, html_file: str | None,
           no_html: bool, as_json: bool, **options: Any) -> int:
    """Report a run: items per stage and failure kind, the score distribution, judge retries,
    tokens and time per state; with --html, also as a page (the score histogram against the
    threshold, the lowest-scoring items with the judge's feedback, failures by kind, the gate's
    verdict and the promotion decision). With --trend instead of RUN_ID: every cycle of a
    project, one line each, and a page of every cycle's scores side by side, linking to each
    cycle's run page (written beside it). The pages need the `report` extra (plotly); plotly.js
    is written once beside them, as plotly.min.js, and they open offline.

    Example: cftrunner report 20261121-223000-a1b2c3 --html

    Example: cftrunner report --trend --project P --html pages/trend.html
    """
    from cftrunner.service.reports import report_text, trend_text
    from cftrunner.views.pages.frame import run_page_name

    if (run_id is None) == (not trend):
        raise click.UsageError("give either RUN_ID or --trend")
    if run_id is not None and (project_id or no_html):
        raise click.UsageError("--project and --no-html go with --trend")
    if html_file is not None and no_html:
        raise click.UsageError("--html and --no-html exclude each other")
    settings = settings_of(options)
    if run_id is not None:
        page = None if html_file is None else Path(html_file or run_page_name(run_id))
        click.echo(report_text(settings, run_id, as_json, page))
        return 0
    html = None if no_html else Path(html_file or "cftrunner-trend.html")
    text, note = trend_text(settings, project_id, html, as_json, html_asked=html_file is not None)
    click.echo(text)
    if note:
        click.echo(note, err=True)
    return 0


@click.command()
@click.argument("run_id", callback=checked_run_id)
@click.argument("item", type=click.IntRange(0))
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@connection_options
def show(run_id: str, item: int, as_json: bool, **options: Any) -> int:
    """Show one item: its prompt, answer and judgment, and every completion of its steps with the
    exact judge request and answer. ITEM is its position, from 0, as the logs number items.

    Example: cftrunner show 20261121-223000-a1b2c3 17
    """
    from cftrunner import service

    click.echo(service.show_text(settings_of(options), run_id, item, as_json))
    return 0
