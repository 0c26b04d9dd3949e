"""The `cftrunner` command: thin wrappers over the library, and the one map from errors to exit codes.

Each command imports the library it calls (`service`, `report`, `display`, `logs`) when it runs:
SQLAlchemy, requests and structlog take most of a second to import on a small host, which `--help`,
`--version` and a usage error then do not pay (and `config` pays only for structlog)."""

from __future__ import annotations

import shlex
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from cftrunner import config
from cftrunner.exceptions import (
    AuthError,
    CftrunnerError,
    InputError,
    Interrupted,
    KeyRejected,
    LeaseLost,
    NeedsDecision,
    RunBusy,
    RunStopped,
    UnusableDatabaseError,
)
from cftrunner.run_ids import check_run_id
from cftrunner.settings import LOG_LEVELS, Settings
from cftrunner.states import ENDS_UNLESS_LOOPING, RunState

if TYPE_CHECKING:
    from cftrunner import service
    from cftrunner.display import Display
    from cftrunner.records import Run
    from cftrunner.shutdown import Stop

EXIT_LAUNCHED = 0
EXIT_FAILED = 1  # the run ended FAILED
EXIT_USAGE = 2  # bad input or usage; nothing was run
EXIT_STOPPED = 3  # the run stopped with its state intact; `resume` continues it
EXIT_CANCELLED = 4  # the run ended CANCELLED
EXIT_DECIDE = 5  # whether a lost request happened could not be told: `cftrunner settle` it
EXIT_DATABASE = 65  # the state database cannot be used as it is (EX_DATAERR); a retry won't help
EXIT_KEY = 77  # the API refused the key (EX_NOPERM): a retry won't help until a person acts
EXIT_SOFTWARE = 70  # a bug in cftrunner (EX_SOFTWARE)
EXIT_BUSY = 75  # another live process drives the run (EX_TEMPFAIL); try again later

F = TypeVar("F", bound=Callable[..., Any])


def connection_options(func: F) -> F:
    """The options every command that touches the state database or the API takes."""
    for option in reversed([
        click.option("--db", "db", metavar="URL",
                     help="SQLAlchemy URL of the state database [env CFTRUNNER_DB; "
                          "default sqlite:///state/cftrunner.db]"),
        click.option("--base-url", metavar="URL",
                     help="Prem API base URL [env CFTRUNNER_BASE_URL; "
                          "default https://studio.premai.io]"),
        click.option("--api-key-file", metavar="PATH", help="Read the API key from this file."),
        click.option("--api-key", metavar="KEY",
                     help="The API key [env API_KEY or PREMAI_API_KEY]; prefer the environment, "
                          "since a command line is visible to other users of the host."),
        click.option("--log-level", type=click.Choice(LOG_LEVELS),
                     help="Least severe log event written to stderr [default info]."),
        click.option("--config", metavar="FILE",
                     help="TOML config file [env CFTRUNNER_CONFIG; default ./cftrunner.toml "
                          "if present]."),
    ]):
        func = option(func)
    return func


CONNECTION_KEYS = ("db", "base_url", "api_key", "api_key_file", "log_level", "config")
# Options of the commands that drive a run, and the settings they stand for.
THROUGHPUT_KEYS = {"concurrency": "api.concurrency", "max_rps": "api.max_rps"}


def throughput_options(func: F) -> F:
    """How hard a driving command may press the API."""
    for option in reversed([
        click.option("--concurrency", type=click.IntRange(1, 256), default=None,
                     help="Requests in flight at once, at most; a quarter more items are worked "
                          "on, each with one request at a time [env CFTRUNNER_CONCURRENCY; config "
                          "api.concurrency; default 8]."),
        click.option("--max-rps", type=click.FloatRange(0, min_open=True), default=None,
                     help="A ceiling on requests per second for the whole run, on top of "
                          "slowing down when the API answers 429 [env CFTRUNNER_MAX_RPS; config "
                          "api.max_rps; default none]."),
    ]):
        func = option(func)
    return func


