"""Runs as people and programs read them: the status table, the detail view and JSON."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from cftrunner.models import RunSummary
from cftrunner.states import ITEM_FAILED, ItemStage


def duration(seconds: float) -> str:
    if seconds < 10:
        return f"{max(0.0, seconds):.1f}s"
    whole = int(seconds)
    if whole < 60:
        return f"{whole}s"
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s"
    if whole < 86400:
        return f"{whole // 3600}h{whole % 3600 // 60:02d}m"
    return f"{whole // 86400}d{whole % 86400 // 3600:02d}h"


def age(then: datetime, now: datetime) -> str:
    return duration((now - then).total_seconds())


def to_json(summary: RunSummary) -> dict[str, Any]:
    run = summary.run
    return {
        "run_id": run.id,
        "state": run.state.value,
        "project_id": run.project_id,
        "model_alias": run.model_alias,
        "judge_model": run.judge_model,
        "split_percentage": run.split_percentage,
        "prompts": run.prompts_source,
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
        "last_error": run.last_error,
        "created_at": run.created_at.isoformat(),
        "updated_at": run.updated_at.isoformat(),
        "state_changed_at": run.state_changed_at.isoformat(),
    }


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


def table(summaries: list[RunSummary], now: datetime) -> str:
    if not summaries:
        return "no runs yet: start one with `cftrunner start`"
    rows = [("RUN ID", "STATE", "ITEMS", "FAILED", "AGE", "OWNER", "LAST ERROR")]
    for s in summaries:
        owner = _owner(s, now) or "-"
        rows.append((s.run.id, s.run.state.value, str(s.total_items), str(_failed(s)),
                     age(s.run.created_at, now), owner,
                     _one_line(s.run.failure_reason or s.run.last_error, 60)))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join([*(c.ljust(w) for c, w in zip(r, widths, strict=False)), r[-1]]).rstrip()
                     for r in rows)


def detail(summary: RunSummary, now: datetime) -> str:
    run = summary.run
    counts = ", ".join(f"{n} {stage.lower()}" for stage, n in summary.stage_counts.items() if n)
    lines = [
        ("run", run.id),
        ("state", f"{run.state.value} (for {age(run.state_changed_at, now)}; "
                  f"created {age(run.created_at, now)} ago)"),
        ("project", run.project_id),
        ("model", run.model_alias),
        ("judge", run.judge_model),
        ("prompts", run.prompts_source),
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
    if run.last_error:
        lines.append(("last error", _one_line(run.last_error, 200)))
    return "\n".join(f"{key:<11}{value}" for key, value in lines)
