"""A run's items as people and programs read them: the items table, its JSON, and export records."""

from __future__ import annotations

from typing import Any

from cftrunner.records import Item
from cftrunner.states import ItemStage
from cftrunner.views.tables import Column, table

# The keys of each object of `items --json`, in order (the README lists them with their types).
ITEM_KEYS = ("item", "stage", "score", "trace_id", "prompt", "error_kind", "error")
# The fields of each exported item, in order: the JSONL keys and the CSV header.
EXPORT_FIELDS = ("run_id", "item", "stage", "prompt", "answer", "score", "feedback", "reasoning",
                 "trace_id", "judge_attempts", "tokens", "error_kind", "error")
PROMPT_WORDS = 12  # the first words of the prompt the table shows

COLUMNS = (
    Column("ITEM", justify="right"),
    Column("STATE"),
    Column("SCORE", justify="right"),
    Column("TRACE", ratio=1),  # whole on a wide terminal; its start on a narrow one
    Column("PROMPT", ratio=2),
    # An error's end says most ("...: HTTP 400: model not found"); its kind leads the cell.
    Column("REASON", keep="end", ratio=2),
)


def item_json(item: Item) -> dict[str, Any]:
    """One item as `items --json` shows it: ITEM_KEYS."""
    return {"item": item.position, "stage": item.stage.value, "score": item.score,
            "trace_id": item.trace_id, "prompt": item.prompt, "error_kind": item.error_kind,
            "error": item.error}


def export_record(item: Item, tokens: int) -> dict[str, Any]:
    """One item as `export` writes it: EXPORT_FIELDS; `tokens` counts every completion of its
    steps (generation and judging, retries included)."""
    return {"run_id": item.run_id, "item": item.position, "stage": item.stage.value,
            "prompt": item.prompt, "answer": item.answer, "score": item.score,
            "feedback": item.feedback, "reasoning": item.reasoning, "trace_id": item.trace_id,
            "judge_attempts": item.judge_attempts, "tokens": tokens,
            "error_kind": item.error_kind, "error": item.error}


def first_words(text: str, words: int = PROMPT_WORDS) -> str:
    """The first `words` words of `text` on one line, "…" after them when there are more."""
    split = text.split()
    return " ".join(split[:words]) + (" …" if len(split) > words else "")


def reason(item: Item) -> str:
    """Why the item failed or was set aside (a budget that ran out): its error's kind and
    message; empty for an item that did neither."""
    if not (item.failed or item.stage is ItemStage.SKIPPED):
        return ""
    message = " ".join((item.error or "").split())
    return ": ".join(part for part in (item.error_kind, message) if part)


def cells(item: Item) -> tuple[str, ...]:
    """One row of the items table."""
    return (str(item.position), item.stage.value,
            "-" if item.score is None else f"{item.score:.3f}", item.trace_id or "-",
            first_words(item.prompt), reason(item))


def items_table(rows: list[tuple[str, ...]], total: int, width: int | None = None) -> str:
    """The items table, then how many of the run's `total` items it shows."""
    if not rows:
        return f"no items match (the run has {total})"
    footer = f"{len(rows)} of {total} items" if len(rows) != total else f"{total} items"
    return f"{table(COLUMNS, rows, width)}\n{footer}"
