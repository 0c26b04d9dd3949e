"""The commands that need no Prem account: a whole demo cycle, and serving the local sandbox."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Any

import click

from cftrunner.cli.exits import IN_USE, finish
from cftrunner.cli.options import chosen_level, display, log_options, progress_option, summarise
from cftrunner.config.cycle_file import make_state_folder
from cftrunner.config.settings import KEY_BY_NAME, Settings


@click.command()
@click.option("--latency", type=click.FloatRange(0, 10), default=0.0, show_default=True,
              help="Seconds the sandbox waits before answering each request.")
@click.option("--db", "db", metavar="URL",
              help="SQLAlchemy URL of the state database the demo's run is kept in; another "
                   "demo adds its run beside it [default sqlite:///state/cftrunner-demo.db].")
@progress_option
@log_options
def demo(latency: float, db: str | None, show_progress: bool | None, **options: Any) -> int:
    """Run a whole cycle against an in-process sandbox; no key or configuration needed. The run
    is kept in a state database (--db, else state/cftrunner-demo.db here), whose path and the
    commands to look at it end the output. Only its own options apply, not the environment's
    or a config file's.

    Example: cftrunner demo --log-file demo.log
    """
    from importlib import resources

    from cftrunner import logs, service
    from cftrunner.service.demo import DEMO_DB
    from cftrunner.store import without_password

    level = chosen_level(options)
    before = click.get_current_context().find_root().params
    given = {key: options.get(key) or before.get(key) for key in ("log_level", "log_file",
                                                                  "log_format")}
    db = db or before.get("db")
    db_url = KEY_BY_NAME["db"].check(db, text=True, label="--db") if db else DEMO_DB
    if db_url == DEMO_DB:
        make_state_folder(Path.cwd() / "state", None)
    logs.configure(level or given["log_level"] or "info", fmt=given["log_format"],
                   file=os.path.abspath(given["log_file"]) if given["log_file"] else None)
    IN_USE.update(db=db_url, config=None)
    sample = resources.files("cftrunner") / "data" / "sample_prompts.json"
    with resources.as_file(sample) as path:
        run = service.demo(Path(path), latency, db_url, on_created=lambda rid: click.echo(rid),
                           display=display(show_progress))
    code = finish(run)
    summarise(Settings(db_url=db_url), run.id, show_progress, always=True)
    shown = without_password(db_url)
    click.echo(f"  {'state':<11} {shown.removeprefix('sqlite:///')} (kept: another demo adds "
               "its run to it)")
    click.echo(f"  {'look':<11} {shlex.join(['cftrunner', 'status', '--db', shown])}")
    return code


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True)
@click.option("--latency", type=float, default=0.0, help="Seconds added to every request.")
@click.option("--error-rate", type=click.FloatRange(0, 1), default=0.0,
              help="Share of requests answered 503 without acting.")
@click.option("--rate-limit", type=click.FloatRange(0, 1), default=0.0,
              help="Share of requests, picked at random, answered 429 with --retry-after.")
@click.option("--retry-after", type=float, default=1.0, show_default=True)
@click.option("--max-rps", type=click.FloatRange(0, min_open=True), default=None,
              help="Requests a second allowed across all routes, like an API gateway's "
                   "limit; one beyond it gets 429 with Retry-After and is not acted on.")
@click.option("--burst", type=click.IntRange(1), default=1, show_default=True,
              help="Requests --max-rps lets through at once (its token bucket's size).")
@click.option("--drop-rate", type=click.FloatRange(0, 1), default=0.0,
              help="Share of requests acted on whose answer is then dropped.")
@click.option("--late-rate", type=click.FloatRange(0, 1), default=0.0,
              help="Share of requests acted on and answered only after --late-delay.")
@click.option("--late-delay", type=float, default=30.0, show_default=True)
@click.option("--judge-malformed", type=click.FloatRange(0, 1), default=0.0,
              help="Share of judge answers that are not valid judgments.")
@click.option("--judge-truncated", type=click.FloatRange(0, 1), default=0.0,
              help="Share of judge answers cut off (finish_reason: length).")
@click.option("--structured-output/--no-structured-output", default=True, show_default=True,
              help="Whether the judge accepts response_format json_schema (else HTTP 400).")
@click.option("--list-lag", type=click.FloatRange(0), default=0.0, show_default=True,
              metavar="SECONDS",
              help="The trace list shows each trace, and its addition, only this late.")
@click.option("--list-lag-uneven", is_flag=True,
              help="Each trace late by its own random share of --list-lag.")
@click.option("--judge-drift", type=click.FloatRange(-1, 1), default=0.0, show_default=True,
              help="Added to every score the judge gives, within 0..1: a judge that drifted.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--require-key", metavar="KEY", help="Accept only this bearer token.")
@click.option("--verbose", is_flag=True, help="Log every request to stderr.")
def sandbox(**options: Any) -> int:
    """Serve the local Prem sandbox: every endpoint cftrunner uses, with switchable faults.

    Example: cftrunner sandbox --port 8765 --drop-rate 0.1 --max-rps 20 --burst 5
    """
    from cftrunner import service

    service.serve_sandbox(**options, announce=lambda line: click.echo(line))
    return 0