def _resolve(options: dict[str, Any], **cycle: Any) -> config.Resolved:
    """Every setting: this command's options, the same options before the command, the
    environment, the config file, defaults; logging is configured here, once."""
    from cftrunner import logs

    before = click.get_current_context().find_root().params
    given = {key: options.pop(key, None) or before.get(key) for key in CONNECTION_KEYS}
    given |= {setting: options.pop(option, None) for option, setting in THROUGHPUT_KEYS.items()}
    resolved = config.resolve({**given, **cycle})
    _IN_USE.update(db=resolved.settings.db_url, config=resolved.config_path)
    logs.configure(resolved.log_level, secrets=[resolved.settings.api_key])
    if resolved.notices:
        import structlog

        for event, fields in resolved.notices:
            structlog.get_logger("cftrunner").warning(event, **fields)
    return resolved


# The state database and config file this invocation uses, once resolved: a resume command
# printed for the user names the same ones.
_IN_USE: dict[str, str | None] = {"db": None, "config": None}


def resume_command(run_id: str) -> str:
    """The exact command that goes on with the run: the same state database (its password
    hidden) and config file."""
    words = ["cftrunner", "resume", run_id]
    if _IN_USE["config"]:
        words += ["--config", _IN_USE["config"]]
    if _IN_USE["db"]:
        from sqlalchemy.engine import make_url

        words += ["--db", make_url(_IN_USE["db"]).render_as_string(hide_password=True)]
    return shlex.join(words)


