"""What the trend page shows of each cycle: its box or its marker, its link, its axes (pure)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from cftrunner.states import RunState
from cftrunner.views.pages.frame import run_page_name
from cftrunner.views.trend import Spread, TrendRow

# Cycles whose data went to no job: marked on the score chart, with no distribution drawn.
MARKED = (RunState.SKIPPED, RunState.FAILED, RunState.CANCELLED)
NO_SCORES = "no scores"
NICE = (1, 2, 5)  # axis steps are these times a power of ten
TICKS = 5  # at most this many steps on an axis (six ticks with 0)


@dataclass(frozen=True)
class Cycle:
    """One cycle as the trend page draws it, oldest first: cycle 1 is the project's first run."""

    number: int
    run_id: str
    state: RunState
    page: str  # the file name of its run's page, beside the trend page
    box: Spread | None  # None for a marked cycle, or one with no score yet
    marker: str | None  # what stands in place of the box: the state, or "no scores"
    why: str | None  # the reason of a SKIPPED, FAILED or CANCELLED cycle
    row: TrendRow

    @property
    def x(self) -> str:
        """The cycle's category on every chart's x-axis."""
        return f"#{self.number}"

    @property
    def tick(self) -> str:
        """Its tick label (plotly's HTML subset): its number, and its date below."""
        return f"<b>{self.x}</b><br>{self.row.created_at:%m-%d %H:%M}"


def cycles(rows: Sequence[TrendRow]) -> list[Cycle]:
    """The rows (oldest first) as cycles: numbered in order, each with a box of its scores, or
    the marker that stands in for one."""
    made = []
    for number, row in enumerate(rows, start=1):
        marked = row.state in MARKED
        box = None if marked else row.spread
        marker = row.state.value if marked else (NO_SCORES if box is None else None)
        why = (row.skip_reason or row.failure_reason) if marked else None
        made.append(Cycle(number, row.run_id, row.state, run_page_name(row.run_id), box,
                          marker, why, row))
    return made


def nice_step(top: float, smallest: float) -> float:
    """The least step of 1, 2 or 5 times a power of ten, at least `smallest`, that reaches
    `top` in at most TICKS steps."""
    exponent = math.floor(math.log10(smallest))
    while True:
        for k in NICE:
            step = round(k * 10.0**exponent, 12)
            if step >= smallest and top <= step * TICKS + 1e-12:
                return step
        exponent += 1


def axis(values: Iterable[float | None], smallest: float) -> dict[str, Any]:
    """A y-axis from 0 over the values, its ticks `nice_step` apart."""
    top = max((v for v in values if v is not None), default=0.0)
    step = nice_step(top, smallest)
    upper = max(step, math.ceil(top / step - 1e-9) * step)
    return {"range": [0, upper], "tick0": 0, "dtick": step, "rangemode": "tozero"}


def percent_axis(values: Iterable[float | None]) -> dict[str, Any]:
    """A share axis labelled in whole percents: its ticks are at least 1% apart and multiples of
    1%, so no two labels read the same (the old page showed 3%, 2%, 2%, 1%)."""
    return {**axis(values, 0.01), "tickformat": ".0%"}


def count_axis(values: Iterable[float | None]) -> dict[str, Any]:
    """An axis of whole numbers (tokens, retries): ticks at least 1 apart, never 0.5."""
    return {**axis(values, 1), "tickformat": ",d"}


def tick_labels(settings: dict[str, Any]) -> list[str]:
    """The labels an axis made by `axis` shows, as d3 formats them (for the tests and a check)."""
    step, upper = settings["dtick"], settings["range"][1]
    count = round(upper / step)
    if settings.get("tickformat") == ".0%":
        return [f"{k * step:.0%}" for k in range(count + 1)]
    return [f"{k * step:,.0f}" for k in range(count + 1)]


def links(made: Sequence[Cycle]) -> dict[str, str]:
    """Which run page a click on a cycle opens."""
    return {c.x: c.page for c in made}


def cycle_axis(made: Sequence[Cycle]) -> dict[str, Any]:
    """The x-axis every chart of the trend shares: one category per cycle, in order."""
    return {"type": "category", "categoryorder": "array",
            "categoryarray": [c.x for c in made], "tickvals": [c.x for c in made],
            "ticktext": [c.tick for c in made], "range": [-0.5, len(made) - 0.5],
            "title": {"text": "cycle (oldest first)"}}
