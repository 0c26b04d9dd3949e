"""After start, resume, tick and cancel have done their work: the notifications and the metrics file.

`watch(command)` wraps a command so that, once it has returned its exit status or its error has
been printed, `service.afterwards` runs with what the command met; the status stays the command's.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import click

from cftrunner.cli.exits import EXIT_DATABASE, _outcome, print_error
from cftrunner.cli.options import DRIVEN, RESOLVED
from cftrunner.exceptions import AuthError, DatabaseError, KeyRejected, UnusableDatabaseError

if TYPE_CHECKING:
    from cftrunner.config.resolution import Resolved
    from cftrunner.service import Ticked
    from cftrunner.service.notify import Rejection

TICKED = "cftrunner.ticked"  # each cycle a tick of several drove, and the run it drove
SEEN = "cftrunner.seen"  # the runs driven when the previous cycle's turn ended
SIGNALLED = (130, 143)


def watch(*commands: click.Command) -> None:
    """Run `service.afterwards` after each of `commands` (not after a --dry-run)."""
    for command in commands:
        assert command.callback is not None
        command.callback = _watched(command.callback)


def _watched(callback: Any) -> Any:
    @functools.wraps(callback)
    def run(*args: Any, **params: Any) -> Any:
        if params.get("dry_run"):
            return callback(*args, **params)
        ctx = click.get_current_context()
        try:
            code = callback(*args, **params)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise  # click's own: a usage error before anything was done, or an exit it asked for
        except Exception as exc:  # noqa: BLE001 - printed here as main() would, then raised no more
            message, code = _outcome(exc)
            print_error(message)
            _after(ctx, int(code), exc, params)
            return code
        _after(ctx, int(code or 0), None, params)
        return code

    return run


def note_ticked(ticked: Ticked) -> None:
    """Note a cycle's turn in a tick of several, with the run it drove (if it drove one)."""
    ctx = click.get_current_context()
    driven: list[str] = ctx.meta.get(DRIVEN, [])
    seen: int = ctx.meta.get(SEEN, 0)
    ctx.meta[SEEN] = len(driven)
    ctx.meta.setdefault(TICKED, []).append((ticked, driven[-1] if len(driven) > seen else None))


def _after(ctx: click.Context, code: int, error: Exception | None, params: dict[str, Any]) -> None:
    resolved: Resolved | None = ctx.meta.get(RESOLVED)
    if resolved is None:  # the settings could not be resolved: nothing is known to act on
        return
    from cftrunner.service.afterwards import Invocation, afterwards

    try:
        database = code not in (EXIT_DATABASE, *SIGNALLED) and not isinstance(
            error, DatabaseError | UnusableDatabaseError)
        invocation = Invocation(command=str(ctx.info_name), exit_code=code,
                                rejections=tuple(_rejections(ctx, error, params, resolved)),
                                database=database)
    except Exception as exc:  # noqa: BLE001 - never changes how the command ends
        import structlog

        structlog.get_logger("cftrunner").warning("notify_failed", error=repr(exc))
        return
    afterwards(resolved, invocation)


def _rejections(ctx: click.Context, error: Exception | None, params: dict[str, Any],
                resolved: Resolved) -> list[Rejection]:
    """The key refusals the command met: its own error, and each cycle's in a tick of several."""
    from cftrunner.config.resolution import select
    from cftrunner.service.notify import Rejection

    found: list[Rejection] = []
    if _refused(error):
        assert error is not None
        if ctx.info_name == "resume":
            found.append(Rejection(_message(error), run_id=params.get("run_id")))
        else:
            driven: list[str] = ctx.meta.get(DRIVEN, [])
            chosen = select(resolved, params.get("cycle"))
            found.append(Rejection(_message(error), run_id=driven[-1] if driven else None,
                                   cycle=chosen[0].title if len(chosen) == 1 else None))
    for ticked, run_id in ctx.meta.get(TICKED, []):
        if _refused(ticked.error):
            found.append(Rejection(_message(ticked.error), run_id=run_id, cycle=ticked.cycle.title))
    return found


def _refused(error: Exception | None) -> bool:
    return isinstance(error, KeyRejected | AuthError)


def _message(error: Exception) -> str:
    return str(getattr(error, "message", error))
