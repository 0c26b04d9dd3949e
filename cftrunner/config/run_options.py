"""What a run is told when it is created: how it asks its judge, the gate before its snapshot, and
what it does after its launch. Each is stored as a JSON object in its column of `runs`
(judge_config, gate_config, loop_config), so that a resume judges, gates and follows as the start did.

Only the standard library is imported here: the cycle file builds these records for every command,
`--help` included, and pure modules (records, judge, gate) read them, so nothing here may pull in
the machinery that uses them."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from typing import Any, Self

DEFAULT_TEMPERATURE = 0.1
DEFAULT_MAX_TOKENS = 4096
DEFAULT_SCORE_THRESHOLD = 0.5

DEFAULT_TEMPLATE = """\
You are a strict, fair evaluator of answers written by an AI model.

Below are a prompt that was given to the model and the model's answer to it. Judge how well the \
answer does exactly what the prompt asks: correctness first, then whether it follows the \
requested format.

<prompt>
{prompt}
</prompt>

<answer>
{answer}
</answer>

Write your evaluation in this order:
1. "feedback": what the ideal answer to the prompt is, and what this answer must change to match it.
2. "reasoning": your assessment of the answer, step by step.
3. "score": a number from 0 to 1, where 1 means fully correct and 0 means entirely wrong.

Reply with one JSON object and nothing else, no code fence, no text before or after it:
{"feedback": "...", "reasoning": "...", "score": 0.0}
"""

# What structured output asks of the judge; the answer is validated all the same.
RESPONSE_FORMAT: dict[str, Any] = {
    "type": "json_schema",
    "json_schema": {
        "name": "judgment",
        "strict": True,
        "schema": {
            "type": "object",
            "properties": {
                "feedback": {"type": "string"},
                "reasoning": {"type": "string"},
                "score": {"type": "number", "minimum": 0, "maximum": 1},
            },
            "required": ["feedback", "reasoning", "score"],
            "additionalProperties": False,
        },
    },
}


@dataclass(frozen=True)
class StoredConfig:
    """A record kept as one JSON object, its fields the object's keys.

    Reading ignores keys it does not know (a later cftrunner may have stored more) and leaves the
    keys it misses at their defaults (an earlier one stored fewer, or no object at all), so every
    stored row still loads. A tuple field is a JSON array, as the record is frozen."""

    def to_json(self) -> dict[str, Any]:
        return {name: list(value) if isinstance(value, tuple) else value
                for name, value in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> Self:
        names = {f.name for f in fields(cls)}
        return cls(**{name: tuple(value) if isinstance(value, list) else value
                      for name, value in (data or {}).items() if name in names})


@dataclass(frozen=True)
class JudgeConfig(StoredConfig):
    """How a run asks its judge: fixed when the run is created, so a resume asks the same way.

    A run stored before there was one judged with the defaults."""

    template: str = DEFAULT_TEMPLATE
    temperature: float = DEFAULT_TEMPERATURE
    max_tokens: int | None = DEFAULT_MAX_TOKENS
    structured_output: bool = True
    template_source: str | None = None  # the file it was read from; None for the default
    # Answers whose right score is known, judged in every cycle to measure the judge (stages/
    # calibrate.py): {"prompt", "answer", "expected"} objects, and the file they were read from.
    calibration: tuple[dict[str, Any], ...] = ()
    calibration_source: str | None = None

    def response_format(self) -> dict[str, Any] | None:
        return RESPONSE_FORMAT if self.structured_output else None


@dataclass(frozen=True)
class GateConfig(StoredConfig):
    """The conditions a cycle must meet before its snapshot; the defaults let every cycle pass.

    Fixed when the run is created, like the judge."""

    min_traces: int = 0  # at least this many traces added to the dataset
    min_below_threshold: int = 0  # at least this many of them scored below `score_threshold`
    score_threshold: float = DEFAULT_SCORE_THRESHOLD
    max_mean_score: float | None = None  # their mean score must not be above this
    token_budget: int | None = None  # tokens of every completion of the cycle, at most
    # The judge's mean absolute error on the calibration set, at most (None: not checked).
    max_judge_error: float | None = None


@dataclass(frozen=True)
class LoopConfig(StoredConfig):
    """What a run does after its launch; fixed when it is created."""

    follow: bool = False
    promote: bool = False
    holdout: tuple[str, ...] = ()  # the held-out prompts, never added to the dataset
    holdout_source: str | None = None
    margin: float = 0.0  # a new model may score this much below the current one and still win
    # The promoted experiment this run's model came from: its job re-tunes from it.
    retune_from: dict[str, Any] | None = field(default=None)
    # After a promotion, ask the cycle's earlier weak prompts again (new keys go last: the stored
    # keys keep their order).
    regression: bool = False
    # After the decision, unload the new models that lost (those this run asked to load).
    unload_losers: bool = False


def regression_counts(checks: list[dict[str, Any]], threshold: float) -> dict[str, int]:
    verdicts = [verdict(c, threshold) for c in checks]
    return {"prompts": len(checks), "fixed": verdicts.count("fixed"),
            "still_weak": verdicts.count("still weak"), "unjudged": verdicts.count("unjudged")}


def verdict(check: dict[str, Any], threshold: float) -> str:
    """A regression check's outcome: "fixed", "still weak", or "unjudged" (no valid score)."""
    if check.get("score") is None:
        return "unjudged"
    return "fixed" if check["score"] >= threshold else "still weak"
