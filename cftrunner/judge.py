"""The judge prompt, and validation of the judge's answer into a Judgment."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from cftrunner.exceptions import InputError, JudgeOutputError

DEFAULT_JUDGE_MODEL = "claude-4.5-sonnet"
DEFAULT_TEMPERATURE = 0.1
DEFAULT_MAX_TOKENS = 4096
FEEDBACK_LIMIT = 2048

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

REMINDER = (
    'Reply only with the JSON object {"feedback": "...", "reasoning": "...", "score": ...}, '
    "where score is a number from 0 to 1, and nothing else."
)

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

_PLACEHOLDER = re.compile(r"\{(prompt|answer)\}")
_FENCE = re.compile(r"```[A-Za-z0-9_+-]*[ \t]*\n?(.*?)```", re.DOTALL)
_FIELDS = ("feedback", "reasoning", "score")


@dataclass(frozen=True)
class Judgment:
    """A judge's verdict on one answer."""

    feedback: str
    reasoning: str
    score: float


@dataclass(frozen=True)
class JudgeConfig:
    """How a run asks its judge: fixed when the run is created, so a resume asks the same way."""

    template: str = DEFAULT_TEMPLATE
    temperature: float = DEFAULT_TEMPERATURE
    max_tokens: int | None = DEFAULT_MAX_TOKENS
    structured_output: bool = True
    template_source: str | None = None  # the file it was read from; None for the default

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any] | None) -> JudgeConfig:
        """The stored config; a run stored before there was one judged with the defaults."""
        known = {k: v for k, v in (data or {}).items() if k in cls.__dataclass_fields__}
        return cls(**known)

    def response_format(self) -> dict[str, Any] | None:
        return RESPONSE_FORMAT if self.structured_output else None


def read_template(path: str) -> str:
    """A judge prompt template file, checked to hold both placeholders; InputError if not."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise InputError(f"cannot read the judge prompt {path}: {reason}") from None
    found = set(_PLACEHOLDER.findall(text))
    if missing := [name for name in ("prompt", "answer") if name not in found]:
        raise InputError(f"the judge prompt {path} lacks the "
                         + " and ".join("{" + name + "}" for name in missing)
                         + " placeholder" + ("s" if len(missing) > 1 else ""))
    return text


def judge_prompt(prompt: str, answer: str, template: str = DEFAULT_TEMPLATE) -> str:
    """Fill `template`'s {prompt} and {answer} placeholders; any other braces stay as they are."""
    values = {"prompt": prompt, "answer": answer}
    # One pass, so a "{answer}" inside the user's prompt is left alone rather than substituted.
    return _PLACEHOLDER.sub(lambda match: values[match.group(1)], template)


def parse_judgment(text: str) -> Judgment:
    """Read the first valid judgment object in `text`; raise JudgeOutputError if there is none."""
    if not text.strip():
        raise JudgeOutputError("judge answer is empty")
    first_error: JudgeOutputError | None = None
    for candidate in _objects(text):
        try:
            return _judgment(candidate)
        except JudgeOutputError as error:
            first_error = first_error or error
    raise first_error or JudgeOutputError("no JSON object found")


def trace_feedback(j: Judgment, limit: int = FEEDBACK_LIMIT) -> str:
    """The trace's feedback text: the feedback, then the reasoning, cut to `limit` characters."""
    if limit < 0:
        raise ValueError(f"limit must not be negative, got {limit}")
    return (j.feedback + "\n\nReasoning: " + j.reasoning)[:limit]


def _objects(text: str) -> Iterator[dict[str, object]]:
    """Every JSON object in `text`: the whole text, then fenced blocks, then from each '{'."""
    whole = _loads(text)
    if whole is not None:
        yield whole
    for block in _FENCE.findall(text):
        fenced = _loads(block)
        if fenced is not None:
            yield fenced
    decoder = json.JSONDecoder()
    start = text.find("{")
    while start != -1:
        try:
            value, _ = decoder.raw_decode(text, start)
        except ValueError:
            value = None
        if isinstance(value, dict):
            yield value
        start = text.find("{", start + 1)


def _loads(text: str) -> dict[str, object] | None:
    # ValueError, not only JSONDecodeError: an integer of over 4300 digits raises the former.
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def _judgment(candidate: dict[str, object]) -> Judgment:
    for field in _FIELDS:
        if field not in candidate:
            raise JudgeOutputError(f"missing {field!r}")
    feedback, reasoning, score = (candidate[field] for field in _FIELDS)
    if not isinstance(feedback, str):
        raise JudgeOutputError(f"'feedback' is not a string (got {_json_type(feedback)})")
    if not isinstance(reasoning, str):
        raise JudgeOutputError(f"'reasoning' is not a string (got {_json_type(reasoning)})")
    # bool is an int subclass, but `true` is not a score.
    if isinstance(score, bool) or not isinstance(score, int | float):
        raise JudgeOutputError(f"score is not a number (got {_json_type(score)})")
    if isinstance(score, float) and not math.isfinite(score):
        raise JudgeOutputError(f"score {score} is not finite")
    if not 0 <= score <= 1:
        raise JudgeOutputError(f"score {score} is outside [0, 1]")
    return Judgment(feedback=feedback, reasoning=reasoning, score=float(score))


def _json_type(value: object) -> str:
    if value is None:
        return "null"
    names = {bool: "a boolean", int: "a number", float: "a number", str: "a string"}
    return names.get(type(value), "an array" if isinstance(value, list) else "an object")
