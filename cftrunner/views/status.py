"""Runs as people and programs read them: the status table, the detail view and JSON."""

from __future__ import annotations

import json
import re
import textwrap
from datetime import datetime
from typing import Any

from cftrunner.config.run_options import verdict
from cftrunner.prompt_source import describe as describe_source
from cftrunner.records import Completion, Item, RunSummary
from cftrunner.states import ITEM_FAILED, ItemStage
from cftrunner.views import tables
from cftrunner.views.calibration import calibration_lines, calibration_to_json
from cftrunner.views.tables import Column
from cftrunner.wording import age, duration, settle_command


def to_json(summary: RunSummary) -> dict[str, Any]:
    run = summary.run
    return {
        "run_id": run.id,
        "state": run.state.value,
        "project_id": run.project_id,
        "base_url": run.base_url,
        "model_alias": run.model_alias,
        "judge_model": run.judge_model,
        "split_percentage": run.split_percentage,
        "prompts": run.prompts_source,
        "prompt_source": run.prompt_source,
        "dataset_id": run.dataset_id,
        "snapshot_id": run.snapshot_id,
        "job_id": run.job_id,
        "job_name": run.job_name,
        "items": {"total": summary.total_items,
                  **{stage.value: summary.stage_counts.get(stage.value, 0) for stage in ItemStage}},
        "failures": summary.failures,
        "state_seconds": summary.state_seconds,
        "lease": None if run.lease is None else {
            "owner": run.lease.owner.label(), "expires_at": run.lease.expires_at.isoformat()},
        "workers": [{"owner": w.owner.label(), "holding": w.holding,
                     "expires_at": w.expires_at.isoformat()} for w in summary.workers],
        "cancel_requested": run.cancel_requested,
        "cycle": run.cycle,
        "failure_reason": run.failure_reason,
        "skip_reason": run.skip_reason,
        "gate": run.gate_result,
        "calibration": calibration_to_json(run),
        "follow": run.loop.follow,
        "promote": run.loop.promote,
        "training": run.training,
        "promotion": run.promotion,
        "regression": [regression_to_json(c, run.gate.score_threshold) for c in summary.rechecks],
        "last_error": run.last_error,
        "undecided": [{"key": e.key, "kind": e.kind, "reason": e.error,
                       "last_sent_at": e.updated_at.isoformat(),
                       "settle": settle_command(run.id, e.key)} for e in summary.undecided],
        "created_at": run.created_at.isoformat(),
        "updated_at": run.updated_at.isoformat(),
        "state_changed_at": run.state_changed_at.isoformat(),
    }


def regression_to_json(check: dict[str, Any], threshold: float) -> dict[str, Any]:
    return {"prompt": check["prompt"], "earlier_run_id": check["earlier_run_id"],
            "earlier_score": check["earlier_score"], "model_id": check["model_id"],
            "score": check["score"], "error": check["error"],
            "verdict": verdict(check, threshold) if check["at"] is not None else "not asked yet"}


def _failed(summary: RunSummary) -> int:
    return sum(summary.stage_counts.get(s.value, 0) for s in ITEM_FAILED)


