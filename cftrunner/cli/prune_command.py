"""The prune command: delete finished runs that ended long ago, with everything of theirs."""

from __future__ import annotations

from typing import Any

import click

from cftrunner.cli.options import connection_options, settings_of
from cftrunner.config.values import duration_text, parse_duration


def _age(_ctx: click.Context, _param: click.Parameter, value: str) -> float:
    """--older-than as seconds, checked as it is parsed (before the settings are resolved)."""
    try:
        seconds = parse_duration(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a duration: \"30d\", \"12h\", \"90m\", "
                                 "\"45s\" or a number of seconds") from None
    return seconds


def _states(_ctx: click.Context, _param: click.Parameter, values: tuple[str, ...]) -> Any:
    from cftrunner.service.prune import checked_states

    return checked_states(values)


@click.command()
@click.option("--older-than", "older_than", required=True, metavar="AGE", callback=_age,
              help='Only runs that ended (last changed state) more than AGE ago: "30d", "12h", '
                   '"90m", "45s" or a number of seconds.')
@click.option("--state", "states", multiple=True, metavar="STATE", callback=_states,
              help="Only runs in this state (any case; again for several): FAILED, CANCELLED, "
                   "SKIPPED, LAUNCHED, TRAINED, TRAIN_FAILED, PROMOTED, NOT_PROMOTED [default: "
                   "any finished run].")
@click.option("--dry-run", is_flag=True, help="List the runs that would be deleted; delete nothing.")
@connection_options
def prune(older_than: float, states: Any, dry_run: bool, **options: Any) -> int:
    """Delete finished runs that ended more than AGE ago, each with its items, completions,
    effects, events, evaluations, rechecks and workers, in a transaction of its own: a kill
    leaves every run whole or gone. A run that is not finished is never deleted, nor the runs a
    cycle's next run reads: the latest finished run of each cycle (the model it answers with)
    and its latest run that did not fail (when it is due). The record of which prompts each
    cycle used stays, so a tick never takes them again as new. Prints a line per run and a
    total; run again, it has nothing to prune.

    \b
    Example: cftrunner prune --older-than 30d --dry-run
    Example: cftrunner prune --older-than 90d --state FAILED --state SKIPPED
    """
    from cftrunner.service.prune import Outcome, pruned_line, total_line
    from cftrunner.service.prune import prune as prune_runs

    outcome = Outcome(dry_run=dry_run, older_than=duration_text(older_than), states=states)
    for pruned in prune_runs(settings_of(options), older_than, states, dry_run, outcome):
        click.echo(pruned_line(pruned, dry_run))
    click.echo(total_line(outcome))
    return 0
