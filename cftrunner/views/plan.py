"""What a new run would do, as `start --dry-run` and `tick --dry-run` print it.

Its items, the requests it would send per endpoint, the held-out evaluation, and what the cycle's
last run used per item; built from the checks before a run (`preflight`), which read and never
write (pure but for the store's read of the last run)."""

from __future__ import annotations

from dataclasses import dataclass

from cftrunner.config.run_options import LoopConfig
from cftrunner.records import Checked


@dataclass(frozen=True)
class LastRun:
    """The cycle's last run that used tokens: its id, items and tokens."""

    run_id: str
    items: int
    tokens: int


def lines(items: int, checked: Checked, base_url: str, project_id: str, judge_attempts: int,
          loop: LoopConfig, last: LastRun | None) -> list[str]:
    """The plan, a line a fact; the warnings of the checks last."""
    judged = f"{items}" if judge_attempts == 1 else f"{items} to {items * judge_attempts}"
    out = [
        f"checks: the key is accepted at {base_url}; project {project_id} has dataset "
        f"{checked.dataset_id}",
        f"items: {items}",
        f"requests: chat completions {items} generations and {judged} judgments; traces {items}; "
        f"addToDataset {items}; snapshots/create 1; recommendations/generate 1 (then reads until "
        "ready); finetuning/create 1; besides reads of the trace list to check the corrections",
    ]
    if loop.promote:
        out.append(f"held-out evaluation: {len(loop.holdout)} prompts, each answered and judged "
                   f"by the current model and by each new model ({2 * len(loop.holdout)} chat "
                   "completions a model), after the job trains")
    elif loop.follow:
        out.append("after the launch: the job is followed until it trains")
    if last is not None and last.items:
        per_item = last.tokens / last.items
        out.append(f"tokens: the cycle's last run {last.run_id} used {per_item:,.0f} per item; "
                   f"{items} items at that rate: about {per_item * items:,.0f}")
    else:
        out.append("tokens: no earlier run of this cycle to go by")
    out += [f"warning: {warning}" for warning in checked.warnings]
    return out
