"""A run's page: its scores against the threshold, its lowest items, failures, costs, decisions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from cftrunner.views.pages.frame import chart, esc, href, page, plotly, table, write_pages
from cftrunner.views.pages.run_data import FailureGroup, LowItem, RunPage
from cftrunner.views.report import BINS, EDGES, figure, percent
from cftrunner.wording import duration

EXCERPT = 160  # characters of a prompt or answer shown before "more"
HISTOGRAM_TITLE = "Scores against the threshold"
TIME_TITLE = "Time per state"


def histogram_figure(p: RunPage) -> Any:
    """The judged scores in ten bins, the bins below the threshold in another colour, and the
    threshold as a line."""
    go = plotly("graph_objects")
    s = p.report.scores
    colours = ["#e45756" if EDGES[k + 1] <= s.threshold else "#4c78a8" for k in range(BINS)]
    labels = [f"{EDGES[k]:.1f}-{EDGES[k + 1]:.1f}" for k in range(BINS)]
    figure_ = go.Figure(go.Bar(x=[e + 0.5 / BINS for e in EDGES[:-1]], y=list(s.histogram),
                               width=1 / BINS, marker_color=colours, name="items",
                               customdata=labels,
                               hovertemplate="%{customdata}: %{y} items<extra></extra>"))
    figure_.add_vline(x=s.threshold, line_dash="dash", line_color="#333",
                      annotation_text=f"threshold {s.threshold:g}")
    figure_.update_xaxes(title_text="score", range=[0, 1], dtick=0.1, tickformat=".1f")
    figure_.update_yaxes(title_text="items", rangemode="tozero",
                         dtick=max(1, -(-max(s.histogram, default=0) // 5)))
    figure_.update_layout(title_text=HISTOGRAM_TITLE, template="plotly_white", showlegend=False,
                          margin={"t": 50, "b": 50})
    return figure_


def time_figure(p: RunPage) -> Any:
    go = plotly("graph_objects")
    seconds = p.report.summary.state_seconds
    figure_ = go.Figure(go.Bar(x=list(seconds.values()), y=list(seconds), orientation="h",
                               text=[duration(v) for v in seconds.values()],
                               marker_color="#72b7b2", name="time"))
    figure_.update_yaxes(autorange="reversed")
    figure_.update_xaxes(title_text="seconds", rangemode="tozero")
    figure_.update_layout(title_text=TIME_TITLE, template="plotly_white", showlegend=False,
                          margin={"t": 50, "b": 50})
    return figure_


def _more(text: str | None) -> str:
    """Text cut to EXCERPT characters, the whole of it behind "more"."""
    if not text:
        return '<span class="muted">-</span>'
    if len(text) <= EXCERPT:
        return f"<pre>{esc(text)}</pre>"
    return (f"<details><summary>{esc(text[:EXCERPT])}…</summary><pre>{esc(text)}</pre>"
            "</details>")


def _low(item: LowItem) -> list[str]:
    return [str(item.position), f"{item.score:.2f}", _more(item.prompt), _more(item.answer),
            _more(item.feedback), esc(item.trace_id or "-")]


def _failure(group: FailureGroup) -> list[str]:
    shown = ", ".join(map(str, group.positions)) + (", …" if group.count > len(group.positions)
                                                     else "")
    return [esc(group.kind), str(group.count), esc(shown), _more(group.example)]


def _verdicts(p: RunPage) -> list[str]:
    run = p.report.summary.run
    parts = []
    if p.gate is not None:
        verdict = "passed" if p.gate.passed else "not passed: " + "; ".join(p.gate.reasons)
        facts = ", ".join(f"{name} {value}" for name, value in p.gate.facts)
        parts.append(f'<p><span class="state {"good" if p.gate.passed else "bad"}">gate '
                     f"{esc(verdict)}</span> <span class=\"muted\">({esc(facts)})</span></p>")
    else:
        parts.append('<p class="muted">The gate has not looked at this run yet.</p>')
    for label, reason in (("skipped", run.skip_reason), ("failed", run.failure_reason)):
        if reason:
            parts.append(f'<p><span class="state bad">{label}</span> {esc(reason)}</p>')
    if p.promotion is not None:
        decision = p.promotion
        word = "promoted" if decision.promoted else "not promoted"
        parts.append(f'<p><span class="state {"good" if decision.promoted else "bad"}">{word}'
                     f"</span> {esc(decision.reason)}</p>")
        parts.append(table(
            ("MODEL", "SIDE", "MEAN ON HELD-OUT", "JUDGED", "CHOSEN"),
            ([esc(m.model_id), m.role, figure(m.mean), f"{m.judged or 0} of {m.prompts or 0}",
              "✓" if m.chosen else ""] for m in decision.models), numeric=(2, 3)))
    return parts


def _costs(p: RunPage) -> str:
    report = p.report
    kinds = [k for k in report.tokens if k != "total"]
    rows = [[esc(k), f"{report.tokens[k]:,}", esc(", ".join(
        f"{outcome} {n}" for outcome, n in sorted(report.completions.get(k, {}).items())))]
        for k in kinds]
    rows.append(["total", f"{report.tokens['total']:,}", ""])
    j = report.judge
    return (table(("STAGE", "TOKENS", "COMPLETIONS"), rows, numeric=(1,))
            + f'<p class="muted">judge: {j.requests} requests for {j.items} items, {j.retries} '
            f"retries ({j.malformed} malformed, {j.truncated} truncated, {j.rejected} "
            f"rejected); {j.failed} items failed</p>")


def run_html(p: RunPage, back: str | None = None) -> str:
    """The run's page; `back` names the trend page to link back to."""
    summary, s = p.report.summary, p.report.scores
    run = summary.run
    title = f"cftrunner run {run.id}"
    figures = (f"{s.judged} judged: mean {figure(s.mean)}, median {figure(s.median)}, p10 "
               f"{figure(s.p10)}; {s.below} ({percent(s.share_below)}) below {s.threshold:g}"
               if s.judged else "no scores yet")
    show = f"cftrunner show {run.id} N"
    return page(title, [
        f'<p><a href="{esc(href(back))}">← the trend</a></p>' if back else "",
        f'<h1>{esc(title)} <span class="state">{esc(run.state.value)}</span></h1>',
        f"<p>project {esc(run.project_id)}, model {esc(run.model_alias)}, judge "
        f"{esc(run.judge_model)}, job {esc(run.job_id or '-')}; started "
        f"{run.created_at:%Y-%m-%d %H:%M} UTC; {summary.total_items} items</p>",
        "<h2>Verdict</h2>", *_verdicts(p),
        "<h2>Scores</h2>", f"<p>{esc(figures)}</p>", chart(histogram_figure(p), "histogram"),
        f"<h2>The {len(p.lowest)} lowest scores</h2>",
        f'<p class="muted"># is the item\'s index: <code>{esc(show)}</code> shows one whole, '
        "with every request and answer.</p>",
        table(("#", "SCORE", "PROMPT", "ANSWER", "JUDGE'S FEEDBACK", "TRACE"),
              map(_low, p.lowest), numeric=(0, 1)) if p.lowest else "<p>No judged item.</p>",
        "<h2>Failures by kind</h2>",
        table(("KIND", "ITEMS", "#", "ERROR OF THE FIRST"), map(_failure, p.failures),
              numeric=(1,)) if p.failures else "<p>No item failed.</p>",
        "<h2>Tokens and time per stage</h2>", _costs(p), chart(time_figure(p), "time", 320)])


def write_run(p: RunPage, path: Path) -> None:
    """Write the run's page to `path`, plotly.js beside it; InputError when plotly is missing
    or a file cannot be written."""
    write_pages({path: run_html(p)})
