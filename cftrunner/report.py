"""What cycles came to: a run's scores, retries, tokens and time, and a project's trend (text, JSON, HTML)."""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from cftrunner.exceptions import InputError
from cftrunner.prompt_source import describe as describe_source
from cftrunner.records import Run, RunSummary
from cftrunner.render import duration, regression_lines, regression_to_json
from cftrunner.run_ids import check_run_id
from cftrunner.settings import Settings
from cftrunner.states import ITEM_FAILED, ItemStage, RunState
from cftrunner.store import Store

BINS = 10  # the histogram's bins split [0, 1] evenly
EDGES: tuple[float, ...] = tuple(k / BINS for k in range(BINS + 1))


def histogram(scores: Sequence[float]) -> tuple[int, ...]:
    """Scores per bin [k/10, (k+1)/10); the last bin also holds 1.0 (and anything out of range
    is put in the nearest end bin)."""
    counts = [0] * BINS
    for score in scores:
        counts[min(max(bisect.bisect_right(EDGES, score) - 1, 0), BINS - 1)] += 1
    return tuple(counts)


def percentile(ordered: Sequence[float], q: float) -> float | None:
    """The q-quantile (0 <= q <= 1) of ascending scores by linear interpolation between the
    closest ranks, as `statistics.quantiles(method="inclusive")` and numpy's default: position
    q * (n - 1) counted from 0. One score is every quantile; no score, None."""
    if not ordered:
        return None
    position = q * (len(ordered) - 1)
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def share(part: int, whole: int) -> float | None:
    return part / whole if whole else None


def _rounded(value: float | None) -> float | None:
    """A figure for JSON, without the float noise of the last digits."""
    return None if value is None else round(value, 6)


@dataclass(frozen=True)
class Distribution:
    """The scores of a run's judged items, and how many fall below the threshold."""

    histogram: tuple[int, ...]
    mean: float | None
    median: float | None
    p10: float | None
    threshold: float
    below: int  # scores strictly below the threshold

    @property
    def judged(self) -> int:
        return sum(self.histogram)

    @property
    def share_below(self) -> float | None:
        return share(self.below, self.judged)


def distribution(scores: Sequence[float], threshold: float) -> Distribution:
    ordered = sorted(scores)
    return Distribution(histogram(ordered),
                        math.fsum(ordered) / len(ordered) if ordered else None,
                        percentile(ordered, 0.5), percentile(ordered, 0.1), threshold,
                        sum(1 for s in ordered if s < threshold))


def threshold_of(run: Run) -> float:
    return run.gate.score_threshold


@dataclass(frozen=True)
class JudgeCounts:
    """The judge's requests: each answer or refusal is one completion of an item."""

    requests: int
    items: int  # items asked at least once
    malformed: int
    truncated: int
    rejected: int
    failed: int  # items left without a valid judgment (JUDGE_FAILED)

    @property
    def retries(self) -> int:
        """Requests beyond the first of each item."""
        return self.requests - self.items


@dataclass(frozen=True)
class RunReport:
    summary: RunSummary
    scores: Distribution
    judge: JudgeCounts
    completions: dict[str, dict[str, int]]  # kind -> outcome -> completions
    tokens: dict[str, int]  # kind -> tokens, and "total"

    def to_json(self) -> dict[str, Any]:
        run, s = self.summary.run, self.scores
        return {
            "run_id": run.id, "project_id": run.project_id, "model_alias": run.model_alias,
            "judge_model": run.judge_model, "state": run.state.value,
            "created_at": run.created_at.isoformat(), "job_id": run.job_id,
            "items": {"total": self.summary.total_items,
                      **{st.value: self.summary.stage_counts.get(st.value, 0) for st in ItemStage}},
            "failures": self.summary.failures,
            "scores": {"judged": s.judged, "mean": _rounded(s.mean),
                       "median": _rounded(s.median), "p10": _rounded(s.p10),
                       "threshold": s.threshold, "below_threshold": s.below,
                       "share_below_threshold": _rounded(s.share_below),
                       "histogram": [{"from": EDGES[k], "to": EDGES[k + 1], "count": n}
                                     for k, n in enumerate(s.histogram)]},
            "judge": {**asdict(self.judge), "retries": self.judge.retries},
            "completions": self.completions,
            "tokens": self.tokens,
            "state_seconds": self.summary.state_seconds,
            "gate": run.gate_result, "skip_reason": run.skip_reason,
            "failure_reason": run.failure_reason,
            "prompt_source": run.prompt_source,
            "regression": [regression_to_json(c, run.gate.score_threshold)
                           for c in self.summary.rechecks],
        }


