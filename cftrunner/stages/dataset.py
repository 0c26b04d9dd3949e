"""An item's remote effects: its trace logged, then added to the project's dataset."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from cftrunner.effects import Effect
from cftrunner.exceptions import ApiError
from cftrunner.judge import Judgment, trace_feedback
from cftrunner.payloads import bodies
from cftrunner.records import Item, Run
from cftrunner.stages import markers
from cftrunner.stages.context import Context, Stored
from cftrunner.states import ItemStage
from cftrunner.store.writes import Tx


def trace_key(item: Item) -> str:
    return f"trace:{item.position}"


def trace_request(ctx: Context, run: Run, item: Item) -> dict[str, Any]:
    assert item.answer is not None and item.score is not None
    feedback = trace_feedback(Judgment(item.feedback or "", item.reasoning or "", item.score))
    return {"shape": ctx.settings.trace_shape, "project_id": run.project_id,
            "model_id": run.model_alias, "input": item.prompt, "output": item.answer,
            "score": item.score, "feedback": feedback}


def add_key(item: Item) -> str:
    return f"add:{item.position}"


def _add_request(item: Item) -> dict[str, Any]:
    assert item.trace_id is not None
    return {"trace_id": item.trace_id}


def _failed(stage: ItemStage, item: Item) -> Callable[[Tx, ApiError], Stored]:
    def fail(tx: Tx, exc: ApiError) -> Stored:
        return Stored(tx.update_item(item, stage, error_kind=exc.kind, error=exc.message))
    return fail


def _marking(ctx: Context, run: Run) -> Callable[[datetime], None] | None:
    """How a look that cannot tell yet shows the trace list has caught up: a marker trace."""
    if not ctx.settings.marker_traces:
        return None
    return lambda after: markers.mark_after(ctx, run, after)


def trace(ctx: Context, run: Run, item: Item, entered: Stored | None) -> Stored | None:
    def traced(tx: Tx, out: dict[str, Any]) -> Stored:
        done = tx.update_item(item, ItemStage.TRACED, trace_id=out["trace_id"])
        # The addition's intent, in the same transaction (see Stored).
        return Stored(done, tx.prepare_effect(run.id, add_key(done), "add", item.id,
                                              _add_request(done), None))

    return ctx.perform(Effect(
        run, trace_key(item), "trace", trace_request(ctx, run, item),
        send=lambda req: {"trace_id": ctx.client.create_trace(bodies.trace_body(**req))},
        reconcile=lambda stored: ctx.reconcile.trace(run, stored),
        record=traced, rejected=_failed(ItemStage.TRACE_FAILED, item),
        item=item, then="add", mark=_marking(ctx, run)),
        new=entered is not None, intent=entered.intent if entered else None)


def _record_addition(tx: Tx, item: Item, outcome: dict[str, Any]) -> Stored:
    status = str(outcome.get("status") or "")
    if not outcome.get("success") or status == "failed":
        return Stored(tx.update_item(item, ItemStage.ADD_FAILED, add_status=status or None,
                                     error_kind="add_failed",
                                     error=f"addToDataset answered {status or 'failure'}"))
    return Stored(tx.update_item(item, ItemStage.ADDED, add_status=status or None,
                                 datapoint_id=outcome.get("datapoint_id"),
                                 processing_status="none" if status == "added" else "processing"))


def add(ctx: Context, run: Run, item: Item, entered: Stored | None) -> Stored | None:
    trace_since = run.created_at - timedelta(seconds=ctx.settings.reconcile_skew)

    def send(req: dict[str, Any]) -> dict[str, Any]:
        result = ctx.client.add_to_dataset(req["trace_id"])
        return {"status": result.status, "success": result.success,
                "datapoint_id": result.datapoint_id}

    return ctx.perform(Effect(
        run, add_key(item), "add", _add_request(item), send=send,
        reconcile=lambda stored: ctx.reconcile.addition(run, stored, trace_since),
        record=lambda tx, out: _record_addition(tx, item, out),
        rejected=_failed(ItemStage.ADD_FAILED, item), item=item, mark=_marking(ctx, run)),
        new=entered is not None, intent=entered.intent if entered else None)
