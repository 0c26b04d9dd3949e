"""Tables for a terminal: rows drawn with rich, fitted to its width, long cells cut at one end."""

from __future__ import annotations

import re
import shutil
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from io import StringIO
from typing import TYPE_CHECKING, Literal

from rich.cells import cell_len, get_character_cell_size
from rich.console import Console
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from rich.console import ConsoleOptions, RenderResult

ELLIPSIS = "…"
GAP = 2  # spaces between two columns
NOT_A_TERMINAL_WIDTH = 100
TRAILING_SPACE = re.compile(r"\s+((?:\x1b\[[0-9;]*m)*)$")  # before the codes that end a line


@dataclass(frozen=True)
class Column:
    """A column: its header, how its cells line up, and how a cell too long for it is cut."""

    header: str
    justify: Literal["left", "right"] = "left"
    keep: Literal["start", "end"] = "start"  # which end of a long value survives: "end" for errors
    ratio: int | None = None  # share of the spare width (rich's Column ratio)
    no_wrap: bool = True


def table(columns: Sequence[Column], rows: Iterable[Sequence[str]], width: int | None = None) -> str:
    """The rows as a rich table fitted to `width` (default: the terminal's, 100 when not a tty),
    as plain text (no colours when not a terminal); a cell too long for its column is cut at the
    other end than `keep`, with an ellipsis.

    Columns without a ratio (that do not wrap) keep their full width; the columns with a ratio
    share what is left, each taking no more than its longest cell needs. A column that wraps
    (`no_wrap=False`) shares the spare width too, with ratio 1 unless it has one.
    """
    width = terminal_width() if width is None else width
    cells = [[_flat(cell) if column.no_wrap else cell
              for column, cell in zip(columns, row, strict=True)] for row in rows]
    limits = column_widths(columns, cells, width)
    grid = Table(box=None, pad_edge=False, padding=(0, GAP // 2), show_edge=False,
                 header_style="bold", highlight=False)
    for column, limit in zip(columns, limits, strict=True):
        grid.add_column(Text(column.header, no_wrap=True, overflow="ellipsis"),
                        justify=column.justify, no_wrap=column.no_wrap, max_width=limit,
                        overflow="ellipsis" if column.no_wrap else "fold")
    for row in cells:
        grid.add_row(*(_KeepEnd(cell) if column.keep == "end" and column.no_wrap
                       else Text(cell) for column, cell in zip(columns, row, strict=True)))
    colour = on_a_terminal()
    out = StringIO()
    console = Console(file=out, width=max(width, 1), force_terminal=colour,
                      color_system="auto" if colour else None, highlight=False, emoji=False,
                      markup=False, soft_wrap=False, legacy_windows=False)
    console.print(grid)
    return "\n".join(TRAILING_SPACE.sub(r"\1", line) for line in out.getvalue().splitlines())


def terminal_width() -> int:
    """The terminal's width: COLUMNS when set, else stdout's terminal, else 100."""
    return shutil.get_terminal_size((NOT_A_TERMINAL_WIDTH, 24)).columns


def column_widths(columns: Sequence[Column], rows: Sequence[Sequence[str]],
                  width: int) -> list[int | None]:
    """The most each column may take (None: its longest cell) so the table fits in `width`.

    The columns that share the spare width each get at least their header's width when the
    spare width allows it, else at least one cell; then a column that needs less than its
    share gives the rest to the others."""
    natural = [max([cell_len(column.header), *(cell_len(row[i]) for row in rows)])
               for i, column in enumerate(columns)]
    shares = {i: column.ratio or 1 for i, column in enumerate(columns)
              if column.ratio is not None or not column.no_wrap}
    spare = width - GAP * (len(columns) - 1) - sum(
        n for i, n in enumerate(natural) if i not in shares)
    floor = {i: cell_len(columns[i].header) for i in shares}
    if sum(floor.values()) > spare:
        floor = dict.fromkeys(shares, 1)
    limits: list[int | None] = [None] * len(columns)
    while shares:
        total = sum(shares.values())
        settled = ({i: floor[i] for i, ratio in shares.items() if floor[i] * total > spare * ratio}
                   or {i: natural[i] for i, ratio in shares.items()
                       if natural[i] * total <= spare * ratio})
        if not settled:
            break
        for i, taken in settled.items():
            limits[i] = None if taken == natural[i] else taken
            spare -= taken
            del shares[i]
    total, given, before = sum(shares.values()), 0, 0
    for i, ratio in shares.items():  # rounded so that the widths add up to the spare width
        given += ratio
        upto = spare * given // total
        limits[i] = upto - before
        before = upto
    return limits


def cut_start(text: str, width: int) -> str:
    """`text` in at most `width` cells: its end, after an ellipsis, when it is longer."""
    if cell_len(text) <= width:
        return text
    if width < 1:
        return ""
    kept, used = len(text), cell_len(ELLIPSIS)
    while kept > 0 and used + get_character_cell_size(text[kept - 1]) <= width:
        kept -= 1
        used += get_character_cell_size(text[kept])
    return ELLIPSIS + text[kept:]


class _KeepEnd:
    """A cell that keeps its end when its column is too narrow for it."""

    def __init__(self, text: str) -> None:
        self.text = Text(text)

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement.get(console, options, self.text)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield Text(cut_start(self.text.plain, options.max_width), no_wrap=True)


def _flat(text: str) -> str:
    return " ".join(text.split())


def on_a_terminal() -> bool:
    """Whether standard output is a terminal (then tables have colours)."""
    stdout = sys.stdout
    return stdout is not None and hasattr(stdout, "isatty") and stdout.isatty()
