"""A project's cycles side by side: a row per run, as a table and as JSON (its page: views/pages)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cftrunner.exceptions import InputError
from cftrunner.records import Run, RunSummary
from cftrunner.states import ITEM_FAILED, RunState
from cftrunner.views.calibration import judge_error
from cftrunner.views.report import (
    distribution,
    figure,
    percent,
    percentile,
    rounded,
    share,
    threshold_of,
)

if TYPE_CHECKING:
    from cftrunner.store import Store


@dataclass(frozen=True)
class Spread:
    """What a box plot draws of a cycle's judged scores: the ends, the quartiles, the mean."""

    low: float
    q1: float
    median: float
    q3: float
    high: float
    mean: float


def spread(scores: Sequence[float]) -> Spread | None:
    """The spread of the scores (quartiles as `percentile` interpolates them); None for none."""
    ordered = sorted(scores)
    if not ordered:
        return None
    q1, median, q3 = (percentile(ordered, q) or 0.0 for q in (0.25, 0.5, 0.75))
    return Spread(ordered[0], q1, median, q3, ordered[-1], sum(ordered) / len(ordered))


@dataclass(frozen=True)
class TrendRow:
    """One cycle of a project, as the trend shows it."""

    run_id: str
    created_at: datetime
    state: RunState
    model_alias: str
    items: int
    judged: int
    mean_score: float | None
    threshold: float
    share_below: float | None  # of the judged items
    failure_share: float | None  # failed items of all items
    job_id: str | None
    skip_reason: str | None
    promotion: str | None = None  # the promotion decision, in a few words
    tokens: int = 0  # of every completion of the run
    judge_retries: int = 0  # judge requests beyond the first of each item
    spread: Spread | None = None  # of the judged scores; None when none is judged
    failure_reason: str | None = None  # of a FAILED (or CANCELLED) run
    judge_error: float | None = None  # on the calibration set; None without one

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "created_at": self.created_at.isoformat(),
                "state": self.state.value, "mean_score": rounded(self.mean_score),
                "share_below": rounded(self.share_below),
                "failure_share": rounded(self.failure_share),
                "spread": None if self.spread is None
                else {k: rounded(v) for k, v in asdict(self.spread).items()}}


def trend_row(summary: RunSummary, scores: Sequence[float],
              counts: dict[tuple[str, str], tuple[int, int]] | None = None,
              judge_requests: tuple[int, int] = (0, 0)) -> TrendRow:
    """A cycle's row from its summary and scores, and (as the store counts them) its
    completions per (kind, outcome) with their tokens and its judge requests and items."""
    run = summary.run
    d = distribution(scores, threshold_of(run))
    failed = sum(summary.stage_counts.get(st.value, 0) for st in ITEM_FAILED)
    return TrendRow(run.id, run.created_at, run.state, run.model_alias, summary.total_items,
                    d.judged, d.mean, d.threshold, d.share_below,
                    share(failed, summary.total_items), run.job_id,
                    run.skip_reason if run.state is RunState.SKIPPED else None,
                    promotion_note(run), sum(t for _, t in (counts or {}).values()),
                    judge_requests[0] - judge_requests[1], spread(scores), run.failure_reason,
                    judge_error(run))


def promotion_note(run: Run) -> str | None:
    """"promoted M (0.812 against 0.661)", "not promoted (...)", or None before a decision."""
    decision = run.promotion
    if not decision:
        return None
    current = (decision.get("current") or {}).get("mean")
    best = max((c.get("mean") for c in decision.get("candidates") or []
                if c.get("mean") is not None), default=None)
    scores = f"{figure(best)} against {figure(current)}"
    if decision.get("promoted"):
        return f"promoted {decision.get('model_id')} ({scores})"
    return f"not promoted (best {scores})"


def project_of(runs: Sequence[Run], project_id: str | None) -> str:
    """The project asked for, or the only one the runs belong to."""
    projects = sorted({run.project_id for run in runs})
    if project_id is not None:
        if project_id not in projects:
            raise InputError(f"no runs of project {project_id!r} in this state database")
        return project_id
    if not projects:
        raise InputError("no runs yet: start one with `cftrunner start`")
    if len(projects) > 1:
        raise InputError(f"runs of several projects ({', '.join(projects)}): choose one with "
                         "--project")
    return projects[0]


def trend(store: Store, project_id: str) -> list[TrendRow]:
    """One row per run of the project, oldest first."""
    runs = sorted((r for r in store.runs() if r.project_id == project_id),
                  key=lambda r: (r.created_at, r.id))
    return [trend_row(store.summary(run), store.scores(run.id), store.completion_counts(run.id),
                      store.judge_requests(run.id)) for run in runs]


def trend_cells(row: TrendRow) -> tuple[str, ...]:
    return (f"{row.created_at:%Y-%m-%d %H:%M}", row.run_id, row.state.value, row.model_alias,
            str(row.items), figure(row.mean_score), percent(row.share_below),
            percent(row.failure_share), row.job_id or "-",
            f"skipped: {row.skip_reason}" if row.skip_reason else row.promotion or "")


TREND_HEADER = ("DATE (UTC)", "RUN ID", "STATE", "MODEL", "ITEMS", "MEAN", "BELOW", "FAILED",
                "JOB", "NOTE")


def trend_table(rows: Sequence[TrendRow], width: int | None = None) -> str:
    """The cycles, a line each, fitted to `width` (default: the terminal's): the run id, state
    and figures whole; the date, then the note, model and job share what is left, cut at the end."""
    from cftrunner.views.tables import Column, table  # here: trend.py's imports are helper H's

    shares = {"DATE (UTC)": 4, "MODEL": 1, "JOB": 1, "NOTE": 2}
    columns = [Column(h, "right") if h in ("ITEMS", "MEAN", "BELOW", "FAILED")
               else Column(h, ratio=shares.get(h)) for h in TREND_HEADER]
    return table(columns, [trend_cells(r) for r in rows], width)


@dataclass(frozen=True)
class Trend:
    """A project's cycles, oldest first."""

    project_id: str
    rows: list[TrendRow]


def read_trend(store: Store, project_id: str | None) -> Trend:
    """The trend of `project_id`, or of the only project in the store."""
    project = project_of(store.runs(), project_id)
    return Trend(project, trend(store, project))


def trend_output(found: Trend, html_path: Path | None, as_json: bool) -> str:
    """What `cftrunner report --trend` prints, once the page is written to `html_path` (if any)."""
    if as_json:
        return json.dumps({"project_id": found.project_id,
                           "cycles": [r.to_json() for r in found.rows],
                           "html": None if html_path is None else str(html_path)}, indent=2)
    return trend_table(found.rows) + ("" if html_path is None else f"\nwrote {html_path}")
