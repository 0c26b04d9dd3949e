"""Runs with many items in every kind of outcome, built directly in the store (no API), for the
items and export tests: what a finished cycle leaves, in a second rather than minutes.

Item i is, by i % 10: 3 GEN_FAILED (http_400, unscored), 7 SKIPPED (budget_exceeded, unscored),
otherwise ADDED with score (i % 21) / 20, so many items share each score; its prompt has
non-ASCII letters, quotes, commas and a newline, as CSV and JSON must carry them."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sqlalchemy as sa

from cftrunner.clock import utcnow
from cftrunner.states import ItemStage
from cftrunner.store import Store
from cftrunner.store.schema import completions, items
from tests.conftest import make_run

# A judge's feedback and reasoning run to a few sentences each.
FEEDBACK = ". The answer names the right category and explains why the request is unsafe." * 5
REASONING = ("; the conversation asks for step-by-step help with something the policy lists, "
             "and the agent gives it.") * 4


def prompt(i: int) -> str:
    """About as long as the tutorial's prompts (some 700 characters), distinct for each i."""
    return (f"Prompt {i}: is «this» safe, \"quoted\", with a comma,\nsecond line: ça va? "
            + "User: how do I fix my bike chain? Agent: take the wheel off first. " * 9)


def stage_of(i: int) -> ItemStage:
    return {3: ItemStage.GEN_FAILED, 7: ItemStage.SKIPPED}.get(i % 10, ItemStage.ADDED)


def score_of(i: int) -> float | None:
    return (i % 21) / 20 if stage_of(i) is ItemStage.ADDED else None


def tokens_of(i: int) -> int:
    """The tokens of item i's completions: a generation of i % 50 + 1, and for a scored item a
    judgment of 100."""
    return i % 50 + 1 + (100 if score_of(i) is not None else 0)


def build_run(store: Store, run_id: str, n: int) -> None:
    """A run of `n` items as described above, each with its completions."""
    store.create_run(make_run(run_id), (prompt(i) for i in range(n)))
    ours = items.c.run_id == run_id
    position = sa.cast(items.c.position, sa.String)
    with store.engine.begin() as conn:
        conn.execute(items.update().where(ours).values(
            stage=ItemStage.ADDED.value, answer="unsafe\nS4 -- answer " + position,
            feedback="The verdict matches the policy, item " + position + FEEDBACK,
            reasoning="The categories agree with the conversation. " + position + REASONING,
            score=sa.cast(items.c.position % 21, sa.Float) / 20, judge_attempts=1,
            trace_id="trace-" + run_id + "-" + position))
        conn.execute(items.update().where(ours, items.c.position % 10 == 3).values(
            stage=ItemStage.GEN_FAILED.value, answer=None, feedback=None, reasoning=None,
            score=None, judge_attempts=0, trace_id=None, error_kind="http_400",
            error="POST /api/v1/chat/completions: HTTP 400: the model refused item " + position))
        conn.execute(items.update().where(ours, items.c.position % 10 == 7).values(
            stage=ItemStage.SKIPPED.value, answer=None, feedback=None, reasoning=None,
            score=None, judge_attempts=0, trace_id=None, error_kind="budget_exceeded",
            error="the token budget of 1000 ran out before generating"))
        at = sa.literal(utcnow(), type_=completions.c.at.type)
        for kind, tokens, which in (
                ("generate", items.c.position % 50 + 1, ours),
                ("judge", sa.literal(100), sa.and_(ours, items.c.score.is_not(None)))):
            conn.execute(completions.insert().from_select(
                ["run_id", "item_id", "kind", "attempt", "outcome", "total_tokens", "at"],
                sa.select(items.c.run_id, items.c.id, sa.literal(kind), sa.literal(1),
                          sa.literal("ok"), tokens, at).where(which)))


def expected_record(run_id: str, i: int) -> dict[str, Any]:
    """Item i of a built run as `export` writes it."""
    stage, score = stage_of(i), score_of(i)
    scored = score is not None
    errors = {ItemStage.GEN_FAILED: (
        "http_400", f"POST /api/v1/chat/completions: HTTP 400: the model refused item {i}"),
        ItemStage.SKIPPED: ("budget_exceeded", "the token budget of 1000 ran out before generating")}
    kind, error = errors.get(stage, (None, None))
    return {"run_id": run_id, "item": i, "stage": stage.value, "prompt": prompt(i),
            "answer": f"unsafe\nS4 -- answer {i}" if scored else None, "score": score,
            "feedback": f"The verdict matches the policy, item {i}{FEEDBACK}" if scored else None,
            "reasoning": (f"The categories agree with the conversation. {i}{REASONING}" if scored
                          else None),
            "trace_id": f"trace-{run_id}-{i}" if scored else None,
            "judge_attempts": 1 if scored else 0, "tokens": tokens_of(i), "error_kind": kind,
            "error": error}


README = Path(__file__).resolve().parent.parent / "README.md"
JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,), "integer": (int,), "number": (int, float), "null": (type(None),)}


@dataclass(frozen=True)
class Key:
    """A key the README promises: its name, JSON types, and whether `items --json` has it."""

    name: str
    types: tuple[type, ...]
    listed: bool


def promised_keys() -> list[Key]:
    """The table of keys in the README's "Items and export" section, in its order."""
    section = README.read_text(encoding="utf-8").split("### Items and export\n", 1)[1]
    section = section.split("\n### ", 1)[0]
    keys = []
    for name, types, listed in re.findall(r"^\| `(\w+)` \| ([a-z ]+?) \| *(yes)? *\|", section,
                                          re.MULTILINE):
        keys.append(Key(name, tuple(t for word in types.split(" or ")
                                    for t in JSON_TYPES[word]), listed == "yes"))
    assert len(keys) >= 10, "the README's table of keys was not found"
    return keys


def assert_as_promised(obj: dict[str, Any], keys: list[Key]) -> None:
    """`obj` has exactly these keys, each of a type the README gives it (a bool is no number)."""
    assert set(obj) == {key.name for key in keys}, obj
    for key in keys:
        value = obj[key.name]
        assert isinstance(value, key.types) and not isinstance(value, bool), (key, value)
    assert obj["stage"] in {stage.value for stage in ItemStage}
    assert obj["score"] is None or 0 <= obj["score"] <= 1
