"""The gate before the snapshot: whether a cycle's new data is worth a fine-tuning job.

Its conditions, GateConfig, live in `config.run_options` with the run's other stored settings."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from cftrunner.config.run_options import GateConfig


@dataclass(frozen=True)
class Facts:
    """What the gate looks at, read from the store once every addition has settled."""

    traces_added: int
    below_threshold: int
    mean_score: float | None
    tokens_used: int
    items_over_budget: int  # items left ungenerated or unjudged when the budget ran out
    # The calibration set (calibration.py): its triples, those the judge scored, and the mean
    # absolute error of those scores (None: none scored, or no calibration set).
    calibration_triples: int = 0
    calibration_judged: int = 0
    judge_error: float | None = None


@dataclass(frozen=True)
class Verdict:
    passed: bool
    reasons: tuple[str, ...]  # one per condition not met
    facts: Facts
    config: GateConfig

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)

    def to_json(self) -> dict[str, Any]:
        return {"passed": self.passed, "reasons": list(self.reasons), **asdict(self.facts),
                "config": self.config.to_json()}


def evaluate(config: GateConfig, facts: Facts) -> Verdict:
    """Every condition of `config` that `facts` fail, as one reason each."""
    reasons: list[str] = []
    if facts.traces_added < config.min_traces:
        reasons.append(f"{facts.traces_added} traces added, fewer than the {config.min_traces} "
                       "required")
    if facts.below_threshold < config.min_below_threshold:
        reasons.append(f"{facts.below_threshold} scored below {config.score_threshold:g}, fewer "
                       f"than the {config.min_below_threshold} required")
    if (config.max_mean_score is not None and facts.mean_score is not None
            and facts.mean_score > config.max_mean_score):
        reasons.append(f"the mean score {facts.mean_score:.3f} is already above the target "
                       f"{config.max_mean_score:g}")
    if config.token_budget is not None and (facts.items_over_budget
                                            or facts.tokens_used > config.token_budget):
        left = (f", {facts.items_over_budget} items not generated or judged"
                if facts.items_over_budget else "")
        reasons.append(f"the token budget of {config.token_budget} ran out "
                       f"({facts.tokens_used} used{left})")
    if config.max_judge_error is not None and facts.calibration_triples:
        if facts.judge_error is None:
            reasons.append(f"the judge scored none of the {facts.calibration_triples} "
                           "calibration triples")
        elif facts.judge_error > config.max_judge_error:
            reasons.append(f"the judge's mean absolute error on the calibration set is "
                           f"{round(facts.judge_error, 3):g}, above {config.max_judge_error:g}")
    return Verdict(passed=not reasons, reasons=tuple(reasons), facts=facts, config=config)
