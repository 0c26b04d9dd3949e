"""The commands that drive a run or decide about one: start, tick, resume, cancel and settle."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from cftrunner.cli.afterwards import note_ticked
from cftrunner.cli.exits import EXIT_LAUNCHED, _outcome, finish, print_error, verdict
from cftrunner.cli.options import (
    CYCLE_OPTION,
    checked_run_id,
    connection_options,
    cycle_options,
    display,
    progress_option,
    resolve_with_cycle,
    settings_of,
    summarise,
    throughput_options,
)
from cftrunner.config.resolution import names, select
from cftrunner.config.settings import Settings
from cftrunner.exceptions import InputError
from cftrunner.states import ENDS_UNLESS_LOOPING

if TYPE_CHECKING:
    from cftrunner import service
    from cftrunner.shutdown import Stop


def _stop(settings: Settings) -> Stop:
    """SIGTERM and SIGINT stop the run at its next checkpoint instead of killing it."""
    from cftrunner import shutdown

    stop = shutdown.Stop()
    shutdown.install(stop, settings.shutdown_grace)
    return stop


@click.command()
@cycle_options
@CYCLE_OPTION
@click.option("--run-id", callback=checked_run_id,
              help="Choose the run id: 1 to 100 ASCII letters, digits, '-', '_' or '.', not "
                   "starting with '.' (default: time-based and random).")
@click.option("--dry-run", is_flag=True,
              help="Check the key, the project and the models (reads only) and print what the "
                   "run would do; create and send nothing.")
@progress_option
@throughput_options
@connection_options
def start(cycle: str | None, run_id: str | None, dry_run: bool, show_progress: bool | None,
          **options: Any) -> int:
    """Start a cycle and drive it to LAUNCHED; the run id is the first line of output, what
    the run came to the next (then, on a terminal, a summary and the command for its report).
    With several [[cycles]] in the config file, --cycle NAME picks one.

    Example: cftrunner start --project-id P --model-alias my-model-v3 --prompts prompts.json
    """
    from cftrunner import service
    from cftrunner.service.schedule import spec_from

    resolved = resolve_with_cycle(options)
    chosen = select(resolved, cycle)
    if len(chosen) > 1:
        raise InputError(f"start drives one cycle and {resolved.config_path} describes "
                         f"{len(chosen)}: pick one with --cycle NAME ({names(resolved)})")
    spec = spec_from(chosen[0], run_id, "start")
    if dry_run:
        click.echo(service.plan_text(resolved.settings, spec, chosen[0].name))
        return EXIT_LAUNCHED
    run = service.start(resolved.settings, spec, on_created=lambda rid: click.echo(rid),
                        stop=_stop(resolved.settings), display=display(show_progress),
                        cycle=chosen[0].name)
    code = finish(run)
    summarise(resolved.settings, run.id, show_progress)
    return code


@click.command()
@cycle_options
@CYCLE_OPTION
@click.option("--dry-run", is_flag=True,
              help="Say what tick would do and which prompts a new run would take; store and "
                   "send nothing.")
@progress_option
@throughput_options
@connection_options
def tick(cycle: str | None, dry_run: bool, show_progress: bool | None, **options: Any) -> int:
    """For cron: resume this cycle's unfinished run, or start one when the interval has passed,
    or say there is nothing to do (exit 0). A run another process drives exits 75. A new run
    takes the prompts of the cycle's source that no earlier run of it used; with fewer than
    min_new_prompts of them the cycle is SKIPPED (one line, exit 0).

    With several [[cycles]] in the config file, each one (or only --cycle NAME) in the file's
    order, each in isolation: one line "cycle NAME: ..." as each ends (started RUN_ID: STATE,
    resumed RUN_ID: STATE, skipped RUN_ID: REASON, nothing to do: REASON, or error: MESSAGE, the
    error on stderr too). The exit status is then 0 if every cycle's own is 0, else the first one
    that is not.

    Example: cftrunner tick --config /etc/cftrunner/cftrunner.toml
    """
    from cftrunner import service

    resolved = resolve_with_cycle(options)
    chosen = select(resolved, cycle)
    if dry_run:
        for one in chosen:
            prefix = f"cycle {one.title}: " if len(resolved.cycles) > 1 else ""
            click.echo(prefix + service.preview_text(resolved.settings, one))
        return EXIT_LAUNCHED
    stop = _stop(resolved.settings)
    if len(resolved.cycles) > 1:
        outcomes = [_ticked(ticked) for ticked in service.tick_each(
            resolved, chosen, stop=stop, display=display(show_progress))]
        return next((code for code in outcomes if code), EXIT_LAUNCHED)
    decision, run = service.tick(resolved, on_created=lambda rid: click.echo(rid), stop=stop,
                                 display=display(show_progress), cycle=chosen[0])
    if run is None:
        click.echo(f"nothing to do: {decision.reason}")
        return EXIT_LAUNCHED
    code = finish(run)
    summarise(resolved.settings, run.id, show_progress)
    return code


def _ticked(ticked: service.Ticked) -> int:
    """Print one cycle's line, and its error on stderr; its exit status."""
    note_ticked(ticked)
    error = None
    if ticked.error is not None:
        error, code = _outcome(ticked.error)
        line = f"error: {error}"
    elif ticked.run is None:
        assert ticked.decision is not None
        line, code = f"nothing to do: {ticked.decision.reason}", EXIT_LAUNCHED
    elif ticked.decision is not None and ticked.decision.action == "skip":
        line, code = f"skipped {ticked.run.id}: {ticked.decision.reason}", EXIT_LAUNCHED
    else:
        run = ticked.run
        verb = "started" if ticked.decision and ticked.decision.action == "start" else "resumed"
        said, code, failed = verdict(run)
        line = f"{verb} {run.id}: {said}"
        if failed:
            error = f"run {run.id} {said}"
    click.echo(f"cycle {ticked.cycle.title}: {' '.join(line.split())}")
    if error is not None:
        print_error(f"cycle {ticked.cycle.title}: {error}")
    return code