def run_report(summary: RunSummary, scores: Sequence[float],
               counts: dict[tuple[str, str], tuple[int, int]],
               judge_requests: tuple[int, int]) -> RunReport:
    """A report from what the store holds: the run's summary, its scores, its completions per
    (kind, outcome) with their tokens, and its judge completions with the items they were for."""
    completions: dict[str, dict[str, int]] = {}
    tokens: dict[str, int] = {}
    for (kind, outcome), (n, used) in sorted(counts.items()):
        completions.setdefault(kind, {})[outcome] = n
        tokens[kind] = tokens.get(kind, 0) + used
    judged = completions.get("judge", {})
    judge = JudgeCounts(*judge_requests, judged.get("malformed", 0), judged.get("truncated", 0),
                        judged.get("rejected", 0),
                        summary.stage_counts.get(ItemStage.JUDGE_FAILED.value, 0))
    return RunReport(summary, distribution(scores, threshold_of(summary.run)), judge,
                     completions, {**tokens, "total": sum(tokens.values())})


def _bars(counts: Sequence[int], width: int = 30) -> list[str]:
    most = max(counts, default=0) or 1
    return [f"{EDGES[k]:.1f}-{EDGES[k + 1]:.1f}  {'#' * round(n * width / most):<{width}}  {n}"
            for k, n in enumerate(counts)]


def _figure(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def render_run(report: RunReport) -> str:
    """The report as a person reads it."""
    summary, s, j = report.summary, report.scores, report.judge
    run = summary.run
    stages = ", ".join(f"{summary.stage_counts[st.value]} {st.value.lower()}"
                       for st in ItemStage if summary.stage_counts.get(st.value))
    lines = [("run", f"{run.id} ({run.state.value}, job {run.job_id or '-'})"),
             ("project", f"{run.project_id}, model {run.model_alias}, judge {run.judge_model}"),
             ("prompts", describe_source(run.prompt_source) or run.prompts_source),
             ("items", f"{summary.total_items} ({stages or 'none'})"),
             ("failures", ", ".join(f"{k} {v}" for k, v in sorted(summary.failures.items()))
              or "none")]
    if s.judged:
        lines.append(("scores", f"{s.judged} judged: mean {_figure(s.mean)}, median "
                                f"{_figure(s.median)}, p10 {_figure(s.p10)}; {s.below} "
                                f"({_percent(s.share_below)}) below {s.threshold:g}"))
        lines += [("", bar) for bar in _bars(s.histogram)]
    else:
        lines.append(("scores", "no scores yet"))
    lines.append(("judge", f"{j.requests} requests for {j.items} items: {j.retries} retries; "
                           f"{j.malformed} malformed, {j.truncated} truncated, {j.rejected} "
                           f"rejected; {j.failed} items failed"))
    kinds = ", ".join(f"{k} {v:,}" for k, v in report.tokens.items() if k != "total")
    lines.append(("tokens", f"{report.tokens['total']:,}" + (f" ({kinds})" if kinds else "")))
    lines.append(("time", ", ".join(f"{state} {duration(v)}"
                                    for state, v in summary.state_seconds.items()) or "-"))
    if run.gate_result is not None:
        lines.append(("gate", "passed" if run.gate_result.get("passed") else "not passed"))
    for key, reason in (("skipped", run.skip_reason), ("failed", run.failure_reason)):
        if reason:
            lines.append((key, reason))
    lines += regression_lines(summary)
    return "\n".join(f"{key:<10}{value}".rstrip() for key, value in lines)


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

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "created_at": self.created_at.isoformat(),
                "state": self.state.value, "mean_score": _rounded(self.mean_score),
                "share_below": _rounded(self.share_below),
                "failure_share": _rounded(self.failure_share)}


