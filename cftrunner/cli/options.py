"""Options the commands share, and the settings resolved from them, the environment and the config file."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from cftrunner.cli.exits import IN_USE
from cftrunner.config import resolution
from cftrunner.config.settings import LOG_LEVELS, Settings
from cftrunner.run_ids import check_run_id

if TYPE_CHECKING:
    from cftrunner.views.live import Display

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
    given = {key: options.pop(key, None) or before.get(key) for key in CONNECTION_KEYS}
    given |= {setting: options.pop(option, None) for option, setting in THROUGHPUT_KEYS.items()}
    resolved = resolution.resolve({**given, **cycle})
    IN_USE.update(db=resolved.settings.db_url, config=resolved.config_path)
    logs.configure(resolved.log_level, secrets=[resolved.settings.api_key])
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


def display(show_progress: bool | None) -> Display:
    """The progress display on stderr of each run a command drives."""
    from cftrunner.views import live

    return live.on(sys.stderr, show_progress)
