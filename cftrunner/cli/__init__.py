"""The `cftrunner` command: the click group of every command, and `main`, the entry point."""

# Each command imports the library it calls (`service`, `views`, `logs`) when it runs: SQLAlchemy,
# requests and structlog take most of a second to import on a small host, which `--help`,
# `--version` and a usage error then do not pay (and `config` pays only for structlog).

from __future__ import annotations

from typing import Any

import click

from cftrunner.cli.afterwards import watch
from cftrunner.cli.exits import EXIT_FAILED, EXIT_USAGE, _outcome, print_error
from cftrunner.cli.init_command import init
from cftrunner.cli.item_commands import export, items
from cftrunner.cli.look_commands import report, show, show_config, status
from cftrunner.cli.options import connection_options
from cftrunner.cli.prune_command import prune
from cftrunner.cli.run_commands import cancel, resume, settle, start, tick
from cftrunner.cli.sandbox_commands import demo, sandbox


@click.group()
@click.version_option(package_name="cftrunner")
@connection_options
def cli(**_options: Any) -> None:
    """Run continuous fine-tuning cycles on Prem Studio that survive crashes and never repeat
    a remote effect. Exit status: 0 launched (or nothing to do), 1 run failed, 2 bad input,
    3 stopped (resume it), 4 cancelled, 65 the state database cannot be used, 75 another process
    drives the run, 77 the API refused the key, 130/143 stopped by SIGINT/SIGTERM."""


for command in (init, start, tick, resume, cancel, settle, status, show, items, export, report,
                show_config, prune, demo, sandbox):
    cli.add_command(command)
watch(start, tick, resume, cancel)  # then notifications and the metrics file (afterwards.py)


def main(argv: list[str] | None = None) -> int:
    """Entry point: run a command and turn every error into one line and an exit status."""
    try:
        code = cli.main(args=argv, prog_name="cftrunner", standalone_mode=False)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except click.exceptions.Abort:
        print_error("interrupted")
        code = 130
    except click.UsageError as exc:
        print_error(exc.format_message())
        code = EXIT_USAGE
    except click.ClickException as exc:
        print_error(exc.format_message())
        code = EXIT_FAILED
    except KeyboardInterrupt:
        print_error("interrupted; the run is intact, resume it")
        code = 130
    except Exception as exc:  # noqa: BLE001 - the promise is one line, never a traceback
        message, code = _outcome(exc)
        print_error(message)
    return int(code or 0)