def trend_row(summary: RunSummary, scores: Sequence[float]) -> TrendRow:
    run = summary.run
    d = distribution(scores, threshold_of(run))
    failed = sum(summary.stage_counts.get(st.value, 0) for st in ITEM_FAILED)
    return TrendRow(run.id, run.created_at, run.state, run.model_alias, summary.total_items,
                    d.judged, d.mean, d.threshold, d.share_below,
                    share(failed, summary.total_items), run.job_id,
                    run.skip_reason if run.state is RunState.SKIPPED else None,
                    promotion_note(run))


def promotion_note(run: Run) -> str | None:
    """"promoted M (0.812 against 0.661)", "not promoted (...)", or None before a decision."""
    decision = run.promotion
    if not decision:
        return None
    current = (decision.get("current") or {}).get("mean")
    best = max((c.get("mean") for c in decision.get("candidates") or []
                if c.get("mean") is not None), default=None)
    scores = f"{_figure(best)} against {_figure(current)}"
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
    return [trend_row(store.summary(run), store.scores(run.id)) for run in runs]


def trend_cells(row: TrendRow) -> tuple[str, ...]:
    return (f"{row.created_at:%Y-%m-%d %H:%M}", row.run_id, row.state.value, row.model_alias,
            str(row.items), _figure(row.mean_score), _percent(row.share_below),
            _percent(row.failure_share), row.job_id or "-",
            f"skipped: {row.skip_reason}" if row.skip_reason else row.promotion or "")


TREND_HEADER = ("DATE (UTC)", "RUN ID", "STATE", "MODEL", "ITEMS", "MEAN", "BELOW", "FAILED",
                "JOB", "NOTE")


def trend_table(rows: Sequence[TrendRow]) -> str:
    table = [TREND_HEADER, *(trend_cells(r) for r in rows)]
    widths = [max(len(r[i]) for r in table) for i in range(len(TREND_HEADER) - 1)]
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)), r[-1]])
                     .rstrip() for r in table)


def report_text(settings: Settings, run_id: str, as_json: bool) -> str:
    """What `cftrunner report RUN_ID` prints."""
    check_run_id(run_id)
    store = Store.existing(settings.db_url)
    try:
        summary = store.summary(store.run(run_id))
        report = run_report(summary, store.scores(run_id), store.completion_counts(run_id),
                            store.judge_requests(run_id))
    finally:
        store.close()
    return json.dumps(report.to_json(), indent=2) if as_json else render_run(report)


def trend_text(settings: Settings, project_id: str | None, html_path: Path | None,
               as_json: bool) -> str:
    """What `cftrunner report --trend` prints; with `html_path`, the page is written there."""
    store = Store.existing(settings.db_url)
    try:
        project = project_of(store.runs(), project_id)
        rows = trend(store, project)
        latest = store.scores(rows[-1].run_id)
    finally:
        store.close()
    if html_path is not None:
        from cftrunner.report_html import write_trend_html  # the optional plotly part

        write_trend_html(rows, latest, html_path, project)
    if as_json:
        return json.dumps({"project_id": project, "cycles": [r.to_json() for r in rows],
                           "html": None if html_path is None else str(html_path)}, indent=2)
    return trend_table(rows) + ("" if html_path is None else f"\nwrote {html_path}")
