"""The trend page: every cycle's scores side by side, its shares, tokens and retries, linked."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from cftrunner.views.pages.frame import (
    chart,
    esc,
    href,
    page,
    plotly,
    run_page_name,
    table,
    write_pages,
)
from cftrunner.views.pages.run_data import RunPage
from cftrunner.views.pages.run_page import run_html
from cftrunner.views.pages.trend_data import (
    Cycle,
    count_axis,
    cycle_axis,
    cycles,
    links,
    percent_axis,
)
from cftrunner.views.report import figure, percent
from cftrunner.views.trend import TrendRow

SCORES_TITLE = "Scores per cycle"
SHARES_TITLE = "Below the threshold and failed, per cycle"
COSTS_TITLE = "Tokens and judge retries per cycle"
BOX_COLOUR = "#4c78a8"
MARK_COLOUR = {"SKIPPED": "#b07a00", "FAILED": "#c0392b", "CANCELLED": "#666"}


def _layout(figure_: Any, title: str, made: Sequence[Cycle]) -> None:
    figure_.update_layout(title_text=title, template="plotly_white", xaxis=cycle_axis(made),
                          margin={"t": 50, "b": 70, "l": 60, "r": 60},
                          legend={"orientation": "h", "y": -0.25})


def scores_figure(made: Sequence[Cycle]) -> Any:
    """A box per judged cycle (its ends, quartiles and mean), a marker for the others, and the
    threshold across."""
    go = plotly("graph_objects")
    figure_ = go.Figure()
    for c in made:
        if c.box is not None:
            b = c.box
            figure_.add_trace(go.Box(
                x=[c.x], q1=[b.q1], median=[b.median], q3=[b.q3], lowerfence=[b.low],
                upperfence=[b.high], mean=[b.mean], boxmean=True, name=f"{c.x} {c.run_id}", boxpoints=False,
                marker_color=BOX_COLOUR, showlegend=False))
    figure_.add_trace(go.Scatter(
        x=[c.x for c in made], y=[c.row.threshold for c in made], mode="lines",
        name="threshold", line={"dash": "dash", "color": "#999"}, hoverinfo="y+name"))
    for c in made:
        if c.marker is not None:
            figure_.add_annotation(
                x=c.x, y=0.5, text=f"<b>{esc(c.marker)}</b>", showarrow=False, textangle=-90,
                font={"color": MARK_COLOUR.get(c.marker, "#666"), "size": 14},
                hovertext=esc(c.why or c.marker), bgcolor="rgba(255,255,255,0.8)",
                captureevents=True)
    figure_.update_yaxes(title_text="score", range=[0, 1.02], dtick=0.1, tickformat=".1f")
    _layout(figure_, SCORES_TITLE, made)
    return figure_


def shares_figure(made: Sequence[Cycle]) -> Any:
    go = plotly("graph_objects")
    below = [c.row.share_below for c in made]
    failed = [c.row.failure_share for c in made]
    figure_ = go.Figure([
        go.Scatter(x=[c.x for c in made], y=below, name="judged items below the threshold",
                   mode="lines+markers", cliponaxis=False),
        go.Scatter(x=[c.x for c in made], y=failed, name="failed items", mode="lines+markers",
                   cliponaxis=False)])
    figure_.update_yaxes(**percent_axis([*below, *failed]))
    _layout(figure_, SHARES_TITLE, made)
    return figure_


def costs_figure(made: Sequence[Cycle]) -> Any:
    go = plotly("graph_objects")
    tokens = [c.row.tokens for c in made]
    retries = [c.row.judge_retries for c in made]
    figure_ = go.Figure([
        go.Bar(x=[c.x for c in made], y=tokens, name="tokens", marker_color="#9ecae1"),
        go.Scatter(x=[c.x for c in made], y=retries, name="judge retries",
                   mode="lines+markers", yaxis="y2", cliponaxis=False)])
    _layout(figure_, COSTS_TITLE, made)
    figure_.update_layout(
        yaxis={**count_axis(tokens), "title": {"text": "tokens"}},
        yaxis2={**count_axis(retries), "title": {"text": "judge retries"}, "overlaying": "y",
                "side": "right", "showgrid": False})
    return figure_


def _row(c: Cycle) -> list[str]:
    r = c.row
    note = c.why or r.promotion or ""
    return [esc(c.x), esc(f"{r.created_at:%Y-%m-%d %H:%M}"),
            f'<a href="{esc(href(c.page))}">{esc(c.run_id)}</a>', esc(r.state.value),
            esc(r.model_alias), str(r.items), str(r.judged), figure(r.mean_score),
            percent(r.share_below), percent(r.failure_share), f"{r.tokens:,}",
            str(r.judge_retries), esc(note)]


HEADER = ("CYCLE", "DATE (UTC)", "RUN", "STATE", "MODEL", "ITEMS", "JUDGED", "MEAN", "BELOW",
          "FAILED", "TOKENS", "RETRIES", "NOTE")


def trend_html(rows: Sequence[TrendRow], project_id: str) -> str:
    """The trend page; each cycle links to its run's page, a file beside it."""
    made = cycles(rows)
    title = "cftrunner trend" + (f" of project {project_id}" if project_id else "")
    judged = sum(1 for c in made if c.box is not None)
    return page(title, [
        f"<h1>{esc(title)}</h1>",
        f'<p class="muted">{len(made)} cycles, oldest first; {judged} with a score '
        "distribution (box: lowest, quartiles, highest; dashed: the mean). Cycles SKIPPED by the "
        "gate, FAILED or CANCELLED are marked instead. A click on a cycle opens its run's page.</p>",
        chart(scores_figure(made), "scores", 440, links(made)),
        chart(shares_figure(made), "shares", links=links(made)),
        chart(costs_figure(made), "costs", links=links(made)), "<h2>Cycles</h2>",
        table(HEADER, (_row(c) for c in made), numeric=(5, 6, 7, 8, 9, 10, 11))])


def write_trend(rows: Sequence[TrendRow], run_pages: Sequence[RunPage], path: Path,
                project_id: str = "") -> list[Path]:
    """Write the trend page to `path` and each run's page beside it (with plotly.js, once);
    the run pages written. InputError when plotly is missing or a file cannot be written."""
    trend_page = trend_html(rows, project_id)
    pages = {path.parent / run_page_name(p.report.summary.run.id): run_html(p, back=path.name)
             for p in run_pages}
    write_pages({path: trend_page, **pages})
    return list(pages)
