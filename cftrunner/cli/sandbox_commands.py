"""The commands that need no Prem account: a whole demo cycle, and serving the local sandbox."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

from cftrunner.cli.options import display, progress_option


@click.command()
@click.option("--latency", type=click.FloatRange(0, 10), default=0.0, show_default=True,
              help="Seconds the sandbox waits before answering each request.")
@progress_option
def demo(latency: float, show_progress: bool | None) -> int:
    """Run a whole cycle against an in-process sandbox with a throwaway state file; no key needed.

    Example: cftrunner demo
    """
    from importlib import resources

    from cftrunner import logs, service

    logs.configure("info")
    sample = resources.files("cftrunner") / "data" / "sample_prompts.json"
    with resources.as_file(sample) as path:
        text = service.demo(Path(path), latency, on_created=lambda rid: click.echo(rid),
                            display=display(show_progress))
    click.echo(text)
    return 0


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