def _one_line(text: str | None, width: int) -> str:
    flat = " ".join((text or "").split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def _owner(summary: RunSummary, now: datetime) -> str | None:
    lease = summary.run.lease
    if lease is None:
        return None
    if lease.expires_at <= now:
        return f"{lease.owner.label()} (expired)"
    return f"{lease.owner.label()} for {age(now, lease.expires_at)}"


STATUS_COLUMNS = (Column("RUN ID"), Column("STATE"), Column("ITEMS", "right"),
                  Column("FAILED", "right"), Column("AGE", "right"), Column("OWNER", ratio=1),
                  Column("LAST ERROR", keep="end", ratio=3))
# What a stopped run's error ends with, the same for every run: left out of the table's column
# (not of `status RUN` or --json) so that it shows the end that differs, the status and reason.
ADVICE = re.compile(r"(;\s*fix the cause, then `cftrunner resume [^`]*`|\s*\(gave up after [^()]*\))$")


def short_error(text: str | None, base_url: str | None) -> str:
    """An error for the table: on one line, without the run's base URL and the advice to resume."""
    flat = " ".join((text or "").split())
    if base_url and base_url.rstrip("/"):
        flat = flat.replace(base_url.rstrip("/"), "")
    return ADVICE.sub("", flat)


def table(summaries: list[RunSummary], now: datetime, width: int | None = None) -> str:
    """The runs, one line each, fitted to `width` (default: the terminal's); the last error keeps
    its end, where the status and reason are."""
    if not summaries:
        return "no runs yet: start one with `cftrunner start`"
    return tables.table(STATUS_COLUMNS, [
        (s.run.id, s.run.state.value, str(s.total_items), str(_failed(s)),
         age(s.run.created_at, now), _owner(s, now) or "-",
         short_error(s.run.failure_reason or s.run.skip_reason or s.run.last_error, s.run.base_url))
        for s in summaries], width)


def detail(summary: RunSummary, now: datetime, width: int | None = None) -> str:
    """`status RUN`: a line per field; on a terminal (or given `width`), a long value wraps
    under itself. The last error is shown whole."""
    run = summary.run
    counts = ", ".join(f"{n} {stage.lower()}" for stage, n in summary.stage_counts.items() if n)
    lines = [
        ("run", run.id),
        ("state", f"{run.state.value} (for {age(run.state_changed_at, now)}; "
                  f"created {age(run.created_at, now)} ago)"),
        ("project", run.project_id),
        ("model", run.model_alias),
        ("judge", run.judge_model),
        ("prompts", describe_source(run.prompt_source) or run.prompts_source),
        ("items", f"{summary.total_items} ({counts or 'none'})"),
        ("failures", ", ".join(f"{k} {v}" for k, v in sorted(summary.failures.items())) or "none"),
        ("dataset", run.dataset_id or "-"),
        ("snapshot", run.snapshot_id or "-"),
        ("job", f"{run.job_id or '-'} (name {run.job_name})"),
        ("owner", _owner(summary, now) or "none"),
        ("workers", "; ".join(
            f"{w.owner.label()} holding {w.holding} until {w.expires_at:%H:%M:%S} UTC"
            + (" (expired)" if w.expires_at <= now else "") for w in summary.workers) or "none"),
        ("time", ", ".join(f"{state} {duration(v)}"
                           for state, v in summary.state_seconds.items()) or "-"),
    ]
    if run.cancel_requested and run.state.value != "CANCELLED":
        lines.append(("cancel", "requested; the run stops at its next checkpoint"))
    if run.failure_reason:
        lines.append(("failed", run.failure_reason))
    if run.skip_reason:
        lines.append(("skipped", run.skip_reason))
    if run.training:
        experiments = run.training.get("experiments") or []
        lines.append(("training", f"job {run.training.get('status') or '?'}: " + (", ".join(
            f"{e.get('number') or '?'} {e.get('status')}"
            + (f" -> {e['model_id']}" if e.get("model_id") else "") for e in experiments)
            or "no experiments listed")))
    if run.promotion:
        verdict = "promoted " + str(run.promotion.get("model_id")) if run.promotion.get(
            "promoted") else "not promoted"
        lines.append(("promotion", f"{verdict}: {run.promotion.get('reason')}"))
        lines += [("left out", f"{e.get('model_id')}: {e.get('reason')}")
                  for e in run.promotion.get("excluded") or []]
    elif serving := (run.training or {}).get("serving"):
        lines.append(("serving", ", ".join(f"{m} {e.get('status')}" for m, e in serving.items())))
    lines += regression_lines(summary)
    lines += calibration_lines(run)
    for effect in summary.undecided:
        lines.append(("undecided", f"{effect.key}: outcome unknown ({effect.error}); "
                                   f"{settle_command(run.id, effect.key)}"))
    if run.last_error:
        lines.append(("last error", " ".join(run.last_error.split())))
    if width is None and tables.on_a_terminal():
        width = tables.terminal_width()
    return "\n".join(_field(key, value, width) for key, value in lines)


def _field(key: str, value: str, width: int | None) -> str:
    line = f"{key:<11}{value}"
    if width is None or len(line) <= width:
        return line
    return "\n".join(textwrap.wrap(line, max(width, 31), subsequent_indent=" " * 11,
                                   break_on_hyphens=False))


def regression_lines(summary: RunSummary) -> list[tuple[str, str]]:
    """The regression check after a promotion: its counts, then one line per prompt."""
    counts = (summary.run.promotion or {}).get("regression")
    if not counts or not summary.rechecks:
        return []
    threshold = summary.run.gate.score_threshold
    lines = [("regression", f"{counts['fixed']} fixed, {counts['still_weak']} still weak, "
                            f"{counts['unjudged']} unjudged of {counts['prompts']} prompts that "
                            f"scored below {threshold:g} (asked again of {summary.rechecks[0]['model_id']})")]
    for check in summary.rechecks:
        now = "-" if check["score"] is None else f"{check['score']:.2f}"
        lines.append(("", f"{verdict(check, threshold):<10} {check['earlier_score']:.2f} -> {now}  "
                          f"{_one_line(check['prompt'], 70)}"))
    return lines


def item_to_json(item: Item, completions: list[Completion]) -> dict[str, Any]:
    """An item with every completion of its steps, each judge request and answer exactly."""
    return {
        "run_id": item.run_id, "item": item.position, "stage": item.stage.value,
        "prompt": item.prompt, "answer": item.answer, "score": item.score,
        "feedback": item.feedback, "reasoning": item.reasoning,
        "judge_attempts": item.judge_attempts, "trace_id": item.trace_id,
        "add_status": item.add_status, "datapoint_id": item.datapoint_id,
        "processing_status": item.processing_status, "error_kind": item.error_kind,
        "error": item.error,
        "completions": [{
            "kind": c.kind, "attempt": c.attempt, "outcome": c.outcome, "at": c.at.isoformat(),
            "finish_reason": c.finish_reason, "prompt_tokens": c.prompt_tokens,
            "completion_tokens": c.completion_tokens, "total_tokens": c.total_tokens,
            "error": c.error, "request": c.request, "answer": c.content,
        } for c in completions],
    }


def item_detail(item: Item, completions: list[Completion]) -> str:
    """What `show` prints: the item, then each completion with the judge's request and answer
    in full, so that any score can be checked against what the judge saw and said."""
    lines = [f"run {item.run_id}, item {item.position}: {item.stage.value}"]
    if item.score is not None:
        lines.append(f"score {item.score:g} after {item.judge_attempts} judge answer(s)")
    for name, value in (("trace", item.trace_id), ("addition", item.add_status),
                        ("error", f"{item.error_kind}: {item.error}" if item.error else None)):
        if value:
            lines.append(f"{name} {value}")
    lines += ["", "== prompt", item.prompt, "", "== answer", item.answer or "(none yet)"]
    if item.feedback is not None:
        lines += ["", "== feedback", item.feedback, "", "== reasoning", item.reasoning or ""]
    for c in completions:
        tokens = "-" if c.total_tokens is None else str(c.total_tokens)
        head = (f"== {c.kind} attempt {c.attempt}: {c.outcome}, finish_reason "
                f"{c.finish_reason or '-'}, {tokens} tokens, at {c.at:%Y-%m-%d %H:%M:%S} UTC")
        lines += ["", head]
        if c.error:
            lines.append(f"-- error: {c.error}")
        if c.request is not None:
            settings = {k: v for k, v in c.request.items() if k not in ("messages", "project_id")}
            lines.append("-- request " + json.dumps(settings, ensure_ascii=False))
            for message in c.request.get("messages") or []:
                lines += [f"-- {message.get('role')}:", str(message.get("content"))]
        if c.content is not None:
            lines += ["-- judge answer:", c.content]
    return "\n".join(lines)
