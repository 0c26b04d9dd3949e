"""Marker traces: written when nothing else the run writes can show that the trace list has caught
up past a lost request; never added to the dataset, and deleted once the items are done."""

from __future__ import annotations

import secrets
import threading
from datetime import datetime, timedelta

import structlog

from cftrunner.clock import utcnow
from cftrunner.exceptions import ApiError, RejectedError
from cftrunner.payloads import bodies
from cftrunner.records import EffectStatus, Run
from cftrunner.stages.context import Context

log = structlog.get_logger("cftrunner")

_writing = threading.Lock()  # one marker at a time in a process, for every item waiting on one


def mark_after(ctx: Context, run: Run, after: datetime) -> None:
    """Write a marker trace: one that the trace list, once it shows it, proves has caught up past
    `after` (unless another item's look wrote one just now).

    A marker is a remote effect with its intent stored like any other, but it is never
    reconciled: one whose answer is lost is left for `clean` to find, and another is written."""
    with _writing:
        latest = ctx.store.latest_effect(run.id, "marker")
        if latest is not None and latest.prepared_at > max(
                after, utcnow() - timedelta(seconds=ctx.settings.poll_interval)):
            return  # another item's look just wrote one
        key = f"marker:{secrets.token_hex(4)}"
        request = bodies.marker_request(ctx.settings.trace_shape, run.project_id,
                                          run.model_alias, run.id, key)
        with ctx.tx() as tx:
            prepared = tx.prepare_effect(run.id, key, "marker", None, request, None)
        try:
            trace_id = ctx.retrying("writing a marker trace", lambda: ctx.client.create_trace(
                bodies.trace_body(**request)))
        except RejectedError as exc:
            with ctx.tx() as tx:
                tx.finish_effect(prepared, EffectStatus.FAILED, error=exc.message)
            log.warning("marker_refused", error=exc.kind)
            return
        with ctx.tx() as tx:
            tx.finish_effect(prepared, EffectStatus.DONE, {"trace_id": trace_id})
        log.info("marker_written", key=key, trace_id=trace_id)


def clean(ctx: Context, run: Run) -> None:
    """Delete the run's marker traces: those whose ids are stored, and, if an answer was lost,
    any the trace list shows under the run's marker input. Never fails the run."""
    markers = ctx.store.effects(run.id, "marker")
    if not markers:
        return
    doomed: dict[str, str | None] = {e.key: (e.outcome or {}).get("trace_id") for e in markers
              if e.status is EffectStatus.DONE and not (e.outcome or {}).get("deleted")}
    lost = [e for e in markers if e.status is EffectStatus.PREPARED]
    recorded = {(e.outcome or {}).get("trace_id") for e in markers}
    found = list(ctx.reconcile.markers_seen.get(run.id, set()) - recorded)
    if lost:
        since = run.created_at - timedelta(seconds=ctx.settings.reconcile_skew)
        try:
            found += [t.id for t in ctx.reconcile.traces_since(run, since)
                      if bodies.is_marker_of(t.input or "", run.id)
                      and t.id not in recorded and t.id not in found]
        except ApiError as exc:
            log.warning("markers_not_found", error=exc.kind, reason=exc.message)
    for lost_id in found:
        _delete(ctx, lost_id)
    for key, trace_id in doomed.items():
        effect = ctx.store.effect(run.id, key)
        if trace_id is not None and _delete(ctx, trace_id) and effect is not None:
            with ctx.tx() as tx:
                tx.finish_effect(effect, EffectStatus.DONE, {"trace_id": trace_id,
                                                             "deleted": True})
    for effect in lost:
        with ctx.tx() as tx:
            tx.finish_effect(effect, EffectStatus.FAILED, error="abandoned: its answer was lost")


def _delete(ctx: Context, trace_id: str) -> bool:
    """Delete one marker trace, once; False (and a warning) when the API would not."""
    try:
        ctx.client.delete_trace(trace_id)
    except ApiError as exc:
        if not (isinstance(exc, RejectedError) and exc.status_code == 404):
            log.warning("marker_not_deleted", trace_id=trace_id, error=exc.kind)
            return False
    log.info("marker_deleted", trace_id=trace_id)
    return True
