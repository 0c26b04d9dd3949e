"""What a run's page shows: its report, its lowest-scoring items, its failures, the decisions."""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from cftrunner.records import Item, Run
from cftrunner.states import ITEM_FAILED
from cftrunner.views.report import RunReport, read_report

if TYPE_CHECKING:
    from cftrunner.store import Store

LOWEST = 10  # the lowest-scoring items a run's page lists
POSITIONS = 10  # the item positions a failure kind lists


@dataclass(frozen=True)
class LowItem:
    """A judged item among the lowest scores; `position` is what `cftrunner show RUN N` takes."""

    position: int
    score: float
    prompt: str
    answer: str | None
    feedback: str | None
    trace_id: str | None


@dataclass(frozen=True)
class FailureGroup:
    """The failed items of one kind ("gen_failed:http_400", as the report counts them)."""

    kind: str
    count: int
    positions: tuple[int, ...]  # the first POSITIONS of them
    example: str | None  # the error of the first


@dataclass(frozen=True)
class GateVerdict:
    passed: bool
    reasons: tuple[str, ...]
    facts: tuple[tuple[str, str], ...]  # what the gate looked at, as (name, figure)


@dataclass(frozen=True)
class ModelScore:
    """One side of the promotion decision: the current model or a new one, on the held-out set."""

    role: str  # "current" or "new"
    model_id: str
    mean: float | None
    judged: int | None
    prompts: int | None
    chosen: bool  # the model the decision promoted


@dataclass(frozen=True)
class Promotion:
    promoted: bool
    reason: str
    margin: float | None
    models: tuple[ModelScore, ...]  # the current model first


@dataclass(frozen=True)
class RunPage:
    report: RunReport
    lowest: list[LowItem]
    failures: list[FailureGroup]
    gate: GateVerdict | None
    promotion: Promotion | None


def lowest_items(items: Iterable[Item], n: int = LOWEST) -> list[LowItem]:
    """The `n` lowest-scoring judged items, lowest first (ties by position)."""
    scored = ((item.score, item.position, item) for item in items if item.score is not None)
    return [LowItem(item.position, score, item.prompt, item.answer, item.feedback, item.trace_id)
            for score, _, item in heapq.nsmallest(n, scored, key=lambda t: (t[0], t[1]))]


def failure_groups(items: Iterable[Item]) -> list[FailureGroup]:
    """The failed items grouped by stage and error kind, the largest group first."""
    counts: dict[str, int] = {}
    positions: dict[str, list[int]] = {}
    examples: dict[str, str | None] = {}
    for item in items:
        if item.stage not in ITEM_FAILED:
            continue
        kind = f"{item.stage.value.lower()}:{item.error_kind or 'unknown'}"
        counts[kind] = counts.get(kind, 0) + 1
        first = positions.setdefault(kind, [])
        if len(first) < POSITIONS:
            first.append(item.position)
        examples.setdefault(kind, item.error)
    return [FailureGroup(kind, n, tuple(sorted(positions[kind])), examples[kind])
            for kind, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))]


def gate_verdict(run: Run) -> GateVerdict | None:
    """What the gate found, once it has looked."""
    found = run.gate_result
    if found is None:
        return None
    facts = (("traces added", found.get("traces_added")),
             ("below the threshold", found.get("below_threshold")),
             ("mean score", found.get("mean_score")), ("tokens used", found.get("tokens_used")),
             ("items over the budget", found.get("items_over_budget")))
    return GateVerdict(bool(found.get("passed")), tuple(found.get("reasons") or ()),
                       tuple((name, _figure(v)) for name, v in facts if v is not None))


def _figure(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, float) else f"{value:,}"


def promotion(run: Run) -> Promotion | None:
    """The promotion decision with both sides' scores on the held-out prompts, once decided."""
    decision = run.promotion
    if not decision:
        return None
    chosen = decision.get("model_id") if decision.get("promoted") else None
    sides = [("current", decision.get("current") or {}),
             *(("new", c) for c in decision.get("candidates") or [])]
    models = tuple(ModelScore(role, str(side.get("model_id") or "?"), side.get("mean"),
                              side.get("judged"), side.get("prompts"),
                              role == "new" and side.get("model_id") == chosen)
                   for role, side in sides)
    return Promotion(bool(decision.get("promoted")), str(decision.get("reason") or ""),
                     decision.get("margin"), models)


def run_page(report: RunReport, lowest: Iterable[Item], failed: Iterable[Item]) -> RunPage:
    """The page's data from the run's report, its items in ascending score (or any order: the
    lowest are picked), and its failed items."""
    run = report.summary.run
    return RunPage(report, lowest_items(lowest), failure_groups(failed), gate_verdict(run),
                   promotion(run))


def read_run_page(store: Store, run_id: str) -> RunPage:
    """A run's page data: the lowest scores are one short read, the failed items a page at a
    time, so a large run is never held in memory whole."""
    report = read_report(store, run_id)
    first = next(iter(store.item_pages(run_id, by_score=True, page=LOWEST)), [])
    failed = itertools.chain.from_iterable(store.item_pages(run_id, stages=ITEM_FAILED))
    return run_page(report, (item for item, _ in first), (item for item, _ in failed))
