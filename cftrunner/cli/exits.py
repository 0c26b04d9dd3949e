"""Exit statuses, and the one map from an error, or from what a run came to, to a line and a status."""

from __future__ import annotations

import shlex
import signal
from typing import TYPE_CHECKING

import click

from cftrunner.exceptions import (
    AuthError,
    CftrunnerError,
    DatabaseError,
    InputError,
    Interrupted,
    KeyRejected,
    LeaseLost,
    NeedsDecision,
    RunBusy,
    RunStopped,
    UnusableDatabaseError,
)
from cftrunner.states import RunState

if TYPE_CHECKING:
    from cftrunner.records import Run

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

# The state database and config file this invocation uses, once resolved: a resume command
# printed for the user names the same ones.
IN_USE: dict[str, str | None] = {"db": None, "config": None}


def resume_command(run_id: str) -> str:
    """The exact command that goes on with the run: the same state database (its password
    hidden) and config file."""
    words = ["cftrunner", "resume", run_id]
    if IN_USE["config"]:
        words += ["--config", IN_USE["config"]]
    if IN_USE["db"]:
        from cftrunner.store import without_password

        words += ["--db", without_password(IN_USE["db"])]
    return shlex.join(words)


def verdict(run: Run) -> tuple[str, int, bool]:
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


def finish(run: Run) -> int:
    """Print what the run came to, on stderr if it is an error; its exit status."""
    line, code, failed = verdict(run)
    if failed:
        print_error(f"run {run.id} {line}")
    else:
        click.echo(f"run {run.id}: {line}")
    return code


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
    if isinstance(exc, DatabaseError):
        return exc.message, EXIT_STOPPED
    if isinstance(exc, CftrunnerError):
        return exc.message, EXIT_STOPPED
    return f"internal error: {exc.__class__.__name__}: {_first_line(exc)}", EXIT_SOFTWARE


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc)
    return text.splitlines()[0] if text else ""


def print_error(message: str) -> None:
    """The one line an error is: on stderr, prefixed, its whitespace folded."""
    click.echo(f"cftrunner: error: {' '.join(message.split())}", err=True)

