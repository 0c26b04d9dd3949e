"""What a run came to: its items, the distribution of its scores, judge retries, tokens and time."""

from __future__ import annotations

import bisect
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from cftrunner.prompt_source import describe as describe_source
from cftrunner.records import Run, RunSummary
from cftrunner.states import ItemStage
from cftrunner.views.calibration import calibration_lines, calibration_to_json
from cftrunner.views.status import regression_lines, regression_to_json
from cftrunner.wording import duration

if TYPE_CHECKING:
    from pathlib import Path

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


def rounded(value: float | None) -> float | None:
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
            "scores": {"judged": s.judged, "mean": rounded(s.mean),
                       "median": rounded(s.median), "p10": rounded(s.p10),
                       "threshold": s.threshold, "below_threshold": s.below,
                       "share_below_threshold": rounded(s.share_below),
                       "histogram": [{"from": EDGES[k], "to": EDGES[k + 1], "count": n}
                                     for k, n in enumerate(s.histogram)]},
            "judge": {**asdict(self.judge), "retries": self.judge.retries},
            "completions": self.completions,
            "tokens": self.tokens,
            "state_seconds": self.summary.state_seconds,
            "gate": run.gate_result, "skip_reason": run.skip_reason,
            "calibration": calibration_to_json(run),
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


def figure(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def percent(value: float | None) -> str:
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
        lines.append(("scores", f"{s.judged} judged: mean {figure(s.mean)}, median "
                                f"{figure(s.median)}, p10 {figure(s.p10)}; {s.below} "
                                f"({percent(s.share_below)}) below {s.threshold:g}"))
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
    lines += calibration_lines(run)
    if run.gate_result is not None:
        lines.append(("gate", "passed" if run.gate_result.get("passed") else "not passed"))
    for key, reason in (("skipped", run.skip_reason), ("failed", run.failure_reason)):
        if reason:
            lines.append((key, reason))
    lines += regression_lines(summary)
    return "\n".join(f"{key:<10}{value}".rstrip() for key, value in lines)


def read_report(store: Store, run_id: str) -> RunReport:
    """The report of a run, from what the store holds of it."""
    summary = store.summary(store.run(run_id))
    return run_report(summary, store.scores(run_id), store.completion_counts(run_id),
                      store.judge_requests(run_id))


def report_output(report: RunReport, as_json: bool, html_path: Path | None = None) -> str:
    """What `cftrunner report RUN_ID` prints: the report as a person reads it, or its JSON; and
    the page written to `html_path`, if any."""
    if as_json:
        return json.dumps({**report.to_json(), "html": None if html_path is None
                           else str(html_path)}, indent=2)
    return render_run(report) + ("" if html_path is None else f"\nwrote {html_path}")

