"""The commands that look at a run's items: items (a filtered table or JSON) and export (all)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import click

from cftrunner.cli.options import checked_run_id, connection_options, settings_of
from cftrunner.exceptions import Interrupted
from cftrunner.states import ItemStage

STAGES = [stage.value for stage in ItemStage]


def _stages(_ctx: click.Context, _param: click.Parameter,
            values: tuple[str, ...]) -> tuple[ItemStage, ...]:
    """The --state values as item stages, in any case; a usage error names the valid ones."""
    try:
        return tuple(ItemStage(value.upper()) for value in values)
    except ValueError:
        bad = next(v for v in values if v.upper() not in STAGES)
        raise click.BadParameter(f"{bad!r} is not an item stage; the stages are "
                                 f"{', '.join(STAGES)}") from None


@click.command()
@click.argument("run_id", callback=checked_run_id)
@click.option("--state", "stages", multiple=True, metavar="STAGE", callback=_stages,
              help=f"Only items at this stage (any case; again for several): {', '.join(STAGES)}.")
@click.option("--below", type=click.FloatRange(0, 1), metavar="X",
              help="Only items scored below X (score < X), X from 0 to 1.")
@click.option("--above", type=click.FloatRange(0, 1), metavar="X",
              help="Only items scored at or above X (score >= X), X from 0 to 1.")
@click.option("--failed", is_flag=True, help="Only failed items (GEN_FAILED, JUDGE_FAILED, "
                                             "TRACE_FAILED, ADD_FAILED).")
@click.option("--sort", type=click.Choice(["index", "score"]), default="index", show_default=True,
              help="By position, or by score, lowest first, the unscored last.")
@click.option("--limit", type=click.IntRange(1), metavar="N",
              help="At most N items, the first in the order of --sort (a table of many "
                   "thousands takes seconds to draw).")
@click.option("--json", "as_json", is_flag=True, help="A JSON array, one object per item.")
@connection_options
def items(run_id: str, stages: tuple[ItemStage, ...], below: float | None, above: float | None,
          failed: bool, sort: str, limit: int | None, as_json: bool, **options: Any) -> int:
    """List a run's items: position, stage, score, trace id, the first words of the prompt, and
    why an item failed or was set aside; filters combine (each narrows the list). `show RUN
    ITEM` shows one in full, `export` writes them all.

    \b
    Example: cftrunner items 20261121-223000-a1b2c3 --below 0.5 --sort score --limit 20
    """
    from cftrunner.service.items import Selection, write_items

    selection = Selection(stages=stages, failed=failed,
                          below=below, above=above, by_score=sort == "score", limit=limit)
    with _reader_may_leave():
        write_items(settings_of(options), run_id, selection, as_json, sys.stdout)
    return 0


@click.command()
@click.argument("run_id", callback=checked_run_id)
@click.option("--format", "fmt", type=click.Choice(["jsonl", "csv"]), required=True,
              help="JSON lines (one object per item) or CSV (a header row, then one row per item).")
@click.option("--output", metavar="FILE", type=click.Path(dir_okay=False, path_type=Path),
              help="Write to FILE, whole or not at all, rather than to stdout.")
@connection_options
def export(run_id: str, fmt: str, output: Path | None, **options: Any) -> int:
    """Write every item of a run, in position order, for notebooks and other tools: run_id,
    item, stage, prompt, answer, score, feedback, reasoning, trace_id, judge_attempts, tokens,
    error_kind, error; UTF-8. The items are read a page at a time and written as they come, so
    a run of any size fits in a little memory.

    \b
    Example: cftrunner export 20261121-223000-a1b2c3 --format csv --output items.csv
    """
    from cftrunner.service.items import export as export_items

    settings = settings_of(options)
    what = f"the export of run {run_id}" + (f" to {output}" if output else "")
    with _reader_may_leave(), _signals_stop(what, f"; {output} was left as it was" if output
                                            else ""):
        export_items(settings, run_id, fmt, output if output is not None else sys.stdout.buffer)
    return 0


@contextlib.contextmanager
def _reader_may_leave() -> Iterator[None]:
    """When the reader of stdout goes away (`| head`), stop writing, quietly: it had enough."""
    try:
        sys.stdout.flush()
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        # Python flushes stdout once more on exit: let that go nowhere, not raise again.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())


@contextlib.contextmanager
def _signals_stop(what: str, after: str) -> Iterator[None]:
    """SIGTERM and SIGINT end the export with an error that says what was interrupted (once
    the partial file is removed); the previous handlers are put back afterwards."""

    def stop(signum: int, _frame: FrameType | None) -> None:
        raise Interrupted(signum, f"{what} was interrupted by {signal.Signals(signum).name}{after}")

    previous = {signum: signal.signal(signum, stop) for signum in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
