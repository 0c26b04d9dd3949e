"""Options the commands share, and the settings resolved from them, the environment and the config file."""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from typing import TYPE_CHECKING, Any, TypeVar

import click

from cftrunner.cli.exits import IN_USE
from cftrunner.config import resolution
from cftrunner.config.settings import LOG_FORMATS, LOG_LEVELS, Settings
from cftrunner.run_ids import check_run_id

if TYPE_CHECKING:
    from cftrunner.store import Store
    from cftrunner.views.live import Display

F = TypeVar("F", bound=Callable[..., Any])


def log_options(func: F) -> F:
    """Where log events go, how many, and in which format."""
    for option in reversed([
        click.option("--log-level", type=click.Choice(LOG_LEVELS),
                     help="Least severe log event written [env CFTRUNNER_LOG_LEVEL; config "
                          "log_level; default info]."),
        click.option("-v", "--verbose", is_flag=True, default=None,
                     help="Log debug events too: --log-level debug."),
        click.option("-q", "--quiet", is_flag=True, default=None,
                     help="Log only warnings and errors, and show no progress display."),
        click.option("--log-file", metavar="FILE",
                     help="Append every log event to FILE; stderr then shows only warnings and "
                          "errors [env CFTRUNNER_LOG_FILE; config log_file]."),
        click.option("--log-format", type=click.Choice(LOG_FORMATS),
                     help="Log lines as JSON or as readable text [env CFTRUNNER_LOG_FORMAT; "
                          "config log_format; default: text on a terminal, JSON off one and in "
                          "the log file]."),
    ]):
        func = option(func)
    return func


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
        log_options,
        click.option("--config", metavar="FILE",
                     help="TOML config file [env CFTRUNNER_CONFIG; default ./cftrunner.toml "
                          "if present]."),
    ]):
        func = option(func)
    return func


CONNECTION_KEYS = ("db", "base_url", "api_key", "api_key_file", "log_level", "log_file",
                   "log_format", "config")
# Kept in the click context's meta, shared by the group and its command.
QUIET = "cftrunner.quiet"  # --quiet: no progress display
DRIVEN = "cftrunner.driven"  # the runs this command drove, showing their progress or not
RESOLVED = "cftrunner.resolved"  # the settings this command resolved (cli/afterwards.py)
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


def checked_run_id(_ctx: click.Context, _param: click.Parameter, value: str | None) -> str | None:
    """A RUN_ID argument or --run-id, checked as it is parsed: before the settings are resolved,
    which creates the default state folder."""
    return None if value is None else check_run_id(value)


def resolve(options: dict[str, Any], **cycle: Any) -> resolution.Resolved:
    """Every setting: this command's options, the same options before the command, the
    environment, the config file, defaults; logging is configured here, once."""
    from cftrunner import logs

    before = click.get_current_context().find_root().params
    level = chosen_level(options)
    given = {key: options.pop(key, None) or before.get(key) for key in CONNECTION_KEYS}
    given["log_level"] = level or given["log_level"]
    given |= {setting: options.pop(option, None) for option, setting in THROUGHPUT_KEYS.items()}
    resolved = resolution.resolve({**given, **cycle})
    IN_USE.update(db=resolved.settings.db_url, config=resolved.config_path)
    click.get_current_context().meta[RESOLVED] = resolved
    logs.configure(resolved.log_level, secrets=[resolved.settings.api_key],
                   fmt=resolved.settings.log_format, file=resolved.settings.log_file)
    if resolved.notices:
        import structlog

        for event, fields in resolved.notices:
            structlog.get_logger("cftrunner").warning(event, **fields)
    return resolved


def resolve_with_cycle(options: dict[str, Any]) -> resolution.Resolved:
    """Every setting, with the cycle's own options taken out of `options` as well."""
    return resolve(options, **{key: options.pop(key) for key in CYCLE_KEYS})


def settings_of(options: dict[str, Any]) -> Settings:
    """The settings of a command that works on runs already stored."""
    return resolve(options).settings


def chosen_level(options: dict[str, Any]) -> str | None:
    """The level --quiet or --verbose stand for (taken out of `options`), before the command or
    after it; a usage error, before anything is done, beside each other, --log-level or
    --progress."""
    ctx = click.get_current_context()
    before = ctx.find_root().params
    quiet, verbose = (bool(options.pop(flag, None) or before.get(flag))
                      for flag in ("quiet", "verbose"))
    named = [name for name, given in (
        ("--quiet", quiet), ("--verbose", verbose),
        ("--log-level", options.get("log_level") or before.get("log_level")),
        ("--progress", quiet and ctx.params.get("show_progress"))) if given]
    if len(named) > 1:
        raise click.UsageError(f"{', '.join(named[:-1])} and {named[-1]} cannot be used together")
    ctx.meta[QUIET] = quiet
    return "warning" if quiet else "debug" if verbose else None


def display(show_progress: bool | None) -> Display:
    """The progress display on stderr of each run a command drives (none with --quiet); the
    runs are noted, for `summarise`."""
    from cftrunner.views import live

    ctx = click.get_current_context()
    shown = live.on(sys.stderr, False if ctx.meta.get(QUIET) else show_progress)
    driven: list[str] = ctx.meta.setdefault(DRIVEN, [])

    def noted(store: Store, run_id: str) -> AbstractContextManager[object]:
        driven.append(run_id)
        return shown(store, run_id)

    return noted


def summarise(settings: Settings, run_id: str, show_progress: bool | None,
              always: bool = False) -> None:
    """After the line of a run this command drove, when stdout is a terminal, with --progress,
    or `always`: what it came to, as `status --json` says, and the command for its report. Its
    own failure is logged at debug level and changes nothing else: the run is over."""
    if run_id not in click.get_current_context().meta.get(DRIVEN, ()):
        return
    if not (always or show_progress or _isatty(sys.stdout)):
        return
    from cftrunner import service
    from cftrunner.views.progress import summary_lines

    try:
        status: Mapping[str, Any] = json.loads(service.status_text(settings, run_id, as_json=True))
    except Exception as exc:  # noqa: BLE001 - a summary never changes how the command ends
        import structlog

        structlog.get_logger("cftrunner").debug("summary_failed", error=repr(exc))
        return
    for line in summary_lines(status, report_command(run_id)):
        click.echo(line)


def report_command(run_id: str) -> str:
    """The command for the run's report, on the same state database and config file."""
    words = ["cftrunner", "report", run_id]
    if IN_USE["config"]:
        words += ["--config", IN_USE["config"]]
    if IN_USE["db"]:
        from cftrunner.store import without_password

        words += ["--db", without_password(IN_USE["db"])]
    return shlex.join(words)


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False
