"""The trend page: one HTML file with plotly charts that opens with no server and no network."""

from __future__ import annotations

import html
import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cftrunner.config.run_options import DEFAULT_SCORE_THRESHOLD
from cftrunner.exceptions import InputError
from cftrunner.views.report import BINS, EDGES, Distribution, distribution
from cftrunner.views.trend import TREND_HEADER, TrendRow, trend_cells

HISTOGRAM_TITLE = "Score distribution of the latest cycle"
MEAN_TITLE = "Mean score per cycle"
FAILURE_TITLE = "Failure share per cycle"
NEEDS_PLOTLY = "the HTML report needs plotly: pip install 'cftrunner[report]'"


def _plotly(module: str) -> Any:
    """A plotly module, imported only when a page is made: plotly is an optional extra."""
    try:
        return importlib.import_module(f"plotly.{module}")
    except ImportError:
        raise InputError(NEEDS_PLOTLY) from None


def _charts(rows: Sequence[TrendRow], latest: Distribution) -> list[tuple[str, Any]]:
    """The three figures, titled, each with the id of the element it is drawn in."""
    go = _plotly("graph_objects")
    dates = [f"{r.created_at:%Y-%m-%d %H:%M:%S}" for r in rows]
    ids = [r.run_id for r in rows]
    scores = go.Figure(go.Bar(x=[e + 0.5 / BINS for e in EDGES[:-1]], y=list(latest.histogram),
                              width=1 / BINS, name="items"))
    scores.add_vline(x=latest.threshold, line_dash="dash", annotation_text="threshold")
    scores.update_xaxes(title_text="score", range=[0, 1])
    scores.update_yaxes(title_text="items")
    mean = go.Figure(go.Scatter(x=dates, y=[r.mean_score for r in rows], text=ids,
                                mode="lines+markers", name="mean score"))
    mean.update_yaxes(title_text="mean score", range=[0, 1])
    failed = go.Figure(go.Scatter(x=dates, y=[r.failure_share for r in rows], text=ids,
                                  mode="lines+markers", name="failure share"))
    failed.update_yaxes(title_text="failed items", tickformat=".0%", rangemode="tozero")
    latest_id = f" ({rows[-1].run_id})" if rows else ""
    for title, figure in ((HISTOGRAM_TITLE + latest_id, scores), (MEAN_TITLE, mean),
                          (FAILURE_TITLE, failed)):
        figure.update_layout(title_text=title, showlegend=False)
    return [("score-distribution", scores), ("mean-score", mean), ("failure-share", failed)]


def trend_html(rows: Sequence[TrendRow], latest_scores: Sequence[float], project_id: str) -> str:
    """One page that opens with no server and no network: plotly.js is embedded in it once."""
    latest = distribution(latest_scores, rows[-1].threshold if rows else DEFAULT_SCORE_THRESHOLD)
    pio = _plotly("io")
    sections = [pio.to_html(figure, full_html=False, include_plotlyjs=(k == 0),
                            default_height="420px", div_id=div_id)
                for k, (div_id, figure) in enumerate(_charts(rows, latest))]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in TREND_HEADER)
    body = "\n".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in trend_cells(r))
                     + "</tr>" for r in rows)
    title = html.escape("cftrunner trend" + (f" of project {project_id}" if project_id else ""))
    return "\n".join([
        "<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">', f"<title>{title}</title>",
        "<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}</style></head><body>",
        f"<h1>{title}</h1>", f"<table><thead><tr>{head}</tr></thead><tbody>", body,
        "</tbody></table>", *sections, "</body></html>", ""])


def write_trend_html(rows: Sequence[TrendRow], latest_scores: Sequence[float], path: Path,
                     project_id: str = "") -> None:
    """Write the trend page to `path`; InputError when plotly is missing or `path` cannot be
    written."""
    page = trend_html(rows, latest_scores, project_id)
    try:
        path.write_text(page, encoding="utf-8")
    except OSError as exc:
        raise InputError(f"cannot write {path}: {exc.strerror or exc}") from None