def _run_id(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """A RUN_ID argument or --run-id, checked as it is parsed: before the settings are resolved,
    which creates the default state folder."""
    return None if value is None else check_run_id(value)


def _settings(options: dict[str, Any]) -> Settings:
    return _resolve(options).settings


def _verdict(run: Run) -> tuple[str, int, bool]:
    """What a run came to, as one line after "run ID: ", its exit status, and whether that is an
    error (printed on stderr)."""
    state = run.state
    if state is RunState.LAUNCHED:
        line = f"LAUNCHED job {run.job_id}"
        if not run.finished:
            training = run.training or {}
            line += (f"; still training (job {training.get('status') or 'not read yet'}); the "
                     "next resume or tick looks again")
        return line, EXIT_LAUNCHED, False
    if state is RunState.SKIPPED:  # the gate's decision, not a failure
        return f"SKIPPED: {run.skip_reason}", EXIT_LAUNCHED, False
    if state is RunState.TRAINED:
        models = [e.get("model_id") for e in (run.training or {}).get("experiments") or []
                  if e.get("model_id")]
        line = f"TRAINED job {run.job_id}: models {', '.join(map(str, models))}"
        if not run.finished:  # promotion waits for the new models to load
            states = [e.get("status") for e in ((run.training or {}).get("serving") or {}).values()]
            line += (f"; models loading for inference ({states.count('running')} of "
                     f"{len(models)} running); the next resume or tick looks again")
        return line, 0, False
    if state in (RunState.PROMOTED, RunState.NOT_PROMOTED):  # a decision either way
        return f"{state.value}: {(run.promotion or {}).get('reason')}", EXIT_LAUNCHED, False
    code = EXIT_CANCELLED if state is RunState.CANCELLED else EXIT_FAILED
    return f"{state.value}: {run.failure_reason}", code, True


def _finish(run: Run) -> int:
    line, code, failed = _verdict(run)
    if failed:
        _error(f"run {run.id} {line}")
    else:
        click.echo(f"run {run.id}: {line}")
    return code


def _stop(settings: Settings) -> Stop:
    """SIGTERM and SIGINT stop the run at its next checkpoint instead of killing it."""
    from cftrunner import shutdown

    stop = shutdown.Stop()
    shutdown.install(stop, settings.shutdown_grace)
    return stop


@click.group()
@click.version_option(package_name="cftrunner")
@connection_options
def cli(**_options: Any) -> None:
    """Run continuous fine-tuning cycles on Prem Studio that survive crashes and never repeat
    a remote effect. Exit status: 0 launched (or nothing to do), 1 run failed, 2 bad input,
    3 stopped (resume it), 4 cancelled, 65 the state database cannot be used, 75 another process
    drives the run, 77 the API refused the key, 130/143 stopped by SIGINT/SIGTERM."""


def cycle_options(func: F) -> F:
    """What a cycle is made of; each may come from the config file instead."""
    for option in reversed([
        click.option("--project-id", help="The Prem project whose dataset is improved."),
        click.option("--model-alias", help="The fine-tuned model that answers the prompts."),
        click.option("--prompts", metavar="PATH",
                     help='A prompts file, JSON ({"test_prompts": [...]} or a list of strings) or '
                          "JSONL; or a folder or glob of them."),
        click.option("--judge-model", help="The judge model [default claude-4.5-sonnet]."),
        click.option("--judge-prompt", metavar="FILE",
                     help="The judge prompt template, with {prompt} and {answer} placeholders "
                          "[default: the built-in one]."),
        click.option("--split-percentage", type=click.IntRange(1, 99),
                     help="Share of the snapshot used for training [default 80]."),
        click.option("--follow", is_flag=True, default=None,
                     help="After the launch, follow the job to TRAINED or TRAIN_FAILED."),
    ]):
        func = option(func)
    return func


CYCLE_KEYS = ("project_id", "model_alias", "prompts", "judge_model", "judge_prompt",
              "split_percentage", "follow")
CYCLE_OPTION = click.option(
    "--cycle", metavar="NAME",
    help="Only this cycle of the config file's [[cycles]] (by its name, or project_id/model_alias).")


def progress_option(func: F) -> F:
    """For the commands that drive a run: whether its progress shows on stderr."""
    return click.option(
        "--progress/--no-progress", "show_progress", default=None,
        help="Show each stage's items done, failed, rate and time left on stderr while the run "
             "is driven [default: when stderr is a terminal].")(func)


def _display(show_progress: bool | None) -> Display:
    from cftrunner import display

    return display.on(sys.stderr, show_progress)


@cli.command()
@cycle_options
@CYCLE_OPTION
@click.option("--run-id", callback=_run_id,
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
    """Start a cycle and drive it to LAUNCHED; the run id is the first line of output. With
    several [[cycles]] in the config file, --cycle NAME picks one.

    Example: cftrunner start --project-id P --model-alias my-model-v3 --prompts prompts.json
    """
    from cftrunner import service
    from cftrunner.tick import spec_from

    resolved = _resolve(options, **{key: options.pop(key) for key in CYCLE_KEYS})
    chosen = config.select(resolved, cycle)
    if len(chosen) > 1:
        raise InputError(f"start drives one cycle and {resolved.config_path} describes "
                         f"{len(chosen)}: pick one with --cycle NAME ({config.names(resolved)})")
    spec = spec_from(chosen[0], run_id, "start")
    if dry_run:
        click.echo(service.plan_text(resolved.settings, spec, chosen[0].name))
        return EXIT_LAUNCHED
    return _finish(service.start(resolved.settings, spec, on_created=lambda rid: click.echo(rid),
                                 stop=_stop(resolved.settings), display=_display(show_progress),
                                 cycle=chosen[0].name))


@cli.command()
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

    resolved = _resolve(options, **{key: options.pop(key) for key in CYCLE_KEYS})
    chosen = config.select(resolved, cycle)
    if dry_run:
        for one in chosen:
            prefix = f"cycle {one.title}: " if len(resolved.cycles) > 1 else ""
            click.echo(prefix + service.preview_text(resolved.settings, one))
        return EXIT_LAUNCHED
    stop = _stop(resolved.settings)
    if len(resolved.cycles) > 1:
        outcomes = [_ticked(ticked) for ticked in service.tick_each(
            resolved, chosen, stop=stop, display=_display(show_progress))]
        return next((code for code in outcomes if code), EXIT_LAUNCHED)
    decision, run = service.tick(resolved, on_created=lambda rid: click.echo(rid), stop=stop,
                                 display=_display(show_progress), cycle=chosen[0])
    if run is None:
        click.echo(f"nothing to do: {decision.reason}")
        return EXIT_LAUNCHED
    return _finish(run)


def _ticked(ticked: service.Ticked) -> int:
    """Print one cycle's line, and its error on stderr; its exit status."""
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
        said, code, failed = _verdict(run)
        line = f"{verb} {run.id}: {said}"
        if failed:
            error = f"run {run.id} {said}"
    click.echo(f"cycle {ticked.cycle.title}: {' '.join(line.split())}")
    if error is not None:
        _error(f"cycle {ticked.cycle.title}: {error}")
    return code


@cli.command("config")
@cycle_options
@throughput_options
@connection_options
def show_config(**options: Any) -> int:
    """Print every effective setting and where it came from; the API key is redacted.

    Example: cftrunner config --config cftrunner.toml
    """
    resolved = _resolve(options, **{key: options.pop(key) for key in CYCLE_KEYS})
    rows = config.describe(resolved)
    width = max(len(key) for key, _, _ in rows)
    value_width = min(50, max(len(value) for _, value, _ in rows))
    if resolved.config_path:
        click.echo(f"# config file: {resolved.config_path}")
    for key, value, source in rows:
        click.echo(f"{key:<{width}}  {value:<{value_width}}  ({source})")
    if lines := config.describe_cycles(resolved):
        click.echo(f"# {len(lines)} [[cycles]]: the per-cycle keys above are the first one's; "
                   "each sets these itself and inherits the others")
        for line in lines:
            click.echo(line)
    return 0


@cli.command()
@click.argument("run_id", callback=_run_id)
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

    settings = _settings(options)
    run = service.resume(settings, run_id, stop=_stop(settings),
                         display=_display(show_progress), worker=worker)
    if worker and not run.finished and run.state not in ENDS_UNLESS_LOOPING:
        click.echo(f"run {run.id}: no item left for this worker; the run is {run.state.value} "
                   "and another process takes it on")
        return EXIT_LAUNCHED
    return _finish(run)


@cli.command()
@click.argument("run_id", callback=_run_id)
@connection_options
def cancel(run_id: str, **options: Any) -> int:
    """Cancel a run: it stops at its next checkpoint, never inside a request, and ends CANCELLED.

    Example: cftrunner cancel 20261121-223000-a1b2c3
    """
    from cftrunner import service

    click.echo(service.cancel(_settings(options), run_id))
    return 0


@cli.command()
@click.argument("run_id", callback=_run_id)
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
    click.echo(service.settle(_settings(options), run_id, target, happened, remote_id))
    return 0


@cli.command()
@click.argument("run_id", required=False, callback=_run_id)
@click.option("--json", "as_json", is_flag=True, help="One JSON object (a list without RUN_ID).")
@connection_options
def status(run_id: str | None, as_json: bool, **options: Any) -> int:
    """Show every run as a table, or one run in detail.

    Example: cftrunner status --json 20261121-223000-a1b2c3
    """
    from cftrunner import service

    click.echo(service.status_text(_settings(options), run_id, as_json))
    return 0


@cli.command()
@click.argument("run_id", required=False, callback=_run_id)
@click.option("--trend", is_flag=True, help="One line per cycle of a project, and an HTML page "
                                            "of charts.")
@click.option("--project", "project_id", metavar="PROJECT_ID",
              help="With --trend: the project [default: the only one in the state database].")
@click.option("--html", "html_file", metavar="FILE", type=click.Path(dir_okay=False),
              help="With --trend: where the HTML page goes [default cftrunner-trend.html].")
@click.option("--no-html", is_flag=True, help="With --trend: write no HTML page.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@connection_options
def report(run_id: str | None, trend: bool, project_id: str | None, html_file: str | None,
           no_html: bool, as_json: bool, **options: Any) -> int:
    """Report a run: items per stage and failure kind, the score distribution, judge retries,
    tokens and time per state. With --trend instead of RUN_ID: every cycle of a project, one
    line each, and a self-contained HTML page of charts (needs the `report` extra, plotly).

    Example: cftrunner report --trend --project P --html trend.html
    """
    from cftrunner.report import report_text, trend_text

    if (run_id is None) == (not trend):
        raise click.UsageError("give either RUN_ID or --trend")
    if run_id is not None and (project_id or html_file or no_html):
        raise click.UsageError("--project, --html and --no-html go with --trend")
    if html_file and no_html:
        raise click.UsageError("--html and --no-html exclude each other")
    settings = _settings(options)
    if run_id is not None:
        click.echo(report_text(settings, run_id, as_json))
        return 0
    html = None if no_html else Path(html_file or "cftrunner-trend.html")
    click.echo(trend_text(settings, project_id, html, as_json))
    return 0


@cli.command()
@click.argument("run_id", callback=_run_id)
@click.argument("item", type=click.IntRange(0))
@click.option("--json", "as_json", is_flag=True, help="One JSON object.")
@connection_options
def show(run_id: str, item: int, as_json: bool, **options: Any) -> int:
    """Show one item: its prompt, answer and judgment, and every completion of its steps with the
    exact judge request and answer. ITEM is its position, from 0, as the logs number items.

    Example: cftrunner show 20261121-223000-a1b2c3 17
    """
    from cftrunner import service

    click.echo(service.show_text(_settings(options), run_id, item, as_json))
    return 0


@cli.command()
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
                            display=_display(show_progress))
    click.echo(text)
    return 0


@cli.command()
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


def main(argv: list[str] | None = None) -> int:
    """Entry point: run a command and turn every error into one line and an exit status."""
    try:
        code = cli.main(args=argv, prog_name="cftrunner", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.exceptions.Abort:
        _error("interrupted")
        code = 130
    except click.UsageError as exc:
        _error(exc.format_message())
        code = EXIT_USAGE
    except click.ClickException as exc:
        _error(exc.format_message())
        code = EXIT_FAILED
    except KeyboardInterrupt:
        _error("interrupted; the run is intact, resume it")
        code = 130
    except Exception as exc:  # noqa: BLE001 - the promise is one line, never a traceback
        message, code = _outcome(exc)
        _error(message)
    return int(code or 0)


def _outcome(exc: Exception) -> tuple[str, int]:
    """The one map from an error to its message and exit status."""
    if isinstance(exc, InputError):
        return exc.message, EXIT_USAGE
    if isinstance(exc, UnusableDatabaseError):
        return exc.message, EXIT_DATABASE
    if isinstance(exc, RunBusy):
        return exc.message, EXIT_BUSY
    if isinstance(exc, LeaseLost):
        return f"stopped: {exc.message}", EXIT_BUSY
    if isinstance(exc, Interrupted):
        if exc.run_id is None:
            return f"stopped: {exc.message}", 128 + exc.signum
        name = signal.Signals(exc.signum).name
        return (f"run {exc.run_id} stopped by {name}, intact; go on with: "
                f"{resume_command(exc.run_id)}"), 128 + exc.signum
    if isinstance(exc, KeyRejected):
        return f"stopped: {exc.message}", EXIT_KEY
    if isinstance(exc, AuthError):
        return exc.message, EXIT_KEY
    if isinstance(exc, NeedsDecision):
        return f"stopped: {exc.message}", EXIT_DECIDE
    if isinstance(exc, RunStopped):
        return f"stopped: {exc.message}", EXIT_STOPPED
    if isinstance(exc, CftrunnerError):
        return exc.message, EXIT_STOPPED
    # Imported only for an error none of the above matched; if SQLAlchemy raised it, it is loaded.
    from sqlalchemy.exc import SQLAlchemyError

    if isinstance(exc, SQLAlchemyError):
        return f"state database: {exc.__class__.__name__}: {_first_line(exc)}", EXIT_STOPPED
    return f"internal error: {exc.__class__.__name__}: {_first_line(exc)}", EXIT_SOFTWARE


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.splitlines()[0] if text else ""


def _error(message: str) -> None:
    click.echo(f"cftrunner: error: {' '.join(message.split())}", err=True)