@click.command()
@click.argument("run_id", callback=checked_run_id)
@click.option("--worker", is_flag=True,
              help="Work on the run's items beside other processes, on this host or others, "
                   "sharing one database; the run-level steps are then done by one of them.")
@progress_option
@throughput_options
@connection_options
def resume(run_id: str, worker: bool, show_progress: bool | None, **options: Any) -> int:
    """Continue a run from its last checkpoint; a finished run is shown and left alone.

    Example: cftrunner resume 20261121-223000-a1b2c3
    """
    from cftrunner import service

    settings = settings_of(options)
    run = service.resume(settings, run_id, stop=_stop(settings),
                         display=display(show_progress), worker=worker)
    if worker and not run.finished and run.state not in ENDS_UNLESS_LOOPING:
        click.echo(f"run {run.id}: no item left for this worker; the run is {run.state.value} "
                   "and another process takes it on")
        return EXIT_LAUNCHED
    code = finish(run)
    summarise(settings, run.id, show_progress)
    return code


@click.command()
@click.argument("run_id", callback=checked_run_id)
@connection_options
def cancel(run_id: str, **options: Any) -> int:
    """Cancel a run: it stops at its next checkpoint, never inside a request, and ends CANCELLED.

    Example: cftrunner cancel 20261121-223000-a1b2c3
    """
    from cftrunner import service

    click.echo(service.cancel(settings_of(options), run_id))
    return 0


@click.command()
@click.argument("run_id", callback=checked_run_id)
@click.argument("target", metavar="ITEM_OR_KEY")
@click.option("--happened", "happened", flag_value=True, default=None,
              help="The request happened: cftrunner goes on as if it had read so.")
@click.option("--not-happened", "happened", flag_value=False,
              help="The request did not happen: cftrunner sends it again.")
@click.option("--id", "remote_id", metavar="ID",
              help="With --happened: the id of the trace, snapshot or job it made.")
@connection_options
def settle(run_id: str, target: str, happened: bool | None, remote_id: str | None,
           **options: Any) -> int:
    """Decide whether a request whose outcome cftrunner could not tell happened.

    cftrunner never sends such a request again on its own; after timeouts.reconcile_give_up it
    waits for this. ITEM_OR_KEY is an item's position or an effect's key (trace:3, add:3,
    snapshot, recs, launch), as `cftrunner status RUN_ID` lists them.

    Example: cftrunner settle 20261121-223000-a1b2c3 7 --happened --id 5b0f...
    """
    from cftrunner import service

    if happened is None:
        raise click.UsageError("say --happened or --not-happened")
    click.echo(service.settle(settings_of(options), run_id, target, happened, remote_id))
    return 0
